"""Checkpoint/restart, signals and crash safety of a run.

- A run stopped twice (SIGTERM) and resumed each time equals the run made in one go: the same
  rows (relative 1e-12), events, summary and final fields on the same ranks; within 1e-6 when
  checkpointed on 1 rank and resumed on 2, and the reverse. The scenario switches line with a
  sequencing decision between the two stops, and the second stop falls in an infusion.
- SIGTERM and SIGINT on 1 and 2 ranks stop the run cleanly: a checkpoint, one line, 128+signal.
- SIGKILL at several moments leaves every listed output time readable (h5py, the XDMF index)
  and whole rows in the CSVs.
- --resume refuses, with one line, a directory without a checkpoint and a changed scenario.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("dolfinx")
from mpi4py import MPI  # noqa: E402

from tme.config import scenario as sc  # noqa: E402
from tme.problem import Problem, RunError  # noqa: E402

from runs import children as _children, finish as _finish, kill as _kill, tme as _tme  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

#: Small and quick, with all a checkpoint must carry: two drugs (infusions), oxygen on AMG (its
#: preconditioner is reused between steps), clones with mutation, a switch at progression to a
#: line chosen by sequencing.
SCENARIO = {
    "name": "restart",
    "mesh": {"kind": "rectangle", "size": ["200 um", "200 um"], "cells": [6, 6],
             "regions": [{"name": "tumour", "where": "x**2 + y**2 < 70**2"}, {"name": "stroma", "where": "x == x"}]},
    "tissue": {"regions": {"tumour": {"vascular_density": "0.004 1/um", "ecm_fraction": 0.1},
                           "stroma": {"vascular_density": "0.01 1/um"}}},
    "drugs": {
        "chemo": {"class": "dna_damaging", "diffusivity": "10 um^2/s", "permeability": "1 um/s",
                  "uptake": "1 1/hour", "pk": {"half_life": "12 hour"}, "emax": "0.2 1/hour", "ec50": "0.3 uM"},
        "inhib": {"class": "targeted", "target": "EGFR", "diffusivity": "10 um^2/s", "permeability": "1 um/s",
                  "pk": {"half_life": "12 hour"}, "emax": "0.1 1/hour", "ec50": "0.2 uM"},
    },
    "oxygen": {"enabled": True, "diffusivity": "1700 um^2/s", "permeability": "30 um/s",
               "consumption": "1 1/min", "hypoxia": "5 uM"},
    "clones": {"clones": {"sensitive": {"growth": "0.6 1/day", "initial": {"tumour": 0.6}},
                          "repairer": {"growth": "0.5 1/day", "repair": 0.9, "initial": {"tumour": 0.02}}},
               "mutation": {"sensitive": {"repairer": 1e-3}}},
    "treatment": {
        "lines": [
            {"name": "first", "regimen": [{"drug": "chemo", "amount": "5 uM", "infusion": "6 hour",
                                           "every": "1 day", "cycles": 6}]},
            {"name": "second", "sequencing": {"detection": 0.01, "choose": {"dna_repair": ["inhib"]}},
             "regimen": [{"drug": "inhib", "amount": "4 uM", "infusion": "12 hour"},
                         {"drug": "chemo", "amount": "2 uM", "start": "1 day"}]},
        ],
        "assessment": {"every": "1 day"},
        "progression": {"resistant_fraction": 0.05},
        "stop": {"stop_when_exhausted": False, "on_cure": False},
    },
    "time": {"end": "3 day", "dt": "2 hour", "dt_initial": "0.25 hour"},
    "output": {"every": "1 day", "plots": False, "snapshots": {"times": []},
               "checkpoint": {"every": "1 day", "wall": None}},
}


def _data(**changes) -> dict:
    """A copy of SCENARIO with ``changes`` (dotted key paths) applied."""
    data = json.loads(json.dumps(SCENARIO))
    for key, value in changes.items():
        node = data
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = value
    return data


def scenario(**changes):
    return sc.validate(_data(**changes))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _shared(comm, path) -> Path:
    return Path(comm.bcast(str(path), root=0))


def _arm(problem: Problem, at: float, signum=signal.SIGTERM):
    """Send ``signum`` to this process on rank 0 after the step that reaches ``at`` [hour]."""
    step = problem.iterate
    sent = []

    def iterate():
        step()
        if not sent and problem.state.t >= at:
            sent.append(True)
            if problem.comm.rank == 0:
                os.kill(os.getpid(), signum)

    problem.iterate = iterate


def run_with_stops(scen, out: Path, comm, stops=(), finish=True) -> list[dict]:
    """Run ``scen`` into ``out``, stopped by SIGTERM after each time in ``stops`` and resumed
    (the last time only when ``finish``)."""
    summaries = []
    p = Problem(scen, comm, out, overwrite=True).initialise()
    for k in range(len(stops) + 1):
        if k < len(stops):
            _arm(p, stops[k])
        summaries.append(p.run())
        if k < len(stops):
            assert summaries[-1]["signal"] == signal.SIGTERM
            if k + 1 == len(stops) and not finish:
                break
            p = Problem.resume(out, comm).initialise()
    return summaries


def final_fields(out: Path) -> dict[str, np.ndarray]:
    """The last output time's fields, each sorted by its nodes' coordinates (any ranks)."""
    import h5py

    root = ET.parse(out / "fields.xdmf").getroot()
    grid = root.findall("./Domain/Grid/Grid")[-1]
    geo = grid.find("Geometry/DataItem").text.split(":")
    with h5py.File(out / geo[0], "r") as h5:
        x = h5[geo[1]][...]
    order = np.lexsort(np.round(x.T, 6)[::-1])
    fields = {}
    for a in grid.findall("Attribute"):
        if a.get("Center") != "Node":
            continue
        path, name = a.find("DataItem").text.split(":")
        with h5py.File(out / path, "r") as h5:
            fields[a.get("Name")] = h5[name][...].ravel()[order]
    return fields


def assert_same_run(a: Path, b: Path, rel: float):
    ra, rb = _rows(a / "timeseries.csv"), _rows(b / "timeseries.csv")
    assert len(ra) == len(rb)
    assert [r["t"] for r in ra] == [r["t"] for r in rb]        # the same steps, to the bit
    worst = 0.0
    for x, y in zip(ra, rb):
        for k, v in x.items():
            if k == "line" or v == "":
                assert v == y[k], k
                continue
            u, w = float(v), float(y[k])
            worst = max(worst, abs(u - w) / max(abs(w), 1e-300) if w else abs(u))
    assert worst <= rel, worst
    ea = json.loads((a / "events.json").read_text())
    eb = json.loads((b / "events.json").read_text())
    assert [(e["time"], e["event"], e["reason"]) for e in ea] == [(e["time"], e["event"], e["reason"]) for e in eb]
    fa, fb = final_fields(a), final_fields(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        scale = max(np.abs(fb[name]).max(), 1e-300)
        assert np.abs(fa[name] - fb[name]).max() <= rel * scale, name
    sa = json.loads((a / "summary.json").read_text())
    sb = json.loads((b / "summary.json").read_text())
    for key in ("steps", "end_time_hours", "stopped", "progressions", "lines_used", "time_to_progression_hours"):
        assert sa[key] == sb[key], key
    for key in ("nadir_burden", "final_burden", "max_burden", "final_resistant_fraction"):
        assert sa[key] == pytest.approx(sb[key], rel=rel), key


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The scenario run in one go on all ranks, and the same on rank 0 alone."""
    comm = MPI.COMM_WORLD
    base = _shared(comm, tmp_path_factory.mktemp("straight"))
    run_with_stops(scenario(), base / "np", comm)
    if comm.rank == 0:
        run_with_stops(scenario(), base / "np1", MPI.COMM_SELF)
    comm.barrier()
    return base


