"""The Python API: import tme, scenarios in Python, tme.run in memory and into a directory,
Results (tables, fields, plots), Results.open, tme.compare."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

import tme
from tme.config import scenario as scn

ROOT = Path(__file__).resolve().parents[2]

#: a coarse, short default scenario: a dose at t = 0, an assessment at the end
QUICK = {"mesh.h": "100 um", "time.end": "1 day", "time.dt": "4 hour", "output.every": "12 hour",
         "output.snapshots.times": [], "output.plots": False}


def _quick():
    return tme.load(tme.examples.path("default")).with_changes(QUICK)


def test_import_tme_loads_no_finite_elements_nor_pandas():
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('dolfinx', 'ufl', 'basix', 'petsc4py', 'ffcx'):\n"
            "            raise ImportError(name + ' blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import tme\n"
            "sc = tme.load(tme.examples.path('default')).with_changes({'time.end': '3 day'})\n"
            "assert sc.time.end == 72.0, sc.time.end\n"
            "assert isinstance(sc, tme.Scenario)\n"
            "assert 'pandas' not in sys.modules and 'matplotlib' not in sys.modules\n"
            "print(sorted(tme.__all__))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "'run'" in p.stdout and "'compare'" in p.stdout


def test_with_changes_is_the_set_of_the_command_line():
    base = tme.load(tme.examples.path("default"))
    changed = base.with_changes({"drugs.doxorubicin.emax": "0.1 1/hour", "time.end": "10 day",
                                 "treatment.lines.0.regimen.0.cycles": 2})
    by_set = scn.load(tme.examples.path("default"), ["drugs.doxorubicin.emax=0.1 1/hour",
                                                     "time.end=10 day", "treatment.lines.0.regimen.0.cycles=2"])
    assert changed == by_set
    assert changed.drugs["doxorubicin"].emax == pytest.approx(0.1) and changed.time.end == 240.0
    assert base.drugs["doxorubicin"].emax == pytest.approx(0.15)   # the original is unchanged
    assert base.with_changes({}) == base


@pytest.mark.parametrize("changes, words", [
    ({"drugs.doxorubicin.emax": "0.1 uM"}, ["drugs.doxorubicin.emax", "1/hour"]),
    ({"time.ned": "1 day"}, ["time.ned", "did you mean 'end'"]),
    ({"treatment.lines.7.regimen": []}, ["treatment.lines.7", "list of 1"]),
    ({"name.x": 1}, ["'name' is a value"]),
    ({"": 1}, ["key path is empty"]),
    ("time.end=1 day", ["expected a dict"]),
])
def test_with_changes_errors_are_one_line(changes, words):
    base = tme.load(tme.examples.path("default"))
    with pytest.raises(tme.ScenarioError) as exc:
        base.with_changes(changes)
    msg = str(exc.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_scenario_built_in_python():
    sc = tme.Scenario(name="slab", mesh={"kind": "rectangle", "size": ["400 um", "200 um"], "cells": [8, 4]},
                      time={"end": "2 day", "dt": "1 hour"})
    assert sc.time.end == 48.0 and sc.mesh.size == [400.0, 200.0]
    with pytest.raises(tme.ScenarioError) as exc:
        tme.Scenario(name="slab", mesh={"kind": "rectangle", "size": ["400 um", "200 um"]},
                     time={"end": "2 day", "dt": "1 hour"})
    assert str(exc.value) == "Scenario(...): mesh.cells: required key is missing"
    with pytest.raises(tme.ScenarioError, match="expected a Scenario"):
        tme.run({"name": "x"})


def test_results_open_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(tme.ScenarioError) as exc:
        tme.Results.open(tmp_path)
    assert "not the output directory of a tme run" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.mpi
def test_run_in_memory_and_into_a_directory(tmp_path_factory, comm):
    """The results in memory are those written and read back; the field at a time is the row
    at that time (∫ total dx is the burden); nothing is written without out."""
    from dolfinx import fem
    import ufl

    sc = _quick()
    before = sorted(Path.cwd().iterdir())
    mem = tme.run(sc, comm=comm, quiet=True)
    assert sorted(Path.cwd().iterdir()) == before and mem.out is None
    out = comm.bcast(tmp_path_factory.mktemp("api") / "run" if comm.rank == 0 else None, root=0)
    disk = tme.run(sc, out=out, comm=comm, quiet=True)
    opened = tme.Results.open(out)

    ts = mem.timeseries
    assert list(ts.columns)[:3] == ["t", "dt", "line"] and ts["t"].iloc[-1] == pytest.approx(24.0)
    for other in (disk, opened):
        o = other.timeseries
        assert list(o.columns) == list(ts.columns) and len(o) == len(ts)
        np.testing.assert_allclose(o["burden"], ts["burden"], rtol=1e-12)
        assert list(other.events["event"]) == list(mem.events["event"])
    ev = mem.events
    assert list(ev.columns) == ["time_hours", "time_days", "event", "reason", "data"]
    assert (ev["event"] == "dose").sum() == 2 and ev["data"].iloc[1]["drug"] in sc.drugs
    assert opened.summary["final_burden"] == pytest.approx(mem.summary["final_burden"], rel=1e-12)
    assert mem.summary["final_burden"] == pytest.approx(ts["burden"].iloc[-1], rel=1e-12)
    assert mem.times == opened.times == [0.0, 12.0, 24.0]
    assert set(mem.field_names) == set(opened.field_names) == set(sc.field_names())

    # the field at 12 h: in memory and read back alike, and its integral is the row at 12 h
    for name in ("total", "doxorubicin", "region"):
        a, b = mem.field(name, "0.5 day"), opened.field(name, 11.0)
        assert a.t == b.t == 12.0 and a.at == b.at
        np.testing.assert_allclose(a.points, b.points, atol=1e-9)
        np.testing.assert_allclose(a.values, b.values, rtol=1e-12, atol=1e-14)
    region = mem.field("region")
    assert region.at == "cell" and set(np.unique(region.values)) <= set(range(1, 10))
    f = mem.function("total", 12.0)
    burden = comm.allreduce(fem.assemble_scalar(fem.form(f * ufl.dx)), op=MPI.SUM)
    row = ts.loc[ts["t"] == 12.0, "burden"].iloc[0]
    assert burden == pytest.approx(row, rel=1e-10)
    with pytest.raises(tme.ScenarioError, match="not a field"):
        mem.field("dox")
    with pytest.raises(tme.ScenarioError, match="NumPy arrays"):
        opened.function("total")


@pytest.mark.mpi
def test_compare_returns_a_table(tmp_path_factory, comm):
    """A stronger doxorubicin leaves fewer cells; finished runs are not run again; with out the
    table is the one written."""
    sc = _quick()
    weak = tme.run(sc, comm=comm, quiet=True)
    strong = sc.with_changes({"drugs.doxorubicin.emax": "0.6 1/hour"})
    table = tme.compare({"weak": weak, "strong": strong}, comm=comm)
    assert list(table.index) == ["weak", "strong"]
    assert table.loc["weak", "final_burden"] == pytest.approx(weak.summary["final_burden"], rel=1e-12)
    assert table.loc["strong", "final_burden"] < table.loc["weak", "final_burden"]
    assert table["final_burden"].dtype == float

    out = comm.bcast(tmp_path_factory.mktemp("cmp") / "cmp" if comm.rank == 0 else None, root=0)
    swept = tme.compare(sc, out=out, comm=comm, sweep={"drugs.doxorubicin.emax": ["0.15 1/hour", "0.6 1/hour"]})
    assert len(swept) == 2
    written = json.loads((out / "comparison.json").read_text())
    assert [r["run"] for r in written] == list(swept.index)
    np.testing.assert_allclose(swept["final_burden"], [r["final_burden"] for r in written], rtol=1e-12)
    # on 2 ranks each swept run has one rank of its own: the error-controlled steps then follow
    # estimates that differ in the last digits, so the runs agree to the time tolerance (1e-2)
    tol = sc.time.tolerance or 1e-6
    assert swept["final_burden"].iloc[0] == pytest.approx(table.loc["weak", "final_burden"], rel=tol)
    with pytest.raises(tme.ScenarioError, match="finished run"):
        tme.compare([weak], sweep={"time.end": ["2 day"]}, comm=comm)


def test_plot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    sc = _quick()
    r = tme.run(sc, quiet=True)
    ax = r.plot()
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "time [day]"
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels[:1] == ["burden"] and set(sc.clones.clones) <= set(labels)
    axes = r.plot("species")
    assert len(axes) == len(sc.species_names()) and "µm^2" in axes[0].get_ylabel()
    with pytest.raises(tme.ScenarioError, match="choose"):
        r.plot("clones")


def test_examples_on_the_command_line(tmp_path):
    from runs import finish, tme as run_tme

    out, err = finish(run_tme("examples"), 120)
    assert out.split() == tme.examples.names() and "default" in out.split()
    out, err = finish(run_tme("examples", "path", "mdr_pgp"), 120)
    assert Path(out.strip()) == tme.examples.path("mdr_pgp") and Path(out.strip()).is_file()
    p = run_tme("examples", "path", "mdr_pgb")
    out, err = finish(p, 120)
    assert p.returncode == 2 and err.strip().count("\n") == 0 and "did you mean 'mdr_pgp'" in err
    p = run_tme("examples", "copy", tmp_path / "ex")
    finish(p, 120)
    assert p.returncode == 0
    copied = tmp_path / "ex"
    assert sorted(f.name for f in (copied / "configs").glob("*.yaml")) == [f"{n}.yaml" for n in tme.examples.names()]
    # the calibration example comes along whole
    assert sorted(f.name for f in (copied / "configs" / "patient_fit").iterdir()) == sorted(
        f.name for f in (tme.examples.root() / "configs" / "patient_fit").iterdir())
    # a copied scenario reads its mesh from the copy
    assert tme.load(copied / "configs" / "penetration.yaml").mesh.path == (copied / "meshes" / "tissue_slice.msh").resolve()
    before = sorted(copied.rglob("*"))
    p = run_tme("examples", "copy", copied)
    out, err = finish(p, 120)
    assert p.returncode == 2 and "exists already" in err and sorted(copied.rglob("*")) == before


def test_a_run_without_matplotlib_is_refused_before_it_starts(tmp_path):
    """The plots need the 'plots' extra (or the system's matplotlib): said in one line before
    anything is written, and a run without plots goes on."""
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'matplotlib':\n"
            "            raise ImportError(name + ' blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import tme\n"
            f"sc = tme.load(tme.examples.path('default')).with_changes({QUICK!r})\n"
            "sc = sc.with_changes({'output.plots': True, 'time.end': '2 hour'})\n"
            "try:\n"
            "    tme.run(sc, out='refused', quiet=True)\n"
            "except tme.ScenarioError as exc:\n"
            "    print(exc)\n"
            "tme.run(sc.with_changes({'output.plots': False}), out='ran', quiet=True)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == ("output.plots: needs matplotlib, which is not installed (the system's "
                                "package, or pip install 'tme[plots]'); or set output.plots: false")
    assert not (tmp_path / "refused").exists() and (tmp_path / "ran" / "summary.json").is_file()
