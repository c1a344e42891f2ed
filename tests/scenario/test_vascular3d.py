"""configs/vascular3d.yaml and configs/network_file.yaml: runs with a vessel network, claims
checked from their outputs, the same on 1 and 2 ranks.

The coarsened copy keeps the scenario's network, drugs, clones, protocol and vessel collapse on
a coarser mesh with a longer largest step; its claims are the scenario's (see its header): exposure (AUC)
is lowest where the network is poor (the core), the core is the sanctuary, and with these
clones the resistant fraction rises first in the well-perfused rim; against the same run
without collapse, compressed vessels cut the core's delivery (less of the infused inhibitor,
less doxorubicin in the tissue during a bolus) and its selection (the resistant fraction rises
later), and doxorubicin's AUC in the core over the run is lower too.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from runs import finish, tme

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
QUICK = ["output.plots=false", "output.snapshots.times=[]"]
COARSE = ["mesh.cells=[20, 20, 8]", "time.dt=12 hour", "output.every=7 day"]


def _run(out: Path, config: str, sets: list[str], ranks: int = 1):
    args = ["run", CONFIGS / config, "--out", out]
    for s in sets:
        args += ["--set", s]
    p = tme(*args, ranks=ranks)
    _, err = finish(p, 1800)
    assert p.returncode == 0, err[-3000:]
    with open(out / "timeseries.csv") as fh:
        rows = [{k: (float(v) if v not in ("", None) and k != "line" else v) for k, v in r.items()}
                for r in csv.DictReader(fh)]
    return rows


def _resistant_fraction(row, region, clones=("mdr", "repair", "egfr_mutant", "met_bypass")):
    total = sum(row[k] for k in row if k.startswith("clone_") and k.endswith(f"@{region}"))
    return sum(row[f"clone_{c}@{region}"] for c in clones) / total


def _last_frame(out: Path, name: str):
    """(coordinates (N, 3) µm, values (N,)) of field ``name`` at the last output time."""
    import h5py

    frames = sorted((out / "fields").glob("frame_*.h5"))
    meshes = sorted((out / "fields").glob("mesh_*.h5"))
    with h5py.File(meshes[-1]) as m:
        x = np.asarray(m["/Mesh/mesh/geometry"])
    with h5py.File(frames[-1]) as f:
        group = f[f"/Function/{name}"]
        last = sorted(group.keys(), key=float)[-1]
        v = np.asarray(group[last]).reshape(-1)
    return x, v


@pytest.fixture(scope="module")
def coarse_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vascular3d") / "np1"
    return out, _run(out, "vascular3d.yaml", COARSE + QUICK)


@pytest.fixture(scope="module")
def coarse_open(tmp_path_factory):
    """The coarsened copy with no vessel collapsing."""
    out = tmp_path_factory.mktemp("vascular3d") / "open"
    return out, _run(out, "vascular3d.yaml", COARSE + QUICK + ["vasculature.collapse=null"])


def _crossing(rows, region, clones=("mdr", "repair", "egfr_mutant", "met_bypass")):
    """The first time [hour] the resistant fraction of ``region`` is twice its initial value."""
    rf = np.array([_resistant_fraction(r, region, clones) for r in rows])
    t = np.array([r["t"] for r in rows])
    return t[np.argmax(rf > 2 * rf[0])] if np.any(rf > 2 * rf[0]) else np.inf


def _core_rim(x, v):
    r = np.hypot(x[:, 0], x[:, 1])
    return v[r < 250.0].mean(), v[r > 350.0].mean()


@pytest.mark.slow
def test_vascular3d_exposure_lowest_where_perfusion_is_low(coarse_run):
    out, rows = coarse_run
    assert 0.5 < rows[-1]["perfused_fraction"] < 1.0  # the core's blind ends carry no flow
    # doxorubicin, taken up fast, by far; the EGFR inhibitor, nearly saturating, a little
    for drug, factor in (("doxorubicin", 0.9), ("egfr_inhibitor", 1.0)):
        core, rim = _core_rim(*_last_frame(out, f"auc_{drug}"))
        assert core < factor * rim, drug
    # the core is the sanctuary: more of its cells survive
    first, last = rows[0], rows[-1]
    surviving = {reg: sum(last[k] for k in last if k.startswith("clone_") and k.endswith(f"@{reg}"))
                 / sum(first[k] for k in first if k.startswith("clone_") and k.endswith(f"@{reg}"))
                 for reg in ("core", "rim")}
    assert surviving["core"] > 2 * surviving["rim"]
    # with these clones (repair and bypass resist at any level) selection is fastest where the
    # drugs reach: the resistant fraction rises first in the rim
    assert _crossing(rows, "rim") < _crossing(rows, "core") < np.inf
    assert (out / "network.pvd").exists() and len(list((out / "network").glob("*.vtp"))) >= 2


@pytest.mark.slow
def test_vascular3d_compressed_vessels_cut_delivery_and_selection_in_the_core(coarse_run, coarse_open):
    (out, rows), (out_open, rows_open) = coarse_run, coarse_open
    import json

    events = json.loads((out / "events.json").read_text())
    first = next(e for e in events if e["event"] == "vessel_collapse")
    assert first["time"] == 0.0 and first["data"]["segments_closed"] > 0     # the packed core, at once
    assert not any(e["event"] == "vessel_collapse" for e in json.loads((out_open / "events.json").read_text()))
    assert rows[0]["perfused_fraction"] < rows_open[0]["perfused_fraction"]
    # less reaches the core: the infused inhibitor's exposure there falls; during the first
    # doxorubicin bolus the tissue holds less of it
    core, _ = _core_rim(*_last_frame(out, "auc_egfr_inhibitor"))
    core_open, _ = _core_rim(*_last_frame(out_open, "auc_egfr_inhibitor"))
    assert core < 0.98 * core_open
    peak = lambda rs: max(r["total_doxorubicin"] for r in rs if r["t"] < 24.0)  # noqa: E731
    assert peak(rows) < 0.95 * peak(rows_open)
    # and over the whole run doxorubicin's AUC in the core is lower too (with fixed 12-hour
    # steps it had come out higher: a time-step error, which error-controlled steps remove)
    dox, _ = _core_rim(*_last_frame(out, "auc_doxorubicin"))
    dox_open, _ = _core_rim(*_last_frame(out_open, "auc_doxorubicin"))
    assert dox < 0.97 * dox_open
    # less exposure early, less selection: the core's resistant fraction rises later
    assert _crossing(rows, "core") > _crossing(rows_open, "core")


@pytest.mark.slow
def test_vascular3d_same_on_two_ranks(tmp_path):
    # on fixed steps, solved to 1e-8: under time.tolerance each rank count would keep its own
    # algebraic error (the Krylov tolerance is tolerance/10) and its own error estimates (the
    # filters are solved to 0.2), and the steps would follow them; the network's coupling in
    # parallel is what this compares (tests/scenario/test_simulation.py runs time.tolerance on
    # 2 ranks against a closed form)
    tight = COARSE + QUICK + ["time.tolerance=null", "time.dt_initial=1 hour"]
    rows1 = _run(tmp_path / "np1", "vascular3d.yaml", tight)
    rows2 = _run(tmp_path / "np2", "vascular3d.yaml", tight, ranks=2)
    assert len(rows1) == len(rows2)
    for a, b in zip(rows1, rows2):
        for k, v in a.items():
            if isinstance(v, float):
                assert b[k] == pytest.approx(v, rel=1e-6, abs=1e-9 * max(1.0, abs(v))), (k, a["t"])


# --------------------------------------------------------------------------------------------
# configs/vascular3d_sanctuary.yaml: an EC50-shift mutant, selected where the network is poor

@pytest.fixture(scope="module")
def sanctuary_runs(tmp_path_factory):
    """The coarsened sanctuary scenario as shipped and without vessel collapse."""
    base = tmp_path_factory.mktemp("vascular3d_sanctuary")
    return {how: (base / how, _run(base / how, "vascular3d_sanctuary.yaml", COARSE + QUICK + extra))
            for how, extra in (("shipped", []), ("open", ["vasculature.collapse=null"]))}


@pytest.mark.slow
def test_vascular3d_sanctuary_resistance_rises_first_where_perfusion_is_low(sanctuary_runs):
    out, rows = sanctuary_runs["shipped"]
    core, rim = _core_rim(*_last_frame(out, "auc_kinase_inhibitor"))
    assert core < 0.25 * rim
    # the mean levels over the run [µM]: the core's in the selection window (the sensitive
    # clone killed faster than it divides, the resistant one slower), the rim's lethal to both
    from tme.config import scenario as sc

    scen = sc.load(CONFIGS / "vascular3d_sanctuary.yaml")
    drug, clones = scen.drugs["kinase_inhibitor"], scen.clones.clones
    shift = clones["resistant"].ec50_shift["kinase_inhibitor"]
    kill = lambda level, ec50: drug.emax * level**drug.hill / (ec50**drug.hill + level**drug.hill)  # noqa: E731
    hours = rows[-1]["t"]
    level_core, level_rim = core / hours, rim / hours
    assert kill(level_core, drug.ec50) > clones["sensitive"].growth
    assert kill(level_core, shift * drug.ec50) < clones["resistant"].growth < kill(level_rim, shift * drug.ec50)
    resistant = lambda r, reg: _resistant_fraction(r, reg, clones=("resistant",))  # noqa: E731
    assert _crossing(rows, "core", ("resistant",)) < np.inf and _crossing(rows, "rim", ("resistant",)) == np.inf
    assert resistant(rows[-1], "core") > 0.5 > 5 * resistant(rows[-1], "rim")


@pytest.mark.slow
def test_vascular3d_sanctuary_compressed_vessels_worsen_exposure_and_resistance(sanctuary_runs):
    (out, rows), (out_open, rows_open) = sanctuary_runs["shipped"], sanctuary_runs["open"]
    core, _ = _core_rim(*_last_frame(out, "auc_kinase_inhibitor"))
    core_open, _ = _core_rim(*_last_frame(out_open, "auc_kinase_inhibitor"))
    assert core < 0.7 * core_open
    resistant = lambda r: _resistant_fraction(r, "core", clones=("resistant",))  # noqa: E731
    assert resistant(rows[-1]) > 1.5 * resistant(rows_open[-1])
    assert _crossing(rows, "core", ("resistant",)) <= _crossing(rows_open, "core", ("resistant",))


@pytest.mark.slow
def test_network_file_scenario_runs_from_the_shipped_network(tmp_path):
    rows = _run(tmp_path / "nf", "network_file.yaml", QUICK + ["time.end=3 day"])
    assert rows[-1]["total_doxorubicin"] > 0 and 0.5 < rows[-1]["perfused_fraction"] <= 1.0
    x, auc = _last_frame(tmp_path / "nf", "auc_doxorubicin")
    assert auc[x[:, 0] > 150].mean() < auc[x[:, 0] < 0].mean()


@pytest.mark.parametrize("ranks", [1, 2])
def test_missing_network_file_is_one_line_on_every_rank(tmp_path, ranks):
    p = tme("run", CONFIGS / "network_file.yaml", "--out", tmp_path / "o",
            "--set", "vasculature.file.path=nowhere.vtp", ranks=ranks)
    _, err = finish(p, 300)
    assert p.returncode == 2, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("tme: error")]
    assert len(lines) == 1 and "vasculature.file.path" in lines[0] and "nowhere.vtp: no such file" in lines[0]
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# vessels that collapse under compression: events, no assembly in the loop, exact resume

#: A small block with a generated network, a drug and oxygen (both on AMG, whose preconditioner
#: is carried from step to step) and cells packed densely in the core (0.7) and loosely in the
#: rim (0.3): the core's vessels collapse first, the rim's later, as the cells grow.
COLLAPSING = {
    "name": "collapsing",
    "mesh": {"kind": "box", "size": ["400 um", "400 um", "160 um"], "cells": [8, 8, 3],
             "regions": [{"name": "core", "where": "x**2 + y**2 < 120**2"}, {"name": "rim", "where": "x == x"}]},
    "vasculature": {"generate": {"seed": 2, "spacing": "100 um", "feeder_spacing": "150 um", "tumour": "core"},
                    "collapse": {"threshold": 0.75, "every_steps": 2}},
    "drugs": {"chemo": {"class": "dna_damaging", "diffusivity": "16 um^2/s", "permeability": "0.5 um/s",
                        "uptake": "5 1/hour", "pk": {"half_life": "6 hour"}, "emax": "0.005 1/hour",
                        "ec50": "0.3 uM"}},
    "oxygen": {"enabled": True, "diffusivity": "1700 um^2/s", "permeability": "30 um/s",
               "consumption": "1 1/min", "hypoxia": "5 uM"},
    "clones": {"clones": {"sensitive": {"growth": "1 1/day", "initial": {"core": 0.7, "rim": 0.3}}}},
    "treatment": {"lines": [{"name": "chemo", "regimen": [{"drug": "chemo", "amount": "5 uM", "every": "1 day",
                                                           "cycles": 3}]}],
                  "stop": {"stop_when_exhausted": False, "on_cure": False}},
    "time": {"end": "3 day", "dt": "4 hour", "dt_initial": "1 hour"},
    "output": {"every": "1 day", "plots": False, "snapshots": {"times": []},
               "checkpoint": {"every": "1 day", "wall": None}},
}


def _collapsing():
    from tme.config import scenario as sc

    return sc.validate(COLLAPSING)


@pytest.mark.mpi
def test_collapse_logged_without_assembly_and_resumed_to_the_same_steps(comm, tmp_path):
    import json

    from test_restart import _shared, assert_same_run, run_with_stops

    base = _shared(comm, tmp_path)
    (straight,) = run_with_stops(_collapsing(), base / "straight", comm)
    # only the small network is solved again: no tissue matrix or vector is assembled, no form
    # compiled in the loop
    assert straight["in_loop"] == {"matrix_assemblies": 0, "form_compilations": 0}
    events = json.loads((base / "straight" / "events.json").read_text())
    collapses = [e for e in events if e["event"] == "vessel_collapse"]
    assert len(collapses) >= 2, [e["event"] for e in events]          # the core first, the rim later
    # closing a dead end leaves the perfused fraction as it was; closing a perfused vessel lowers it
    fractions = [e["data"]["perfused_fraction"] for e in collapses]
    assert all(a >= b for a, b in zip(fractions, fractions[1:]))
    closed = [e["data"]["closed_total"] for e in collapses]
    assert closed == list(np.cumsum([e["data"]["segments_closed"] for e in collapses]))
    with open(base / "straight" / "timeseries.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["perfused_fraction"]) == pytest.approx(fractions[-1], rel=1e-12)
    assert fractions[-1] < 0.5 * float(rows[0]["perfused_fraction"])
    # stopped after the first collapse and again between later ones: the same steps, to the bit
    times = [e["time"] for e in collapses]
    summaries = run_with_stops(_collapsing(), base / "stopped", comm, stops=(times[0] + 1.0, times[len(times) // 2] + 1.0))
    assert [s.get("signal") is not None for s in summaries] == [True, True, False]
    # on one rank to the bit; on two, each start of the run partitions the 3-D mesh anew and the
    # partition is not always the same, so sums differ in the last digit from t = 0 on: the
    # same steps and events, the values to the ranks' tolerance
    assert_same_run(base / "stopped", base / "straight", rel=1e-12 if comm.size == 1 else 1e-6)


def test_collapse_needs_clones_and_a_schedule(tmp_path):
    from tme.config import scenario as sc
    from tme.problem import Problem
    from tme.config.spec import ScenarioError

    data = json_copy(COLLAPSING)
    data["vasculature"]["collapse"] = {"threshold": 0.75}
    data["treatment"] = {"lines": []}
    with pytest.raises(ScenarioError, match="vasculature.collapse: give every_steps"):
        Problem(sc.validate(data), out=None).initialise()
    data = json_copy(COLLAPSING)
    del data["clones"]
    with pytest.raises(ScenarioError, match="vasculature.collapse: vessels collapse where cells are packed"):
        Problem(sc.validate(data), out=None).initialise()


def json_copy(d):
    import json

    return json.loads(json.dumps(d))


@pytest.mark.slow
def test_vascular3d_network_opens_in_paraview_beside_the_fields(coarse_run, tmp_path):
    """One ParaView session reads fields.xdmf and network.pvd: the same output times, the
    network inside the tissue block, the flow and the fields at the last time."""
    import json
    import shutil
    import subprocess

    pvbatch = shutil.which("pvbatch")
    if pvbatch is None:
        pytest.skip("ParaView's pvbatch is not installed")
    out, _ = coarse_run
    script = tmp_path / "both.py"
    script.write_text(
        "import json, sys\n"
        "from paraview.simple import OpenDataFile\n"
        "f = OpenDataFile(sys.argv[1] + '/fields.xdmf')\n"
        "n = OpenDataFile(sys.argv[1] + '/network.pvd')\n"
        "for r in (f, n):\n"
        "    r.UpdatePipelineInformation()\n"
        "tf, tn = list(f.TimestepValues), list(n.TimestepValues)\n"
        "f.UpdatePipeline(tf[-1]); n.UpdatePipeline(tn[-1])\n"
        "fi, ni = f.GetDataInformation(), n.GetDataInformation()\n"
        "print(json.dumps({'fields_times': tf, 'network_times': tn, 'fields_bounds': fi.GetBounds(),\n"
        "  'network_bounds': ni.GetBounds(), 'network_cells': ni.GetNumberOfCells(),\n"
        "  'point_fields': [f.PointData.GetArray(i).GetName() for i in range(f.PointData.GetNumberOfArrays())],\n"
        "  'flow': n.CellData.GetArray('flow').GetRange()}))\n")
    p = subprocess.run([pvbatch, str(script), str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["fields_times"] == info["network_times"] and len(info["network_times"]) >= 2
    fb, nb = info["fields_bounds"], info["network_bounds"]
    for k in range(3):
        assert fb[2 * k] - 1e-6 <= nb[2 * k] <= nb[2 * k + 1] <= fb[2 * k + 1] + 1e-6
    assert info["network_cells"] > 100 and "doxorubicin" in info["point_fields"]
    assert max(abs(v) for v in info["flow"]) > 0
