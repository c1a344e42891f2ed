"""Compare treatment strategies: ``tme compare CONFIG... [--sweep key.path=v1,v2,...] --out DIR``.

Each scenario (or each value of a swept key) is one run in ``DIR/<run>/``, named by its
scenario and the full ``key=value`` of each swept key (``default__drugs.dox.emax=0.1_1_per_hour``).
With more MPI ranks
than runs, the ranks split into sub-communicators that run concurrently; with fewer, each group
runs several in turn. Rank 0 then writes ``comparison.csv`` (per run: time to first progression,
nadir, final burden, final resistant fraction, lines used, wall time) and ``comparison.png``
(the burden curves of all runs on one log axis, in cells, with the detection limit).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .. import log

from .. import outputs
from ..config.scenario import Scenario, load
from ..config.spec import ScenarioError

COLUMNS = ["run", "config", "overrides", "time_to_progression_days", "nadir", "nadir_day",
           "final_burden", "final_resistant_fraction", "lines_used", "wall_time_seconds", "ranks"]


@dataclass(frozen=True)
class RunPlan:
    name: str
    config: Path
    overrides: tuple[str, ...]
    scenario: Scenario


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``key.path=v1,v2,...`` -> (key.path, [v1, v2, ...])."""
    if "=" not in text:
        raise ScenarioError(f"--sweep {text!r}: expected key.path=v1,v2,...")
    key, values = text.split("=", 1)
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not key.strip() or not vals:
        raise ScenarioError(f"--sweep {text!r}: expected key.path=v1,v2,...")
    return key.strip(), vals


def plan(configs: list[Path], sweeps: list[str], overrides: list[str]) -> list[RunPlan]:
    """Every run, validated before any is started (a bad value stops all, naming it)."""
    combos: list[tuple[str, ...]] = [()]
    for sweep in sweeps:
        key, values = parse_sweep(sweep)
        combos = [c + (f"{key}={v}",) for c in combos for v in values]
    runs, names = [], set()
    for config in configs:
        for combo in combos:
            scen = load(config, list(overrides) + list(combo))
            label = "__".join([scen.name] + [_slug(o) for o in combo])
            name, k = label, 2
            while name in names:
                name, k = f"{label}_{k}", k + 1
            names.add(name)
            runs.append(RunPlan(name, Path(config), tuple(combo), scen))
    return runs


def _slug(override: str) -> str:
    """``key.path=value`` as part of a run's name (and directory), e.g.
    ``drugs.dox.emax=0.1_1_per_hour``: the whole key, so that no two swept keys read alike, and
    the value with '_' for blanks and '_per_' for '/'."""
    key, value = override.split("=", 1)
    value = re.sub(r"\s+", "_", value.strip()).replace("/", "_per_").replace("\\", "_")
    return f"{key.strip()}={value}"


def _legend(run: RunPlan) -> str:
    """A run's label in the comparison plot: its scenario and each swept key=value on a line."""
    return "\n".join([run.scenario.name] + [f"  {o}" for o in run.overrides])


