"""Treatment strategies after resistance (configs/second_line, combination, personalized,
immunotherapy, and ``tme compare``).

Each scenario is run on a coarsened mesh with longer steps (``COARSE``) and its claim is checked
from that run's own outputs: timeseries.csv, events.json, summary.json, comparison.csv. Nothing
is compared with figures of an earlier run; the only numbers taken from the configs are the ones
the claims are about (line drugs, progression rule, sequencing map). Tests marked ``mpi`` also
run on 2 ranks (``make test-mpi``).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dolfinx")
from mpi4py import MPI  # noqa: E402

from tme.config import scenario as sc  # noqa: E402
from tme import problem  # noqa: E402
from tme.studies.compare import COLUMNS, compare  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
DAY = 24.0
TOL = 1e-6  # hours: times in the outputs are milestones, equal up to round-off

#: Coarsening valid for every strategy config: a coarser mesh, longer steps, fewer field
#: outputs and no plots. The claims do not depend on it.
COARSE = ("mesh.h=45 um", "time.dt=6 hour", "time.dt_initial=1 hour", "output.every=21 day",
          "output.plots=false")


# --------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture
def out(tmp_path, comm) -> Path:
    """An output directory that every rank sees (rank 0's pytest temporary directory)."""
    return Path(comm.bcast(str(tmp_path) if comm.rank == 0 else None, root=0))


class Outputs:
    """The files of one run directory, read back."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.summary = json.loads((self.path / "summary.json").read_text())
        self.events = json.loads((self.path / "events.json").read_text())
        with open(self.path / "timeseries.csv", newline="") as fh:
            self.rows = list(csv.DictReader(fh))
        self.clones = [k[len("clone_"):] for k in self.rows[0] if k.startswith("clone_") and "@" not in k]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    def row(self, t: float) -> dict:
        """The timeseries row of the step that ended at ``t`` [hour]."""
        found = [r for r in self.rows if abs(float(r["t"]) - t) <= TOL]
        assert found, f"no timeseries row at t = {t} h"
        return found[-1]

    def burden(self, t: float) -> float:
        return float(self.row(t)["burden"])

    def amounts(self, t: float) -> dict[str, float]:
        """∫ N_i dx of every clone at ``t``."""
        r = self.row(t)
        return {c: float(r[f"clone_{c}"]) for c in self.clones}

    def dominant(self, t: float) -> str:
        """The clone with the largest amount at ``t``."""
        a = self.amounts(t)
        return max(a, key=a.get)

    def between(self, t0: float, t1: float) -> list[dict]:
        """Rows with t0 < t <= t1."""
        return [r for r in self.rows if t0 + TOL < float(r["t"]) <= t1 + TOL]

    def assessments(self, line: str) -> list[dict]:
        return [e for e in self.of("assessment") if e["data"]["line"] == line]


def run(config: str, out: Path, *overrides: str):
    """Run a strategy config coarsened (plus ``overrides``) into ``out``; (scenario, outputs)."""
    scen = sc.load(CONFIGS / config, list(COARSE) + list(overrides))
    problem.run(scen, out, comm=MPI.COMM_WORLD, overwrite=True, quiet=True)
    MPI.COMM_WORLD.Barrier()  # rank 0 writes the files
    return scen, Outputs(out)


def drug_classes(scen, line) -> set[str]:
    return {scen.drugs[d.drug].drug_class for d in line.regimen}


def check_progression(scen, res: Outputs, event: dict) -> None:
    """A progression event is an assessment at which the burden rose above (1 + increase) x the
    nadir of its line: the smallest burden assessed since the line started, start included."""
    prog = scen.treatment.progression
    d = event["data"]
    assert "burden" in d["rules"]
    assert d["burden"] > (1 + prog.increase) * d["nadir"] and d["burden"] > d["threshold"]
    assert d["burden"] == pytest.approx(res.burden(event["time"]), rel=1e-12)
    assert event["time"] in [a["time"] for a in res.assessments(d["line"])]
    starts = [e for e in res.of("line_start") + res.of("switch") if e["data"]["name"] == d["line"]]
    assert len(starts) == 1
    t0 = starts[0]["time"]
    seen = [res.burden(t0)] + [a["data"]["burden"] for a in res.assessments(d["line"])
                               if a["time"] < event["time"] - TOL]
    assert d["nadir"] == pytest.approx(min(seen), rel=1e-12)


def next_assessment_after(res: Outputs, t: float) -> dict:
    later = [a for a in res.of("assessment") if a["time"] > t + TOL]
    assert later, f"no assessment after t = {t / DAY:g} d: the run is too short for the claim"
    return later[0]


def ttp_days(row: dict) -> float:
    """Time to first progression of a comparison row [day]; inf when it never progressed."""
    v = row["time_to_progression_days"]
    return math.inf if v in ("", None) else float(v)


# --------------------------------------------------------------------------------------------
# 1. Second line: switch to another mechanism after a DNA-repair clone is selected


@pytest.mark.mpi
def test_second_line_switches_mechanism_and_the_burden_falls_again(out):
    scen, res = run("second_line.yaml", out, "time.end=63 day")
    first, second = scen.treatment.lines
    assert drug_classes(scen, first) == {"dna_damaging"}
    assert drug_classes(scen, second).isdisjoint(drug_classes(scen, first))

    # one progression on line 1, at an assessment, and the switch to line 2 at that time
    (sw,) = res.of("switch")
    ts = sw["time"]
    (prog,) = res.of("progression")
    assert prog["time"] == ts and prog["data"]["line"] == first.name
    check_progression(scen, res, prog)
    assert sw["data"]["from"] == first.name and sw["data"]["name"] == second.name
    assert sw["data"]["regimen"] == [d.drug for d in second.regimen]
    assert res.summary["time_to_progression_hours"] == pytest.approx(ts)
    assert res.summary["lines_used"] == 2 and res.summary["final_line"] == second.name
    assert {r["line"] for r in res.between(ts, math.inf)} == {second.name}

    # what progressed is the DNA-repair clone, selected from a small minority by the first line
    top = res.dominant(ts)
    assert scen.clones.clones[top].mechanism == "dna_repair"
    start = res.amounts(0.0)
    assert start[top] < 0.05 * sum(start.values())
    assert res.amounts(ts)[top] > 0.5 * res.burden(ts)

    # the first line's drug is no longer given, the second line's from the switch on
    first_drugs = {d.drug for d in first.regimen}
    for e in res.of("dose"):
        if e["data"]["drug"] in first_drugs:
            assert e["time"] <= ts + TOL
        else:
            assert e["time"] >= ts - TOL
    assert any(e["data"]["drug"] not in first_drugs for e in res.of("dose"))

    # the burden falls again: lower at the next assessment, and well below the switch in between
    b_switch = res.burden(ts)
    nxt = next_assessment_after(res, ts)
    assert nxt["data"]["burden"] < b_switch
    assert min(float(r["burden"]) for r in res.between(ts, nxt["time"])) < 0.5 * b_switch
    # the DNA-repair clone is what the second line kills
    assert res.amounts(nxt["time"])[top] < 0.5 * res.amounts(ts)[top]


# --------------------------------------------------------------------------------------------
# 2. Combination (Lorz et al. 2015): longer time to progression than either drug alone


@pytest.mark.slow
@pytest.mark.mpi
def test_combination_outlasts_each_monotherapy(out, comm):
    config = CONFIGS / "combination.yaml"
    scen = sc.load(config)
    (line,) = scen.treatment.lines
    cytotoxic, targeted = line.regimen
    assert scen.drugs[cytotoxic.drug].drug_class == "dna_damaging"
    assert scen.drugs[targeted.drug].drug_class == "targeted"
    keys = [f"treatment.lines.0.regimen.{k}.amount" for k in (0, 1)]
    # 2 x 2 arms: each drug off (0 uM) or at its dose in the config
    sweeps = [f"{keys[0]}=0 uM,{cytotoxic.amount}", f"{keys[1]}=0 uM,{targeted.amount}"]
    rows = compare([config], out, comm, sweeps=sweeps, overrides=list(COARSE) + ["time.end=105 day"],
                   overwrite=True)
    comm.Barrier()

    # comparison.csv: one row per arm, the documented columns, and the burden plot
    with open(out / "comparison.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        table = list(reader)
    assert len(table) == len(rows) == 4
    assert (out / "comparison.png").stat().st_size > 0

    arms = {}
    for row in table:
        on = tuple(f"{k}=0 uM" not in row["overrides"] for k in keys)
        arms[on] = row
        # each row is its run's own summary
        s = json.loads((out / row["run"] / "summary.json").read_text())
        ttp = s["time_to_progression_hours"]
        assert ttp_days(row) == (math.inf if ttp is None else pytest.approx(ttp / DAY))
        assert float(row["final_burden"]) == pytest.approx(s["final_burden"])
    assert set(arms) == {(False, False), (True, False), (False, True), (True, True)}
    ttp = {arm: ttp_days(row) for arm, row in arms.items()}
    both, none = ttp[(True, True)], ttp[(False, False)]
    cyto_only, targ_only = ttp[(True, False)], ttp[(False, True)]
    assert cyto_only < math.inf and targ_only < math.inf, "each monotherapy should fail within the run"
    assert both > cyto_only and both > targ_only
    assert none <= min(cyto_only, targ_only)

    # each monotherapy selects the clone resistant to it; the combination needs both traits
    clones = scen.clones.clones

    def resists(name, drug):
        c, d = clones[name], scen.drugs[drug]
        pumped = d.pgp_substrate and c.pgp_vmax > 0
        if d.drug_class == "dna_damaging":
            return c.repair > 0.5 or pumped or c.ec50_shift.get(drug, 1.0) > 10
        return pumped or c.ec50_shift.get(drug, 1.0) > 10 or c.bypass.get(d.target, 0.0) > 0.5

    for arm, drugs in (((True, False), [cytotoxic.drug]), ((False, True), [targeted.drug]),
                       ((True, True), [cytotoxic.drug, targeted.drug])):
        if ttp[arm] == math.inf:
            continue
        res = Outputs(out / arms[arm]["run"])
        top = res.dominant(ttp[arm] * DAY)
        assert all(resists(top, d) for d in drugs), (arm, top)


# --------------------------------------------------------------------------------------------
# 3. Personalised targeted therapy: sequencing picks the drug mapped to the dominant clone


def test_sequencing_names_the_dominant_clone_and_gives_its_drug(out):
    scen, res = run("personalized.yaml", out, "time.end=105 day")
    first = scen.treatment.lines[0]
    assert drug_classes(scen, first) == {"targeted"}
    seqs = res.of("sequencing")
    switches = res.of("switch")
    assert len(seqs) == len(switches) >= 1
    lines = {line.name: line for line in scen.treatment.lines}
    for seq, sw in zip(seqs, switches):
        t = seq["time"]
        assert sw["time"] == t
        (prog,) = [p for p in res.of("progression") if p["time"] == t]
        check_progression(scen, res, prog)
        line = lines[sw["data"]["name"]]
        assert seq["data"]["line"] == line.name and seq["data"]["region"] is None

        # the dominant mechanism is that of the clone with the largest amount at progression
        top = res.dominant(t)
        mech = scen.clones.clones[top].mechanism
        assert mech is not None, f"the sensitive clone {top} dominates at progression"
        assert seq["data"]["dominant"] == mech
        fractions = seq["data"]["fractions"]
        assert max(fractions, key=fractions.get) == top
        assert fractions[top] == pytest.approx(res.amounts(t)[top] / res.burden(t), rel=1e-9)

        # the drugs given are those mapped to it (plus any backbone no map names)
        choose = line.sequencing.choose
        assert seq["data"]["chosen"] == choose[mech]
        candidates = {d for names in choose.values() for d in names}
        expected = [d.drug for d in line.regimen if d.drug in choose[mech] or d.drug not in candidates]
        assert sw["data"]["regimen"] == expected == seq["data"]["regimen"]
        t_end = next((s["time"] for s in switches if s["time"] > t + TOL), math.inf)
        given = {e["data"]["drug"] for e in res.of("dose") if t - TOL <= e["time"] < t_end - TOL}
        assert given == set(expected)

        # and the burden falls after the switch
        nxt = next_assessment_after(res, t)
        assert min(float(r["burden"]) for r in res.between(t, nxt["time"])) < 0.5 * res.burden(t)
        assert res.burden(nxt["time"]) < res.burden(t)
        assert res.amounts(nxt["time"])[top] < 0.5 * res.amounts(t)[top]

    # the scenario's story: after the first targeted switch a clone with another mechanism
    # takes over, and sequencing it again picks another drug
    assert len(seqs) == 2
    assert seqs[0]["data"]["dominant"] != seqs[1]["data"]["dominant"]
    assert seqs[0]["data"]["chosen"] != seqs[1]["data"]["chosen"]


# --------------------------------------------------------------------------------------------
# 4. Immunotherapy: a checkpoint inhibitor controls a tumour that resists both chemotherapies


def test_checkpoint_inhibitor_controls_a_chemoresistant_tumour(out):
    scen, res = run("immunotherapy.yaml", out, "time.end=84 day")
    lines = scen.treatment.lines
    ici = next(i for i, line in enumerate(lines) if drug_classes(scen, line) == {"checkpoint_inhibitor"})
    assert ici >= 1 and scen.immune.enabled
    for line in lines[:ici]:
        assert drug_classes(scen, line) <= {"dna_damaging", "antimitotic"}
    for name in (d.drug for d in lines[ici].regimen):
        assert scen.drugs[name].radius >= 3e-3  # an antibody, r of nanometres (in µm)
    assert all(c.immune_kill > 0 for c in scen.clones.clones.values())

    # every chemotherapy line progressed, one after the other, and the antibody line started
    progs = res.of("progression")
    assert [p["data"]["line"] for p in progs][:ici] == [line.name for line in lines[:ici]]
    for p in progs[:ici]:
        check_progression(scen, res, p)
    switch = [s for s in res.of("switch") if s["data"]["name"] == lines[ici].name]
    assert len(switch) == 1
    ti = switch[0]["time"]
    assert ti == progs[ici - 1]["time"]
    assert res.burden(ti) > res.burden(0.0)
    # what grew through the chemotherapy is chemoresistant
    assert float(res.row(ti)["resistant_fraction"]) > 0.9
    assert scen.clones.clones[res.dominant(ti)].mechanism is not None

    # after the checkpoint inhibitor starts the burden falls and stays controlled: no progression
    b = res.burden(ti)
    after = [a for a in res.assessments(lines[ici].name)]
    assert after, "no assessment on the checkpoint-inhibitor line: the run is too short"
    assert all(a["data"]["burden"] < b for a in after)
    assert not [p for p in progs if p["time"] > ti + TOL]
    assert res.burden(after[0]["time"]) < 0.5 * b
    # ... for every chemoresistant clone that mattered, whatever its mechanism
    at, later = res.amounts(ti), res.amounts(after[0]["time"])
    for clone, amount in at.items():
        if scen.clones.clones[clone].mechanism is not None and amount > 0.01 * b:
            assert later[clone] < 0.5 * amount, clone
    # through more immune effectors (recruitment and kill raised by the antibody)
    assert float(res.row(after[0]["time"])["total_immune"]) > 1.5 * float(res.row(ti)["total_immune"])


# --------------------------------------------------------------------------------------------
# 5. tme compare on two strategy configs, from the command line


@pytest.mark.slow
def test_compare_cli_writes_one_row_per_run(tmp_path):
    configs = ["configs/second_line.yaml", "configs/combination.yaml"]
    sets = [a for o in list(COARSE) + ["time.end=42 day"] for a in ("--set", o)]
    p = subprocess.run([sys.executable, "-m", "tme", "compare", *configs, "--out", str(tmp_path),
                        *sets], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    with open(tmp_path / "comparison.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    names = [sc.load(ROOT / c).name for c in configs]
    assert [r["run"] for r in rows] == names
    assert [r["config"] for r in rows] == configs
    png = tmp_path / "comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in rows:
        s = json.loads((tmp_path / row["run"] / "summary.json").read_text())
        assert (tmp_path / row["run"] / "timeseries.csv").exists()
        ttp = s["time_to_progression_hours"]
        assert ttp_days(row) == (math.inf if ttp is None else pytest.approx(ttp / DAY))
        assert float(row["nadir"]) == pytest.approx(s["nadir_burden"])
        assert float(row["final_burden"]) == pytest.approx(s["final_burden"])
        assert int(row["lines_used"]) == s["lines_used"] and int(row["ranks"]) == 1
    # a second compare into the same directory is refused without --overwrite
    p = subprocess.run([sys.executable, "-m", "tme", "compare", configs[0], "--out", str(tmp_path),
                        *sets], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "--overwrite" in p.stderr


def test_a_dose_cancelled_by_a_switch_is_not_logged(out):
    """The old line's dose due at the switch time is cancelled: the log must not claim it."""
    scen, res = run("second_line.yaml", out / "switch", "time.end=43 day")
    (switch,) = res.of("switch")
    t = switch["time"]
    old = {d.drug for d in scen.treatment.lines[0].regimen}
    new = {d.drug for d in scen.treatment.lines[1].regimen} - old
    at_switch = [e["data"]["drug"] for e in res.of("dose") if abs(e["time"] - t) <= TOL]
    assert at_switch and set(at_switch) <= new, at_switch
    # and indeed no bolus of the old drug: its plasma level only falls across the switch
    for drug in old:
        before = float(res.row(t)[f"plasma_{drug}"])
        after = [float(r[f"plasma_{drug}"]) for r in res.between(t, t + 12)]
        assert max(after) <= before
