"""Compare treatment strategies: ``tme compare CONFIG... [--sweep key.path=v1,v2,...] --out DIR``.

Each scenario (or each value of a swept key) is one run in ``DIR/<run>/``, named by its
scenario and the full ``key=value`` of each swept key (``default__drugs.dox.emax=0.1_1_per_hour``).
With more MPI ranks
than runs, the ranks split into sub-communicators that run concurrently; with fewer, each group
runs several in turn. Rank 0 then writes ``comparison.csv`` (per run: time to first progression
and to treatment failure, nadir, final burden and resistant fraction, cumulative dose absolute
[µM of plasma] and relative to the continuous schedule, fraction of time off drug, holidays,
whether the tumour was controlled, lines used, wall time; then the burden and resistant fraction
at each of ``treatment.report_times``), prints it, and draws ``comparison.png`` (the burden
curves of all runs on one log axis, in cells, with the detection limit) and ``burden_holidays.png`` (one panel per run, its treatment
holidays shaded).

A swept value may be a YAML mapping or list: the values are split at the commas outside
brackets, so ``--sweep 'treatment.lines.0.adapt=null,{every: 1 week, holiday: {}}'`` is two
arms.

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
from .batch import Stopped, agree as _agree, split
from .params import split_top as _split_top

COLUMNS = ["run", "config", "overrides", "time_to_progression_days",
           "time_to_treatment_failure_days", "nadir", "nadir_day", "final_burden",
           "final_resistant_fraction", "cumulative_dose_uM", "relative_dose", "off_drug_fraction",
           "holidays", "controlled", "lines_used", "wall_time_seconds", "ranks"]


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
    vals = [v.strip() for v in _split_top(values) if v.strip()]
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
            label = "__".join([given or scen.name] + [_slug(o) for o in combo])
            runs.append(RunPlan(unique(label), None if isinstance(config, Scenario) else Path(config),
                                tuple(combo), scen))
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

    from ..problem import Problem, StopSignals, logging_for

    logger = log.get()
    runs = plan(configs, list(sweeps), list(overrides), labels)  # every rank reads every file alike
    inputs = [r.config for r in runs if r.config is not None] + [
        Path(r.scenario.mesh.path) for r in runs if getattr(r.scenario.mesh, "path", None) is not None]
    if out is not None:
        outputs.check_directory(out, comm, overwrite, inputs)
    groups = min(comm.size, len(runs))
    color, sub = split(comm, groups)
    try:
        mine = [i for i in range(len(runs)) if i % groups == color]
        failure = None
        with logging_for(True):  # the runs report themselves when they start
            for i in mine:
                if runs[i].results is not None:
                    continue
                try:
                    Problem(runs[i].scenario, sub, max_memory=max_memory).initialise()
                except ScenarioError as exc:  # agreed within the group by the set-up itself
                    failure = (i, f"run {runs[i].name} ({runs[i].config}): {exc}")
                    break
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
                    done.append((i, r.results.summary, _results_curve(r.results)))
                    continue
                # a signal noted between runs, on any rank of the group: start no more runs
                noted = sub.allreduce(between.received or 0, op=MPI.MAX)
                if noted and stop is None:
                    stop = (noted, None)
                if stop is not None:
                    break
                if sub.rank == 0:
                    log.get().info(f"[{r.name}] starting on {sub.size} rank(s)")
                try:
                    with logging_for(True):
                        problem = Problem(r.scenario, sub, None if out is None else out / r.name,
                                          overwrite=overwrite, max_memory=max_memory,
                                          inputs=inputs).initialise()
                        summary = problem.run()
                except ScenarioError as exc:  # a run stopped (RunError): the others finish theirs
                    kept = f"; the other runs' results are in {out}" if out is not None else ""
                    failure = (i, f"run {r.name} stopped: {exc}{kept}")
                    break
                if "signal" in summary:       # checkpointed (with an output directory): resumable
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
        reports = []
        for i, r in enumerate(runs):
            s = by_index[i][0]
            rows.append(row(r, s))
            for rep in s.get("reports", []):
                day = f"{rep['time_hours'] / 24.0:g}"
                rows[-1][f"burden_day_{day}"] = rep["burden"]
                rows[-1][f"resistant_fraction_day_{day}"] = rep["resistant_fraction"]
                for k in (f"burden_day_{day}", f"resistant_fraction_day_{day}"):
                    if k not in reports:
                        reports.append(k)
    if comm.rank == 0 and out is not None:
        with open(out / "comparison.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS + reports, restval="")
            w.writeheader()
            w.writerows(rows)
        curves = {_legend(r): by_index[i][1] for i, r in enumerate(runs)}
        unit = "cells" if all(c[2] == "cells" for c in curves.values()) else "µm^d (∫ N_tot dx)"
        limits = {c[3] for c in curves.values()}
        outputs.plot_series(out / "comparison.png", None, {k: c[:2] for k, c in curves.items()},
                            f"tumour burden [{unit}]", "tumour burden per run", logy=True,
                            size=(10, 5), **_detection(limits, unit))
        plot_holidays(out / "burden_holidays.png",
                      {r.name: (by_index[i][1], by_index[i][0]) for i, r in enumerate(runs)})
        (out / "comparison.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
        logger.info(text_table(rows))
        logger.info(f"compare: wrote {out / 'comparison.csv'}, {out / 'comparison.png'} and "
                    f"{out / 'burden_holidays.png'}")
    return comm.bcast(rows, root=0)


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


def _detection(limits: set, unit: str) -> dict:
    """The plot's detection line: drawn when every run has the same limit."""
    if len(limits) != 1 or None in limits:
        return {}
    (limit,) = limits
    unit = "cell" if unit == "cells" and limit == 1 else unit
    return {"detection": limit, "detection_label": f"detection limit ({limit:.3g} {unit})"}


