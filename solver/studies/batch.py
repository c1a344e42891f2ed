"""The study engine: many forward runs, in memory, shared out over groups of MPI ranks.

``tme fit``, ``tme forecast``, ``tme sensitivity`` and ``tme cohort`` describe each forward run
as a :class:`Job` (a name, a validated scenario, tags) and hand the list to :func:`run_batch`,
which returns one :class:`Outcome` per job, in the order of the jobs, on every rank.

- **Groups of ranks.** The ranks of ``comm`` split into ``comm.size // ranks_per_run``
  sub-communicators of ``ranks_per_run`` ranks (:func:`split`, which ``tme compare`` uses too);
  each group runs one job at a time on all its ranks (a :class:`~tme.problem.Problem` without an
  output directory: nothing is written by the run itself).
- **Dynamic distribution.** A group takes the next job when it is free: its rank 0 claims the
  next index from a counter held on rank 0 of ``comm`` with an MPI one-sided atomic
  fetch-and-add (``MPI_Fetch_and_op`` in a passive-target epoch, :class:`_Counter`), so runs of
  unequal cost keep every group busy and no rank serves as a dispatcher only.
- **Failures do not stop the study.** A job whose set-up or run raises (a ScenarioError, a
  RunError such as the NaN guard, or any other exception) is an outcome with ``ok`` False and a
  one-line ``error``; the failure is agreed within the group after the set-up and after the
  run (an allgather), and the group goes on with the next job. The exception: in a group of
  several ranks, a failure other than those raised on every rank alike (scenario errors, the
  NaN guard, agreed write failures) may have struck one rank while the others wait for it in
  a collective call of the run; that ends the study with one line (``MPI_Abort``), its
  finished jobs kept for a resume, rather than leave it hanging.
- **Incremental, resumable outputs.** With ``out``, the group's rank 0 writes each finished job
  (ok or failed) to ``out/runs/<name>.json`` atomically (a temporary file in the same directory,
  then ``os.replace``): a study killed at any moment keeps every finished job and never leaves a
  half-written file. With ``resume`` a job whose file exists is not run again when the file's
  ``fingerprint`` (the SHA-256 of the job's resolved scenario, as in a run's provenance)
  matches; a file whose fingerprint differs is refused with one line naming the job (the
  study was changed: start afresh or use another directory). A failed job counts as finished:
  it is not retried.
- **Signals.** SIGINT, SIGTERM and SIGUSR1 stop the study: a run under way stops at the end of
  its step (in memory it cannot be checkpointed: that job is not done and runs again on resume),
  no group claims another job, every finished job is kept, and :class:`Stopped` is raised on
  every rank with one line saying how many jobs are done and how to continue.
- **Progress.** Rank 0 logs ``study: 37/200 done (2 failed), ~4 min left`` at most every
  :data:`PROGRESS_EVERY` seconds; the forward runs themselves log only warnings.
"""

from __future__ import annotations

import json
import math
import re
import time as wallclock
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import log, outputs
from ..config.scenario import Scenario, resolved_yaml
from ..config.spec import ScenarioError
from ..provenance import scenario_hash

#: Seconds between two progress lines of a study (rank 0).
PROGRESS_EVERY = 5.0
#: The folder of ``out`` holding one JSON file per finished job.
RUNS = "runs"
#: What a job's name may hold: it names a file.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+,@-]{0,199}")