@pytest.mark.mpi
def test_straight_run_switches_with_sequencing(straight):
    events = json.loads((straight / "np" / "events.json").read_text())
    kinds = [(e["event"], e["time"]) for e in events]
    assert ("sequencing", 24.0) in kinds and ("switch", 24.0) in kinds, kinds
    seq = next(e for e in events if e["event"] == "sequencing")
    assert seq["data"]["chosen"] == ["inhib"]


@pytest.mark.mpi
def test_stopped_twice_and_resumed_equals_the_straight_run(comm, tmp_path, straight):
    out = _shared(comm, tmp_path) / "stopped"
    # first stop before the switch at 24 h; the second while the inhibitor's 12-hour infusion
    # (from 24 h) runs
    summaries = run_with_stops(scenario(), out, comm, stops=(14.0, 27.0))
    assert [s.get("signal") for s in summaries] == [signal.SIGTERM, signal.SIGTERM, None]
    assert 14.0 < summaries[0]["end_time_hours"] < 24.0 < summaries[1]["end_time_hours"] < 36.0
    assert_same_run(out, straight / "np", rel=1e-12)
    final = json.loads((out / "summary.json").read_text())
    assert final["segments"] == 3 and final["stopped"] == "end time"
    # one complete checkpoint is kept
    assert len(list((out / "checkpoint").glob("step_*"))) == 1


