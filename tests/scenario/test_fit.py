"""``tme fit`` on real forward runs: synthetic recovery, coverage, 1 and 2 ranks, bad inputs.

The data are made by the solver from known parameters (:func:`tme.studies.fit.synthetic`) on
the patient scenario of configs/patient_fit, shortened to 8 weeks: a well-mixed tumour, two
weeks untreated (the growth rate alone), then continuous chemotherapy (growth and E_max), so
both parameters are identifiable. The fit starts from the scenario's values, 2x the truth.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import tme
from runs import finish, tme as run_tme

ROOT = Path(__file__).resolve().parents[2]
PATIENT = ROOT / "configs" / "patient_fit" / "patient.yaml"
SHORT = ["time.end=56 day"]
TRUTH = {"clones.clones.sensitive.growth": 0.1 / 24.0, "drugs.chemo.emax": 0.02}   # 1/hour
DAYS = [0, 7, 14, 21, 28, 35, 42, 49, 56]
FIT = ["--fit", "clones.clones.sensitive.growth=0.02 1/day..0.5 1/day",
       "--fit", "drugs.chemo.emax=0.005 1/hour..0.1 1/hour", "--log", "drugs.chemo.emax"]


def truth_scenario():
    return tme.load(PATIENT, SHORT).with_changes({
        "clones.clones.sensitive.growth": "0.1 1/day", "drugs.chemo.emax": "0.02 1/hour"})


@pytest.fixture(scope="module")
def exact_data(tmp_path_factory):
    from tme.studies.fit import synthetic

    path = tmp_path_factory.mktemp("data") / "exact.csv"
    path.write_text(synthetic(truth_scenario(), DAYS, comment="noise-free, from the truth"))
    return path


def fit_cli(data, out, *extra, ranks=1, timeout=600):
    p = run_tme("fit", PATIENT, "--data", data, *FIT, "--set", SHORT[0], "--noise", "lognormal:cv=0.1",
                "--out", out, *extra, ranks=ranks)
    stdout, stderr = finish(p, timeout)
    return p.returncode, stdout, stderr


@pytest.fixture(scope="module")
def one_rank(exact_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit1")
    code, _, err = fit_cli(exact_data, out)
    assert code == 0, err
    return out, err


def _values(out: Path) -> dict:
    rep = json.loads((out / "fit.json").read_text())
    return {q["key"]: q for q in rep["parameters"]}, rep


def test_noise_free_data_are_recovered_to_1e_3(one_rank):
    out, err = one_rank
    values, rep = _values(out)
    for key, truth in TRUTH.items():
        q = values[key]
        got = q["value"] / 24.0 if q["unit"] == "1/day" else q["value"]
        assert got == pytest.approx(truth, rel=1e-3), (key, got, truth)
        assert abs(got / truth - 1) < 1e-3
    # from a start 2x off: the scenario's values
    assert values["clones.clones.sensitive.growth"]["start"] == pytest.approx(0.2)
    assert values["drugs.chemo.emax"]["start"] == pytest.approx(0.04)
    assert rep["cost"] < 1e-6
    # one run per new point, and per iteration one per parameter (the Jacobian's columns)
    iterations = rep["starts"][0]["iterations"]
    assert rep["runs"] in (len(rep["history"]) + 2 * iterations, len(rep["history"]) + 2 * (iterations + 1))
    # the files, and the printed summary
    for name in ("fit.json", "fit.csv", "fitted.yaml", "fit.png", "history.csv", "residuals.csv"):
        assert (out / name).is_file(), name
    assert "identifiability:" in err and "drugs.chemo.emax" in err
    head = (out / "fit.csv").read_text().splitlines()[0].split(",")
    assert head[:6] == ["key", "value", "unit", "se", "low_95", "high_95"] and "corr_drugs.chemo.emax" in head
    assert rep["covariance"]["formula"].startswith("Cov(u) = s² (J_uᵀ J_u)⁻¹")


def test_the_fitted_scenario_runs_and_reproduces_the_data(one_rank, exact_data, tmp_path):
    out, _ = one_rank
    fitted = tme.load(out / "fitted.yaml")
    values, _ = _values(out)
    assert fitted.drugs["chemo"].emax == pytest.approx(values["drugs.chemo.emax"]["value"], rel=1e-12)
    p = run_tme("run", out / "fitted.yaml", "--out", tmp_path / "run")
    finish(p, 300)
    assert p.returncode == 0
    res = tme.Results.open(tmp_path / "run")
    ts = res.timeseries.set_index("t")
    data = np.loadtxt(exact_data, delimiter=",", skiprows=2)
    model = ts.loc[data[:, 0] * 24.0, "burden"].to_numpy() * 1e-9     # µm³ -> mm³: exact rows
    np.testing.assert_allclose(model, data[:, 1], rtol=1e-3)


def test_two_ranks_one_rank_each_equal_the_one_rank_fit(one_rank, exact_data, tmp_path):
    """On 2 ranks with --ranks-per-run 1 two groups run the Jacobian's columns at once; every
    run is on one rank as before, so the fit is the same to its tolerance (1e-6 relative)."""
    out1, _ = one_rank
    code, _, err = fit_cli(exact_data, tmp_path / "fit2", "--ranks-per-run", "1", ranks=2)
    assert code == 0, err
    v1, rep1 = _values(out1)
    v2, rep2 = _values(tmp_path / "fit2")
    for key in TRUTH:
        assert v2[key]["value"] == pytest.approx(v1[key]["value"], rel=1e-6)
    assert rep2["ranks"] == 2 and rep2["ranks_per_run"] == 1
    assert err.count("fit: evaluation 1 ") == 1     # rank 0 alone speaks


def test_coverage_is_not_absurd(tmp_path):
    """With 10 % noise, the 95 % intervals hold the truth for both parameters in at least 2
    of 3 noisy data sets (bench/calibration.py measures the coverage over many)."""
    from tme.studies.fit import synthetic

    hits = 0
    for seed in range(3):
        data = tmp_path / f"noisy{seed}.csv"
        data.write_text(synthetic(truth_scenario(), DAYS, cv=0.1, seed=seed))
        res = tme.fit(PATIENT, data, {"clones.clones.sensitive.growth": "0.02 1/day..0.5 1/day",
                                      "drugs.chemo.emax": "0.005 1/hour..0.1 1/hour"},
                      log=["drugs.chemo.emax"], overrides=SHORT, noise="lognormal:cv=0.1")
        table = res.parameters
        g = table.loc["clones.clones.sensitive.growth"]
        e = table.loc["drugs.chemo.emax"]
        hits += (g.low_95 <= 0.1 <= g.high_95) and (e.low_95 <= 0.02 <= e.high_95)
        assert g.se > 0 and e.se > 0 and g.low_95 < g.value < g.high_95
    assert hits >= 2


@pytest.mark.parametrize("args, message", [
    (["--fit", "drugs.chemo.emax=0.005..0.1 1/hour"],
     "--fit drugs.chemo.emax: lower bound: a bare number is ambiguous; write e.g. '0.005 1/hour'"),
    (["--fit", "drugs.chemo.emax=0.05 1/hour..0.1 1/hour"],
     "--fit drugs.chemo.emax: the start 0.04 1/hour lies outside the bounds 0.05 1/hour..0.1 1/hour"),
    (["--fit", "drugs.chemo.emax=0.005 1/hour..0.1 1/hour", "--ranks-per-run", "2"],
     "--ranks-per-run 2: exceeds the 1 MPI rank(s) of the job"),
    (["--fit", "drugs.chemo.emax=0.005 1/hour..0.1 1/hour", "--noise", "normal:sd=1"],
     "the burden is compared on the log scale"),
])
def test_bad_arguments_are_one_line(exact_data, tmp_path, args, message):
    noise = [] if "--noise" in args else ["--noise", "lognormal:cv=0.1"]
    p = run_tme("fit", PATIENT, "--data", exact_data, *args, *noise, "--set", SHORT[0], "--out", tmp_path / "o")
    _, err = finish(p, 120)
    assert p.returncode == 2 and message in err, err
    assert err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()


def test_a_bad_data_file_names_its_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time [day],burden [mm^3]\n0,0.3\n7,x\n")
    p = run_tme("fit", PATIENT, "--data", bad, "--fit", "drugs.chemo.emax=0.005 1/hour..0.1 1/hour",
                "--noise", "lognormal:cv=0.1", "--out", tmp_path / "o")
    _, err = finish(p, 120)
    assert p.returncode == 2 and f"{bad}: line 3, column 'burden': 'x' is not a number" in err, err
    late = tmp_path / "late.csv"
    late.write_text("time [day],burden [mm^3]\n0,0.3\n400,1\n")
    p = run_tme("fit", PATIENT, "--data", late, "--fit", "drugs.chemo.emax=0.005 1/hour..0.1 1/hour",
                "--noise", "lognormal:cv=0.1", "--out", tmp_path / "o")
    _, err = finish(p, 120)
    assert p.returncode == 2 and "line 3: time 400 day lies after the scenario's time.end (180 day)" in err, err


def test_an_existing_out_is_kept(one_rank, exact_data, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = fit_cli(exact_data, out)
    assert code == 2 and "directory is not empty" in err
    assert (out / "notes.txt").read_text() == "mine"


def test_a_signal_stops_the_fit_in_one_line(exact_data, tmp_path):
    """SIGTERM during the fit: the run under way stops at the end of its step, one line says
    so, the exit status is 128 + 15, and history.csv holds every evaluation finished, each a
    whole row (written as the fit goes)."""
    import signal
    import time

    p = run_tme("fit", PATIENT, "--data", exact_data, *FIT, "--set", SHORT[0], "--noise",
                "lognormal:cv=0.1", "--out", tmp_path / "o")
    deadline = time.time() + 300
    seen = []
    while time.time() < deadline:
        line = p.stderr.readline()
        seen.append(line)
        if line.startswith("fit: evaluation 1 ") or not line:
            break
    assert any(ln.startswith("fit: evaluation 1 ") for ln in seen), "".join(seen)
    time.sleep(0.5)   # into the Jacobian's runs
    p.send_signal(signal.SIGTERM)
    _, err = finish(p, 120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "tme: fit stopped by SIGTERM after" in err, err
    assert f"the evaluations so far are in {tmp_path / 'o' / 'history.csv'}" in err, err
    assert "Traceback" not in err
    import csv

    done = sum(ln.startswith("fit: evaluation ") for ln in seen + err.splitlines())
    rows = list(csv.DictReader(open(tmp_path / "o" / "history.csv")))
    assert len(rows) == done >= 1
    assert [int(r["evaluation"]) for r in rows] == list(range(1, done + 1))
    assert all(r["cost"] and float(r["cost"]) >= 0 for r in rows)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["history.csv"]