@dataclass(frozen=True)
class Job:
    """One forward run of a study: ``name`` (unique within the study, a file name), the
    validated ``scenario`` (changes applied), ``tags`` kept in its outcome (JSON values, e.g.
    ``{"patient": 17, "strategy": "holiday"}``)."""

    name: str
    scenario: Scenario
    tags: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What a job gave. Times in days; ``burden`` [µm^d, ∫ N_tot dx] at every step row,
    ``burden_cells`` the same in cells (None when the scenario does not count cells);
    ``summary`` the run's summary.json dict (None when it failed); ``error`` one line when
    ``ok`` is False; ``extra`` what the study's ``measure(problem)`` returned;
    ``fingerprint`` the SHA-256 of the resolved scenario it ran."""

    name: str
    tags: dict
    ok: bool
    error: str | None
    summary: dict | None
    times_days: list[float]
    burden: list[float]
    burden_cells: list[float] | None
    resistant_fraction: list[float]
    wall_time_seconds: float
    extra: dict
    fingerprint: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Outcome":
        names = [f for f in cls.__dataclass_fields__]
        return cls(**{k: data.get(k) for k in names if k in data})


class Stopped(Exception):
    """A study (or a comparison) stopped by a signal; ``signal`` is its number, ``outcomes``
    the outcomes of the jobs finished (a study's; None for a comparison)."""

    def __init__(self, signum: int, message: str, outcomes=None):
        super().__init__(message)
        self.signal = signum
        self.outcomes = outcomes


def fingerprint(scenario: Scenario) -> str:
    """The SHA-256 of ``scenario`` resolved (every default filled in): the hash a run's
    provenance records, the same whatever file or changes the scenario came from."""
    return scenario_hash(resolved_yaml(scenario))


# --------------------------------------------------------------------------------------------
# Groups of ranks (shared with tme compare)


def groups_for(size: int, ranks_per_run) -> int:
    """The number of groups of ``ranks_per_run`` ranks among ``size``; a value that is not a
    whole number from 1 to ``size`` dividing ``size`` is refused with one line."""
    if isinstance(ranks_per_run, bool) or not isinstance(ranks_per_run, int) or ranks_per_run < 1:
        raise ScenarioError(f"--ranks-per-run {ranks_per_run!r}: expected a whole number of ranks >= 1")
    if ranks_per_run > size or size % ranks_per_run:
        fits = ", ".join(str(d) for d in range(1, size + 1) if size % d == 0)
        why = "exceeds" if ranks_per_run > size else "does not divide"
        raise ScenarioError(f"--ranks-per-run {ranks_per_run}: {why} the {size} MPI rank(s) of the "
                            f"job; valid: {fits}")
    return size // ranks_per_run


def split(comm, groups: int):
    """(color, sub-communicator): the ranks of ``comm`` in ``groups`` consecutive groups of
    (nearly) equal size, rank r in group r·groups // size. Collective; free ``sub`` after use."""
    color = comm.rank * groups // comm.size
    return color, comm.Split(color, comm.rank)


def agree(comm, failure: tuple[int, str] | None) -> None:
    """Raise (as ScenarioError) on every rank the failure of the lowest-numbered job, if any
    rank of ``comm`` has one. Collective."""
    failures = [f for f in comm.allgather(failure) if f is not None]
    if failures:
        raise ScenarioError(min(failures)[1])


# --------------------------------------------------------------------------------------------
# The shared counter


class _Counter:
    """Four int64 slots on rank 0 of ``comm``, changed by MPI one-sided atomics from any rank:
    [0] the next position to claim, [1] jobs finished, [2] of which failed, [3] groups that have
    left. Claiming is MPI_Fetch_and_op(SUM, 1) under a passive-target lock: the host (rank 0)
    need not take part, so it runs jobs like every other rank."""

    CLAIMED, DONE, FAILED, LEFT = range(4)
    #: added to the claim counter to stop: every later claim is past the last job
    STOP = 1 << 60

    def __init__(self, comm):
        import numpy as np
        from mpi4py import MPI

        self.MPI, self.np = MPI, np
        size = MPI.INT64_T.Get_size()
        self.win = MPI.Win.Allocate(4 * size if comm.rank == 0 else 0, size, comm=comm)
        if comm.rank == 0:
            self.win.Lock(0)
            self.win.Put([np.zeros(4, dtype=np.int64), MPI.INT64_T], 0)
            self.win.Unlock(0)
        comm.Barrier()

    def _op(self, slot: int, value: int, op=None) -> int:
        np, MPI = self.np, self.MPI
        origin, result = np.array([value], dtype=np.int64), np.zeros(1, dtype=np.int64)
        self.win.Lock(0)
        self.win.Fetch_and_op([origin, MPI.INT64_T], [result, MPI.INT64_T], 0, slot,
                              MPI.SUM if op is None else op)
        self.win.Unlock(0)
        return int(result[0])

    def claim(self) -> int:
        return self._op(self.CLAIMED, 1)

    def stop(self) -> None:
        self._op(self.CLAIMED, self.STOP)

    def finished(self, failed: bool) -> None:
        self._op(self.DONE, 1)
        if failed:
            self._op(self.FAILED, 1)

    def leave(self) -> None:
        self._op(self.LEFT, 1)

    def read(self) -> tuple[int, int, int]:
        """(finished, failed, groups that left)."""
        no_op = self.MPI.NO_OP
        return (self._op(self.DONE, 0, no_op), self._op(self.FAILED, 0, no_op),
                self._op(self.LEFT, 0, no_op))

    def free(self) -> None:
        self.win.Free()


class _Progress:
    """Rank 0's progress lines: at most every PROGRESS_EVERY seconds."""

    def __init__(self, label: str, total: int, before: int, failed_before: int, counter, on: bool):
        self.label, self.total, self.before, self.failed_before = label, total, before, failed_before
        self.counter, self.on = counter, on
        self.start = self.last = wallclock.perf_counter()

    def tick(self, force: bool = False) -> None:
        if not self.on:
            return
        now = wallclock.perf_counter()
        if not force and now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        done, failed, _ = self.counter.read()
        self.line(done, failed, now)

    def line(self, done: int, failed: int, now: float) -> None:
        have = self.before + done
        left = self.total - have
        eta = ""
        if done and left:
            eta = f", ~{_duration((now - self.start) / done * left)} left"
        log.get().info(f"{self.label}: {have}/{self.total} done ({self.failed_before + failed} "
                       f"failed){eta}")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------------------------
# The study's directory

#: The file that marks a directory as a study's (which command made it).
MARKER = "study.json"


def study_directory(out: Path, comm, label: str, *, overwrite: bool = False, inputs=(),
                    owned=()) -> bool:
    """Make ``out`` ready for the study ``label`` (e.g. 'cohort'); True when it continues a
    study of the same kind already there (its ``runs/`` are resumed). Collective.

    A new or empty directory is created and marked (``study.json``). A directory already
    marked by the same kind of study is continued. With ``overwrite`` the study's own files —
    ``runs/``, the marker and ``owned`` (the command's tables and pictures) — are removed first,
    never anything else. Refused with one line (a ScenarioError): what :func:`outputs.
    check_directory` refuses (a file, below a file, read-only, not writable); a non-empty
    directory that holds no study of this kind, without ``overwrite``; with ``overwrite``, a
    directory whose removal would take one of ``inputs`` (the scenario files the study reads).
    """
    import shutil

    out = Path(out)
    owned = [RUNS, MARKER, *owned]
    outputs.check_directory(out, comm, True, inputs)
    err, resumed = None, False
    if comm.rank == 0:
        try:
            kind = None
            if (out / MARKER).is_file():
                try:
                    kind = json.loads((out / MARKER).read_text()).get("study")
                except (ValueError, AttributeError):
                    kind = "?"
            used = out.is_dir() and any(out.iterdir())
            if overwrite:
                for name in owned:
                    if any(Path(p).exists() and (out / name).exists() and outputs._within(Path(p), out / name)
                           for p in inputs):
                        err = (f"--out {out}: --overwrite would remove {out / name}, which this study "
                               f"reads; choose another --out")
                        break
                else:
                    for name in owned:
                        p = out / name
                        if p.is_dir() and not p.is_symlink():
                            shutil.rmtree(p)
                        elif p.exists() or p.is_symlink():
                            p.unlink()
            elif used and kind != label:
                what = f"holds a tme {kind} study" if kind not in (None, "?") else "holds no tme study"
                err = (f"--out {out}: directory is not empty and {what}, not a {label} study to "
                       f"continue; choose another --out or pass --overwrite to replace the "
                       f"study's files in it")
            else:
                resumed = (out / RUNS).is_dir()
            if err is None:
                out.mkdir(parents=True, exist_ok=True)
                if not (out / MARKER).is_file():
                    outputs.replace_text(out / MARKER, json.dumps({"study": label}) + "\n")
        except OSError as exc:
            err = f"--out {out}: {exc.strerror or exc}"
    err, resumed = comm.bcast((err, resumed), root=0)
    if err:
        raise ScenarioError(err)
    return resumed


# --------------------------------------------------------------------------------------------
# Reading what a previous study left


def _check_jobs(jobs: list[Job]) -> None:
    seen = set()
    for job in jobs:
        if not isinstance(job, Job) or not isinstance(job.scenario, Scenario):
            raise ScenarioError(f"run_batch: expected Job(name, scenario, tags) items, got {job!r:.80}")
        if not isinstance(job.name, str) or not NAME.fullmatch(job.name):
            raise ScenarioError(f"run_batch: job name {job.name!r} is not a file name (letters, digits "
                                f"and ._=+,@- only, at most 200 characters)")
        if job.name in seen:
            raise ScenarioError(f"run_batch: job name {job.name!r} is given twice; names must be unique")
        seen.add(job.name)


def finished(jobs: list[Job], prints: list[str], runs: Path) -> tuple[dict[int, Outcome], str | None]:
    """The outcomes of ``jobs`` already in ``runs`` (index -> outcome), and the one-line reason
    to refuse the directory (a file that cannot be read, or a fingerprint that differs)."""
    done = {}
    for i, (job, fp) in enumerate(zip(jobs, prints)):
        path = runs / f"{job.name}.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            outcome = Outcome.from_json(data)
        except (OSError, ValueError, TypeError) as exc:
            return done, (f"{path}: not a finished job of this study ({exc.__class__.__name__}); "
                          f"remove it, or start afresh (--overwrite)")
        if outcome.fingerprint != fp:
            return done, (f"{path}: job {job.name} was run with another scenario (fingerprint "
                          f"{str(outcome.fingerprint)[:12]}, now {fp[:12]}): the study has changed; "
                          f"start afresh (--overwrite) or choose another --out")
        outcome.tags = dict(job.tags)
        done[i] = outcome
    return done, None


# --------------------------------------------------------------------------------------------
# One job


def _agreed(exc: BaseException) -> bool:
    """Is ``exc`` raised on every rank of a run alike: a scenario error or the NaN guard (found
    and agreed across the ranks), a write failure its writer agreed on?"""
    return isinstance(exc, (ScenarioError, FloatingPointError)) or getattr(exc, "agreed", False)


def _alone(exc: BaseException, err: str, job: Job, sub, label: str) -> None:
    """A failure of the set-up or the run of ``job`` that may have struck this rank of its group
    alone: the group's other ranks may be inside a collective call of the run, where they would
    wait for this rank forever, so the study ends (every finished run is kept on disk)."""
    if sub.size > 1 and not _agreed(exc):
        log.fatal(f"tme: error: {label}: run {job.name} failed on rank {sub.rank} of its group of "
                  f"{sub.size} ({err}); the study cannot go on without that rank. Every finished "
                  "run is kept: run the same command again to continue", 1)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, ScenarioError):
        return text or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _series(problem) -> dict:
    """The time series of a problem (every step row) as the lists of an Outcome."""
    rows = getattr(getattr(problem, "series", None), "rows", None) or []
    times = [float(r["t"]) / 24.0 for r in rows]
    if not rows or "burden" not in rows[0]:
        return {"times_days": times, "burden": [], "burden_cells": None, "resistant_fraction": []}
    cells = [r.get("burden_cells", "") for r in rows]
    return {"times_days": times, "burden": [float(r["burden"]) for r in rows],
            "burden_cells": None if any(c == "" or c is None for c in cells) else [float(c) for c in cells],
            "resistant_fraction": [float(r["resistant_fraction"]) for r in rows]}


