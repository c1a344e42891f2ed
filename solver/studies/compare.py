"""Compare treatment strategies: ``tme compare CONFIG... [--sweep key.path=v1,v2,...] --out DIR``.

Each scenario (or each value of a swept key) is one run in ``DIR/<run>/``. With more MPI ranks
than runs, the ranks split into sub-communicators that run concurrently; with fewer, each group
runs several in turn. Rank 0 then writes ``comparison.csv`` (per run: time to first progression,
nadir, final burden, final resistant fraction, lines used, wall time) and ``comparison.png``
(the burden curves of all runs on one plot).

In Python, :func:`table` (``tme.compare``) compares scenarios, scenario files or finished runs
(:class:`tme.results.Results`) and returns the comparison as a pandas DataFrame; without an
output directory the runs are kept in memory and nothing is written.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .. import log

from .. import outputs
from ..config.scenario import Scenario, apply_override, load, validate
from ..config.spec import ScenarioError

COLUMNS = ["run", "config", "overrides", "time_to_progression_days", "nadir", "nadir_day",
           "final_burden", "final_resistant_fraction", "lines_used", "wall_time_seconds", "ranks"]


@dataclass(frozen=True)
class RunPlan:
    name: str
    config: Path | None          # the scenario file (None: a scenario built in Python)
    overrides: tuple[str, ...]
    scenario: Scenario
    results: object = None       # a finished run (tme.results.Results): not run again


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``key.path=v1,v2,...`` -> (key.path, [v1, v2, ...])."""
    if "=" not in text:
        raise ScenarioError(f"--sweep {text!r}: expected key.path=v1,v2,...")
    key, values = text.split("=", 1)
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not key.strip() or not vals:
        raise ScenarioError(f"--sweep {text!r}: expected key.path=v1,v2,...")
    return key.strip(), vals


def plan(configs: list, sweeps: list[str], overrides: list[str], labels=None) -> list[RunPlan]:
    """Every run, validated before any is started (a bad value stops all, naming it).

    ``configs``: scenario files, scenarios (:class:`Scenario`) or finished runs
    (:class:`tme.results.Results`, taken as they are); ``labels``: a name for each (default
    the scenario's)."""
    combos: list[tuple[str, ...]] = [()]
    for sweep in sweeps:
        key, values = parse_sweep(sweep)
        combos = [c + (f"{key}={v}",) for c in combos for v in values]
    runs, names = [], set()

    def unique(label):
        name, k = label, 2
        while name in names:
            name, k = f"{label}_{k}", k + 1
        names.add(name)
        return name

    for n, config in enumerate(configs):
        given = labels[n] if labels else None
        if hasattr(config, "summary") and hasattr(config, "timeseries"):   # a finished run
            if sweeps or overrides:
                raise ScenarioError(f"compare: {given or config.scenario.name} is a finished run; it "
                                    f"cannot be swept or changed (give its scenario instead)")
            runs.append(RunPlan(unique(given or config.scenario.name), None, (), config.scenario, config))
            continue
        for combo in combos:
            items = list(overrides) + list(combo)
            if isinstance(config, Scenario):
                scen = config
                if items:
                    data = config.model_dump(mode="json", by_alias=True)
                    for item in items:
                        apply_override(data, item)
                    scen = validate(data, source=f"scenario {config.name!r}")
            else:
                scen = load(config, items)
            label = (given or scen.name) + "".join("_" + _slug(o) for o in combo)
            runs.append(RunPlan(unique(label), None if isinstance(config, Scenario) else Path(config),
                                tuple(combo), scen))
    return runs


def _slug(override: str) -> str:
    key, value = override.split("=", 1)
    return re.sub(r"[^A-Za-z0-9.]+", "-", f"{key.split('.')[-1]}-{value}").strip("-")


