"""Forecasts from a fit: ``tme forecast FITDIR --strategy NAME=SPEC ... --samples N --out DIR``.

Parameter sets are drawn from the fit's Laplace distribution: a Gaussian in the scaled
coordinates z (mean the optimum, covariance ``fit.json``'s ``matrix_z``), which is log-normal in
θ for a log parameter, truncated to the bounds (a draw outside [0, 1]^p is drawn again). Every
sample runs under every strategy (the same N parameter sets for each: the strategies are
compared on the same patients), through the study engine (:func:`tme.studies.batch.run_batch`):
concurrently on groups of ranks, each finished run kept in ``DIR/runs/`` so that the same
command on the same ``DIR`` continues where it stopped, a failed run recorded, not fatal.

A strategy is the fitted scenario (``FITDIR/fitted.yaml``) changed by, in the order given:

- a scenario fragment, ``NAME=FILE.yaml``: a YAML mapping of sections merged into the scenario
  (a mapping key by key, recursively; anything else — a list such as ``treatment.lines``, a
  value — replaces what was there), e.g. a ``treatment:`` section with other lines, or a
  ``drugs:`` section adding a drug;
- ``--set``-style overrides, ``NAME=key.path=value``, e.g.
  ``adaptive=treatment.lines.0.adapt={every: 1 week, holiday: {}}``;
- nothing, ``NAME=`` (the fitted scenario as it is: the patient's actual line).

``--strategy`` may name the same NAME several times: its changes add up. The fitted parameters
are applied on top of every strategy (a strategy that changes a fitted key is refused), and
``--end`` sets ``time.end`` of every run (the forecast's horizon).

Outputs (rank 0, when every run has finished): ``samples.csv`` (per run: strategy, sample, the
parameter values, ok, error, time to progression, final burden and resistant fraction),
``forecast.csv`` (per strategy: runs, failed, the fraction that progressed, the median and 90 %
prediction band — 5th to 95th percentile — of the time to progression, of the final resistant
fraction and of the final burden), ``bands.csv`` (per strategy and day of a common grid: the
median and 90 % band of the burden), ``forecast.png`` (one band per strategy on a log axis in
the burden's unit, the measurements over it), ``forecast.json`` (the plan and the table).
A time to progression is censored at the run's end when it did not progress: its percentiles
are then given only where they fall on progressed runs (else empty: "not reached").
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from .. import log as tme_log
from ..config.scenario import load, set_key, validate
from ..config.spec import ScenarioError
from ..config.units import parse_quantity
from . import strategies as strategies_
from .fit import Parameter
from .strategies import Strategy

#: The files tme forecast writes beside runs/ (replaced by --overwrite, nothing else)
FORECAST_FILES = ("samples.csv", "forecast.csv", "bands.csv", "forecast.png", "forecast.json")
#: How a strategy without changes (NAME=) is described
AS_FITTED = "the fitted scenario as it is"
#: Points of the common time grid of the bands
GRID = 241


def parse_strategies(items) -> list[Strategy]:
    """``--strategy`` items (:func:`tme.studies.strategies.parse`: ``NAME=FILE.yaml``,
    ``NAME=key.path=value`` or ``NAME=``, the fitted scenario), or a dict of the Python form
    (:func:`tme.studies.strategies.from_python`) -> strategies in order."""
    out = strategies_.from_python(items) if isinstance(items, dict) else strategies_.parse(items)
    if not out:
        raise ScenarioError("tme forecast: name at least one --strategy NAME=FILE.yaml|key.path=value "
                            "(NAME= for the fitted scenario as it is)")
    return out


class Plan:
    """What a forecast runs: the fitted scenario, the strategies, the samples."""

    def __init__(self, fitdir: Path, strategies: list[Strategy], samples: int, seed: int,
                 end: str | None = None):
        self.fitdir = Path(fitdir)
        try:
            self.report = json.loads((self.fitdir / "fit.json").read_text())
        except OSError:
            raise ScenarioError(f"tme forecast: {self.fitdir}: no fit.json (not the --out of a tme fit)") from None
        except ValueError as exc:
            raise ScenarioError(f"tme forecast: {self.fitdir / 'fit.json'}: not readable ({exc})") from None
        self.scenario = load(self.fitdir / "fitted.yaml")
        if not isinstance(samples, int) or samples < 1:
            raise ScenarioError(f"--samples {samples}: at least 1")
        self.samples, self.seed = samples, int(seed)
        self.params = [Parameter(q["key"], _base(q, "low"), _base(q, "high"), _base(q, "value"),
                                 q["scale"] == "log", *_units(q["key"])) for q in self.report["parameters"]]
        self.z = np.array([q["z"] for q in self.report["parameters"]], float)
        cov = self.report["covariance"]["matrix_z"]
        if cov is None or any(v is None for row in cov for v in row):
            raise ScenarioError(f"tme forecast: {self.fitdir / 'fit.json'}: the fit has no covariance "
                                f"(see its identifiability report): there is no distribution to draw from")
        self.cov = np.array(cov, float)
        self.end = None
        if end is not None:
            try:
                self.end = parse_quantity(end, "hour", "day")
            except ValueError as exc:
                raise ScenarioError(f"--end {end}: {exc}") from None
            if self.end <= 0:
                raise ScenarioError(f"--end {end}: must be > 0")
        self.strategies = strategies
        fitted = [p.key for p in self.params]
        self.base = {}
        for st in strategies:
            data, paths = strategies_.apply(self.scenario.model_dump(mode="json", by_alias=True), st)
            for key in paths:
                hit = next((f for f in fitted if strategies_.overlap(key, f)), None)
                if hit:
                    raise ScenarioError(f"--strategy {st.name}: {key} is determined by the fit ({hit}); "
                                        f"the forecast draws it from the fit")
            if self.end is not None:
                data["time"]["end"] = f"{self.end!r} hour"
            scen = validate(data, source=f"--strategy {st.name}")   # refused before any run
            self.base[st.name] = scen.model_dump(mode="json", by_alias=True)

    def draws(self) -> np.ndarray:
        """``samples`` points in [0, 1]^p from N(z, cov) truncated to the box (seeded)."""
        rng = np.random.default_rng(self.seed)
        L = np.linalg.cholesky(self.cov + 1e-300 * np.eye(len(self.z)))
        out, tries = [], 0
        while len(out) < self.samples:
            tries += 1
            if tries > 1000 * self.samples:
                raise ScenarioError(f"tme forecast: fewer than 1 in 1000 draws of the fit's distribution "
                                    f"lie within the bounds; widen the fit's bounds")
            z = self.z + L @ rng.standard_normal(len(self.z))
            if np.all((z >= 0.0) & (z <= 1.0)):
                out.append(z)
        return np.array(out)

    def jobs(self):
        from .batch import Job

        jobs, zs = [], self.draws()
        for st in self.strategies:
            for i, z in enumerate(zs):
                data = copy.deepcopy(self.base[st.name])
                values = {}
                for p, zj in zip(self.params, z):
                    set_key(data, p.key, p.text(p.theta(zj)), how="forecast")
                    values[p.key] = p.shown(p.theta(zj))
                scen = validate(data, source=f"strategy {st.name}, sample {i}")
                jobs.append(Job(f"{st.name}__{i:04d}", scen, {"strategy": st.name, "sample": i, **values}))
        return jobs


def _units(key: str) -> tuple[str, str]:
    from ..config.scenario import quantity_units

    return quantity_units(key) or ("dimensionless", "dimensionless")


def _base(q: dict, what: str) -> float:
    """A value of fit.json (in the parameter's unit) back in base units."""
    from ..config.units import registry

    base, unit = _units(q["key"])
    v = q[what]
    return v if base == "dimensionless" else float(registry().Quantity(v, unit).to(base).magnitude)


def forecast(fitdir, strategies, out, comm=None, *, samples: int = 100, seed: int = 0,
             end: str | None = None, ranks_per_run: int = 1, overwrite: bool = False) -> dict:
    """Run the forecast (``tme forecast``; see the module docstring); returns the table of
    forecast.csv as a list of dicts, on every rank. ``strategies``: ``--strategy`` items, or a
    dict name -> change(s) (:func:`tme.studies.strategies.from_python`: ``"FILE.yaml"``,
    ``"key.path=value"``, ``{key.path: value}``, a list of them, or ``""``/None).
    Collective on ``comm``."""
    from mpi4py import MPI

    from .batch import groups_for, run_batch, study_directory

    comm = MPI.COMM_WORLD if comm is None else comm
    plan = Plan(Path(fitdir), parse_strategies(strategies), int(samples), seed, end)
    groups_for(comm.size, ranks_per_run)
    jobs = plan.jobs()
    inputs = [plan.fitdir / "fit.json", plan.fitdir / "fitted.yaml"] + [
        p for st in plan.strategies for p in st.files]
    resumed = study_directory(Path(out), comm, "forecast", overwrite=overwrite, inputs=inputs,
                              owned=FORECAST_FILES)
    if resumed:   # a directory of another forecast is refused before anything is said or run
        from .batch import RUNS, fingerprint, finished

        err = None
        if comm.rank == 0:
            err = finished(jobs, [fingerprint(j.scenario) for j in jobs], Path(out) / RUNS)[1]
        err = comm.bcast(err, root=0)
        if err:
            raise ScenarioError(err)
    logger = tme_log.get()
    if comm.rank == 0:
        logger.info(f"forecast: {len(plan.strategies)} strateg{'y' if len(plan.strategies) == 1 else 'ies'} "
                    f"x {plan.samples} parameter set(s) from {plan.fitdir / 'fit.json'}"
                    + (" (continuing)" if resumed else ""))
        for st in plan.strategies:
            logger.info(f"  {st.name}: {st.describe(AS_FITTED)}")
    outcomes = run_batch(jobs, comm, ranks_per_run=ranks_per_run, out=Path(out), resume=True,
                         label="forecast")
    table = None
    if comm.rank == 0:
        table = _write(Path(out), plan, jobs, outcomes)
        logger.info(text(table))
        logger.info(f"forecast: wrote {Path(out) / 'forecast.csv'}, bands.csv, samples.csv and forecast.png")
    return comm.bcast(table, root=0)


def _burden_factor(plan: Plan, dim_scale):
    """(factor from the model's burden [µm^d] to the measured unit, its unit)."""
    b = plan.report.get("burden")
    scale = dim_scale
    if b is None:
        return (scale.volume_per_burden / scale.cell_volume, "cells") if scale else (1.0, "µm^d")
    if b["compares"] == "cell":
        return scale.volume_per_burden / scale.cell_volume * b["factor"], b["unit"]
    if b["compares"] == "um**3":
        return scale.volume_per_burden * b["factor"], b["unit"]
    return b["factor"], b["unit"]


def _quantiles(values, q=(0.05, 0.5, 0.95)):
    v = np.sort(np.asarray(values, float))
    if v.size == 0:
        return [None] * len(q)
    out = []
    for p in q:
        x = float(np.quantile(v, p, method="inverted_cdf"))
        out.append(None if not math.isfinite(x) else x)
    return out


def _write(out: Path, plan: Plan, jobs, outcomes) -> list[dict]:
    from .. import outputs
    from .measurements import mesh_dim

    dim = mesh_dim(plan.scenario)
    scale = plan.scenario.cell_scale(dim) if dim is not None else None
    factor, unit = _burden_factor(plan, scale)
    keys = [p.key for p in plan.params]
    rows = []
    for job, o in zip(jobs, outcomes):
        s = o.summary or {}
        ttp = s.get("time_to_progression_hours")
        rows.append({"strategy": job.tags["strategy"], "sample": job.tags["sample"],
                     **{k: job.tags[k] for k in keys}, "ok": int(o.ok), "error": o.error or "",
                     "time_to_progression_days": "" if ttp is None else ttp / 24.0,
                     "progressed": "" if not o.ok else int(ttp is not None),
                     f"final_burden [{unit}]": (o.burden[-1] * factor) if o.ok and o.burden else "",
                     "final_resistant_fraction": o.resistant_fraction[-1] if o.ok and o.resistant_fraction else ""})
    _csv(out / "samples.csv", rows)
    end_days = max((o.times_days[-1] for o in outcomes if o.ok and o.times_days), default=1.0)
    grid = np.linspace(0.0, end_days, GRID)
    table, bands, curves = [], [], {}
    for st in plan.strategies:
        mine = [(j, o) for j, o in zip(jobs, outcomes) if j.tags["strategy"] == st.name]
        good = [o for _, o in mine if o.ok]
        ttp = [(o.summary or {}).get("time_to_progression_hours") for o in good]
        ttp_days = [math.inf if t is None else t / 24.0 for t in ttp]
        lo, med, hi = _quantiles(ttp_days)
        rf = _quantiles([o.resistant_fraction[-1] for o in good if o.resistant_fraction])
        fb = _quantiles([o.burden[-1] * factor for o in good if o.burden])
        table.append({"strategy": st.name, "changes": st.describe(AS_FITTED), "runs": len(mine),
                      "failed": len(mine) - len(good),
                      "progressed_fraction": (sum(t is not None for t in ttp) / len(good)) if good else None,
                      "time_to_progression_days_median": med, "time_to_progression_days_p5": lo,
                      "time_to_progression_days_p95": hi,
                      "final_resistant_fraction_median": rf[1], "final_resistant_fraction_p5": rf[0],
                      "final_resistant_fraction_p95": rf[2],
                      f"final_burden_median [{unit}]": fb[1], f"final_burden_p5 [{unit}]": fb[0],
                      f"final_burden_p95 [{unit}]": fb[2]})
        # the burden of each run on the common grid (log-linear between its rows; NaN past its end)
        curves_here = []
        for o in good:
            t = np.asarray(o.times_days, float)
            b = np.log(np.maximum(np.asarray(o.burden, float) * factor, 1e-300))
            y = np.exp(np.interp(grid, t, b))
            y[(grid > t[-1] + 1e-9) | (grid < t[0] - 1e-9)] = np.nan
            curves_here.append(y)
        curves[st.name] = np.array(curves_here) if curves_here else np.full((0, grid.size), np.nan)
        for k, d in enumerate(grid):
            col = curves[st.name][:, k]
            col = col[np.isfinite(col)]
            p5, p50, p95 = _quantiles(col) if col.size else (None, None, None)
            bands.append({"strategy": st.name, "time_day": float(d), f"median [{unit}]": p50,
                          f"p5 [{unit}]": p5, f"p95 [{unit}]": p95, "runs": int(col.size)})
    _csv(out / "forecast.csv", table)
    _csv(out / "bands.csv", bands)
    outputs.replace_text(out / "forecast.json", json.dumps({
        "fit": str(plan.fitdir), "samples": plan.samples, "seed": plan.seed,
        "end_hours": plan.end, "burden_unit": unit,
        "strategies": [{"name": s.name, "changes": s.describe(AS_FITTED)} for s in plan.strategies],
        "table": table}, indent=2, default=str) + "\n")
    _plot(out / "forecast.png", plan, grid, bands, unit)
    return table


def _csv(path: Path, rows: list[dict]) -> None:
    from .. import outputs

    cols = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else (f"{v:.10g}" if isinstance(v, float) else v)) for k, v in r.items()})
    outputs.replace_text(path, buf.getvalue())


