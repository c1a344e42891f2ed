"""Global sensitivity of one outcome to scenario parameters: ``tme sensitivity``.

``tme sensitivity CONFIG --vary KEY=LOW..HIGH [--vary ...] [--log KEY] --samples N --output
METRIC [--method sobol|morris] --out DIR`` runs the scenario at a design of parameter values
through the study engine (:func:`tme.studies.batch.run_batch`) and writes:

- ``sensitivity.csv``: per parameter its range and unit, the metric and its unit, and either
  Sobol' first-order and total indices with 95 % bootstrap confidence intervals, or Morris's
  μ* (mean absolute elementary effect), μ and σ;
- ``sensitivity.png``: the indices as bars (with their intervals), the metric and its unit in
  the title;
- ``runs.csv``: every run, its parameter values with units, the metric (and whether it was
  censored), ok/error; ``runs/<name>.json``: each run's outcome (resumable).

Each varied value is drawn uniformly between LOW and HIGH, or uniformly in log with ``--log
KEY``. Sobol' (``scipy.stats.sobol_indices``, the Saltelli 2010 estimators on a scrambled
Sobol' sequence) takes N (a power of 2) base samples and N·(d + 2) runs for d parameters; the
confidence intervals are scipy's bootstrap of those runs (no new run). Morris takes N
trajectories of d + 1 runs on a 4-level grid (step Δ = 2/3 of the normalised range); an
elementary effect is the change of the metric over a step, per whole range (so μ* is in the
metric's unit). Metrics (from the run's summary): ``time_to_progression`` [day] — a run that
never progresses counts as the scenario's end time (time.end, also when a cure ended it early),
a lower bound, flagged ``censored`` in runs.csv —,
``nadir`` and ``final_burden`` [cells; µm^d where the scenario does not count cells] and
``final_resistant_fraction`` [1].
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import log
from ..config.scenario import Scenario, load
from ..config.spec import ScenarioError
from .batch import Job, run_batch, study_directory
from .params import Param, check, convert, quantity, split_key

#: The outcomes a study can take, and where each comes from in a run's summary.
METRICS = ("time_to_progression", "nadir", "final_burden", "final_resistant_fraction")
METHODS = ("sobol", "morris")
#: Files of the study in its --out (removed by --overwrite, with runs/).
FILES = ("sensitivity.csv", "sensitivity.png", "runs.csv")
#: Morris's grid: levels of each normalised parameter, and the step between two runs.
LEVELS = 4
DELTA = LEVELS / (2.0 * (LEVELS - 1))


@dataclass(frozen=True)
class Vary:
    """A varied parameter: its values between ``low`` and ``high`` [param.unit], uniform or
    (``log``) uniform in log."""

    param: Param
    low: float
    high: float
    log: bool = False

    def at(self, u):
        """The value at the fraction ``u`` in [0, 1] of the range (of its log with ``log``)."""
        u = np.asarray(u, dtype=float)
        if self.log:
            return np.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)

    def dist(self):
        """The scipy distribution of its values (for ``scipy.stats.sobol_indices``)."""
        from scipy import stats

        if self.log:
            return stats.loguniform(self.low, self.high)
        return stats.uniform(loc=self.low, scale=self.high - self.low)


def parse_vary(text: str) -> tuple[str, str, str]:
    """``KEY=LOW..HIGH`` -> (key, low, high) as text."""
    form = "KEY=LOW..HIGH with units, e.g. drugs.doxorubicin.emax='0.05 1/hour..0.5 1/hour'"
    key, rest = split_key(text, "--vary", form)
    parts = rest.split("..")
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        raise ScenarioError(f"--vary {text!r}: expected {form}")
    return key, parts[0].strip(), parts[1].strip()


def plan(base: Scenario, vary: list[str], logs=()) -> list[Vary]:
    """The varied parameters, each range read with its unit and checked against ``base``."""
    if not vary:
        raise ScenarioError("tme sensitivity: give at least one --vary KEY=LOW..HIGH")
    out, keys = [], []
    for text in vary:
        key, lo_text, hi_text = parse_vary(text)
        what = f"--vary {key}"
        if key in keys:
            raise ScenarioError(f"{what}: given twice; vary each key once")
        low, unit = quantity(lo_text, what)
        high, hi_unit = quantity(hi_text, what)
        high = convert(high, hi_unit, unit, what)
        if not low < high:
            raise ScenarioError(f"{what}: LOW {lo_text!r} must be below HIGH {hi_text!r}")
        param = Param(key, unit)
        check(base, param, (low, high), what)
        keys.append(key)
        out.append(Vary(param, low, high, key in set(logs)))
    for key in logs:
        if key not in keys:
            raise ScenarioError(f"--log {key}: not a varied key; varied: {', '.join(keys)}")
    for v in out:
        if v.log and not v.low > 0:
            raise ScenarioError(f"--log {v.param.key}: a log-scaled range needs LOW > 0 (got "
                                f"{v.param.text(v.low)})")
    return out


def metric_unit(metric: str, dim: int | None, cells: bool) -> str:
    if metric == "time_to_progression":
        return "day"
    if metric == "final_resistant_fraction":
        return "1"
    return "cells" if cells else f"µm^{dim or 'd'}"


def metric_of(outcome, metric: str) -> tuple[float, bool]:
    """(the metric of a run's outcome, whether it is censored); NaN for a failed run. A run
    that never progresses has the scenario's end time (``tags['end_hours']``), censored."""
    s = outcome.summary
    if not outcome.ok or s is None:
        return math.nan, False
    if metric == "time_to_progression":
        if "time_to_progression_hours" not in s:
            raise ScenarioError("--output time_to_progression: the scenario has no treatment line, "
                                "so no progression is assessed (treatment.lines)")
        t = s["time_to_progression_hours"]
        # never progressed: censored at the scenario's end time (also when a cure ended the run)
        end = max(s["end_time_hours"], outcome.tags.get("end_hours") or 0.0)
        return (end / 24.0, True) if t is None else (t / 24.0, False)
    if metric == "final_resistant_fraction":
        return float(s["final_resistant_fraction"]), False
    name = {"nadir": "nadir_burden", "final_burden": "final_burden"}[metric]
    if name not in s:
        raise ScenarioError(f"--output {metric}: the scenario has no clones, so no burden")
    return float(s.get(f"{name}_cells", s[name])), False


# --------------------------------------------------------------------------------------------
# The designs and their estimators (an evaluator maps (block, values) to the metric)


def sobol_func(evaluate):
    """The ``func`` of ``scipy.stats.sobol_indices``: it calls ``evaluate(block, X)`` with the
    block name ('A', 'B', 'AB': the order in which scipy asks for them) and the points X
    (m × d) and returns their metric (m,)."""
    blocks = iter(("A", "B", "AB"))

    def func(x):
        values = np.asarray(evaluate(next(blocks), np.asarray(x, dtype=float).T), dtype=float)
        return values[None, :]

    return func


def check_sobol_samples(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n & (n - 1):
        near = 1 << max(1, round(math.log2(n))) if isinstance(n, int) and n > 0 else 64
        raise ScenarioError(f"--samples {n!r}: Sobol' sampling needs a power of 2 (e.g. {near}); "
                            f"it makes N·(d + 2) runs")


def sobol(variables: list[Vary], n: int, evaluate, seed: int, confidence: float = 0.95,
          resamples: int = 999) -> dict:
    """First-order and total Sobol' indices of ``evaluate``'s metric, with ``confidence``
    bootstrap intervals: a dict of arrays S1, S1_low, S1_high, ST, ST_low, ST_high."""
    from scipy import stats

    check_sobol_samples(n)
    rng = np.random.default_rng(seed)
    res = stats.sobol_indices(func=sobol_func(evaluate), n=n, dists=[v.dist() for v in variables], rng=rng)
    boot = res.bootstrap(confidence_level=confidence, n_resamples=resamples)
    s1, st = np.atleast_1d(res.first_order), np.atleast_1d(res.total_order)
    return {"S1": s1, "S1_low": np.atleast_1d(boot.first_order.confidence_interval.low),
            "S1_high": np.atleast_1d(boot.first_order.confidence_interval.high),
            "ST": st, "ST_low": np.atleast_1d(boot.total_order.confidence_interval.low),
            "ST_high": np.atleast_1d(boot.total_order.confidence_interval.high)}


def morris_design(d: int, r: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``r`` Morris trajectories in [0, 1]^d: each (points (d+1) × d, the dimension changed at
    each step, the signed step), on a grid of LEVELS levels with step DELTA."""
    rng = np.random.default_rng(seed)
    starts = np.arange(LEVELS) / (LEVELS - 1)
    out = []
    for _ in range(r):
        x = rng.choice(starts, size=d)
        order = rng.permutation(d)
        points, steps = [x.copy()], []
        for i in order:
            step = DELTA if x[i] + DELTA <= 1.0 + 1e-12 else -DELTA
            x = x.copy()
            x[i] += step
            points.append(x)
            steps.append(step)
        out.append((np.array(points), order, np.array(steps)))
    return out


def morris(variables: list[Vary], r: int, evaluate, seed: int) -> dict:
    """μ*, μ and σ of the elementary effects (metric change per whole normalised range) over
    ``r`` trajectories: a dict of arrays mu_star, mu, sigma."""
    if r < 2:
        raise ScenarioError(f"--samples {r}: Morris needs at least 2 trajectories (σ needs two)")
    d = len(variables)
    design = morris_design(d, r, seed)
    units = np.vstack([p for p, _, _ in design])
    values = np.column_stack([v.at(units[:, i]) for i, v in enumerate(variables)])
    f = np.asarray(evaluate("M", values), dtype=float).reshape(r, d + 1)
    effects = np.zeros((r, d))
    for k, (_, order, steps) in enumerate(design):
        for j, i in enumerate(order):
            effects[k, i] = (f[k, j + 1] - f[k, j]) / steps[j]
    return {"mu_star": np.abs(effects).mean(axis=0), "mu": effects.mean(axis=0),
            "sigma": effects.std(axis=0, ddof=1), "effects": effects}


# --------------------------------------------------------------------------------------------
# The study


@dataclass
class SensitivityResult:
    """``indices``: the table of sensitivity.csv (a pandas DataFrame indexed by parameter);
    ``runs``: that of runs.csv; ``metric``, ``unit``."""

    indices: object
    runs: object
    metric: str
    unit: str


def study(config, vary: list[str], samples: int, output: str, comm, *, method: str = "sobol",
          logs=(), seed: int = 0, overrides=(), out: Path | None = None, overwrite: bool = False,
          ranks_per_run: int = 1, max_memory: float | None = None) -> SensitivityResult:
    """The sensitivity study (see the module docstring); collective, the result on every rank.
    ``config``: a scenario file or a :class:`Scenario`; ``overrides``: ``--set`` items."""
    import pandas as pd

    from .batch import groups_for

    if method == "sobol":
        check_sobol_samples(samples)
    if output not in METRICS:
        raise ScenarioError(f"--output {output!r}: valid metrics: {', '.join(METRICS)}")
    if method not in METHODS:
        raise ScenarioError(f"--method {method!r}: valid: {', '.join(METHODS)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ScenarioError(f"--samples {samples!r}: expected a whole number >= 1")
    groups_for(comm.size, ranks_per_run)
    inputs = []
    if isinstance(config, Scenario):
        base = config.with_changes({}) if not overrides else _with_sets(config, overrides)
    else:
        base = load(config, list(overrides))
        inputs.append(Path(config))
    if getattr(base.mesh, "path", None) is not None:
        inputs.append(Path(base.mesh.path))
    variables = plan(base, list(vary), list(logs))
    if method == "sobol" and len(variables) < 2:
        raise ScenarioError("tme sensitivity: Sobol' indices need two or more --vary (one parameter "
                            "alone has S1 = ST = 1); vary another, or use --method morris")
    if output == "time_to_progression" and not base.treatment.lines:
        raise ScenarioError("--output time_to_progression: the scenario has no treatment line, so no "
                            "progression is assessed (treatment.lines)")
    logger = log.get()
    if out is not None:
        resumed = study_directory(out, comm, "sensitivity", overwrite=overwrite, inputs=inputs, owned=FILES)
        if resumed:
            logger.info(f"sensitivity: continuing the study in {out}")
    records: list[dict] = []
    dims = []

    def measure(problem):
        return {"dim": problem.model.domain.dim}

    def evaluate(block: str, X: np.ndarray) -> np.ndarray:
        jobs = []
        for j, x in enumerate(X):
            changes = {v.param.key: v.param.text(x[i]) for i, v in enumerate(variables)}
            name = f"{block}{j:05d}"
            try:
                scen = base.with_changes(changes)
            except ScenarioError as exc:
                raise ScenarioError(f"sensitivity: run {name}: {exc}") from None
            jobs.append(Job(name, scen, {"block": block, "end_hours": scen.time.end,
                                         **{v.param.key: float(x[i]) for i, v in enumerate(variables)}}))
        outcomes = run_batch(jobs, comm, ranks_per_run=ranks_per_run, out=out, measure=measure,
                             label="sensitivity", max_memory=max_memory)
        values = []
        for job, o, x in zip(jobs, outcomes, X):
            value, censored = metric_of(o, output)
            values.append(value)
            if o.ok:
                dims.append((o.extra.get("dim"), o.burden_cells is not None))
            records.append({"run": o.name, "block": block,
                            **{v.param.header(): float(x[i]) for i, v in enumerate(variables)},
                            output: value, "censored": int(censored), "ok": int(o.ok), "error": o.error or ""})
        failed = [r for r in records if not r["ok"]]
        if failed:
            if comm.rank == 0 and out is not None:
                _write_runs(out / "runs.csv", records)
            raise ScenarioError(f"sensitivity: {len(failed)} of {len(records)} run(s) failed (first: "
                                f"{failed[0]['run']}: {failed[0]['error']}); the indices need every run: "
                                f"narrow the ranges")
        return np.array(values)

    if method == "sobol":
        n_runs = samples * (len(variables) + 2)
        logger.info(f"sensitivity: Sobol' indices of {output} over {len(variables)} parameter(s): "
                    f"{samples} base samples, {n_runs} runs")
        # every rank evaluates the same design (the runs are collective); the bootstrap draws
        # its own resamples, so rank 0's intervals are everyone's
        found = comm.bcast(sobol(variables, samples, evaluate, seed), root=0)
    else:
        logger.info(f"sensitivity: Morris elementary effects of {output} over {len(variables)} "
                    f"parameter(s): {samples} trajectories, {samples * (len(variables) + 1)} runs")
        found = morris(variables, samples, evaluate, seed)
    dim, cells = dims[0] if dims else (None, False)
    unit = metric_unit(output, dim, cells)
    rows = []
    for i, v in enumerate(variables):
        row = {"parameter": v.param.key, "low": v.low, "high": v.high, "unit": v.param.unit or "1",
               "scale": "log" if v.log else "linear", "metric": output, "metric_unit": unit}
        if method == "sobol":
            row.update({k: float(found[k][i]) for k in ("S1", "S1_low", "S1_high", "ST", "ST_low", "ST_high")})
        else:
            row.update({"mu_star": float(found["mu_star"][i]), "mu": float(found["mu"][i]),
                        "sigma": float(found["sigma"][i])})
        rows.append(row)
    if comm.rank == 0 and out is not None:
        with open(out / "sensitivity.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        _write_runs(out / "runs.csv", records)
        plot(out / "sensitivity.png", rows, method, output, unit)
        logger.info(f"sensitivity: wrote {out / 'sensitivity.csv'}, {out / 'sensitivity.png'} and "
                    f"{out / 'runs.csv'}")
    for row in rows:
        if method == "sobol":
            logger.info(f"  {row['parameter']}: S1 = {row['S1']:.3f} [{row['S1_low']:.3f}, "
                        f"{row['S1_high']:.3f}], ST = {row['ST']:.3f} [{row['ST_low']:.3f}, {row['ST_high']:.3f}]")
        else:
            logger.info(f"  {row['parameter']}: mu* = {row['mu_star']:.4g} {unit}, sigma = {row['sigma']:.4g} {unit}")
    return SensitivityResult(pd.DataFrame(rows).set_index("parameter"), pd.DataFrame(records), output, unit)


def _with_sets(scenario: Scenario, overrides) -> Scenario:
    from ..config.scenario import apply_override, validate

    data = scenario.model_dump(mode="json", by_alias=True)
    for item in overrides:
        apply_override(data, item)
    return validate(data, source=f"scenario {scenario.name!r}")


def _write_runs(path: Path, records: list[dict]) -> None:
    if not records:
        return
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)


def plot(path: Path, rows: list[dict], method: str, metric: str, unit: str) -> None:
    """Bars per parameter: S1 and ST with their intervals (Sobol'), or μ* and σ (Morris)."""
    from ..outputs import _pyplot

    plt = _pyplot()
    names = [r["parameter"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(rows) + 2.5), 4.2), dpi=110)
    if method == "sobol":
        for k, (key, label, shift) in enumerate((("S1", "first order S1", -0.2), ("ST", "total ST", 0.2))):
            vals = np.array([r[key] for r in rows])
            err = np.array([[r[key] - r[f"{key}_low"] for r in rows], [r[f"{key}_high"] - r[key] for r in rows]])
            ax.bar(x + shift, vals, 0.4, yerr=np.clip(err, 0, None), capsize=3, label=label, color=f"C{k}")
        ax.set_ylabel("Sobol' index [1] (95 % bootstrap CI)")
        ax.set_title(f"Sobol' indices of {metric} [{unit}]")
        ax.axhline(0, color="0.3", lw=0.8)
    else:
        ax.bar(x - 0.2, [r["mu_star"] for r in rows], 0.4, label="μ* (mean |effect|)", color="C0")
        ax.bar(x + 0.2, [r["sigma"] for r in rows], 0.4, label="σ (spread of effects)", color="C1")
        ax.set_ylabel(f"elementary effect [{unit} per whole range]")
        ax.set_title(f"Morris screening of {metric} [{unit}]")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=15, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _items(changes: dict | None) -> list[str]:
    """``{"key.path": value}`` as ``--set`` items (a value that is not text written as JSON)."""
    import json

    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in (changes or {}).items()]


def sensitivity(config, vary, samples: int, output: str, *, method: str = "sobol", log=(),
                seed: int = 0, changes: dict | None = None, out=None, comm=None,
                overwrite: bool = False, ranks_per_run: int = 1,
                max_memory: float | None = None) -> SensitivityResult:
    """``tme.sensitivity``: the study of ``tme sensitivity`` from Python (collective).

    ``config``: a scenario or a scenario file; ``vary``: ``{"key.path": ("0.05 1/hour",
    "0.5 1/hour")}`` (or ``"LOW..HIGH"`` text, or a list of ``KEY=LOW..HIGH`` items); ``log``:
    keys sampled in log; ``changes``: ``{"key.path": value}`` set in every run (as ``--set``);
    ``out``: the study's directory (None: in memory, nothing written). Returns a
    :class:`SensitivityResult` (``.indices``: the table of sensitivity.csv)."""
    from mpi4py import MPI

    if isinstance(vary, dict):
        items = []
        for key, rng in vary.items():
            if isinstance(rng, str):
                items.append(f"{key}={rng}")
            elif isinstance(rng, (tuple, list)) and len(rng) == 2:
                items.append(f"{key}={rng[0]}..{rng[1]}")
            else:
                raise ScenarioError(f"vary {key}: expected (low, high) or 'LOW..HIGH', got {rng!r}")
    else:
        items = [vary] if isinstance(vary, str) else list(vary)
    return study(config, items, samples, output, MPI.COMM_WORLD if comm is None else comm,
                 method=method, logs=[log] if isinstance(log, str) else list(log), seed=seed,
                 overrides=_items(changes), out=None if out is None else Path(out),
                 overwrite=overwrite, ranks_per_run=ranks_per_run, max_memory=max_memory)