def compare(configs: list[Path], out: Path, comm, sweeps=(), overrides=(), overwrite=False,
            max_memory: float | None = None) -> list[dict]:
    """Run every scenario (or swept value) into ``out/<run>/`` and write the comparison.

    Every run is set up (mesh, fields, every check of ``tme run``: :meth:`Problem.initialise`
    without an output directory) on the ranks that will run it before any run starts; a failure
    anywhere is raised on every rank, naming the run, and a refused comparison writes nothing.
    """
    from mpi4py import MPI

    from ..problem import Problem, StopSignals

    logger = log.get()
    runs = plan(configs, list(sweeps), list(overrides))  # every rank reads every file alike
    inputs = [Path(c) for c in configs] + [Path(r.scenario.mesh.path) for r in runs
                                           if getattr(r.scenario.mesh, "path", None) is not None]
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
                try:
                    Problem(runs[i].scenario, sub, max_memory=max_memory).initialise()
                except ScenarioError as exc:  # agreed within the group by the set-up itself
                    failure = (i, f"run {runs[i].name} ({runs[i].config}): {exc}")
                    break
        finally:
            logger.setLevel(level)
        _agree(comm, failure)
        out = outputs.prepare_directory(out, comm, overwrite, inputs)
        logger.info(f"compare: {len(runs)} run(s) on {groups} group(s) of ranks")
        done, failure, stop = [], None, None
        with StopSignals() as between:   # a signal between two runs stops the comparison too
            for i in mine:
                r = runs[i]
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
                    problem = Problem(r.scenario, sub, out / r.name, overwrite=overwrite,
                                      max_memory=max_memory, inputs=inputs).initialise()
                    summary = problem.run()
                except ScenarioError as exc:  # a run stopped (RunError): the others finish theirs
                    failure = (i, f"run {r.name} stopped: {exc}; the other runs' results are in {out}")
                    break
                finally:
                    logger.setLevel(level)
                if "signal" in summary:       # checkpointed: resumable with tme run --resume
                    stop = (summary["signal"], r.name)
                    break
                done.append((i, summary, _burden_cells(problem)))
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
                "run": r.name, "config": str(r.config), "overrides": " ".join(r.overrides),
                "time_to_progression_days": "" if ttp is None else ttp / 24.0,
                "nadir": s.get("nadir_burden"), "nadir_day": (s.get("nadir_time_hours") or 0.0) / 24.0,
                "final_burden": s.get("final_burden"),
                "final_resistant_fraction": s.get("final_resistant_fraction"),
                "lines_used": s.get("lines_used"), "wall_time_seconds": s.get("wall_time_seconds"),
                "ranks": s.get("ranks"),
            })
        with open(out / "comparison.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        curves = {_legend(r): by_index[i][1] for i, r in enumerate(runs)}
        unit = "cells" if all(c[2] == "cells" for c in curves.values()) else "µm^d (∫ N_tot dx)"
        limits = {c[3] for c in curves.values()}
        outputs.plot_series(out / "comparison.png", None, {k: c[:2] for k, c in curves.items()},
                            f"tumour burden [{unit}]", "tumour burden per run", logy=True,
                            size=(10, 5), **_detection(limits, unit))
        (out / "comparison.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
        logger.info(f"compare: wrote {out / 'comparison.csv'} and {out / 'comparison.png'}")
    return comm.bcast(rows, root=0)


class Stopped(Exception):
    """A comparison stopped by a signal: the runs that were stepping are checkpointed, the
    others did not start; ``signal`` is the signal's number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signal = signum


def _stopped(comm, stop, runs, finished: set[int], out: Path) -> None:
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
    if resumable:
        parts.append("continue " + ", ".join(f"tme run --resume {out / n}" for n in resumable))
    if waiting:
        parts.append(f"not started: {', '.join(waiting)}")
    parts.append("no comparison written (it needs every run: run tme compare again with --overwrite)")
    raise Stopped(signum, "; ".join(parts))


def _detection(limits: set, unit: str) -> dict:
    """The plot's detection line: drawn when every run has the same limit."""
    if len(limits) != 1 or None in limits:
        return {}
    (limit,) = limits
    unit = "cell" if unit == "cells" and limit == 1 else unit
    return {"detection": limit, "detection_label": f"detection limit ({limit:.3g} {unit})"}


def _burden_cells(problem) -> tuple:
    """(t [hour], burden, its unit, the detection limit in it or None) of a finished run: in
    cells when the run counts cells, else as the amount ∫ N_tot dx [µm^d]."""
    scale = problem.protocol.scale
    t, burden = problem.curve("burden")
    if scale is None:
        return t, burden, "µm^d", None
    return (t, burden * scale.cells(1.0), "cells",
            scale.in_cells(problem.scenario.treatment.detection_limit))


def _agree(comm, failure: tuple[int, str] | None) -> None:
    """Raise the failure of the lowest-numbered run on every rank, if any rank has one."""
    failures = [f for f in comm.allgather(failure) if f is not None]
    if failures:
        raise ScenarioError(min(failures)[1])