def _plot(path: Path, plan: Plan, grid, bands, unit: str) -> None:
    from ..outputs import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    for n, st in enumerate(plan.strategies):
        rows = [b for b in bands if b["strategy"] == st.name]
        med = np.array([np.nan if b[f"median [{unit}]"] is None else b[f"median [{unit}]"] for b in rows])
        lo = np.array([np.nan if b[f"p5 [{unit}]"] is None else b[f"p5 [{unit}]"] for b in rows])
        hi = np.array([np.nan if b[f"p95 [{unit}]"] is None else b[f"p95 [{unit}]"] for b in rows])
        ax.fill_between(grid, lo, hi, color=f"C{n}", alpha=0.22, lw=0)
        ax.plot(grid, med, color=f"C{n}", lw=1.8, label=f"{st.name}: median, 90 % band")
    data = [r for r in plan.report.get("residuals", []) if r["scale"] == "log"]
    if data:
        ax.plot([r["time_day"] for r in data], [r["data"] for r in data], "o", color="k", ms=4,
                label="measured", zorder=5)
    ax.set_yscale("log")
    ax.set_xlabel("time [day]")
    ax.set_ylabel(f"tumour burden [{unit}]")
    ax.set_title(f"{plan.scenario.name}: forecast of {plan.samples} parameter set(s) drawn from the fit")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def text(table: list[dict]) -> str:
    """The forecast table as printed."""
    def f(v, fmt="{:.3g}"):
        return "-" if v is None or v == "" else fmt.format(v)

    lines = ["strategy        runs failed progressed  TTP [day] median (90 %)      final resistant fraction"]
    for r in table:
        ttp = f"{f(r['time_to_progression_days_median'], '{:.0f}')} ({f(r['time_to_progression_days_p5'], '{:.0f}')}-" \
              f"{f(r['time_to_progression_days_p95'], '{:.0f}')})"
        rf = f"{f(r['final_resistant_fraction_median'])} ({f(r['final_resistant_fraction_p5'])}-" \
             f"{f(r['final_resistant_fraction_p95'])})"
        lines.append(f"{r['strategy']:<15s} {r['runs']:>4d} {r['failed']:>6d} "
                     f"{f(r['progressed_fraction'], '{:.2f}'):>10s}  {ttp:<28s} {rf}")
    return "\n".join(lines)
