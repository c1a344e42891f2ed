"""A run that eradicates the tumour ends in a cure ("not detectable"), never in progression."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# 18 cells at the start (100 µm × 100 µm × 0.3 × 18 µm / 3000 µm³); a drug held at 10 µM in the
# tissue kills at ~1.9/hour, so a week later far less than one cell is left
ERADICATED = """\
name: eradicated
mesh: {kind: rectangle, size: [100, 100], cells: [4, 4]}
drugs:
  dox: {class: dna_damaging, diffusivity: 16 um^2/s, initial: 10 uM, emax: 2 1/hour, ec50: 0.5 uM}
clones:
  clones:
    s: {growth: 0.5 1/day, initial: 0.3}
treatment:
  lines: [{name: first}, {name: second}]
  assessment: {every: 1 week}
  detection_limit: 1 cell
  stop: {on_cure: %s}
time: {end: 3 week, dt: 6 hour}
output: {plots: false, snapshots: {times: []}}
"""


def events(tmp_path, on_cure: str) -> list[dict]:
    cfg = tmp_path / "s.yaml"
    cfg.write_text(ERADICATED % on_cure)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "tme", "run", str(cfg), "--out", str(out), "-q"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    with open(out / "events.csv") as f:
        return list(csv.DictReader(f))


def test_eradication_is_a_cure_and_stops_the_run(tmp_path):
    log = events(tmp_path, "true")
    kinds = [e["event"] for e in log]
    assert "progression" not in kinds and "switch" not in kinds
    first = kinds.index("assessment")
    assert kinds[first:] == ["assessment", "cure", "stop"]
    assert "not detectable" in log[first]["reason"]
    assert float(log[first]["time_hours"]) == pytest.approx(7 * 24.0)
    assert log[-1]["reason"] == "cured: not detectable"
    # the burden as a cell count: 0.3 × 100 µm × 100 µm × 18 µm / 3000 µm³ = 18 cells at t = 0
    with open(tmp_path / "out" / "timeseries.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["burden_cells"]) == pytest.approx(18.0, rel=1e-12)
    assert all(float(r["burden_cells"]) == pytest.approx(float(r["burden"]) * 18.0 / 3000.0, rel=1e-12)
               for r in rows)


def test_an_eradicated_tumour_that_goes_on_is_never_called_progressing(tmp_path):
    log = events(tmp_path, "false")
    kinds = [e["event"] for e in log]
    assessments = [e for e in log if e["event"] == "assessment"]
    assert len(assessments) == 3 and kinds.count("cure") == 1
    assert all("not detectable" in e["reason"] for e in assessments)
    assert "progression" not in kinds and kinds[-1] == "stop" and log[-1]["reason"] == "end time"
