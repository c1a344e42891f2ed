"""``tme forecast`` on a real fit: its files, a failing strategy recorded, resume, 1 and 2 ranks.

The fit is of one parameter (chemo E_max) of the patient scenario shortened to 8 weeks, to the
noise-free measurements of its truth with a declared 10 % noise, so that its distribution has a
width; the forecast draws 3 parameter sets and runs each under each strategy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import tme
from runs import finish, tme as run_tme

ROOT = Path(__file__).resolve().parents[2]
PATIENT = ROOT / "configs" / "patient_fit" / "patient.yaml"
HOLIDAY = "holiday=treatment.lines.0.adapt={every: 1 week, first: 3 week, holiday: {}}"
#: a strategy whose runs fail at their set-up (a tissue region the mesh does not have)
BROKEN = "broken=tissue.regions.nowhere={ecm_fraction: 0.1}"


@pytest.fixture(scope="module")
def fitdir(tmp_path_factory):
    from tme.studies.fit import synthetic

    base = tmp_path_factory.mktemp("forecast")
    truth = tme.load(PATIENT, ["time.end=56 day"]).with_changes({"drugs.chemo.emax": "0.02 1/hour"})
    data = base / "data.csv"
    data.write_text(synthetic(truth, [0, 14, 28, 42, 56], cv=0.1, seed=4))
    tme.fit(PATIENT, data, {"drugs.chemo.emax": "0.005 1/hour..0.1 1/hour"}, log=["drugs.chemo.emax"],
            noise="lognormal:cv=0.1", overrides=["time.end=56 day"], out=base / "fit", quiet=True)
    return base / "fit"


def forecast(fitdir, out, *extra, ranks=1):
    p = run_tme("forecast", fitdir, "--strategy", "actual=", "--strategy", HOLIDAY,
                "--strategy", BROKEN, "--samples", "3", "--seed", "5",
                "--out", out, *extra, ranks=ranks)
    out_, err = finish(p, 600)
    return p.returncode, err


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def one_rank(fitdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fc1") / "out"
    code, err = forecast(fitdir, out)
    assert code == 0, err
    return out, err


def test_files_bands_and_a_failing_strategy(one_rank, fitdir):
    out, err = one_rank
    for name in ("samples.csv", "forecast.csv", "bands.csv", "forecast.png", "forecast.json", "study.json"):
        assert (out / name).is_file(), name
    samples = rows(out / "samples.csv")
    assert len(samples) == 9 and len(list((out / "runs").glob("*.json"))) == 9
    # the same three parameter sets under every strategy, within the fit's bounds
    emax = {s["strategy"]: [float(r["drugs.chemo.emax"]) for r in samples if r["strategy"] == s["strategy"]]
            for s in samples}
    assert emax["actual"] == emax["holiday"] == emax["broken"] and len(set(emax["actual"])) == 3
    assert all(0.005 <= e <= 0.1 for e in emax["actual"])
    # the broken strategy's runs fail at their set-up: recorded, not fatal
    broken = [r for r in samples if r["strategy"] == "broken"]
    assert all(r["ok"] == "0" and r["error"] for r in broken)
    table = {r["strategy"]: r for r in rows(out / "forecast.csv")}
    assert table["broken"]["failed"] == "3" and table["actual"]["failed"] == "0"
    assert "forecast: run broken__0000 failed: tissue.regions.nowhere: the mesh has no region" in err
    # the bands: p5 <= median <= p95 in mm^3 at every day of the grid, from the runs' curves
    bands = [b for b in rows(out / "bands.csv") if b["strategy"] == "actual"]
    lo, med, hi = (np.array([float(b[f"{k} [mm^3]"]) for b in bands]) for k in ("p5", "median", "p95"))
    assert np.all(lo <= med) and np.all(med <= hi) and float(bands[-1]["time_day"]) == pytest.approx(56)
    # the median burden at a run's report day lies among the three runs' own values there
    finals = sorted(float(r["final_burden [mm^3]"]) for r in samples if r["strategy"] == "actual")
    assert finals[0] <= med[-1] <= finals[-1]
    assert float(table["actual"]["final_burden_median [mm^3]"]) == pytest.approx(finals[1])


def test_the_same_command_continues(one_rank, fitdir):
    out, _ = one_rank
    for name in ("actual__0001", "holiday__0002"):
        (out / "runs" / f"{name}.json").unlink()
    code, err = forecast(fitdir, out)
    assert code == 0, err
    assert "(7 done before)" in err and "; 2 run in" in err
    assert len(rows(out / "samples.csv")) == 9
    # asked again with other draws: the runs on disk were made for other parameter sets
    p = run_tme("forecast", fitdir, "--strategy", "actual=", "--strategy", HOLIDAY, "--strategy",
                BROKEN, "--samples", "3", "--seed", "6", "--out", out)
    _, err = finish(p, 300)
    assert p.returncode == 2 and "was run with another scenario" in err and err.strip().count("\n") == 0


def test_two_ranks_give_the_same_forecast(one_rank, fitdir, tmp_path):
    out1, _ = one_rank
    code, err = forecast(fitdir, tmp_path / "fc2", "--ranks-per-run", "1", ranks=2)
    assert code == 0, err
    a, b = rows(out1 / "samples.csv"), rows(tmp_path / "fc2" / "samples.csv")
    assert [r["drugs.chemo.emax"] for r in a] == [r["drugs.chemo.emax"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["ok"] == rb["ok"]
        if ra["ok"] == "1":
            assert float(rb["final_burden [mm^3]"]) == pytest.approx(float(ra["final_burden [mm^3]"]), rel=1e-9)


def test_refusals_are_one_line(fitdir, tmp_path):
    cases = [(["--strategy", "x=drugs.chemo.emax=0.1 1/hour"], "--strategy x: drugs.chemo.emax is determined by the fit"),
             (["--strategy", "x=missing.yaml"], "--strategy x: missing.yaml: cannot read"),
             (["--strategy", "x=", "--samples", "0"], "--samples 0: at least 1"),
             (["--strategy", "x=", "--end", "10"], "--end"),
             ([], "name at least one --strategy")]
    for args, message in cases:
        p = run_tme("forecast", fitdir, *args, "--out", tmp_path / "o")
        _, err = finish(p, 120)
        assert p.returncode == 2 and message in err and err.strip().count("\n") == 0, err
        assert not (tmp_path / "o").exists()
    p = run_tme("forecast", tmp_path, "--strategy", "x=", "--out", tmp_path / "o")
    _, err = finish(p, 120)
    assert p.returncode == 2 and "no fit.json (not the --out of a tme fit)" in err
