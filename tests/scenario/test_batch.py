"""The study engine (tme.studies.batch.run_batch) on small uniform scenarios, on 1 and 2 ranks.

Each job is a well-mixed tumour (uniform initial density, no transport gradient) whose burden
is the logistic closed form A·N(t), N(t) = N0 e^{gt} / (1 − N0 + N0 e^{gt}): the outcomes are
checked against it, not against an earlier run. Covered: one group per rank and one group of
every rank, the dynamic share-out of unequal jobs, failing jobs among good ones (a value found
bad at the set-up, a run stopped by its NaN guard, a measure that raises), resume after a
partial study (counting the runs made), a changed job refused, and a study killed (SIGKILL) or
stopped (SIGTERM) while running leaving only whole files and continuing where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dolfinx")
from mpi4py import MPI  # noqa: E402

from tme.config import scenario as scn  # noqa: E402
from tme.config.spec import ScenarioError  # noqa: E402
from tme.studies import batch  # noqa: E402
from tme.studies.batch import Job, Stopped, run_batch  # noqa: E402

from runs import children, finish, kill, mpirun  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AREA = 200.0 * 200.0    # µm², the domain
N0 = 0.05

#: a well-mixed tumour: one clone at a uniform density, nothing transported
UNIFORM = {"name": "uniform", "mesh": {"kind": "rectangle", "size": ["200 um", "200 um"], "cells": [8, 8]},
           "numerics": {"reaction_kernel": "numpy"},
           "clones": {"clones": {"a": {"growth": "0.5 1/day", "initial": N0}}},
           "time": {"end": "4 day", "dt": "12 hour"},
           "output": {"plots": False, "snapshots": {"times": []}}}

#: a drug whose Hill coefficient overflows A(c) = cⁿ/(cⁿ + EC50ⁿ) to NaN: the NaN guard stops the run
NAN_DRUG = {"x": {"class": "dna_damaging", "diffusivity": "10 um^2/s", "initial": "2 uM", "ec50": "1 uM",
                  "hill": 1e4, "emax": "0.1 1/hour"}}


def uniform(**changes):
    return scn.validate(json.loads(json.dumps(UNIFORM))).with_changes(changes)


def logistic(g_per_day: float, t_days):
    e = np.exp(g_per_day * np.asarray(t_days, dtype=float))
    return AREA * N0 * e / (1.0 - N0 + N0 * e)


def _growth_jobs(rates, **changes):
    return [Job(f"g{k}", uniform(**{"clones.clones.a.growth": f"{g} 1/day", **changes}),
                {"patient": k, "growth_per_day": g}) for k, g in enumerate(rates)]


def _where(problem):
    return {"world_rank": MPI.COMM_WORLD.rank, "group_size": problem.comm.size,
            "dofs": problem.model.V.dofmap.index_map.size_global}


def _shared(comm, path) -> Path:
    return Path(comm.bcast(str(path), root=0))


def _check_closed_form(outcome, g):
    assert outcome.ok, outcome.error
    t = np.asarray(outcome.times_days)
    assert t[0] == 0.0 and t[-1] == pytest.approx(4.0)
    # the reaction step is second order with substeps g·τ <= 0.1: 2e-4 relative at most here
    np.testing.assert_allclose(outcome.burden, logistic(g, t), rtol=1e-3)
    assert outcome.summary["final_burden"] == pytest.approx(logistic(g, 4.0), rel=1e-3)
    assert outcome.burden_cells is not None and outcome.resistant_fraction == [0.0] * len(t)


@pytest.mark.mpi
@pytest.mark.parametrize("ranks_per_run", [1, 2])
def test_every_job_is_run_in_order_on_groups_of_ranks(comm, ranks_per_run):
    if ranks_per_run > comm.size:
        pytest.skip("needs 2 ranks")
    rates = [0.3, 0.5, 0.7, 0.9, 1.1]
    jobs = _growth_jobs(rates)
    outcomes = run_batch(jobs, comm, ranks_per_run=ranks_per_run, measure=_where, label="test")
    assert [o.name for o in outcomes] == [j.name for j in jobs]
    assert [o.tags for o in outcomes] == [j.tags for j in jobs]
    for o, g in zip(outcomes, rates):
        _check_closed_form(o, g)
        assert o.extra["group_size"] == ranks_per_run and o.extra["dofs"] == 81
        assert o.fingerprint == batch.fingerprint(jobs[int(o.name[1:])].scenario)
    # every rank has every outcome
    assert comm.allgather([o.summary["final_burden"] for o in outcomes]) == \
        [[o.summary["final_burden"] for o in outcomes]] * comm.size
    groups = {o.extra["world_rank"] for o in outcomes}
    assert groups <= {g * ranks_per_run for g in range(comm.size // ranks_per_run)}


@pytest.mark.mpi
def test_groups_take_jobs_as_they_become_free(comm):
    """One long job and many short ones on two groups: the group that drew the long job runs
    fewer jobs (a static round-robin would give each group half)."""
    if comm.size != 2:
        pytest.skip("two groups of one rank")
    long = Job("long", uniform(**{"time.end": "60 day", "time.dt": "1 hour"}), {"kind": "long"})
    jobs = [long] + [Job(f"short{k}", uniform(), {"kind": "short"}) for k in range(7)]
    outcomes = run_batch(jobs, comm, ranks_per_run=1, measure=_where, label="test")
    assert all(o.ok for o in outcomes)
    by_rank = {r: [o.name for o in outcomes if o.extra["world_rank"] == r] for r in (0, 1)}
    holder = outcomes[0].extra["world_rank"]
    assert len(by_rank[holder]) < len(by_rank[1 - holder]), by_rank
    assert outcomes[0].wall_time_seconds > 3 * max(o.wall_time_seconds for o in outcomes[1:])


@pytest.mark.mpi
@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy's overflow in the NaN job
@pytest.mark.parametrize("ranks_per_run", [1, 2])
def test_failing_jobs_are_recorded_and_the_others_run(comm, ranks_per_run, tmp_path):
    if ranks_per_run > comm.size:
        pytest.skip("needs 2 ranks")
    out = _shared(comm, tmp_path / "study")
    good = _growth_jobs([0.4, 0.8])
    jobs = [good[0],
            # a region the mesh lacks: found by the set-up
            Job("setup", uniform(**{"clones.clones.a.initial": {"nowhere": 0.1}})),
            # a NaN in the kill: the run's guard stops it at its first step
            Job("nan", uniform(drugs=NAN_DRUG)),
            Job("measure", uniform(**{"time.end": "1 day"}), {"raise": True}),
            good[1]]

    def measure(problem):
        if problem.scenario.time.end == 24.0:
            raise ZeroDivisionError("no way")
        return {}

    outcomes = run_batch(jobs, comm, ranks_per_run=ranks_per_run, out=out, measure=measure, label="test")
    ok = {o.name: o.ok for o in outcomes}
    assert ok == {"g0": True, "setup": False, "nan": False, "measure": False, "g1": True}
    _check_closed_form(outcomes[0], 0.4)
    _check_closed_form(outcomes[4], 0.8)
    err = {o.name: o.error for o in outcomes}
    assert "nowhere" in err["setup"] and "\n" not in err["setup"]
    assert "is not a number" in err["nan"] and "x =" in err["nan"]
    assert err["measure"] == "measure: ZeroDivisionError: no way"
    assert outcomes[2].summary is None and outcomes[2].times_days[:1] == [0.0]
    # every finished job (ok or failed) has its file, holding its outcome
    for o in outcomes:
        data = json.loads((out / "runs" / f"{o.name}.json").read_text())
        assert data["ok"] == o.ok and data["error"] == o.error and data["tags"] == o.tags


@pytest.mark.mpi
def test_a_resumed_study_runs_only_the_missing_jobs(comm, tmp_path):
    out = _shared(comm, tmp_path / "study")
    rates = [0.3, 0.5, 0.7, 0.9, 1.1]
    jobs = _growth_jobs(rates)
    calls = []

    def measure(problem):
        if problem.comm.rank == 0:
            calls.append(1)
        return {}

    first = run_batch(jobs[:3], comm, out=out, measure=measure, label="test")
    assert comm.allreduce(len(calls)) == 3
    calls.clear()
    again = run_batch(jobs, comm, out=out, measure=measure, label="test")
    assert comm.allreduce(len(calls)) == 2            # only g3 and g4 ran
    assert [o.to_json() for o in again[:3]] == [o.to_json() for o in first]
    for o, g in zip(again, rates):
        _check_closed_form(o, g)
    calls.clear()
    run_batch(jobs, comm, out=out, measure=measure, label="test")
    assert comm.allreduce(len(calls)) == 0
    # resume=False runs everything again
    run_batch(jobs[:2], comm, out=out, measure=measure, resume=False, label="test")
    assert comm.allreduce(len(calls)) == 2
    # a job whose scenario changed is refused, naming it
    changed = jobs[:1] + _growth_jobs([0.3, 0.55])[1:]
    with pytest.raises(ScenarioError, match="job g1 was run with another scenario"):
        run_batch(changed, comm, out=out, label="test")


@pytest.mark.mpi
def test_bad_arguments_are_refused_before_any_run(comm, tmp_path):
    jobs = _growth_jobs([0.3])
    with pytest.raises(ScenarioError, match="ranks-per-run 3: exceeds"):
        run_batch(jobs, comm, ranks_per_run=3)
    with pytest.raises(ScenarioError, match="given twice"):
        run_batch(jobs + jobs, comm)
    assert run_batch([], comm) == []


SCRIPT = """
import json, sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {scenario!r}]
from mpi4py import MPI
from tme import log
from tme.studies.batch import Job, Stopped, run_batch
from test_batch import uniform
comm = MPI.COMM_WORLD
log.setup(comm.rank, comm.size)
jobs = [Job(f"g{{k}}", uniform(**{{"clones.clones.a.growth": f"{{0.3 + 0.01 * k}} 1/day",
                                   "time.dt": "1 hour", "time.end": "{end}"}}), {{"patient": k}})
        for k in range({n})]