def compare(configs: list, out: Path | None, comm, sweeps=(), overrides=(), overwrite=False,
            max_memory: float | None = None, labels=None) -> list[dict]:
    """Run every scenario (or swept value) into ``out/<run>/`` and write the comparison (with
    ``out`` None: the runs are kept in memory and nothing is written); returns the rows on
    every rank. ``configs``, ``labels``: see :func:`plan`.

    Every run is set up (mesh, fields, every check of ``tme run``: :meth:`Problem.initialise`
    without an output directory) on the ranks that will run it before any run starts; a failure
    anywhere is raised on every rank, naming the run, and a refused comparison writes nothing.
    """
    from mpi4py import MPI

    from ..problem import Problem, StopSignals

    logger = log.get()
    runs = plan(configs, list(sweeps), list(overrides), labels)  # every rank reads every file alike
    inputs = [r.config for r in runs if r.config is not None] + [
        Path(r.scenario.mesh.path) for r in runs if getattr(r.scenario.mesh, "path", None) is not None]
    if out is not None:
        outputs.check_directory(out, comm, overwrite, inputs)
    groups = min(comm.size, len(runs))
    color = comm.rank * groups // comm.size
    sub = comm.Split(color, comm.rank)
    try:
        mine = [i for i in range(len(runs)) if i % groups == color]
        failure, level = None, logger.level
        logger.setLevel(30)  # the runs report themselves when they start
        try:
            for i in mine:
                if runs[i].results is not None:
                    continue
                try:
                    Problem(runs[i].scenario, sub, max_memory=max_memory).initialise()
                except ScenarioError as exc:  # agreed within the group by the set-up itself
                    failure = (i, f"run {runs[i].name} ({runs[i].config}): {exc}")
                    break
        finally:
            logger.setLevel(level)
        _agree(comm, failure)
        if out is not None:
            out = outputs.prepare_directory(out, comm, overwrite, inputs)
        logger.info(f"compare: {len(runs)} run(s) on {groups} group(s) of ranks")
        done, failure, stop = [], None, None
        with StopSignals() as between:   # a signal between two runs stops the comparison too
            for i in mine:
                r = runs[i]
                if r.results is not None:
                    ts = r.results.timeseries
                    done.append((i, r.results.summary, (ts["t"].to_numpy(), ts["burden"].to_numpy())))
                    continue
                # a signal noted between runs, on any rank of the group: start no more runs
                noted = sub.allreduce(between.received or 0, op=MPI.MAX)
                if noted and stop is None:
                    stop = (noted, None)
                if stop is not None:
                    break
                if sub.rank == 0:
                    log.get().info(f"[{r.name}] starting on {sub.size} rank(s)")
                level = logger.level
                logger.setLevel(30)
                try:
                    problem = Problem(r.scenario, sub, None if out is None else out / r.name, overwrite=overwrite,
                                      max_memory=max_memory, inputs=inputs).initialise()
                    summary = problem.run()
                except ScenarioError as exc:  # a run stopped (RunError): the others finish theirs
                    kept = f"; the other runs' results are in {out}" if out is not None else ""
                    failure = (i, f"run {r.name} stopped: {exc}{kept}")
                    break
                finally:
                    logger.setLevel(level)
                if "signal" in summary:       # checkpointed (with an output directory): resumable
                    stop = (summary["signal"], r.name)
                    break
                done.append((i, summary, problem.curve("burden")))
        gathered = comm.gather(done, root=0)
        _agree(comm, failure)
        _stopped(comm, stop, runs, {i for part in comm.allgather([i for i, _, _ in done]) for i in part}, out)
    finally:
        sub.Free()
    rows = []
    if comm.rank == 0:
        by_index = {i: (s, curve) for part in gathered for i, s, curve in part}
        for i, r in enumerate(runs):
            s = by_index[i][0]
            ttp = s.get("time_to_progression_hours")
            rows.append({
                "run": r.name, "config": "" if r.config is None else str(r.config),
                "overrides": " ".join(r.overrides),
                "time_to_progression_days": "" if ttp is None else ttp / 24.0,
                "nadir": s.get("nadir_burden"), "nadir_day": (s.get("nadir_time_hours") or 0.0) / 24.0,
                "final_burden": s.get("final_burden"),
                "final_resistant_fraction": s.get("final_resistant_fraction"),
                "lines_used": s.get("lines_used"), "wall_time_seconds": s.get("wall_time_seconds"),
                "ranks": s.get("ranks"),
            })
    if comm.rank == 0 and out is not None:
        with open(out / "comparison.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        outputs.plot_series(out / "comparison.png", None, {r.name: by_index[i][1] for i, r in enumerate(runs)},
                            "tumour burden  ∫ N_tot dx", "burden per strategy", size=(8, 4.5))
        (out / "comparison.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
        logger.info(f"compare: wrote {out / 'comparison.csv'} and {out / 'comparison.png'}")
    return comm.bcast(rows, root=0)


class Stopped(Exception):
    """A comparison stopped by a signal: the runs that were stepping are checkpointed, the
    others did not start; ``signal`` is the signal's number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signal = signum


def _stopped(comm, stop, runs, finished: set[int], out: Path | None) -> None:
    """Raise :class:`Stopped` on every rank if any group was stopped by a signal."""
    stops = [s for s in comm.allgather(stop) if s is not None]
    if not stops:
        return
    import signal as _signal

    signum = stops[0][0]
    resumable = sorted({name for _, name in stops if name is not None})
    waiting = [r.name for i, r in enumerate(runs) if i not in finished and r.name not in resumable]
    parts = [f"tme: compare stopped by {_signal.Signals(signum).name}; finished: "
             f"{', '.join(runs[i].name for i in sorted(finished)) or 'none'}"]
    if resumable and out is not None:
        parts.append("continue " + ", ".join(f"tme run --resume {out / n}" for n in resumable))
    if waiting:
        parts.append(f"not started: {', '.join(waiting)}")
    parts.append("no comparison written (it needs every run: run tme compare again with --overwrite)")
    raise Stopped(signum, "; ".join(parts))


def table(runs, out: str | Path | None = None, comm=None, *, sweep: dict | None = None,
          changes: dict | None = None, overwrite: bool = False, max_memory: float | None = None):
    """Compare runs (``tme.compare``): a pandas DataFrame indexed by run name, with the columns
    of ``comparison.csv`` (times in days, burdens in µm^d).

    ``runs``: a list of scenarios (:class:`Scenario`), scenario files or finished runs
    (:class:`tme.results.Results`, not run again), or a dict name -> one of those. ``sweep``:
    ``{"key.path": [v1, v2, ...]}``, one run per value (several keys: the product), values as
    ``--sweep`` takes them; ``changes``: ``{"key.path": value}`` set in every run (as ``--set``).
    ``out``: write every run and the comparison there, as ``tme compare --out``; None keeps the
    runs in memory and writes nothing. ``comm``: the MPI communicator (default: every rank);
    with more ranks than runs the runs share them out. Collective.
    """
    import json as _json

    import numpy as np
    import pandas as pd
    from mpi4py import MPI

    labels = None
    if isinstance(runs, dict):
        labels, runs = [str(k) for k in runs], list(runs.values())
    elif isinstance(runs, (str, Path, Scenario)) or hasattr(runs, "summary"):
        runs = [runs]
    runs = list(runs)

    def text(v):
        return v if isinstance(v, str) else _json.dumps(v)

    sweeps = []
    for key, values in (sweep or {}).items():
        values = [text(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
        bad = [v for v in values if "," in v]
        if bad:
            raise ScenarioError(f"compare: sweep of {key}: value {bad[0]!r} holds a comma; sweep such a "
                                f"key with one compare per value")
        sweeps.append(f"{key}={','.join(values)}")
    overrides = [f"{k}={text(v)}" for k, v in (changes or {}).items()]
    rows = compare(runs, None if out is None else Path(out), MPI.COMM_WORLD if comm is None else comm,
                   sweeps=sweeps, overrides=overrides, overwrite=overwrite, max_memory=max_memory,
                   labels=labels)
    frame = pd.DataFrame(rows)
    for c in frame.columns:
        filled = frame[c].where(frame[c].astype(str) != "", np.nan)
        numbers = pd.to_numeric(filled, errors="coerce")
        if c != "run" and 0 < numbers.notna().sum() == filled.notna().sum():
            frame[c] = numbers
    return frame.set_index("run") if "run" in frame.columns else frame


def _agree(comm, failure: tuple[int, str] | None) -> None:
    """Raise the failure of the lowest-numbered run on every rank, if any rank has one."""
    failures = [f for f in comm.allgather(failure) if f is not None]
    if failures:
        raise ScenarioError(min(failures)[1])