def _run_one(job: Job, fp: str, sub, between, measure, max_memory,
             tick=None, label: str = "study") -> tuple[Outcome | None, int | None]:
    """Run ``job`` on the group ``sub`` (collective on it): (its outcome, None), or (None, the
    signal) when a signal stopped it before its end (the job is not done). ``tick``: called
    after every step (rank 0's progress lines while its own group runs)."""
    from mpi4py import MPI

    from ..problem import Problem, logging_for

    start = wallclock.perf_counter()
    problem, summary, extra, err = None, None, {}, None

    def first(e):
        errors = [x for x in sub.allgather(e) if x is not None]
        return errors[0] if errors else None

    with logging_for(True):    # the runs report only warnings: the study reports progress
        try:
            problem = Problem(job.scenario, sub, None, max_memory=max_memory).initialise()
        except Exception as exc:   # noqa: BLE001 - any failure is this job's outcome
            err = _one_line(exc)
            _alone(exc, err, job, sub, label)
        err = first(err)
        if err is None:
            # a signal during the set-up: do not start the run
            noted = sub.allreduce(between.received or 0, op=MPI.MAX)
            if noted:
                return None, noted
            if tick is not None:
                step = problem.iterate

                def iterate():
                    step()
                    tick()

                problem.iterate = iterate
            logger = log.get()
            level = logger.level
            # the run's own line on a signal ("stopped by ..., kept in memory") is the study's
            # to say: within the run only errors are logged
            logger.setLevel(max(level, 40))
            try:
                summary = problem.run()
            except Exception as exc:   # noqa: BLE001
                err = _one_line(exc)
                _alone(exc, err, job, sub, label)
            finally:
                logger.setLevel(level)
            err = first(err)
            if err is None and "signal" in summary:
                return None, int(summary["signal"])
        if err is None and measure is not None:
            try:
                extra = measure(problem)
                json.dumps(extra)
            except Exception as exc:   # noqa: BLE001
                err = f"measure: {_one_line(exc)}"
            err = first(err)
    series = _series(problem) if problem is not None else _series(None)
    wall = sub.allreduce(wallclock.perf_counter() - start, op=MPI.MAX)
    outcome = Outcome(name=job.name, tags=dict(job.tags), ok=err is None, error=err,
                      summary=None if err is not None else _plain(summary),
                      wall_time_seconds=wall, extra=_plain(extra or {}) if err is None else {},
                      fingerprint=fp, **series)
    return outcome, None


