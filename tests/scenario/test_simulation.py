"""The coupled run: well-mixed limit against solve_ivp, positivity, ranks, outputs, errors."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI
from scipy.integrate import solve_ivp

from tme.config import scenario as sc
from tme.problem import Problem, RunError, run

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "configs" / "default.yaml"
COARSE = ["mesh.h=60 um", "time.end=6 day", "time.dt=4 hour", "output.every=2 day",
          "output.snapshots.times=[6 day]"]


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------
# Well-mixed limit: uniform fields, no gradients -> the ODE system

WELL_MIXED = {
    "name": "well_mixed",
    "mesh": {"kind": "rectangle", "size": [100, 100], "cells": [2, 2]},
    "tissue": {"regions": {"tissue": {"vascular_density": "0.01 1/um", "caf_density": 0.5}}},
    "drugs": {
        "chemo": {"class": "dna_damaging", "diffusivity": "10 um^2/s", "permeability": "2 um/hour",
                  "decay": "0.02 1/hour", "initial": "0.45 uM", "pk": {"model": "constant", "level": "0.9 uM"},
                  "emax": "0.08 1/hour", "ec50": "0.4 uM", "hill": 2, "pgp_substrate": True,
                  "factor_protection": 0.5},
    },
    "survival_factor": {"enabled": True, "decay": "0.5 1/hour", "secretion": "0.02 uM/hour",
                        "half_effect": "0.01 uM", "initial": "0.02 uM"},
    "clones": {
        "clones": {
            "sensitive": {"growth": "0.6 1/day", "initial": 0.3},
            "repair": {"growth": "0.4 1/day", "repair": 0.6, "initial": 0.01},
            "mdr": {"growth": "0.45 1/day", "pgp_vmax": "30 uM/hour", "factor_sensitivity": 0.5,
                    "initial": 0.02},
        },
        "mutation": {"sensitive": {"repair": 1e-3, "mdr": 5e-4}},
        "pgp_km": "1.5 uM", "influx": "60 1/hour",
    },
    "time": {"end": "10 day", "dt": "0.5 hour"},
    "output": {"every": "10 day", "plots": False, "snapshots": {"times": []}},
}


def _well_mixed_rhs(t, y):
    """The same model written out by hand: c, s constant at equilibrium; three clones."""
    c, s = 0.45, 0.02  # c* = P S_V Cp / (P S_V + lam) = 0.02*0.9/(0.02+0.02), s* = sigma rho / lam_s
    g = np.array([0.6, 0.4, 0.45]) / 24.0
    N = y
    F = 1.0 - N.sum()
    km, kin = 1.5, 60.0
    vmax = np.array([0.0, 0.0, 30.0])
    # intracellular level: positive root of kin x^2 + (kin km + V - kin c) x - kin km c = 0
    b = kin * km + vmax - kin * c
    cin = (-b + np.sqrt(b * b + 4 * kin * kin * km * c)) / (2 * kin)
    A = cin ** 2 / (cin ** 2 + 0.4 ** 2)
    repair = np.array([0.0, 0.6, 0.0])
    sens = np.array([1.0, 1.0, 0.5])
    kill = 0.08 * A * (1 - repair) * (1 - 0.5 * sens * s / (s + 0.01))
    mu = np.zeros((3, 3))
    mu[0, 1], mu[0, 2] = 1e-3, 5e-4
    growth = g * N * F * (1 - mu.sum(axis=1))
    inflow = (mu * (g * N)[:, None]).sum(axis=0) * F
    return growth + inflow - kill * N


@pytest.mark.mpi
def test_well_mixed_limit_matches_solve_ivp(comm, tmp_path):
    out = tmp_path if comm.size == 1 else Path(comm.bcast(str(tmp_path), root=0))
    summary = run(sc.validate(WELL_MIXED), out / "run", comm=comm, overwrite=True, quiet=True)
    rows = _rows(out / "run" / "timeseries.csv")
    area = 100.0 * 100.0
    y0 = [0.3, 0.01, 0.02]
    t_end = 240.0
    ref = solve_ivp(_well_mixed_rhs, (0, t_end), y0, method="LSODA", rtol=1e-10, atol=1e-13,
                    dense_output=True)
    assert ref.success
    worst = 0.0
    for r in rows[1:]:
        t = float(r["t"])
        exact = ref.sol(t)
        got = np.array([float(r[f"clone_{c}"]) for c in ("sensitive", "repair", "mdr")]) / area
        worst = max(worst, float(np.max(np.abs(got - exact) / np.abs(exact))))
    assert worst < 1e-3, worst
    # the drug really acted: the sensitive clone fell and the resistant share rose
    final = ref.sol(t_end)
    assert final[0] < 0.5 * y0[0]
    assert final[1:].sum() / final.sum() > 2 * sum(y0[1:]) / sum(y0)
    assert summary["final_burden"] == pytest.approx(float(np.sum(final)) * area, rel=1e-3)


# ------------------------------------------------------------------------------------------
# The whole coupled step's order: Strang splitting of second-order reaction halves around a
# TR-BDF2 transport step, in the well-mixed limit with a drug that moves (a bolus, uptake)


def _coupled_config(dt: str, scheme: str) -> dict:
    cfg = json.loads(json.dumps(WELL_MIXED))
    chemo = cfg["drugs"]["chemo"]
    chemo.update({"initial": "0 uM", "uptake": "0.5 1/hour",
                  "pk": {"model": "one_compartment", "half_life": "6 hour"}})
    cfg["treatment"] = {"lines": [{"name": "bolus", "regimen": [{"drug": "chemo", "amount": "2 uM"}]}]}
    cfg["time"] = {"end": "1 day", "dt": dt}
    cfg["numerics"] = {"time_scheme": scheme, "rtol": 1e-13, "solver": "direct"}
    cfg["output"] = {"every": "1 day", "plots": False, "snapshots": {"times": []}}
    return cfg


def _coupled_rhs(t, y):
    """c' = P S_V (C_p(t) − c) − λ c − k N_tot c with C_p = 2 e^{−t ln2/6}; the clones as in
    :func:`_well_mixed_rhs` at the current c; s stays at its equilibrium (no factor uptake)."""
    c, N = y[0], y[1:]
    cp = 2.0 * np.exp(-t * np.log(2.0) / 6.0)
    dc = 0.02 * (cp - c) - 0.02 * c - 0.5 * N.sum() * c
    s = 0.02
    g = np.array([0.6, 0.4, 0.45]) / 24.0
    F = 1.0 - N.sum()
    km, kin = 1.5, 60.0
    vmax = np.array([0.0, 0.0, 30.0])
    b = kin * km + vmax - kin * c
    cin = (-b + np.sqrt(b * b + 4 * kin * kin * km * c)) / (2 * kin)
    A = cin ** 2 / (cin ** 2 + 0.4 ** 2)
    kill = 0.08 * A * (1 - np.array([0.0, 0.6, 0.0])) * (1 - 0.5 * np.array([1.0, 1.0, 0.5]) * s / (s + 0.01))
    mu = np.zeros((3, 3))
    mu[0, 1], mu[0, 2] = 1e-3, 5e-4
    growth = g * N * F * (1 - mu.sum(axis=1))
    inflow = (mu * (g * N)[:, None]).sum(axis=0) * F
    return np.concatenate([[dc], growth + inflow - kill * N])


@pytest.mark.mpi
def test_coupled_step_is_second_order_with_tr_bdf2(comm, tmp_path):
    """Uniform fields reduce the coupled model to ODEs: the clone amounts and the drug at 1 day
    against solve_ivp for dt = 2, 1, 0.5 h converge at order 2 with TR-BDF2 (1 with backward
    Euler, which the same run measures for contrast)."""
    out = tmp_path if comm.size == 1 else Path(comm.bcast(str(tmp_path), root=0))
    area = 100.0 * 100.0
    ref = solve_ivp(_coupled_rhs, (0, 24.0), [0.0, 0.3, 0.01, 0.02], method="DOP853",
                    rtol=1e-12, atol=1e-16).y[:, -1]
    orders = {}
    for scheme in ("tr_bdf2", "backward_euler"):
        errors = []
        for dt in ("2 hour", "1 hour", "0.5 hour"):
            summary = run(sc.validate(_coupled_config(dt, scheme)), out / f"{scheme}_{dt[:-5]}",
                          comm=comm, overwrite=True, quiet=True)
            got = np.array([summary["final_totals"]["chemo"]]
                           + [summary["final_clone_amounts"][c] for c in ("sensitive", "repair", "mdr")]) / area
            errors.append(float(np.max(np.abs(got - ref) / np.abs(ref))))
        orders[scheme] = (errors, np.log2(np.array(errors[:-1]) / np.array(errors[1:])))
    errors, o = orders["tr_bdf2"]
    assert np.all(o > 1.8) and np.all(o < 2.3), orders
    assert errors[-1] < 1e-4, orders
    assert np.all(np.abs(orders["backward_euler"][1] - 1.0) < 0.2), orders


# ------------------------------------------------------------------------------------------
# The default scenario, coarsened


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "run"
    r = Problem(sc.load(DEFAULT, COARSE), MPI.COMM_WORLD, out, overwrite=True).initialise()
    summary = r.run()
    return r, out, summary


def test_run_writes_every_output(default_run):
    r, out, summary = default_run
    for name in ("config.resolved.yaml", "fields.xdmf", "fields/mesh_1.h5", "fields/frame_000001.h5",
                 "timeseries.csv", "summary.json", "events.csv", "events.json", "plots/burden.png",
                 "plots/species.png"):
        assert (out / name).is_file(), name
    assert list((out / "snapshots").glob("*.png"))
    # the resolved config is a valid scenario equal to the one run
    assert sc.load(out / "config.resolved.yaml") == r.scenario
    s = json.loads((out / "summary.json").read_text())
    for key in ("nadir_burden", "nadir_time_hours", "final_burden", "final_resistant_fraction",
                "wall_time_seconds", "ranks"):
        assert key in s
    assert s["in_loop"] == {"matrix_assemblies": 0, "form_compilations": 0}
    rows = _rows(out / "timeseries.csv")
    assert float(rows[-1]["t"]) == pytest.approx(6 * 24)
    burden = np.array([float(x["burden"]) for x in rows])
    assert s["nadir_burden"] == pytest.approx(burden.min())


def test_densities_nonnegative_and_within_capacity(default_run):
    r, out, _ = default_run
    N = r.model.N
    assert N.min() >= 0.0
    assert N.sum(axis=0).max() <= 1.0 + 1e-9
    for s in r.model.species:
        assert s.solver.c.x.array.min() >= -1e-10 * max(1.0, s.solver.c.x.array.max())


def test_region_totals_add_up_to_the_whole(default_run):
    r, out, _ = default_run
    rows = _rows(out / "timeseries.csv")
    regions = list(r.model.region_mass)
    for row in rows[:: max(1, len(rows) // 5)]:
        for c in r.model.clone_names:
            whole = float(row[f"clone_{c}"])
            parts = sum(float(row[f"clone_{c}@{g}"]) for g in regions)
            assert parts == pytest.approx(whole, rel=1e-10, abs=1e-12)


def test_events_log_doses_and_the_line(default_run):
    r, out, _ = default_run
    events = json.loads((out / "events.json").read_text())
    kinds = [e["event"] for e in events]
    assert kinds[0] == "line_start"
    doses = [e for e in events if e["event"] == "dose"]
    # the default regimen: doxorubicin weekly, the EGFR inhibitor once (an infusion)
    assert {e["data"]["drug"] for e in doses} == {"doxorubicin", "egfr_inhibitor"}
    assert [e["time"] for e in doses if e["data"]["drug"] == "doxorubicin"] == [0.0]  # 6 days: 1 bolus


@pytest.mark.slow
def test_fields_open_in_paraview(default_run):
    r, out, _ = default_run
    pvbatch = shutil.which("pvbatch")
    if pvbatch is None:
        pytest.skip("ParaView's pvbatch is not installed")
    script = out.parent / "read_xdmf.py"
    script.write_text(
        "import json, sys\n"
        "from paraview.simple import OpenDataFile, Calculator\n"
        "from paraview import servermanager\n"
        "r = OpenDataFile(sys.argv[1])\n"   # what File -> Open does
        "r.UpdatePipelineInformation()\n"
        "times = list(r.TimestepValues)\n"
        "r.UpdatePipeline(times[-1])\n"
        "pd, cd = r.PointData, r.CellData\n"
        "c = Calculator(Input=r, Function='doxorubicin*total', ResultArrayName='product')\n"
        "c.UpdatePipeline(times[-1])\n"
        "data = servermanager.Fetch(c)\n"
        "prod = data.GetPointData().GetArray('product')\n"
        "dox, tot = (data.GetPointData().GetArray(n) for n in ('doxorubicin', 'total'))\n"
        "fd = data.GetFieldData()\n"
        "regions = {fd.GetArrayName(i): fd.GetArray(i).GetValue(0) for i in range(fd.GetNumberOfArrays())}\n"
        "tags = data.GetCellData().GetArray('region')\n"
        "print(json.dumps({'times': times, 'reader': r.GetXMLName(),\n"
        "  'blocks': c.GetDataInformation().GetNumberOfDataSets(),\n"
        "  'product': [prod.GetValue(i) for i in range(prod.GetNumberOfTuples())],\n"
        "  'expected': [dox.GetValue(i) * tot.GetValue(i) for i in range(dox.GetNumberOfTuples())],\n"
        "  'regions': regions, 'tags': sorted({tags.GetValue(i) for i in range(tags.GetNumberOfTuples())}),\n"
        "  'point': [pd.GetArray(i).GetName() for i in range(pd.GetNumberOfArrays())],\n"
        "  'cell': [cd.GetArray(i).GetName() for i in range(cd.GetNumberOfArrays())]}))\n")
    p = subprocess.run([pvbatch, str(script), str(out / "fields.xdmf")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    # times in days (the index says so); steps land on output times exactly
    assert info["times"] == [0.0, 2.0, 4.0, 6.0]
    root = ET.parse(out / "fields.xdmf").getroot()
    assert root.find("./Domain/Information[@Name='time_unit']").get("Value") == "day"
    # one block holds every field, so ParaView's Calculator combines two of them point by point
    assert info["reader"] == "Xdmf3ReaderS" and info["blocks"] == 1
    assert max(info["product"]) > 0
    assert info["product"] == pytest.approx(info["expected"], rel=1e-12, abs=0.0)
    names = set(info["point"]) | set(info["cell"])
    for field in ("doxorubicin", "egfr_inhibitor", "factor", "oxygen", "sensitive", "mdr", "total",
                  "resistant_fraction", "region", "auc_doxorubicin", "time_above_ec50_doxorubicin"):
        assert field in names, (field, names)
    # the region names: field data in ParaView and regions.csv beside the index, both naming
    # every tag the region field holds by the mesh's own names
    with open(out / "regions.csv") as fh:
        table = {row["name"]: int(row["tag"]) for row in csv.DictReader(fh)}
    assert table == r.model.domain.regions
    assert set(table) == {"tumour", "dense_ecm", "stroma"}
    assert {k.removeprefix("region="): v for k, v in info["regions"].items()} == table
    assert set(info["tags"]) == set(table.values())


# ------------------------------------------------------------------------------------------
# 1 rank and 2 ranks agree


@pytest.mark.mpi
def test_timeseries_independent_of_the_number_of_ranks(comm, tmp_path):
    if comm.size == 1:
        pytest.skip("compares a run on all ranks with one on a single rank")
    base = Path(comm.bcast(str(tmp_path), root=0))
    # fixed steps: error-controlled steps follow estimates that differ between rank counts in
    # the last digits, so their runs agree only to the tolerance, not to the Krylov tolerance
    overrides = COARSE + ["time.end=3 day", "numerics.rtol=1e-12", "time.tolerance=null"]
    run(sc.load(DEFAULT, overrides), base / "np", comm=comm, overwrite=True, quiet=True)
    if comm.rank == 0:
        run(sc.load(DEFAULT, overrides), base / "np1", comm=MPI.COMM_SELF, overwrite=True, quiet=True)
    comm.barrier()
    a, b = _rows(base / "np" / "timeseries.csv"), _rows(base / "np1" / "timeseries.csv")
    assert len(a) == len(b)
    worst = 0.0
    for ra, rb in zip(a, b):
        for k, va in ra.items():
            if k == "line" or va == "" or rb[k] == "":
                continue
            x, y = float(va), float(rb[k])
            worst = max(worst, abs(x - y) / max(abs(y), 1e-12 * max(1.0, abs(float(rb["burden"])))))
    assert worst < 1e-6, worst


# ------------------------------------------------------------------------------------------
# Errors a user can cause, and failures mid-run


def _tme(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tme", *args], cwd=ROOT, capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})


@pytest.mark.parametrize("override, key", [
    ("clones.clones.mdr.ec50_shift.nodrug=3", "clones.clones.mdr.ec50_shift.nodrug"),
    ("drugs.doxorubicin.decay=-1 1/hour", "drugs.doxorubicin.decay"),
    ("clones.clones.mdr.initial.nowhere=0.1", "clones.clones.mdr.initial.nowhere"),
    ("tissue.regions.nowhere.ecm_fraction=0.1", "tissue.regions.nowhere"),
    ("mesh.regions.0.where=r < -1", "mesh.regions.0"),
])
def test_bad_scenario_stops_before_computing(tmp_path, override, key):
    out = tmp_path / "out"
    p = _tme("run", str(DEFAULT), "--out", str(out), "--set", override)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert not (out / "timeseries.csv").exists()


def test_compiled_reactions_without_a_compiler_stop_before_computing(tmp_path):
    out = tmp_path / "out"
    env = {"CC": "/bin/false", "TME_CACHE_DIR": str(tmp_path / "cache")}
    p = _tme("run", str(DEFAULT), "--out", str(out), "--set", "numerics.reaction_kernel=compiled", env=env)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines == ["tme: error: numerics.reaction_kernel: 'compiled' cannot be used: /bin/false failed "
                     "on the clone kernel: exit status 1, no message"], p.stderr
    assert not out.exists()


def test_non_empty_output_refused_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "notes.txt"
    keep.write_text("mine")
    p = _tme("run", str(DEFAULT), "--out", str(out), *sum((["--set", o] for o in COARSE + ["time.end=2 hour"]), []))
    assert p.returncode == 2 and "not empty" in p.stderr and "--overwrite" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert keep.read_text() == "mine" and sorted(x.name for x in out.iterdir()) == ["notes.txt"]
    p = _tme("run", str(DEFAULT), "--out", str(out), "--overwrite",
             *sum((["--set", o] for o in COARSE + ["time.end=2 hour"]), []))
    assert p.returncode == 0, p.stderr
    assert keep.read_text() == "mine" and (out / "summary.json").exists()


def test_nan_stops_the_run_naming_field_time_and_place(tmp_path):
    out = tmp_path / "run"
    r = Problem(sc.load(DEFAULT, COARSE), MPI.COMM_WORLD, out, overwrite=True).initialise()
    step = r._step
    calls = {"n": 0}

    def poisoned(t0, t1, **kw):
        step(t0, t1, **kw)
        calls["n"] += 1
        # (the first step from t = 0 is tried five times: the bolus into tissue without drug
        # is redone down to dt_min; the poison comes once steps were kept)
        if calls["n"] == 8:
            r.model.get("oxygen").solver.c.x.array[3] = math.nan

    r._step = poisoned
    with pytest.raises(RunError) as err:
        r.run()
    msg = str(err.value)
    assert "oxygen is not a number" in msg and "t = " in msg and "x = (" in msg
    rows = _rows(out / "timeseries.csv")
    # t = 0 and every step kept before the poisoned one (error-controlled steps may have been
    # redone on the way), each a complete line: quasi-steady oxygen has no error estimate, so
    # the NaN passes the step's error norm and the step's observation stops the run, the step
    # counted and nothing of it written
    assert len(rows) == r.state.steps and r.state.steps >= 2
    assert json.loads((out / "events.json").read_text())[0]["event"] == "line_start"
    import h5py

    with h5py.File(out / "fields" / "frame_000001.h5", "r") as h5:
        assert "Function" in h5


def test_problem_without_an_output_directory_writes_nothing(tmp_path, monkeypatch):
    """What `tme validate` relies on: the whole set-up, and steps, with no file written."""
    monkeypatch.chdir(tmp_path)
    p = Problem(sc.load(DEFAULT, COARSE + ["time.end=8 hour"]), MPI.COMM_WORLD).initialise()
    assert p.model.species and p.model.clone_names and p.clock.milestones[-1] == 8.0
    summary = p.run()
    assert summary["end_time_hours"] == 8.0 and summary["steps"] == p.state.steps > 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.mpi
def test_tolerance_is_honoured_on_the_well_mixed_case(comm, tmp_path):
    """time.tolerance on the coupled well-mixed case (a bolus with uptake, three clones): the
    error at 1 day against solve_ivp stays within 3x of each tolerance, every kept step has a
    normalised error <= 1, a tenfold tighter tolerance costs about 10^(1/3) x the steps, and
    the output time at 1 day is landed exactly."""
    out = tmp_path if comm.size == 1 else Path(comm.bcast(str(tmp_path), root=0))
    area = 100.0 * 100.0
    ref = solve_ivp(_coupled_rhs, (0, 24.0), [0.0, 0.3, 0.01, 0.02], method="DOP853",
                    rtol=1e-12, atol=1e-16).y[:, -1]
    steps = {}
    for tol in (1e-3, 1e-4):
        cfg = _coupled_config("6 hour", "tr_bdf2")
        cfg["numerics"] = {}
        cfg["time"]["tolerance"] = tol
        summary = run(sc.validate(cfg), out / f"tol{tol:g}", comm=comm, overwrite=True, quiet=True)
        got = np.array([summary["final_totals"]["chemo"]]
                       + [summary["final_clone_amounts"][c] for c in ("sensitive", "repair", "mdr")]) / area
        err = float(np.max(np.abs(got - ref) / np.abs(ref)))
        assert err < 3 * tol, (tol, err)
        rows = _rows(out / f"tol{tol:g}" / "timeseries.csv")
        assert all(float(r["error"]) <= 1.0 for r in rows[1:])
        assert sum(int(r["rejected"]) for r in rows[1:]) == summary["rejected_steps"]
        assert float(rows[-1]["t"]) == 24.0 and summary["time_scheme"] == "tr_bdf2"
        steps[tol] = summary["steps"]
    assert 1.5 < steps[1e-4] / steps[1e-3] < 3.5, steps


@pytest.mark.mpi
def test_quasi_steady_oxygen_is_the_steady_state_of_the_cells_of_each_step(comm):
    """Oxygen is solved as a steady problem (oxygen.quasi_steady, the default): in the
    well-mixed case with growing and dying clones it equals P S_V C_b / (P S_V + q N_tot) of
    the cell density its step saw (Strang splitting: the one after the step's first reaction
    half step), from t = 0 on; stepped in time instead it relaxes to the same within its
    relaxation time (2.6 min here), and the clones come out the same."""
    import copy

    ps, q, cb = 0.3 * 3600 * 0.01, 36.0, 50.0     # P S_V [1/h], consumption [1/h], blood level [µM]
    runs = {}
    for quasi_steady in (True, False):
        cfg = copy.deepcopy(WELL_MIXED)
        cfg["oxygen"] = {"enabled": True, "permeability": "0.3 um/s", "consumption": "36 1/hour",
                         "hypoxia": "20 uM", "quasi_steady": quasi_steady}
        cfg["output"]["every"] = "2 day"
        p = Problem(sc.validate(cfg), comm, None).initialise()
        ox = p.model.get("oxygen").solver
        assert ox.steady is quasi_steady and ox.estimate is False
        n = p.model.mass.size
        c0 = ox.c.x.array[:n].copy()
        summary = p.run()
        frames = dict(zip(p.fields.times, p.fields.frames))
        runs[quasi_steady] = (c0, frames, summary)
        if quasi_steady:
            # the last step's oxygen: the steady state of the cells that step's transport saw
            seen = ox.last["n_tot"]
            assert np.allclose(ox.c.x.array[:n], cb * ps / (ps + q * seen), rtol=1e-9)
    c0, frames, summary = runs[True]
    total0 = 0.3 + 0.01 + 0.02
    assert np.allclose(c0, cb * ps / (ps + q * total0), rtol=1e-9)
    assert len(frames) == 6
    for t, f in frames.items():
        # against the cells at the output time: within their change over half a step
        exact = cb * ps / (ps + q * f["total"][:n])
        assert np.allclose(f["oxygen"][:n], exact, rtol=5e-3), t
    assert float(np.max(c0)) < 0.5 * cb                          # the cells deplete it
    c0_stepped, frames_stepped, summary_stepped = runs[False]
    assert np.allclose(c0_stepped, cb)                          # starts at the blood level
    for t in frames:
        if t > 0:
            assert np.allclose(frames_stepped[t]["oxygen"][:n], frames[t]["oxygen"][:n], rtol=2e-3), t
    assert summary_stepped["final_burden"] == pytest.approx(summary["final_burden"], rel=2e-3)