def _results_curve(results) -> tuple:
    """What :func:`_burden_cells` gives for a finished run handed in as results."""
    ts = results.timeseries
    t = ts["t"].to_numpy(dtype=float)
    cells = ts["burden_cells"] if "burden_cells" in ts.columns else None
    if cells is None or cells.isna().any() or (cells.astype(str) == "").any():
        return t, ts["burden"].to_numpy(dtype=float), "µm^d", None
    limit = results.summary.get("detection_limit_cells")
    return t, cells.to_numpy(dtype=float), "cells", limit


def _burden_cells(problem) -> tuple:
    """(t [hour], burden, its unit, the detection limit in it or None) of a finished run: in
    cells when the run counts cells, else as the amount ∫ N_tot dx [µm^d]."""
    scale = problem.protocol.scale
    t, burden = problem.curve("burden")
    if scale is None:
        return t, burden, "µm^d", None
    return (t, burden * scale.cells(1.0), "cells",
            scale.in_cells(problem.scenario.treatment.detection_limit))


def _per_drug(values: dict | None):
    """A per-drug metric as one cell: the number for one drug, 'a=1; b=2' for several."""
    if not values:
        return ""
    if len(values) == 1:
        (v,) = values.values()
        return "" if v is None else v
    return "; ".join(f"{d}={'' if v is None else f'{v:.6g}'}" for d, v in values.items())


def row(r: RunPlan, s: dict) -> dict:
    """The comparison row of run ``r`` from its summary ``s`` (times in days)."""
    ttp, ttf = s.get("time_to_progression_hours"), s.get("time_to_treatment_failure_hours")
    return {
        "run": r.name, "config": "" if r.config is None else str(r.config),
        "overrides": " ".join(r.overrides),
        "time_to_progression_days": "" if ttp is None else ttp / 24.0,
        "time_to_treatment_failure_days": "" if ttf is None else ttf / 24.0,
        "nadir": s.get("nadir_burden"), "nadir_day": (s.get("nadir_time_hours") or 0.0) / 24.0,
        "final_burden": s.get("final_burden"),
        "final_resistant_fraction": s.get("final_resistant_fraction"),
        "cumulative_dose_uM": _per_drug(s.get("cumulative_dose_uM")),
        "relative_dose": _per_drug(s.get("relative_dose")),
        "off_drug_fraction": s.get("off_drug_fraction", ""),
        "holidays": s.get("holidays", ""),
        "controlled": "" if s.get("controlled") is None else int(s["controlled"]),
        "lines_used": s.get("lines_used"), "wall_time_seconds": s.get("wall_time_seconds"),
        "ranks": s.get("ranks"),
    }


#: The columns of the printed table: (column, heading, format)
_SHOWN = [("time_to_progression_days", "TTP [day]", "{:.0f}"),
          ("time_to_treatment_failure_days", "TTF [day]", "{:.0f}"),
          ("cumulative_dose_uM", "dose [uM]", "{:.4g}"), ("relative_dose", "rel. dose", "{:.3f}"),
          ("off_drug_fraction", "off drug", "{:.3f}"), ("holidays", "holidays", "{}"),
          ("final_resistant_fraction", "resistant", "{:.3f}"), ("controlled", "controlled", "{}")]


def text_table(rows: list[dict]) -> str:
    """The metrics of every run as a text table (an empty time: no progression, '-')."""
    def cell(v, fmt):
        if v == "" or v is None:
            return "-"
        try:
            return fmt.format(v)
        except (ValueError, TypeError):
            return str(v)
    head = ["run"] + [h for _, h, _ in _SHOWN]
    body = [[r["run"]] + [cell(r.get(k), f) for k, _, f in _SHOWN] for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths)))
             for line in [head] + body]
    return "\n".join(lines)


def plot_holidays(path: Path, runs: dict) -> None:
    """One panel per run: its burden against time [day], its treatment holidays shaded and its
    first progression marked. ``runs`` maps a name to ((times [hour], burdens, their unit, the
    detection limit in it or None), summary)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = max(len(runs), 1)
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.9 * n + 0.6), dpi=110, sharex=True, squeeze=False)
    for ax, (name, ((t, b, unit, limit), s)) in zip(axes[:, 0], runs.items()):
        ax.plot(np.asarray(t) / 24.0, b, color="C0", lw=1.5)
        if limit is not None:
            ax.axhline(limit, color="0.4", ls=":", lw=1, label="detection limit")
        for k, (a, e) in enumerate(s.get("holiday_intervals_hours", [])):
            ax.axvspan(a / 24.0, e / 24.0, color="C2", alpha=0.25, lw=0,
                       label="holiday" if k == 0 else None)
        ttp = s.get("time_to_progression_hours")
        if ttp is not None:
            ax.axvline(ttp / 24.0, color="C3", ls="--", lw=1, label="progression")
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_ylabel(f"burden [{unit}]", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time [day]")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
