"""tme sensitivity and tme cohort on well-mixed tumours whose outcome is a closed form.

A uniform tumour (one clone at a uniform density N, no gradient, so no transport) under a drug
held at a uniform constant level c0 (its initial value, neither taken up nor decaying nor
supplied) follows the logistic ODE dN/dt = g N (1 − N) − κ N, κ = E_max c0ⁿ/(c0ⁿ + EC50ⁿ):

    N(t) = N0 e^{rt} / (1 + g N0 (e^{rt} − 1)/r),  r = g − κ.

- Sensitivity: while N ≪ 1, ln N(T) ≈ ln N0 + (g − κ) T, so the variance of the outcome is
  shared between g and E_max in the ratio Δg² : (A(c0) ΔE)² — with the ranges below 1 : 12:
  E_max dominates — and the drug's diffusivity does not enter at all (S = 0). The runs' metric
  equals the closed form at every design point, and the indices equal those of the closed form
  on the same design.
- Cohort: untreated (a line without doses, assessed daily), progression is B > 1.2 B0, reached
  at t* = c/g with c = ln[(1 + q)(1 − N0)/(1 − (1 + q) N0)], q the allowed increase, and called
  at the first daily assessment at or after t*. With patients whose t* is exponential (rate λ)
  under q = 0.2, the arm q = 0.44 has t* longer by s = c(0.44)/c(0.2) = 2.002 for every patient:
  the medians are ln 2/λ and s ln 2/λ (on the daily grid), and the hazard ratio of the second arm
  against the first is 1/s = 0.4994 (the daily grid moves it by about 1 %: a discrete hazard
  ratio (1 − e^{−λ/s})/(1 − e^{−λ}) = 0.506).
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dolfinx")
from mpi4py import MPI  # noqa: E402

from tme.config import scenario as scn  # noqa: E402
from tme.studies import cohort, sensitivity  # noqa: E402
from tme.studies.params import Param  # noqa: E402
from tme.studies.sensitivity import Vary  # noqa: E402

from runs import finish, kill, tme  # noqa: E402

AREA, N0, THICKNESS, CELL = 200.0 * 200.0, 0.05, 18.0, 3000.0

WELL_MIXED = {"name": "wellmixed", "mesh": {"kind": "rectangle", "size": ["200 um", "200 um"], "cells": [8, 8]},
              "numerics": {"reaction_kernel": "numpy"},
              "drugs": {"chemo": {"class": "dna_damaging", "diffusivity": "10 um^2/s", "initial": "1 uM",
                                  "ec50": "1 uM", "emax": "0.01 1/hour"}},
              "clones": {"clones": {"a": {"growth": "0.3 1/day", "initial": N0}}},
              "time": {"end": "10 day", "dt": "12 hour"},
              "output": {"plots": False, "snapshots": {"times": []}}}

VARY = ["clones.clones.a.growth=0.25 1/day..0.35 1/day", "drugs.chemo.emax=0.001 1/hour..0.03 1/hour",
        "drugs.chemo.diffusivity=1 um^2/s..100 um^2/s"]


def _shared(comm, path) -> Path:
    return Path(comm.bcast(str(path), root=0))


def logistic(g_per_hour, kill_per_hour, t_hours, n0=N0):
    r = g_per_hour - kill_per_hour
    growth = np.where(np.abs(r) > 1e-14, np.expm1(r * t_hours) / np.where(r == 0, 1, r), t_hours)
    return n0 * np.exp(r * t_hours) / (1.0 + g_per_hour * n0 * growth)


def final_cells(g_per_day, emax_per_hour, _diffusivity=None):
    """The final burden [cells] of WELL_MIXED in closed form (A(c0) = 1/2 at c0 = EC50)."""
    n = logistic(np.asarray(g_per_day) / 24.0, 0.5 * np.asarray(emax_per_hour), 240.0)
    return AREA * THICKNESS / CELL * n


@pytest.mark.mpi
def test_sobol_indices_of_a_well_mixed_tumour_follow_its_closed_form(comm):
    base = scn.validate(json.loads(json.dumps(WELL_MIXED)))
    res = sensitivity.study(base, VARY, 16, "final_burden", comm, logs=["drugs.chemo.diffusivity"], seed=3)
    runs = res.runs
    assert len(runs) == 16 * 5 and res.unit == "cells"
    cols = ["clones.clones.a.growth [1/day]", "drugs.chemo.emax [1/hour]", "drugs.chemo.diffusivity [um^2/s]"]
    exact = final_cells(runs[cols[0]].to_numpy(), runs[cols[1]].to_numpy())
    # every run against the closed form at its own design point (the reaction step: 1e-3)
    np.testing.assert_allclose(runs["final_burden"].to_numpy(), exact, rtol=2e-3)
    d = runs[cols[2]].to_numpy()
    assert d.min() >= 1.0 and d.max() <= 100.0 and np.median(np.log10(d)) == pytest.approx(1.0, abs=0.5)
    # the closed form through the same wiring and design: the same indices
    variables = sensitivity.plan(base, VARY, ["drugs.chemo.diffusivity"])
    closed = sensitivity.sobol(variables, 16, lambda block, X: final_cells(X[:, 0], X[:, 1]), seed=3)
    ind = res.indices
    np.testing.assert_allclose(ind["S1"], closed["S1"], atol=0.02)
    np.testing.assert_allclose(ind["ST"], closed["ST"], atol=0.02)
    # the closed form's prediction: E_max dominates, the diffusivity does nothing
    e, g, dd = ind.loc["drugs.chemo.emax"], ind.loc["clones.clones.a.growth"], ind.loc["drugs.chemo.diffusivity"]
    assert e["S1"] > 0.6 and e["S1"] > 2 * g["S1"] and e["ST"] > 2 * g["ST"]
    assert abs(dd["S1"]) < 0.01 and abs(dd["ST"]) < 0.01
    assert list(ind["metric_unit"].unique()) == ["cells"] and ind.loc["drugs.chemo.emax", "unit"] == "1/hour"


@pytest.mark.mpi
def test_morris_screening_of_a_well_mixed_tumour(comm):
    base = scn.validate(json.loads(json.dumps(WELL_MIXED)))
    res = sensitivity.study(base, VARY[:2], 4, "final_burden", comm, method="morris", seed=1)
    variables = sensitivity.plan(base, VARY[:2])
    closed = sensitivity.morris(variables, 4, lambda block, X: final_cells(X[:, 0], X[:, 1]), seed=1)
    ind = res.indices
    np.testing.assert_allclose(ind["mu_star"], closed["mu_star"], rtol=5e-3)
    np.testing.assert_allclose(ind["mu"], closed["mu"], rtol=5e-3)
    assert ind.loc["drugs.chemo.emax", "mu_star"] > ind.loc["clones.clones.a.growth", "mu_star"]
    assert ind.loc["drugs.chemo.emax", "mu"] < 0 < ind.loc["clones.clones.a.growth", "mu"]


# --------------------------------------------------------------------------------------------
# Cohorts

UNTREATED = {"name": "untreated", "mesh": {"kind": "rectangle", "size": ["200 um", "200 um"], "cells": [8, 8]},
             "numerics": {"reaction_kernel": "numpy"},
             "clones": {"clones": {"a": {"growth": "0.05 1/day", "initial": 0.01}}},
             "treatment": {"lines": [{"name": "watch", "regimen": []}], "assessment": {"every": "1 day"}},
             "time": {"end": "70 day", "dt": "1 day"},
             "output": {"plots": False, "snapshots": {"times": []}}}


def c_of(q, n0=0.01):
    return math.log((1 + q) * (1 - n0) / (1 - (1 + q) * n0))


def _write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.mpi
def test_a_cohort_of_known_times_to_progression(comm, tmp_path):
    """60 patients whose t* under q = 0.2 is exponential with mean 20 days (a fixed draw), under
    q = 0.2 and q = 0.44: each patient's time to progression is the first daily assessment at or
    after its closed-form t*; the Kaplan–Meier medians and the hazard ratio match the closed
    forms within their sampling error (stated per assertion)."""
    out = _shared(comm, tmp_path / "cohort")
    lam, n = 1 / 20.0, 60
    tstar = np.random.default_rng(2024).exponential(1 / lam, n)
    growth = c_of(0.2) / tstar                 # [1/day]
    files = None
    if comm.rank == 0:
        config = _write_yaml(tmp_path / "untreated.yaml", UNTREATED)
        patients = tmp_path / "patients.csv"
        with open(patients, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["patient", "clones.clones.a.growth [1/day]"])
            for i, g in enumerate(growth):
                w.writerow([f"pt{i}", repr(float(g))])
        files = (str(config), str(patients))
    config, patients = comm.bcast(files, root=0)
    res = cohort.study(config, comm, patients=patients, out=out, seed=None,
                       strategies=["strict=treatment.progression.increase=0.2",
                                   "lenient=treatment.progression.increase=0.44"])
    runs, summary = res.runs, res.summary
    s = c_of(0.44) / c_of(0.2)
    grid = {}
    for name, scale in (("strict", 1.0), ("lenient", s)):
        arm = runs[runs["strategy"] == name].sort_values("patient")
        t = scale * tstar
        expect = np.where(t < 70.0, np.ceil(t - 1e-9), 70.0)
        got = arm["time_to_progression_days"].to_numpy()
        # a t* within the reaction step's error (1e-3 day) of a grid day may fall either side
        near = np.abs(t - np.round(t)) < 1e-3
        assert np.all((got == expect) | near), (got[got != expect], expect[got != expect])
        assert list(arm["censored"]) == [int(x >= 70.0) for x in t]
        grid[name] = expect
        # progression at the first (day 1) assessment is progressive disease, else stable
        assert list(arm["response"]) == ["PD" if x == 1.0 else "SD" for x in got]
    # Kaplan–Meier medians against ln 2 / λ on the daily grid; the standard error of a median of
    # n exponential times is 1/(rate √n): 2.6 and 5.2 days here; the estimate within 2.5 of it
    for name, rate in (("strict", lam), ("lenient", lam / s)):
        row = summary.loc[name]
        # no patient is censored before the median: the Kaplan–Meier median (the first time at
        # which the estimate falls below 1/2) is the 31st of the 60 closed-form times on the
        # grid, or the 30th where the estimate's product lands a rounding below 1/2 there
        ordered = np.sort(grid[name])
        assert row["median_ttp_days"] in (ordered[n // 2 - 1], ordered[n // 2])
        exact = math.ceil(math.log(2) / rate)
        assert abs(row["median_ttp_days"] - exact) < 2.5 / (rate * math.sqrt(n)), row
        assert row["median_ttp_ci_low"] <= row["median_ttp_days"] <= row["median_ttp_ci_high"]
        assert row["patients"] == n and row["evaluable"] == n and row["failed"] == 0
    hr = summary.loc["lenient"]
    # the log HR's standard error √(1/d1 + 1/d2) ≈ 0.19: the 95 % interval holds 1/s = 0.4994
    assert hr["hazard_ratio"] < 1 and hr["hazard_ratio_ci_low"] <= 1 / s <= hr["hazard_ratio_ci_high"]
    assert abs(math.log(hr["hazard_ratio"] * s)) < 2.5 * math.sqrt(1 / 60 + 1 / hr["progressed"])
    assert summary.loc["strict", "hazard_ratio"] == 1.0
    if comm.rank == 0:
        print(f"cohort closed form: sample medians of t* {np.median(tstar):.2f}, {np.median(s * tstar):.2f} day; "
              f"KM medians {summary['median_ttp_days'].tolist()} day (population "
              f"{math.ceil(math.log(2) / lam)}, {math.ceil(s * math.log(2) / lam)}), HR "
              f"{hr['hazard_ratio']:.3f} [{hr['hazard_ratio_ci_low']:.3f}, {hr['hazard_ratio_ci_high']:.3f}] "
              f"(exact {1 / s:.4f})")
        written = list(csv.DictReader(open(out / "summary.csv")))
        assert [r["strategy"] for r in written] == ["strict", "lenient"]
        pts = list(csv.DictReader(open(out / "patients.csv")))
        assert len(pts) == n and float(pts[3]["clones.clones.a.growth [1/day]"]) == pytest.approx(growth[3])
        assert (out / "km.png").stat().st_size > 10_000
    comm.barrier()


#: a cohort whose second patient's drug overflows (Hill coefficient 1e4): its run stops at the
#: NaN guard and the others go on
FAILING = {**UNTREATED, "drugs": {"x": {"class": "dna_damaging", "diffusivity": "10 um^2/s", "initial": "2 uM",
                                        "ec50": "1 uM", "emax": "0.001 1/hour"}},
           "time": {"end": "40 day", "dt": "1 day"}}


def _cohort_files(tmp_path: Path, n: int) -> tuple[Path, Path]:
    config = _write_yaml(tmp_path / "failing.yaml", FAILING)
    patients = tmp_path / "patients.csv"
    rows = ["clones.clones.a.growth,drugs.x.hill"] + [
        f"{0.02 + 0.001 * i} 1/day,{1e4 if i == 1 else 1}" for i in range(n)]
    patients.write_text("\n".join(rows) + "\n")
    return config, patients


def _cohort_rows(out: Path) -> list[dict]:
    with open(out / "cohort.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("ranks", [1, 2])
def test_a_failing_patient_is_recorded_and_a_killed_cohort_continues(tmp_path, ranks):
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("starts its own ranks")
    n = 16
    config, patients = _cohort_files(tmp_path, n)
    out = tmp_path / "out"
    args = ["cohort", config, "--patients", patients, "--out", out]
    p = tme(*args, ranks=ranks)
    t0 = time.time()
    while len(list((out / "runs").glob("*.json"))) < 3 if (out / "runs").is_dir() else True:
        assert p.poll() is None, p.communicate()
        assert time.time() - t0 < 120
        time.sleep(0.02)
    kill(p)
    p.communicate()
    kept = sorted(f.stem for f in (out / "runs").glob("*.json"))
    for f in (out / "runs").glob("*.json"):
        json.loads(f.read_text())
    assert 3 <= len(kept) < n and not (out / "cohort.csv").exists()
    # the same command again runs only the missing patients
    p = tme(*args, ranks=ranks)
    _, err = finish(p, 180)
    assert p.returncode == 0, err
    assert "continuing the cohort" in err
    assert f"cohort: {n} run(s) ({len(kept)} done before)" in err and f"{n - len(kept)} run in" in err
    rows = _cohort_rows(out)
    assert len(rows) == n
    bad = [r for r in rows if r["ok"] == "0"]
    assert [r["patient"] for r in bad] == ["2"] and "is not a number" in bad[0]["error"]
    assert bad[0]["response"] == "NE"
    assert sum(1 for ln in err.splitlines() if "run p00002__config failed" in ln) <= 1
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert summary[0]["failed"] == "1" and summary[0]["evaluable"] == str(n - 1)


def test_cohort_and_sensitivity_from_the_command_line(tmp_path):
    """One line per bad input, the outputs with their units, and --overwrite starting afresh."""
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("starts its own runs")
    config = _write_yaml(tmp_path / "wellmixed.yaml", WELL_MIXED)
    out = tmp_path / "sens"
    p = tme("sensitivity", config, "--vary", VARY[0], "--vary", VARY[1], "--samples", "3",
            "--method", "morris", "--output", "final_burden", "--out", out)
    _, err = finish(p, 120)
    assert p.returncode == 0, err
    rows = list(csv.DictReader(open(out / "sensitivity.csv")))
    assert [r["parameter"] for r in rows] == ["clones.clones.a.growth", "drugs.chemo.emax"]
    assert rows[1]["unit"] == "1/hour" and rows[1]["metric_unit"] == "cells"
    assert float(rows[1]["mu_star"]) > float(rows[0]["mu_star"])
    assert len(list(csv.DictReader(open(out / "runs.csv")))) == 9 and (out / "sensitivity.png").exists()
    # (continuing a study: the killed cohort below; another kind of study refused: tests/pure)
    # --overwrite starts afresh
    p = tme("sensitivity", config, "--vary", VARY[1], "--vary", VARY[2], "--samples", "2", "--output",
            "nadir", "--out", out, "--overwrite")
    _, err = finish(p, 120)
    assert p.returncode == 0, err
    assert len(list((out / "runs").glob("*.json"))) == 2 * 4
    rows = list(csv.DictReader(open(out / "sensitivity.csv")))
    assert [r["parameter"] for r in rows] == ["drugs.chemo.emax", "drugs.chemo.diffusivity"]
    assert "S1_low" in rows[0] and rows[0]["metric"] == "nadir"


def test_sensitivity_on_two_ranks_equals_one_from_the_command_line(tmp_path):
    """The same Morris design on 1 rank and on 2 (two groups of one rank taking runs as they
    become free): the same indices."""
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("starts its own runs")
    config = _write_yaml(tmp_path / "wellmixed.yaml", WELL_MIXED)
    tables = {}
    for ranks in (1, 2):
        out = tmp_path / f"sens{ranks}"
        p = tme("sensitivity", config, "--vary", VARY[0], "--vary", VARY[1], "--samples", "3",
                "--method", "morris", "--output", "final_burden", "--out", out, ranks=ranks)
        _, err = finish(p, 180)
        assert p.returncode == 0, err
        assert f"on {ranks} group(s) of 1 rank(s)" in err
        tables[ranks] = list(csv.DictReader(open(out / "sensitivity.csv")))
    assert [r["parameter"] for r in tables[2]] == [r["parameter"] for r in tables[1]]
    for a, b in zip(tables[1], tables[2]):
        for key in ("mu_star", "mu", "sigma"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-9, abs=1e-12), key