@pytest.mark.mpi
def test_error_controlled_run_resumes_to_the_same_steps(comm, tmp_path):
    """Under time.tolerance the step sizes depend on the controller's memory (the last error,
    each field's scale, the count of rejections): a resumed run takes the same steps."""
    base = _shared(comm, tmp_path)
    tol = scenario(**{"time.tolerance": 1e-3, "time.dt_initial": None})
    run_with_stops(tol, base / "straight", comm)
    summaries = run_with_stops(tol, base / "stopped", comm, stops=(14.0, 27.0))
    assert [s.get("signal") for s in summaries] == [signal.SIGTERM, signal.SIGTERM, None]
    assert_same_run(base / "stopped", base / "straight", rel=1e-12)
    rows = _rows(base / "straight" / "timeseries.csv")
    assert {"error", "rejected"} <= rows[0].keys()
    assert len({r["dt"] for r in rows[1:]}) > 3       # the controller, not a fixed step


def _config(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump(_data(**changes)))
    return path


needs_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun")


@needs_mpirun
def test_checkpoint_on_one_rank_resumes_on_two_and_back(tmp_path, straight):
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("starts its own 1- and 2-rank runs")
    # 1 rank -> 2 ranks
    out = tmp_path / "one_two"
    run_with_stops(scenario(), out, MPI.COMM_SELF, stops=(27.0,), finish=False)
    p = _tme("run", "--resume", out, ranks=2)
    _, err = _finish(p, 300)
    assert p.returncode == 0, err
    assert_same_run(out, straight / "np1", rel=1e-6)
    # 2 ranks -> 1 rank: stopped by SIGUSR1 to mpirun (which forwards it) once a few rows are
    # written; the straight run it is compared with has the same end
    out = tmp_path / "two_one"
    cfg = _config(tmp_path / "s.yaml")
    p = _tme("run", cfg, "--out", out, ranks=2)
    _wait_rows(out / "timeseries.csv", 20, p)
    os.kill(p.pid, signal.SIGUSR1)
    _, err = _finish(p, 120)
    assert p.returncode == 128 + signal.SIGUSR1, err
    summary = Problem.resume(out, MPI.COMM_SELF).initialise().run()
    assert summary["stopped"] == "end time"
    assert_same_run(out, straight / "np1", rel=1e-6)