try:
    out = run_batch(jobs, comm, out=Path(sys.argv[1]), label="study")
except Stopped as exc:
    if comm.rank == 0:
        print(str(exc), file=sys.stderr, flush=True)
    sys.exit(128 + exc.signal)
if comm.rank == 0:
    print("ran", sum(1 for o in out if o.ok), flush=True)
"""


def _script(tmp_path, n, end) -> Path:
    path = tmp_path / "study.py"
    path.write_text(SCRIPT.format(tests=str(ROOT / "tests"), scenario=str(ROOT / "tests" / "scenario"),
                                  n=n, end=end))
    return path


def _start(script, out, ranks):
    import subprocess

    cmd = [sys.executable, str(script), str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts" / "pythonpath"))
    if ranks > 1:
        prefix, session = mpirun(ranks)
        cmd = prefix + cmd
        env.update(session)
    env.pop("OMPI_COMM_WORLD_RANK", None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_files(runs: Path, n: int, p, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if runs.is_dir() and len(list(runs.glob("*.json"))) >= n:
            return
        if p.poll() is not None:
            pytest.fail(f"the study ended before {n} jobs were written: {p.communicate()}")
        time.sleep(0.05)
    pytest.fail("no job written in time")


def _whole_files(runs: Path) -> list[str]:
    names = []
    for f in sorted(runs.glob("*.json")):
        data = json.loads(f.read_text())       # never a part of a file
        assert data["name"] == f.stem and data["ok"] is True
        names.append(f.stem)
    return names


def test_a_killed_study_keeps_whole_files_and_its_rerun_runs_the_rest(tmp_path, ranks=1):
    """(On 2 ranks through tme cohort: tests/scenario/test_studies.py.)"""
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("starts its own ranks")
    n = 12
    script, out = _script(tmp_path, n, "2 day"), tmp_path / "study"
    p = _start(script, out, ranks)
    _wait_files(out / "runs", 2, p)
    kill(p)
    p.communicate()
    kept = _whole_files(out / "runs")
    assert 2 <= len(kept) < n
    p = _start(script, out, ranks)
    stdout, err = finish(p, 120)
    assert p.returncode == 0, err
    assert stdout.split() == ["ran", str(n)]
    assert f"study: {n} run(s) ({len(kept)} done before)" in err
    assert f"{n - len(kept)} run in" in err
    assert len(_whole_files(out / "runs")) == n


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_signal_stops_the_study_between_and_inside_runs(tmp_path, ranks):
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("starts its own ranks")
    n = 6
    # each run steps hourly for 6 days: the signal finds runs under way
    script, out = _script(tmp_path, n, "6 day"), tmp_path / "study"
    p = _start(script, out, ranks)
    _wait_files(out / "runs", 1, p)
    for pid in ([p.pid] if ranks == 1 else children(p.pid)):   # every rank, as Slurm signals every task
        os.kill(pid, signal.SIGTERM)
    _, err = finish(p, 120)
    assert p.returncode == 128 + signal.SIGTERM, err
    lines = [ln for ln in err.splitlines() if "stopped by" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    done = _whole_files(out / "runs")
    assert 1 <= len(done) < n
    assert lines[0] == (f"tme: study stopped by SIGTERM: {len(done)} of {n} run(s) done, 0 failed "
                        f"(kept in {out / 'runs'}); run the same command again to continue")
    p = _start(script, out, ranks)
    stdout, err = finish(p, 180)
    assert p.returncode == 0, err
    assert f"({len(done)} done before)" in err and stdout.split() == ["ran", str(n)]


#: A study on one group of two ranks whose second job fails on rank 1 alone, in the middle of
#: its run (rank 0 is then inside the step's collective calls).
ONE_RANK_FAILS = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {scenario!r}]
from mpi4py import MPI
from tme import log
from tme.problem import Problem
from tme.studies.batch import Job, run_batch
from test_batch import uniform
comm = MPI.COMM_WORLD
log.setup(comm.rank, comm.size)
step = Problem.iterate
calls = []

def iterate(self):
    calls.append(self.scenario.name)
    if comm.rank == 1 and self.scenario.name == "second" and calls.count("second") == 3:
        raise RuntimeError("a fault on this rank only")
    step(self)

Problem.iterate = iterate
jobs = [Job(name, uniform(**{{"name": name, "time.dt": "1 hour", "time.end": "1 day"}}))
        for name in ("first", "second", "third")]
run_batch(jobs, comm, ranks_per_run=2, out=Path(sys.argv[1]), label="study")
print("the study went on", flush=True)
"""


def test_a_failure_on_one_rank_of_a_group_ends_the_study_instead_of_hanging(tmp_path):
    if MPI.COMM_WORLD.size > 1:
        pytest.skip("starts its own ranks")
    script = tmp_path / "study.py"
    script.write_text(ONE_RANK_FAILS.format(tests=str(ROOT / "tests"), scenario=str(ROOT / "tests" / "scenario")))
    out = tmp_path / "study"
    p = _start(script, out, 2)
    stdout, err = finish(p, 120)
    assert p.returncode not in (0, None) and "went on" not in stdout, (stdout, err)
    lines = [ln for ln in err.splitlines() if ln.startswith("tme: error")]
    assert lines == ["tme: error: study: run second failed on rank 1 of its group of 2 (RuntimeError: "
                     "a fault on this rank only); the study cannot go on without that rank. Every "
                     "finished run is kept: run the same command again to continue"], err
    assert "Traceback" not in err
    assert sorted(f.name for f in (out / "runs").glob("*.json")) == ["first.json"]