def _plain(value):
    """``value`` as JSON gives it back (NumPy numbers become floats)."""
    return json.loads(json.dumps(value, default=float))


# --------------------------------------------------------------------------------------------
# The study


def run_batch(jobs: list[Job], comm, *, ranks_per_run: int = 1, out: Path | None = None,
              measure=None, resume: bool = True, label: str = "study",
              max_memory: float | None = None) -> list[Outcome]:
    """Run every job and return every outcome, in the order of ``jobs``, on every rank
    (collective on ``comm``; see the module docstring).

    ``ranks_per_run``: the ranks of one run (must divide ``comm.size``). ``out``: the study's
    directory (created if needed; each finished job is written to ``out/runs/<name>.json``), or
    None to keep everything in memory. ``measure(problem)``: called on every rank of the group
    after a run that ended, returns a JSON-serialisable dict kept as ``Outcome.extra`` (from the
    group's rank 0). ``resume``: take the jobs already in ``out/runs`` as done. ``label``: the
    study's name in the log lines. ``max_memory``: see :class:`tme.problem.Problem`.

    Raises :class:`Stopped` (every rank) when a signal stopped the study; ScenarioError (one
    line) for a ``ranks_per_run`` that does not fit, a bad or repeated job name, or a directory
    holding a job run with another scenario.
    """
    from mpi4py import MPI

    from ..problem import StopSignals

    logger = log.get()
    if not logger.handlers:
        log.setup(comm.rank, comm.size)
    jobs = list(jobs)
    groups = groups_for(comm.size, ranks_per_run)
    _check_jobs(jobs)
    prints = [fingerprint(j.scenario) for j in jobs]
    runs = None if out is None else Path(out) / RUNS
    done: dict[int, Outcome] = {}
    if runs is not None:
        err = None
        if comm.rank == 0:
            try:
                runs.mkdir(parents=True, exist_ok=True)
                if resume:
                    done, err = finished(jobs, prints, runs)
            except OSError as exc:
                err = f"--out {out}: cannot make {runs} ({exc.strerror or exc})"
        err = comm.bcast(err, root=0)
        if err:
            raise ScenarioError(err)
        done = comm.bcast(done, root=0)
    pending = [i for i in range(len(jobs)) if i not in done]
    failed_before = sum(not o.ok for o in done.values())
    before = f" ({len(done)} done before)" if done else ""
    logger.info(f"{label}: {len(jobs)} run(s){before} on {groups} group(s) of {ranks_per_run} "
                f"rank(s)")
    counter = _Counter(comm)
    color, sub = split(comm, groups)
    progress = _Progress(label, len(jobs), len(done), failed_before, counter, comm.rank == 0)
    mine, stop = [], None
    try:
        with StopSignals() as between:
            while stop is None:
                noted = sub.allreduce(between.received or 0, op=MPI.MAX)
                if noted:
                    stop = noted
                    break
                k = counter.claim() if sub.rank == 0 else None
                k = sub.bcast(k, root=0)
                if k >= len(pending):
                    break
                i = pending[k]
                tick = progress.tick if comm.rank == 0 else None
                outcome, stop = _run_one(jobs[i], prints[i], sub, between, measure, max_memory, tick, label)
                if outcome is None:
                    break
                if sub.rank == 0:
                    if runs is not None:
                        outputs.replace_text(runs / f"{jobs[i].name}.json",
                                             json.dumps(outcome.to_json(), indent=1, default=float) + "\n")
                    counter.finished(not outcome.ok)
                    if not outcome.ok:
                        logger.warning(f"{label}: run {outcome.name} failed: {outcome.error}",
                                       extra={"any_rank": True})
                mine.append((i, outcome))
                progress.tick()
            if stop is not None and sub.rank == 0:
                counter.stop()
            if sub.rank == 0:
                counter.leave()
            if comm.rank == 0:
                # the other groups may still run: report their progress until every group left
                while counter.read()[2] < groups:
                    progress.tick()
                    wallclock.sleep(0.05)
        gathered = comm.gather(mine if sub.rank == 0 else [], root=0)
        stops = [s for s in comm.allgather(stop) if s]
        final = None
        if comm.rank == 0:
            final = dict(done)
            for part in gathered:
                final.update(dict(part))
            final = [final.get(i) for i in range(len(jobs))]
        final = comm.bcast(final, root=0)
    finally:
        sub.Free()
        counter.free()
    ran = [o for o in final if o is not None]
    nfailed = sum(not o.ok for o in ran)
    if stops:
        import signal as _signal

        name = _signal.Signals(stops[0]).name
        kept = (f" (kept in {runs}); run the same command again to continue" if runs is not None
                else "; the unfinished runs are not kept (no output directory)")
        raise Stopped(stops[0], f"tme: {label} stopped by {name}: {len(ran)} of {len(jobs)} run(s) "
                                f"done, {nfailed} failed{kept}", ran)
    wall = wallclock.perf_counter() - progress.start
    logger.info(f"{label}: {len(jobs)}/{len(jobs)} done ({nfailed} failed); "
                f"{len(pending)} run in {_duration(wall) if wall >= 1 else f'{wall:.2f} s'}")
    return final