def _wait_rows(path: Path, n: int, proc, timeout=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and path.read_text().count("\n") > n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {n} rows: {proc.stderr.read()}")
        time.sleep(0.02)
    _finish(proc, 0.01)   # kills it and fails
    pytest.fail("no rows")


SIGNAL_CASES = [(1, signal.SIGTERM, "rank"), (1, signal.SIGINT, "rank"), (1, signal.SIGUSR1, "rank"),
                (2, signal.SIGTERM, "one rank"), (2, signal.SIGINT, "ranks"), (2, signal.SIGUSR1, "mpirun")]


@needs_mpirun
@pytest.mark.parametrize("ranks, signum, whom", SIGNAL_CASES, ids=[f"{n}-{s.name}-{w}" for n, s, w in SIGNAL_CASES])
def test_signal_stops_cleanly_with_a_resumable_checkpoint(tmp_path, ranks, signum, whom):
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("starts its own runs")
    out = tmp_path / "out"
    cfg = _config(tmp_path / "s.yaml", **{"time.end": "400 day", "output.checkpoint": {"wall": None}})
    p = _tme("run", cfg, "--out", out, ranks=ranks)
    _wait_rows(out / "timeseries.csv", 30, p)
    targets = {"rank": [p.pid], "mpirun": [p.pid], "one rank": _children(p.pid)[-1:],
               "ranks": _children(p.pid)}[whom]
    assert targets
    for pid in targets:
        os.kill(pid, signum)
    _, err = _finish(p, 120)
    assert p.returncode == 128 + signum, err
    lines = [ln for ln in err.splitlines() if ln.startswith("tme")]
    assert len(lines) == 1 and "Traceback" not in err, err
    if ranks == 1:
        assert [ln for ln in err.splitlines() if not ln.startswith("mesh:")] == lines, err
    assert f"stopped by {signal.Signals(signum).name}" in lines[0] and f"tme run --resume {out}" in lines[0]
    rows = _rows(out / "timeseries.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["signal"] == signum and summary["steps"] == len(rows) - 1
    (ck,) = (out / "checkpoint").glob("step_*")
    state = json.loads((ck / "state.json").read_text())
    assert state["t"] == float(rows[-1]["t"]) and state["steps"] == len(rows) - 1
    # resumable: continue for a little (a shorter end) and finish
    p = _tme("run", "--resume", out, "--resume-with-changes", "--set", f"time.end={state['t'] / 24 + 0.5} day")
    _, err = _finish(p, 300)
    assert p.returncode == 0, err
    rows2 = _rows(out / "timeseries.csv")
    assert rows2[: len(rows)] == rows and len(rows2) > len(rows)
    ts = [float(r["t"]) for r in rows2]
    assert all(b > a for a, b in zip(ts, ts[1:]))


def _readable_frames(out: Path) -> list[float]:
    """Every output time the index lists, each file opened with h5py and every dataset read."""
    import h5py

    root = ET.parse(out / "fields.xdmf").getroot()
    times = []
    for g in root.findall("./Domain/Grid/Grid"):
        for item in g.iter("DataItem"):
            if item.get("Format") == "XML":   # inline values (the region tags): no file
                continue
            path, name = item.text.split(":")
            with h5py.File(out / path, "r") as h5:
                data = h5[name][...]
            assert data.shape[0] == int(item.get("Dimensions").split()[0])
        # the time in days for ParaView, and exactly in hours
        hours = float(g.find("Information[@Name='time_hours']").get("Value"))
        assert float(g.find("Time").get("Value")) == pytest.approx(hours / 24.0, rel=1e-15)
        times.append(hours)
    return times


def _whole_rows(path: Path, columns: int | None = None) -> list[list[str]]:
    text = path.read_text()
    assert text.endswith("\n"), "a cut row"
    rows = list(csv.reader(text.splitlines()))
    n = len(rows[0])
    assert all(len(r) == n for r in rows), "a row with missing cells"
    return rows


@needs_mpirun
@pytest.mark.parametrize("ranks", [1, 2])
def test_sigkill_leaves_every_finished_output_readable(tmp_path, ranks):
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("starts its own runs")
    # output at every step: a kill at a random moment falls in a step or in an output write
    cfg = _config(tmp_path / "s.yaml", **{"time.end": "400 day", "output.every": "2 hour",
                                           "output.checkpoint": {"every": "1 day", "wall": None}})
    rng = np.random.default_rng(7)
    for k, rows in enumerate((12, 25, 45)):
        out = tmp_path / f"out{k}"
        p = _tme("run", cfg, "--out", out, ranks=ranks)
        _wait_rows(out / "timeseries.csv", rows, p)
        time.sleep(float(rng.uniform(0.0, 0.05)))
        _kill(p)   # the ranks and mpirun
        _finish(p, 60)
        times = _readable_frames(out)
        assert times and times == sorted(times) and times[0] == 0.0
        series = _whole_rows(out / "timeseries.csv")
        _whole_rows(out / "events.csv")
        json.loads((out / "events.json").read_text())
        # every output time listed was reached by a whole row
        reached = {float(r[0]) for r in series[1:]}
        assert set(times) <= reached
    # the last of them resumes from its checkpoint (written at 24 h, 48 h, ...) for a day more
    (ck,) = [c for c in (out / "checkpoint").glob("step_*") if not c.name.endswith(".partial")]
    t = json.loads((ck / "state.json").read_text())["t"]
    p = _tme("run", "--resume", out, "--resume-with-changes", "--set", f"time.end={t + 24} hour")
    _, err = _finish(p, 300)
    assert p.returncode == 0, err
    assert _readable_frames(out)[-1] == t + 24
    ts = [float(r[0]) for r in _whole_rows(out / "timeseries.csv")[1:]]
    assert all(b > a for a, b in zip(ts, ts[1:]))   # no row twice


def test_resume_refuses_bad_directories_and_changed_scenarios(tmp_path):
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("starts its own runs")
    empty = tmp_path / "empty"
    empty.mkdir()
    for d, expect in ((tmp_path / "nowhere", "no such directory"), (empty, "not the output directory")):
        p = _tme("run", "--resume", d)
        _, err = _finish(p, 120)
        assert p.returncode == 2 and err.strip().count("\n") == 0 and expect in err, err
    out = tmp_path / "run"
    run_with_stops(scenario(), out, MPI.COMM_SELF, stops=(10.0,), finish=False)
    cfg = _config(tmp_path / "s.yaml")
    p = _tme("run", cfg, "--resume", out, "--set", "drugs.chemo.emax=0.3 1/hour")
    _, err = _finish(p, 120)
    assert p.returncode == 2 and err.strip().count("\n") == 0, err
    assert "drugs.chemo.emax" in err and "--resume-with-changes" in err
    p = _tme("run", cfg, "--resume", out, "--resume-with-changes", "--set", "drugs.chemo.emax=0.3 1/hour")
    _, err = _finish(p, 120)
    assert p.returncode == 2 and "drugs.chemo.emax cannot change" in err, err
    with pytest.raises(RunError, match="time.end"):
        Problem.resume(out, MPI.COMM_SELF, scenario(**{"time.end": "5 hour"}), with_changes=True)
    # a finished run has nothing to resume: said in one line, exit status 0 (a job chain goes on)
    Problem.resume(out, MPI.COMM_SELF).initialise().run()
    before = (out / "timeseries.csv").read_text()
    p = _tme("run", "--resume", out)
    _, err = _finish(p, 120)
    assert p.returncode == 0 and "complete" in err and err.strip().count("\n") == 0, err
    assert (out / "timeseries.csv").read_text() == before


@pytest.mark.mpi
def test_wall_clock_checkpoints_agree_across_ranks(comm, tmp_path):
    """A wall interval shorter than any step: a checkpoint after every step, decided on rank 0's
    clock for all ranks; only the latest is kept."""
    from tme.outputs import checkpoint as checkpoints

    out = _shared(comm, tmp_path) / "wall"
    scen = scenario(**{"time.end": "6 hour", "output.checkpoint": {"every": None, "wall": "1e-9 hour"}})
    summary = Problem(scen, comm, out, overwrite=True).initialise().run()
    found = checkpoints.complete(out)
    assert len(found) == 1
    state = checkpoints.read_state(found[0])
    assert state.written["checkpoints"] == state.steps == summary["steps"]


@needs_mpirun
@pytest.mark.parametrize("ranks", [1, 2])
def test_a_signal_stops_a_comparison_with_its_runs_resumable(tmp_path, ranks):
    """SIGTERM during `tme compare`: the runs stepping stop with a checkpoint, no further run
    starts, no comparison is written, and one line says what finished and how to continue."""
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("starts its own runs")
    out = tmp_path / "cmp"
    cfg = _config(tmp_path / "s.yaml", **{"time.end": "400 day", "output.checkpoint": {"wall": None}})
    p = _tme("compare", cfg, "--out", out, "--sweep", "drugs.chemo.emax=0.2 1/hour,0.3 1/hour,0.4 1/hour",
             ranks=ranks)
    first = out / "restart__drugs.chemo.emax=0.2_1_per_hour"
    _wait_rows(first / "timeseries.csv", 20, p)
    for pid in ([p.pid] if ranks == 1 else _children(p.pid)):   # every rank, as Slurm signals every task
        os.kill(pid, signal.SIGTERM)
    _, err = _finish(p, 120)
    assert p.returncode == 128 + signal.SIGTERM, err
    lines = [ln for ln in err.splitlines() if ln.startswith("tme: compare")]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert "stopped by SIGTERM" in line and f"tme run --resume {first}" in line, line
    # one group of ranks runs the three in turn; two groups run the first two at once, and the
    # second group's run is stopped too unless it ended by itself before the signal
    second = out / "restart__drugs.chemo.emax=0.3_1_per_hour"
    stepping = [first]
    if ranks == 2 and f"tme run --resume {second}" in line:
        stepping.append(second)
    finished = line.split("finished: ")[1].split(";")[0]
    assert finished == ("none" if len(stepping) == ranks else second.name), line
    assert "restart__drugs.chemo.emax=0.4_1_per_hour" in line.split("not started: ")[1], line
    for run in stepping:
        assert f"tme run --resume {run}" in line, line
    assert not (out / "comparison.csv").exists()
    assert not (out / "restart__drugs.chemo.emax=0.4_1_per_hour").exists()
    for run in stepping:
        (ck,) = (run / "checkpoint").glob("step_*")
        assert json.loads((ck / "state.json").read_text())["steps"] > 0
