"""Calibration to a patient's measurements: ``tme fit CONFIG --data CSV --fit KEY=LOW..HIGH``.

The fit chooses the values of the named scenario keys (each between bounds with their unit) that
make the model's burden, resistant fraction and clone fractions at the measurement times match
the measurements (:mod:`tme.studies.measurements`) in the weighted least-squares sense, then says
how well they are determined.

Coordinates. Each parameter θ_j between its bounds [a_j, b_j] is fitted in the scaled coordinate
z_j ∈ [0, 1]: θ = a + z (b − a) on a linear scale, θ = a (b/a)^z on a log scale (``--log KEY``).
The fitted scale u_j is θ_j itself (linear) or ln θ_j (log).

Optimiser. ``scipy.optimize.least_squares`` (method 'trf', the box [0, 1]^p) on the residuals
r_i (burden: (ln B_model − ln B_data)/σ_log; fractions: (f_model − f_data)/sd), cost
½ Σ r_i². The Jacobian is by forward differences in z with step h (backward where z + h would
leave the box): one forward run per parameter, all in one batch of runs (``run_batch``: on 2
groups of ranks two columns run at once), the base run reused (runs are cached by the parameter
vector). With more than one group, a new point is evaluated together with its Jacobian columns
in one batch (one batch per iteration: the columns of a rejected step are lost, but a batch of
p + 1 runs on p + 1 groups takes the time of one run).

The step h. A forward difference has error ≈ h f''/2 + 2η/h for a model output with relative
noise η, smallest at h ≈ 2 sqrt(η / f'') (h ≈ sqrt(η) for f'' of order 1 in the scaled
coordinates). The noise of a forward run is bounded by its time-step control: with
``time.tolerance`` the steps follow the error and may change between neighbouring parameter
values (a step rejected on one side, accepted on the other), changing the output by up to about
the tolerance: η = time.tolerance; with fixed steps the step sequence does not depend on the
parameters and the output is a smooth function of them up to the linear solves' tolerance
(``numerics.rtol``, default 1e-8): η = that. So h = sqrt(η) within [1e-6, 0.01]: 1e-4 with fixed
steps, 0.01 at time.tolerance 1e-3 (the bound: a larger step's truncation error would dominate).
bench/calibration.py measures the difference quotient against h on the patient scenario: with
fixed steps it converges down to h = 1e-7 (the noise is below 1e-8), and there it did under
time.tolerance 1e-3 too, so the bound η = tolerance is pessimistic for a well-mixed tumour (the
controller's steps vary smoothly); where it is, ``--fd-step`` sets h, and ``--time-tolerance``
a tighter tolerance for the fit's runs (and the fitted scenario).

Uncertainty (Laplace approximation). With J_u = ∂r/∂u at the optimum (the Jacobian in z times
dz/du: 1/(b − a), or 1/ln(b/a) for a log parameter), m measurements and p parameters,

    Cov(u) = s² (J_uᵀ J_u)⁻¹,      s² = Σ r_i² / (m − p)

(s² is 1 when the declared standard deviations are right, and corrects them when they are not).
The 95 % interval of u_j is u_j ± t_{0.975, m−p} sqrt(Cov_jj) (Student's t, since s² is
estimated); for a log parameter the interval of θ is exp of it (asymmetric, positive) and its
standard error the delta method's θ sqrt(Cov_jj). The correlation matrix is that of Cov(u).

Identifiability. A parameter whose standard error exceeds its value, a pair with |correlation| >
0.95, a parameter at a bound, or a singular JᵀJ (a parameter that does not change the residuals)
is flagged: printed, and in fit.json.

Failures. A parameter set whose run stops (a NaN, a bad value at set-up) gives non-finite
residuals: the optimiser rejects that step and shrinks its trust region; a failed Jacobian
column is tried backwards, then left zero for that iteration. Every failure is in the history.
Only the start point must run.

In Python: :func:`fit` (``tme.fit``) returns a :class:`FitResult`.
"""

from __future__ import annotations

import functools
import json
import math
import time as wallclock
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import log as tme_log
from ..config.scenario import Scenario, load, quantity_units, resolved_yaml, value_at
from ..config.spec import ScenarioError
from ..config.units import parse_quantity, registry, show
from .measurements import Measurements, mesh_dim, parse_noise, read_measurements

#: The files ``tme fit`` writes in its output directory (replaced by --overwrite, nothing else).
FIT_FILES = ("fit.json", "fit.csv", "fitted.yaml", "fit.png", "history.csv", "residuals.csv")

#: |correlation| above which a pair of parameters is flagged as not separately identifiable
CORRELATION_LIMIT = 0.95

#: Bounds of the finite-difference step in the scaled coordinates
FD_STEP_RANGE = (1e-6, 0.01)


# --------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class Parameter:
    """A fitted scenario key: its bounds and start in base units, its units and scale."""

    key: str
    low: float
    high: float
    start: float
    log: bool
    base: str          # base unit ('dimensionless' for a bare number)
    unit: str          # the unit it is shown in

    def theta(self, z: float) -> float:
        """The value [base units] at scaled coordinate ``z`` ∈ [0, 1]."""
        z = min(max(float(z), 0.0), 1.0)
        if self.log:
            return float(self.low * (self.high / self.low) ** z)
        return float(self.low + z * (self.high - self.low))

    def z(self, theta: float) -> float:
        if self.log:
            return math.log(theta / self.low) / math.log(self.high / self.low)
        return (theta - self.low) / (self.high - self.low)

    def du_dz(self) -> float:
        """d u / d z, u the fitted scale (θ, or ln θ)."""
        return math.log(self.high / self.low) if self.log else self.high - self.low

    def u(self, theta: float) -> float:
        return math.log(theta) if self.log else theta

    def from_u(self, u: float) -> float:
        return math.exp(u) if self.log else u

    def text(self, theta: float) -> str | float:
        """``theta`` as a scenario value: text with its unit, or a bare number."""
        if self.base == "dimensionless":
            return float(theta)
        return show(float(theta), self.base, self.unit)

    def shown(self, theta: float) -> float:
        """``theta`` [base units] in the parameter's unit."""
        if self.base == "dimensionless" or theta is None:
            return theta
        return float(registry().Quantity(theta, self.base).to(self.unit).magnitude)

    def describe(self, theta: float) -> str:
        v = self.shown(theta)
        return f"{v:.6g}" + ("" if self.base == "dimensionless" else f" {self.unit}")


def _bound(text, key: str, base: str, unit: str, what: str) -> float:
    try:
        return parse_quantity(text.strip() if isinstance(text, str) else text, base, unit)
    except ValueError as exc:
        raise ScenarioError(f"--fit {key}: {what} {exc}") from None


def parse_parameter(spec, scenario: Scenario, log_keys=(), starts: dict | None = None) -> Parameter:
    """``KEY=LOW..HIGH`` (or ``(KEY, LOW, HIGH)``) -> a :class:`Parameter` of ``scenario``;
    the bounds are read with the key's unit (a bare number where the key has a dimension is
    refused), the start is the scenario's value or ``starts[KEY]``."""
    if isinstance(spec, str):
        if "=" not in spec:
            raise ScenarioError(f"--fit {spec!r}: expected KEY=LOW..HIGH, e.g. "
                                f"--fit 'drugs.chemo.emax=0.005 1/hour..0.1 1/hour'")
        key, bounds = spec.split("=", 1)
        parts = bounds.split("..")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ScenarioError(f"--fit {spec!r}: expected KEY=LOW..HIGH (two bounds joined by '..')")
        low_text, high_text = parts
    else:
        key, low_text, high_text = spec
    key = key.strip()
    units = quantity_units(key)
    current = value_at(scenario, key)
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise ScenarioError(f"--fit {key}: holds {type(current).__name__} {current!r}, not a number; "
                            f"a fitted key holds one number or quantity")
    base, unit = units if units is not None else ("dimensionless", "dimensionless")
    low = _bound(low_text, key, base, unit, "lower bound:")
    high = _bound(high_text, key, base, unit, "upper bound:")
    is_log = key in set(log_keys)
    p_unit = "" if base == "dimensionless" else f" {unit}"
    if not high > low:
        raise ScenarioError(f"--fit {key}: the upper bound {show(high, base, unit) if p_unit else high} "
                            f"must exceed the lower bound {show(low, base, unit) if p_unit else low}")
    if is_log and not low > 0:
        raise ScenarioError(f"--fit {key}: a log-scale parameter (--log) needs a lower bound > 0")
    start = float(current)
    if starts and key in starts:
        start = _bound(starts[key], key, base, unit, "start (--start):")
    param = Parameter(key, float(low), float(high), start, is_log, base, unit)
    if not low <= start <= high:
        raise ScenarioError(f"--fit {key}: the start {param.describe(start)} lies outside the bounds "
                            f"{param.describe(low)}..{param.describe(high)}; widen the bounds or "
                            f"give --start {key}=VALUE")
    for v in (low, high):   # the bounds must be values the key accepts
        scenario.with_changes({key: param.text(v)})
    return param


def parse_parameters(specs, scenario: Scenario, log_keys=(), starts: dict | None = None) -> list[Parameter]:
    params = [parse_parameter(s, scenario, log_keys, starts) for s in specs]
    if not params:
        raise ScenarioError("tme fit: name at least one parameter: --fit KEY=LOW..HIGH")
    keys = [p.key for p in params]
    for k in keys:
        if keys.count(k) > 1:
            raise ScenarioError(f"--fit {k}: given twice")
    for k in log_keys:
        if k not in keys:
            raise ScenarioError(f"--log {k}: not a fitted key (fitted: {', '.join(keys)})")
    for k in (starts or {}):
        if k not in keys:
            raise ScenarioError(f"--start {k}: not a fitted key (fitted: {', '.join(keys)})")
    return params


def parse_assignments(items, option: str) -> dict:
    """``KEY=VALUE`` items -> {KEY: VALUE}."""
    out = {}
    for item in items or ():
        if isinstance(item, str):
            if "=" not in item:
                raise ScenarioError(f"{option} {item!r}: expected KEY=VALUE")
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
    return out


# --------------------------------------------------------------------------------------------
# What a forward run gives the fit


@dataclass
class Evaluation:
    """One forward run, as the fit uses it: ``observed[k]`` the model at measurement time k
    (burden [µm^d], resistant fraction, clone amounts whole and per region), None for a time
    the run did not reach; the run's curve (times [hour], burden [µm^d], resistant fraction)."""

    ok: bool
    error: str | None = None
    observed: list | None = None
    dim: int | None = None
    times_hours: list = field(default_factory=list)
    burden: list = field(default_factory=list)
    resistant_fraction: list = field(default_factory=list)
    summary: dict | None = None


def observe(problem, times: list[float]) -> dict:
    """The model at each of ``times`` [hour], from the run's time-series rows: the rows at
    those times exist, since the fit makes them report times (milestones the steps land on).
    JSON-serialisable; a time the run did not reach is None."""
    rows = problem.series.rows
    tol = problem.clock.tol
    found, k = [], 0
    for t in times:
        while k < len(rows) and rows[k]["t"] < t - tol:
            k += 1
        row = rows[k] if k < len(rows) and abs(rows[k]["t"] - t) <= tol else None
        if row is None:
            found.append(None)
            continue
        names = problem.model.clone_names
        found.append({
            "t": row["t"], "burden": row["burden"], "resistant_fraction": row["resistant_fraction"],
            "clones": {c: row[f"clone_{c}"] for c in names},
            "regions": {r: {c: row[f"clone_{c}@{r}"] for c in names} for r in problem.model.region_mass},
        })
    return {"dim": problem.model.domain.dim, "observed": found}


Evaluator = Callable[[list[tuple[str, Scenario]]], list[Evaluation]]


def batch_evaluator(comm, times: list[float], ranks_per_run: int = 1, label: str = "fit") -> Evaluator:
    """Forward runs through the study engine: a list of (name, scenario) runs on groups of
    ``ranks_per_run`` ranks, every evaluation returned on every rank (collective)."""
    from .batch import Job, groups_for, run_batch

    measure = functools.partial(observe, times=list(times))
    groups = groups_for(comm.size, ranks_per_run)

    def evaluate(runs):
        jobs = [Job(name, scen) for name, scen in runs]
        logger = tme_log.get()
        level = logger.level
        logger.setLevel(max(level, 40))   # the fit reports each evaluation and each failed run
        try:
            outcomes = run_batch(jobs, comm, ranks_per_run=ranks_per_run, out=None, measure=measure,
                                 resume=False, label=label)
        finally:
            logger.setLevel(level)
        return [_evaluation(o) for o in outcomes]

    evaluate.groups = groups
    return evaluate


def _evaluation(outcome) -> Evaluation:
    if not outcome.ok:
        return Evaluation(False, outcome.error or "the run failed")
    extra = outcome.extra or {}
    return Evaluation(True, None, extra.get("observed"), extra.get("dim"),
                      [t * 24.0 for t in outcome.times_days], list(outcome.burden),
                      list(outcome.resistant_fraction), outcome.summary)


# --------------------------------------------------------------------------------------------
# The fit


@dataclass
class Start:
    """One start of the optimiser and where it ended."""

    z0: list
    z: list | None = None
    cost: float | None = None
    status: str = ""
    evaluations: int = 0
    iterations: int = 0
    error: str | None = None


class Calibration:
    """The weighted least-squares problem of one scenario and one patient's measurements.

    ``evaluate`` runs forward runs (collective; see :func:`batch_evaluator`); everything else is
    arithmetic on the residuals, identical on every rank."""

    def __init__(self, scenario: Scenario, measurements: Measurements, params: list[Parameter],
                 evaluate: Evaluator, fd_step: float | None = None, comm=None,
                 record: Path | None = None):
        self.measurements, self.params, self.evaluate = measurements, params, evaluate
        self.comm = comm
        self.scenario = prepare(scenario, measurements)
        self.dim = mesh_dim(self.scenario)
        measurements.check(self.scenario, self.dim)
        self.eta = noise_level(self.scenario)
        self.h = float(fd_step) if fd_step is not None else default_step(self.eta)
        if not 0 < self.h <= 0.5:
            raise ScenarioError(f"--fd-step {fd_step}: the step is a fraction of each parameter's "
                                f"scaled range, in (0, 0.5]")
        self.groups = getattr(evaluate, "groups", 1)
        self.cache: dict[bytes, tuple[Evaluation, np.ndarray]] = {}
        self.history: list[dict] = []
        #: ``history.csv`` appended as the fit goes (rank 0), one whole row per evaluation
        self.record = None if record is None else Path(record)
        self._record_columns: list[str] | None = None
        #: the fit's StopSignals (set by the caller while the fit runs), or None
        self.signals = None
        self.failures: list[dict] = []
        self.runs = 0
        self.iteration = 0
        self._names = 0
        self.data = np.concatenate([np.asarray(o.values, float) for o in measurements.observables])
        self.sigma = np.concatenate([np.asarray(o.sigmas, float) for o in measurements.observables])
        self.m = self.data.size
        self.logger = tme_log.get()

    # -- scenarios and runs ----------------------------------------------------------------------
    def values(self, z) -> dict[str, float]:
        return {p.key: p.theta(zj) for p, zj in zip(self.params, z)}

    def scenario_at(self, z) -> Scenario:
        """The scenario with the parameters at ``z`` (as ``with_changes`` makes it, from the
        scenario's mapping written out once)."""
        import copy

        from ..config.scenario import set_key, validate

        if getattr(self, "_mapping", None) is None:
            self._mapping = self.scenario.model_dump(mode="json", by_alias=True)
        data = copy.deepcopy(self._mapping)
        for p, zj in zip(self.params, z):
            set_key(data, p.key, p.text(p.theta(zj)), how="--fit")
        return validate(data, source=f"scenario {self.scenario.name!r} with fitted values")

    def _run(self, points: list[np.ndarray]) -> list[tuple[Evaluation, np.ndarray]]:
        """Evaluate the points not yet cached, in one batch; returns (evaluation, residuals) of
        every point, from the cache where it was there."""
        todo, keys = [], []
        for z in points:
            key = np.asarray(z, float).tobytes()
            if key not in self.cache and key not in keys:
                keys.append(key)
                todo.append(np.asarray(z, float))
        if todo:
            runs = []
            for z in todo:
                self._names += 1
                try:
                    scen = self.scenario_at(z)
                except ScenarioError as exc:   # a value the scenario refuses: a failed run
                    scen = exc
                runs.append((f"fit_{self._names:05d}", scen))
            good = [(n, s) for n, s in runs if isinstance(s, Scenario)]
            self._check_stop()
            results = iter(self.evaluate(good) if good else [])
            self.runs += len(good)
            for (name, scen), key, z in zip(runs, keys, todo):
                ev = next(results) if isinstance(scen, Scenario) else Evaluation(False, str(scen))
                r = self.residuals(ev)
                if not ev.ok or not np.all(np.isfinite(r)):
                    self.failures.append({"run": name, "parameters": self._shown(z),
                                          "error": ev.error or "non-finite residuals"})
                    if self._rank0():
                        self.logger.warning(f"fit: run {name} at {self._text(z)} failed: "
                                            f"{ev.error or 'non-finite residuals'} (counted as a "
                                            f"rejected point)")
                self.cache[key] = (ev, r)
        return [self.cache[np.asarray(z, float).tobytes()] for z in points]

    def _rank0(self) -> bool:
        return self.comm is None or self.comm.rank == 0

    def residuals(self, ev: Evaluation) -> np.ndarray:
        """The weighted residuals of one run (NaN everywhere for a failed run or one that did not
        reach every measurement time)."""
        if not ev.ok or ev.observed is None:
            return np.full(self.m, np.nan)
        missing = [k for k, o in enumerate(ev.observed) if o is None]
        if missing:
            t = self.measurements.times[missing[0]]
            ev.ok = False
            ev.error = (f"the run ended before the measurement at day {t / 24.0:g} (a cure or "
                        f"stop ends it; see treatment.stop)")
            return np.full(self.m, np.nan)
        scale = self.scenario.cell_scale(ev.dim)
        parts = []
        for o, in_unit in ((o, self.measurements.model_values(o, ev.observed, scale, ev.dim))
                           for o in self.measurements.observables):
            model = np.asarray(in_unit, float)
            data = np.asarray(o.values, float)
            sig = np.asarray(o.sigmas, float)
            if o.log_scale:
                parts.append((np.log(np.maximum(model, 1e-300)) - np.log(data)) / sig)
            else:
                parts.append((model - data) / sig)
        return np.concatenate(parts)

    # -- the optimiser's callables ---------------------------------------------------------------
    def fun(self, z) -> np.ndarray:
        z = np.asarray(z, float)
        points = [z] + (self._columns(z)[0] if self.groups > 1 else [])
        seen = z.tobytes() in self.cache
        ev, r = self._run(points)[0]
        cost = 0.5 * float(r @ r) if np.all(np.isfinite(r)) else None
        if seen:   # the optimiser asking again for a point it was given (its start): no new row
            return r if cost is not None else np.full(self.m, np.inf)
        self.history.append({"evaluation": len(self.history) + 1, "iteration": self.iteration,
                             **{f"z_{p.key}": float(zj) for p, zj in zip(self.params, z)},
                             **self._shown(z), "cost": cost, "ok": cost is not None,
                             "runs": self.runs, "error": None if cost is not None else ev.error})
        self._append_record(self.history[-1])
        if self._rank0():
            self.logger.info(f"fit: evaluation {len(self.history)} (iteration {self.iteration}): "
                             f"{self._text(z)}: cost {'failed' if cost is None else f'{cost:.6g}'}; "
                             f"{self.runs} runs")
        return r if cost is not None else np.full(self.m, np.inf)

    def _check_stop(self) -> None:
        """Raise Stopped (every rank) when a signal came between two batches of runs (noted by
        :attr:`signals`, which the fit holds while it runs; inside a batch the batch's own
        handlers note it and the batch stops)."""
        if self.signals is None:
            return
        from .batch import Stopped

        noted = self.signals.received or 0
        if self.comm is not None:
            from mpi4py import MPI

            noted = self.comm.allreduce(noted, op=MPI.MAX)
        if noted:
            raise Stopped(int(noted), "stopped between two batches of runs")

    def _append_record(self, row: dict) -> None:
        """Append ``row`` to :attr:`record` (rank 0) with one write: a fit killed at any moment
        keeps every evaluation it finished, each a whole row (the columns of the first)."""
        if self.record is None or not self._rank0():
            return
        import os

        from .. import outputs

        if self._record_columns is None:
            self._record_columns = list(row)
            outputs.replace_text(self.record, ",".join(self._record_columns) + "\n")
        fd = os.open(self.record, os.O_WRONLY | os.O_APPEND)
        try:
            outputs.append_line(fd, ",".join(_csv(row.get(c)) for c in self._record_columns) + "\n")
        finally:
            os.close(fd)

    def _columns(self, z) -> tuple[list[np.ndarray], list[float]]:
        """The points of the forward-difference columns at ``z`` and their signed steps."""
        points, steps = [], []
        for j in range(len(self.params)):
            h = self.h if z[j] + self.h <= 1.0 else -self.h
            zj = z.copy()
            zj[j] = z[j] + h
            points.append(zj)
            steps.append(h)
        return points, steps

    def jac(self, z) -> np.ndarray:
        """The forward-difference Jacobian dr/dz at ``z``: one batch of runs (cached points reused)."""
        z = np.asarray(z, float)
        self.iteration += 1
        points, steps = self._columns(z)
        results = self._run([z] + points)
        _, r0 = results[0]
        J = np.zeros((self.m, len(self.params)))
        retry = []
        for j, ((_, rj), h) in enumerate(zip(results[1:], steps)):
            if np.all(np.isfinite(rj)):
                J[:, j] = (rj - r0) / h
            else:
                retry.append(j)
        if retry:   # the other side of z (the step may have left what the model can run)
            back = []
            for j in retry:
                zj = z.copy()
                zj[j] = z[j] - steps[j]
                back.append(zj if 0.0 <= zj[j] <= 1.0 else None)
            results = self._run([b for b in back if b is not None])
            it = iter(results)
            for j, b in zip(retry, back):
                rj = next(it)[1] if b is not None else None
                if rj is not None and np.all(np.isfinite(rj)):
                    J[:, j] = (rj - r0) / (-steps[j])
                else:
                    self.failures.append({"jacobian_column": self.params[j].key, "iteration": self.iteration,
                                          "error": "both difference runs failed; the column is zero "
                                                   "(the parameter stays put this iteration)"})
        self.last_jacobian = (z.tobytes(), J)
        return J

    # -- one start, several starts ---------------------------------------------------------------
    def start_point(self) -> np.ndarray:
        return np.array([p.z(p.start) for p in self.params], float)

    def solve(self, starts: list[np.ndarray], max_evaluations: int = 100, xtol: float = 1e-8,
              ftol: float = 1e-8, gtol: float = 1e-8) -> tuple[Start, list[Start]]:
        """Least squares from each start; the best (lowest cost) and every start's outcome."""
        from scipy.optimize import least_squares

        done = []
        for k, z0 in enumerate(starts):
            z0 = np.clip(np.asarray(z0, float), 0.0, 1.0)
            st = Start(z0=z0.tolist())
            before = len(self.history)
            it0 = self.iteration
            r0 = self.fun(z0)
            if not np.all(np.isfinite(r0)):
                ev = self.cache[z0.tobytes()][0]
                st.error = f"the run at the start failed: {ev.error}"
                st.status = "start failed"
                if k == 0 and len(starts) == 1:
                    raise ScenarioError(f"tme fit: the run at the start point ({self._text(z0)}) "
                                        f"failed: {ev.error}")
                done.append(st)
                continue
            if self._rank0() and len(starts) > 1:
                self.logger.info(f"fit: start {k + 1}/{len(starts)} at {self._text(z0)}")
            res = least_squares(self.fun, z0, jac=self.jac, bounds=(0.0, 1.0), method="trf",
                                x_scale=1.0, xtol=xtol, ftol=ftol, gtol=gtol,
                                max_nfev=max_evaluations)
            st.z, st.cost, st.status = res.x.tolist(), float(res.cost), res.message
            st.evaluations, st.iterations = len(self.history) - before, self.iteration - it0
            done.append(st)
        ok = [s for s in done if s.z is not None]
        if not ok:
            raise ScenarioError("tme fit: no start could be run: " + "; ".join(s.error for s in done))
        best = min(ok, key=lambda s: s.cost)
        return best, done

    # -- helpers ---------------------------------------------------------------------------------
    def _shown(self, z) -> dict:
        return {p.key: p.shown(p.theta(zj)) for p, zj in zip(self.params, z)}

    def _text(self, z) -> str:
        return ", ".join(f"{p.key} = {p.describe(p.theta(zj))}" for p, zj in zip(self.params, z))


def prepare(scenario: Scenario, measurements: Measurements | list) -> Scenario:
    """The scenario the fit runs: the measurement times (or ``measurements``, a list of times
    [hour]) added to ``treatment.report_times``, so that every run's steps land on them and its
    time series has a row at each (no interpolation: the model is compared at the times the data
    were taken)."""
    given = measurements.times if isinstance(measurements, Measurements) else list(measurements)
    times = sorted(set(scenario.treatment.report_times) | set(given))
    return scenario.with_changes({"treatment.report_times": [show(t, "hour", "hour") for t in times]})


def noise_level(scenario: Scenario) -> float:
    """The relative noise η of a forward run's output as a function of its parameters: the time
    tolerance with error-controlled steps, else the linear solves' tolerance (fixed steps)."""
    tol = scenario.time.tolerance
    return float(tol) if tol is not None else float(scenario.linear_rtol)


def default_step(eta: float) -> float:
    """The forward-difference step in the scaled coordinates: sqrt(η), within FD_STEP_RANGE."""
    return float(min(max(math.sqrt(eta), FD_STEP_RANGE[0]), FD_STEP_RANGE[1]))


# --------------------------------------------------------------------------------------------
# Uncertainty


def laplace(J_z: np.ndarray, r: np.ndarray, params: list[Parameter], z: np.ndarray) -> dict:
    """The Laplace approximation at the optimum ``z`` (see the module docstring): the covariance
    of the fitted scale u, standard errors, 95 % intervals and correlations; flags."""
    from scipy import stats

    m, p = J_z.shape
    dof = m - p
    du = np.array([q.du_dz() for q in params])
    J_u = J_z / du[None, :]
    theta = np.array([q.theta(zj) for q, zj in zip(params, z)])
    rss = float(r @ r)
    out = {"measurements": m, "parameters": p, "dof": dof, "rss": rss, "flags": []}
    JtJ = J_u.T @ J_u
    sv = np.linalg.svd(J_u, compute_uv=False) if m and p else np.zeros(p)
    rank_tol = max(J_u.shape) * np.finfo(float).eps * (sv[0] if sv.size else 0.0)
    singular = sv.size < p or sv[-1] <= max(rank_tol, 1e-12 * (sv[0] if sv.size else 0))
    out["condition"] = float(sv[0] / sv[-1]) if sv.size == p and sv[-1] > 0 else math.inf
    if dof <= 0:
        out["flags"].append({"parameter": None, "reason": f"{m} measurements for {p} parameters: no "
                             f"degree of freedom left to estimate the uncertainty"})
        out.update(s2=None, t=None, covariance=None, correlation=None, se=[None] * p,
                   interval=[[None, None]] * p)
        return out
    s2 = rss / dof
    t = float(stats.t.ppf(0.975, dof))
    out.update(s2=s2, t=t)
    if singular:
        zero = [q.key for q, col in zip(params, J_u.T) if not np.any(col)]
        which = f" ({', '.join(zero)} does not change the residuals)" if zero else ""
        out["flags"].append({"parameter": None, "reason": f"JᵀJ is singular{which}: the parameters "
                             f"are not identifiable from these data"})
        cov = s2 * np.linalg.pinv(JtJ)
        for j, q in enumerate(params):
            if not np.any(J_u[:, j]) or not np.isfinite(cov[j, j]):
                cov[j, :] = cov[:, j] = np.nan
    else:
        cov = s2 * np.linalg.inv(JtJ)
    sd_u = np.sqrt(np.where(np.diag(cov) >= 0, np.diag(cov), np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sd_u, sd_u)
    se, interval = [], []
    for j, q in enumerate(params):
        u = q.u(theta[j])
        if not np.isfinite(sd_u[j]):
            se.append(None)
            interval.append([None, None])
            continue
        se.append(float(theta[j] * sd_u[j]) if q.log else float(sd_u[j]))
        interval.append([q.from_u(u - t * sd_u[j]), q.from_u(u + t * sd_u[j])])
    out.update(covariance=cov, correlation=corr, se=se, interval=interval, sd_u=sd_u)
    for j, q in enumerate(params):
        if se[j] is not None and se[j] > abs(theta[j]):
            out["flags"].append({"parameter": q.key, "reason": f"standard error {q.describe(se[j])} "
                                 f"exceeds the value {q.describe(theta[j])}"})
        if z[j] <= 1e-9 or z[j] >= 1 - 1e-9:
            out["flags"].append({"parameter": q.key, "reason": f"at its {'lower' if z[j] < 0.5 else 'upper'} "
                                 f"bound {q.describe(theta[j])}: the data may ask for a value outside "
                                 f"the bounds (the interval is that of the unconstrained model)"})
    for i in range(p):
        for j in range(i + 1, p):
            c = corr[i, j]
            if np.isfinite(c) and abs(c) > CORRELATION_LIMIT:
                out["flags"].append({"parameter": f"{params[i].key}, {params[j].key}",
                                     "reason": f"correlation {c:+.3f} (|r| > {CORRELATION_LIMIT}): "
                                               f"the data determine a combination of them, not each"})
    return out


# --------------------------------------------------------------------------------------------
# The result


@dataclass
class FitResult:
    """What :func:`fit` returns (and ``tme fit`` writes): see the attributes.

    ``parameters``: a pandas DataFrame indexed by key, with the fitted value, standard error,
    95 % interval, start and bounds in the parameter's unit (``unit``), its scale and flags;
    ``correlation``: a DataFrame; ``scenario``: the fitted Scenario (``fitted.yaml``);
    ``identifiability``: the flags as lines; ``history``: a DataFrame, one row per evaluation of
    the residuals; ``residuals``: a DataFrame, one row per measurement; ``starts``: each start's
    outcome; ``report``: the dict of fit.json; ``out``: the directory written, or None.
    """

    report: dict
    scenario: Scenario
    calibration: Calibration = field(repr=False)
    best: Evaluation = field(repr=False)
    out: Path | None = None

    @property
    def parameters(self):
        import pandas as pd

        rows = []
        for q in self.report["parameters"]:
            rows.append({"key": q["key"], "value": q["value"], "unit": q["unit"], "se": q["se"],
                         "low_95": q["interval_95"][0], "high_95": q["interval_95"][1],
                         "start": q["start"], "low": q["low"], "high": q["high"], "scale": q["scale"],
                         "flags": "; ".join(q["flags"])})
        return pd.DataFrame(rows).set_index("key")

    @property
    def values(self) -> dict:
        """Fitted value of each key, as scenario text (with its unit)."""
        return {q["key"]: q["text"] for q in self.report["parameters"]}

    @property
    def correlation(self):
        import pandas as pd

        keys = [q["key"] for q in self.report["parameters"]]
        return pd.DataFrame(self.report["correlation"], index=keys, columns=keys)

    @property
    def identifiability(self) -> list[str]:
        return [_flag_line(f) for f in self.report["identifiability"]]

    @property
    def history(self):
        import pandas as pd

        return pd.DataFrame(self.report["history"])

    @property
    def residuals(self):
        import pandas as pd

        return pd.DataFrame(self.report["residuals"])

    @property
    def starts(self) -> list[dict]:
        return self.report["starts"]

    def __repr__(self) -> str:
        return f"FitResult({self.report['scenario']}: " + ", ".join(
            f"{q['key']} = {q['value']:.4g}" for q in self.report["parameters"]) + ")"

    def _repr_html_(self):
        return self.parameters._repr_html_()


def _flag_line(f: dict) -> str:
    return f"{f['parameter']}: {f['reason']}" if f.get("parameter") else f["reason"]


def _report(cal: Calibration, best: Start, starts: list[Start], wall: float, meta: dict) -> tuple[dict, Evaluation]:
    z = np.asarray(best.z, float)
    ev, r = cal._run([z])[0]
    key = z.tobytes()
    J = cal.last_jacobian[1] if getattr(cal, "last_jacobian", (None,))[0] == key else cal.jac(z)
    lap = laplace(J, r, cal.params, z)
    theta = [q.theta(zj) for q, zj in zip(cal.params, z)]
    flags_of = {q.key: [f["reason"] for f in lap["flags"] if f["parameter"] == q.key] for q in cal.params}
    params = []
    for j, q in enumerate(cal.params):
        lo, hi = lap["interval"][j]
        params.append({
            "key": q.key, "unit": "" if q.base == "dimensionless" else q.unit,
            "value": q.shown(theta[j]), "text": q.text(theta[j]), "se": q.shown(lap["se"][j]) if lap["se"][j] is not None else None,
            "interval_95": [q.shown(lo) if lo is not None else None, q.shown(hi) if hi is not None else None],
            "start": q.shown(q.start), "low": q.shown(q.low), "high": q.shown(q.high),
            "scale": "log" if q.log else "linear", "z": float(z[j]), "flags": flags_of[q.key],
        })
    cov = lap["covariance"]
    du = np.array([q.du_dz() for q in cal.params])
    residual_rows = []
    k = 0
    scale = cal.scenario.cell_scale(ev.dim)
    for o in cal.measurements.observables:
        model = cal.measurements.model_values(o, ev.observed, scale, ev.dim)
        for i, row in enumerate(o.rows):
            residual_rows.append({"column": o.column, "unit": o.unit if o.kind == "burden" else "",
                                  "time_day": cal.measurements.times[row] / 24.0,
                                  "line": cal.measurements.lines[row], "data": o.values[i],
                                  "model": model[i], "sigma": o.sigmas[i],
                                  "scale": "log" if o.log_scale else "linear", "residual": float(r[k])})
            k += 1
    report = {
        "scenario": cal.scenario.name, **meta,
        "measurements": cal.m, "cost": 0.5 * lap["rss"], "rss": lap["rss"], "dof": lap["dof"],
        "s2": lap["s2"], "t_quantile_95": lap["t"], "condition_number": lap["condition"],
        "parameters": params,
        "correlation": None if lap["correlation"] is None else _json_matrix(lap["correlation"]),
        "covariance": {
            "matrix": None if cov is None else _json_matrix(cov),
            "scale": "u = θ (linear) or ln θ (log), θ in base units (" + ", ".join(
                f"{q.key}: {q.base}" for q in cal.params) + ")",
            "matrix_z": None if cov is None else _json_matrix(cov / np.outer(du, du)),
            "formula": "Cov(u) = s² (J_uᵀ J_u)⁻¹, s² = Σ r² / (m − p), J_u = ∂r/∂u at the optimum "
                       "(forward differences); 95 % interval u ± t(0.975, m − p) sqrt(Cov_jj), "
                       "exp of it for a log parameter; se(θ) = θ sqrt(Cov_jj) for a log parameter",
        },
        "identifiability": lap["flags"],
        "residuals": residual_rows,
        "fd_step": cal.h, "noise_level": cal.eta,
        "burden": next(({"unit": o.unit, "compares": o.compares, "factor": o.factor}
                        for o in cal.measurements.observables if o.kind == "burden"), None),
        "starts": [{"start": cal._shown(s.z0), "end": None if s.z is None else cal._shown(s.z),
                    "cost": s.cost, "status": s.status, "evaluations": s.evaluations,
                    "iterations": s.iterations, "error": s.error} for s in starts],
        "history": cal.history,
        "failures": cal.failures,
        "runs": cal.runs, "wall_time_seconds": wall,
        "fitted_curve": {"time_day": [t / 24.0 for t in ev.times_hours], "burden_um_d": ev.burden,
                         "resistant_fraction": ev.resistant_fraction},
    }
    return report, ev


def _json_matrix(a: np.ndarray) -> list:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a, float)]


# --------------------------------------------------------------------------------------------
# Writing the results


def write(out: Path, result: FitResult, comm, provenance_record: dict | None = None) -> None:
    """fit.json, fit.csv, fitted.yaml, fit.png, history.csv, residuals.csv into ``out`` (rank 0)."""
    if comm is not None and comm.rank != 0:
        return
    from .. import outputs, provenance

    rep = result.report
    out = Path(out)
    outputs.replace_text(out / "fit.json", json.dumps(rep, indent=2, default=_jsonable) + "\n")
    keys = [q["key"] for q in rep["parameters"]]
    lines = ["key,value,unit,se,low_95,high_95,start,low,high,scale,flags," + ",".join(f"corr_{k}" for k in keys)]
    for i, q in enumerate(rep["parameters"]):
        corr = rep["correlation"][i] if rep["correlation"] is not None else [None] * len(keys)
        cells = [q["key"], q["value"], q["unit"], q["se"], *q["interval_95"], q["start"], q["low"],
                 q["high"], q["scale"], "; ".join(q["flags"]), *corr]
        lines.append(",".join(_csv(c) for c in cells))
    outputs.replace_text(out / "fit.csv", "\n".join(lines) + "\n")
    _table(out / "history.csv", rep["history"])
    _table(out / "residuals.csv", rep["residuals"])
    header = ""
    if provenance_record is not None:
        header = provenance.header(provenance_record)
    header += "# fitted by tme fit to " + str(rep.get("data")) + ":\n" + "".join(
        f"#   {q['key']} = {q['value']:.6g}{' ' + q['unit'] if q['unit'] else ''}"
        + (f" ± {q['se']:.3g} (95 %: {q['interval_95'][0]:.4g}..{q['interval_95'][1]:.4g})"
           if q["se"] is not None else " (no standard error)") + "\n"
        for q in rep["parameters"])
    header += "# treatment.report_times holds the measurement times (the steps land on them)\n"
    outputs.replace_text(out / "fitted.yaml", header + resolved_yaml(result.scenario))
    plot(out / "fit.png", result)


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _csv(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.10g}"
    text = str(v)
    return f'"{text}"' if ("," in text or '"' in text) else text


def _table(path: Path, rows: list[dict]) -> None:
    from .. import outputs

    cols = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    text = ",".join(cols) + "\n" + "".join(",".join(_csv(r.get(c)) for c in cols) + "\n" for r in rows)
    outputs.replace_text(path, text)


def plot(path: Path, result: FitResult) -> None:
    """The data with error bars over the fitted curve (burden on a log axis in the data's unit;
    fractions on their own axis), and the weighted residuals below."""
    from ..outputs import _pyplot

    plt = _pyplot()
    cal, ev, rep = result.calibration, result.best, result.report
    meas = cal.measurements
    scale = cal.scenario.cell_scale(ev.dim)
    fractions = [o for o in meas.observables if o.kind != "burden"]
    burdens = [o for o in meas.observables if o.kind == "burden"]
    panels = (1 if burdens else 0) + (1 if fractions else 0) + 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.6 * panels + 0.6), dpi=120, sharex=True,
                             gridspec_kw={"height_ratios": [3] * (panels - 1) + [1.6]})
    axes = np.atleast_1d(axes)
    t_run = np.asarray(ev.times_hours) / 24.0
    k = 0
    if burdens:
        ax = axes[k]
        k += 1
        for o in burdens:
            curve = _burden_in(o, np.asarray(ev.burden, float), scale, ev.dim)
            ax.plot(t_run, curve, color="C0", lw=1.6, label="fitted model")
            t = np.asarray([meas.times[i] for i in o.rows]) / 24.0
            v = np.asarray(o.values)
            lo = v * np.exp(-np.asarray(o.sigmas))
            hi = v * np.exp(np.asarray(o.sigmas))
            ax.errorbar(t, v, yerr=[v - lo, hi - v], fmt="o", color="k", ms=4, capsize=2,
                        label="measured (±1 sd)", zorder=4)
            ax.set_ylabel(f"burden [{o.unit}]")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if fractions:
        ax = axes[k]
        k += 1
        if any(o.kind == "resistant_fraction" for o in fractions):
            ax.plot(t_run, ev.resistant_fraction, color="C3", lw=1.4, label="fitted: resistant fraction")
        for n, o in enumerate(fractions):
            t = np.asarray([meas.times[i] for i in o.rows]) / 24.0
            ax.errorbar(t, o.values, yerr=o.sigmas, fmt="s", ms=4, capsize=2, color=f"C{(n + 3) % 10}",
                        mfc="none", label=f"measured: {o.column} (±1 sd)", zorder=4)
            model = meas.model_values(o, ev.observed, scale, ev.dim)
            ax.plot(t, model, "x", color=f"C{(n + 3) % 10}", label=f"model: {o.column}")
        ax.set_ylabel("fraction of the tumour [–]")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7.5)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    for n, col in enumerate(dict.fromkeys(r["column"] for r in rep["residuals"])):
        rows = [r for r in rep["residuals"] if r["column"] == col]
        ax.plot([r["time_day"] for r in rows], [r["residual"] for r in rows], "o", ms=4,
                color=f"C{n}", label=col)
    ax.axhline(0.0, color="0.3", lw=1)
    for y in (-2, 2):
        ax.axhline(y, color="0.6", lw=0.8, ls=":")
    ax.set_ylabel("residual [sd]")
    ax.set_xlabel("time [day]")
    ax.legend(fontsize=7.5, ncols=3)
    ax.grid(alpha=0.3)
    title = ", ".join(f"{q['key'].split('.')[-2]}.{q['key'].split('.')[-1]} = {q['value']:.3g}"
                      + (f" {q['unit']}" if q["unit"] else "") for q in rep["parameters"])
    axes[0].set_title(f"{rep['scenario']}: fit to {Path(str(rep.get('data'))).name}\n{title}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _burden_in(o, burden_um_d: np.ndarray, scale, dim) -> np.ndarray:
    if o.compares == "cell":
        q = burden_um_d * scale.volume_per_burden / scale.cell_volume
    elif o.compares == "um**3":
        q = burden_um_d * scale.volume_per_burden
    else:
        q = burden_um_d
    return q * o.factor


# --------------------------------------------------------------------------------------------
# The entry points


def fit(scenario, data, params, *, log=(), noise=None, start: dict | None = None,
        changes: dict | None = None, overrides=(), out=None, comm=None, ranks_per_run: int = 1,
        multistart: int = 0, seed: int = 0, fd_step: float | None = None,
        time_tolerance: float | None = None, max_evaluations: int = 100, overwrite: bool = False,
        evaluator: Evaluator | None = None, argv=None, quiet: bool = False) -> FitResult:
    """Fit scenario keys to a patient's measurements (``tme.fit``; ``tme fit`` on the command
    line). Collective on ``comm`` (default every rank); every rank gets the result.

    ``scenario``: a Scenario or a scenario file; ``data``: a measurements file (CSV, see
    :mod:`tme.studies.measurements`) or a pandas DataFrame with the same columns (the units in
    the column names); ``params``: ``{key: "LOW..HIGH"}`` (or ``{key: (low, high)}``, or a list of
    ``"KEY=LOW..HIGH"``), bounds with their units; ``log``: keys fitted on a log scale;
    ``noise``: ``"lognormal:cv=0.1"`` or a list/dict of ``--noise`` specs; ``start``: ``{key:
    value}`` instead of the scenario's values; ``changes``: ``{key: value}`` applied to the
    scenario first (``overrides``: the same as ``--set`` items ``"key=value"``); ``out``: write fit.json, fit.csv, fitted.yaml, fit.png there
    (and history.csv, a row per evaluation as the fit goes);
    ``ranks_per_run``: ranks of each forward run (the others run other Jacobian columns
    concurrently); ``multistart``: K more starts from a scrambled Sobol design (``seed``) in the
    scaled box, the best kept; ``fd_step``: the forward-difference step in the scaled
    coordinates (default sqrt of the runs' noise level); ``time_tolerance``: ``time.tolerance``
    of the fit's runs; ``max_evaluations``: of the residuals, per start; ``evaluator``: the
    forward runs (default: the study engine, :func:`batch_evaluator`); ``quiet``: log only
    warnings (the failed runs).
    """
    from mpi4py import MPI

    from ..problem import logging_for

    comm = MPI.COMM_WORLD if comm is None else comm
    logger = tme_log.get()
    if not logger.handlers:
        tme_log.setup(comm.rank, comm.size)
    with logging_for(quiet):
        return _fit(scenario, data, params, log, noise, start, changes, overrides, out, comm,
                    ranks_per_run, multistart, seed, fd_step, time_tolerance, max_evaluations,
                    overwrite, evaluator, argv)


def _fit(scenario, data, params, log, noise, start, changes, overrides, out, comm, ranks_per_run,
         multistart, seed, fd_step, time_tolerance, max_evaluations, overwrite, evaluator, argv):
    started = wallclock.perf_counter()
    config = None
    if isinstance(scenario, (str, Path)):
        config = Path(scenario)
        scenario = load(scenario, list(overrides))
    elif isinstance(scenario, Scenario) and overrides:
        from ..config.scenario import apply_override, validate

        data = scenario.model_dump(mode="json", by_alias=True)
        for item in overrides:
            apply_override(data, item)
        scenario = validate(data, source=f"scenario {scenario.name!r}")
    if not isinstance(scenario, Scenario):
        raise ScenarioError(f"tme.fit: expected a Scenario or a scenario file, got {type(scenario).__name__}")
    if changes:
        scenario = scenario.with_changes(dict(changes))
    if time_tolerance is not None:
        scenario = scenario.with_changes({"time.tolerance": float(time_tolerance)})
    noise_map = {}
    for spec in ([noise] if isinstance(noise, str) else list(noise or [])):
        column, model = parse_noise(spec)
        noise_map[column] = model
    if isinstance(data, (str, Path)):
        data_name = str(data)
        measurements = read_measurements(data, noise_map)
    elif hasattr(data, "to_csv"):
        data_name = "the measurements table"
        measurements = read_measurements(data_name, noise_map, text=data.to_csv(index=False))
    else:
        raise ScenarioError(f"tme.fit: data is a measurements file or a pandas DataFrame, not "
                            f"{type(data).__name__}")
    if isinstance(params, dict):
        specs = [(k, *v) if isinstance(v, (tuple, list)) else f"{k}={v}" for k, v in params.items()]
    else:
        specs = list(params)
    parameters = parse_parameters(specs, scenario, list(log or ()), dict(start or {}))
    if int(multistart) < 0:
        raise ScenarioError(f"--multistart {multistart}: the number of extra starts is >= 0")
    if int(max_evaluations) < 1:
        raise ScenarioError(f"--max-evaluations {max_evaluations}: at least 1")
    if out is not None:
        from .. import outputs

        inputs = [p for p in (config, Path(data_name) if isinstance(data, (str, Path)) else None) if p]
        outputs.check_directory(Path(out), comm, overwrite, inputs, owned=FIT_FILES)
    if evaluator is None:
        evaluator = batch_evaluator(comm, measurements.times, ranks_per_run)
    record = None
    if out is not None:
        # the directory is made now: history.csv grows as the fit goes
        outputs.prepare_directory(Path(out), comm, overwrite, owned=FIT_FILES)
        record = Path(out) / "history.csv"
    cal = Calibration(scenario, measurements, parameters, evaluator, fd_step, comm, record=record)
    starts = [cal.start_point()]
    if multistart:
        starts += list(sobol_starts(len(parameters), int(multistart), int(seed)))
    logger = tme_log.get()
    if comm.rank == 0:
        logger.info(f"fit: {len(parameters)} parameter(s) to {cal.m} measurement(s) from "
                    f"{measurements.path}; {len(starts)} start(s); finite-difference step "
                    f"{cal.h:.3g} of each scaled range (noise level {cal.eta:.3g}); runs on "
                    f"{cal.groups} group(s) of ranks")
    from .batch import Stopped

    from ..problem import StopSignals

    try:
        # a signal between two batches of runs (the arithmetic of the optimiser) is noted too,
        # and stops the fit at the next batch instead of ending the process
        with StopSignals() as cal.signals:
            best, all_starts = cal.solve(starts, max_evaluations=int(max_evaluations))
    except Stopped as exc:
        kept = (f"the evaluations so far are in {record}" if record is not None
                else "nothing written")
        raise Stopped(exc.signal, f"tme: fit stopped by {_signal_name(exc.signal)} after "
                                  f"{len(cal.history)} evaluation(s) ({cal.runs} runs); {kept}: "
                                  f"run tme fit again (with --overwrite) to start afresh") from None
    wall = wallclock.perf_counter() - started
    meta = {"config": None if config is None else str(config), "data": data_name,
            "noise": {k: str(v) for k, v in noise_map.items()}, "ranks": comm.size,
            "ranks_per_run": ranks_per_run, "multistart": int(multistart), "seed": int(seed)}
    report, ev = _report(cal, best, all_starts, wall, meta)
    fitted = cal.scenario_at(np.asarray(best.z, float))
    result = FitResult(report, fitted, cal, ev, None if out is None else Path(out))
    if comm.rank == 0:
        logger.info(summary_text(report))
    if out is not None:
        from .. import outputs, provenance

        prov = provenance.finished(provenance.collect(resolved_yaml(fitted), comm, argv))
        report["provenance"] = prov
        write(Path(out), result, comm, prov)
        if comm.rank == 0:
            logger.info(f"fit: wrote {Path(out) / 'fit.json'}, fit.csv, fitted.yaml (tme run it), "
                        f"fit.png, history.csv and residuals.csv")
        comm.barrier()
    return result


def synthetic(scenario: Scenario, times_days, *, unit: str = "mm^3", cv: float | None = None,
              fractions_at=(), fraction_sd: float = 0.05, seed: int = 0, comm=None,
              comment: str = "") -> str:
    """A measurements file (CSV text) made by the solver: ``scenario`` run once (as the fit runs
    it: the times are report times), its burden at ``times_days`` in ``unit`` with log-normal
    noise of coefficient of variation ``cv`` (ln B = ln B_model + σ ε, σ² = ln(1 + cv²); none
    when None), its resistant fraction at the days ``fractions_at`` with normal noise of
    ``fraction_sd`` (kept in [0, 1]) and that sd as a column; ``seed`` seeds the noise;
    ``comment`` heads the file (each line a '#' comment). Collective on ``comm``."""
    from mpi4py import MPI

    from .measurements import _column_unit

    comm = MPI.COMM_WORLD if comm is None else comm
    hours = [float(d) * 24.0 for d in times_days]
    runs = batch_evaluator(comm, hours)([("synthetic", prepare(scenario, hours))])
    ev = runs[0]
    if not ev.ok or any(o is None for o in ev.observed or [None]):
        raise ScenarioError(f"synthetic data: the run of {scenario.name!r} failed or ended early: "
                            f"{ev.error or 'it did not reach every time'}")
    compares, factor = _column_unit("synthetic data", "burden", unit)
    from .measurements import Observable

    o = Observable("burden", "burden", unit, compares=compares, factor=factor)
    scale = scenario.cell_scale(ev.dim)
    burden = _burden_in(o, np.array([ob["burden"] for ob in ev.observed]), scale, ev.dim)
    rng = np.random.default_rng(seed)
    if cv is not None:
        burden = burden * np.exp(math.sqrt(math.log1p(cv ** 2)) * rng.standard_normal(burden.size))
    at = {float(d) for d in fractions_at}
    head = [f"# {ln}" if ln else "#" for ln in comment.splitlines()]
    cols = f"time [day],burden [{unit}]" + (",resistant_fraction,resistant_fraction_sd" if at else "")
    rows = []
    for d, b, ob in zip(times_days, burden, ev.observed):
        row = f"{float(d):g},{b:.6g}"
        if at:
            if float(d) in at:
                f = min(max(ob["resistant_fraction"] + fraction_sd * rng.standard_normal(), 0.0), 1.0)
                row += f",{f:.4f},{fraction_sd:g}"
            else:
                row += ",,"
        rows.append(row)
    return "\n".join(head + [cols] + rows) + "\n"


def _signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def sobol_starts(p: int, k: int, seed: int) -> np.ndarray:
    """``k`` starts in [0, 1]^p from a scrambled Sobol design (``seed``)."""
    import warnings

    from scipy.stats import qmc

    sampler = qmc.Sobol(d=p, scramble=True, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # balance properties need a power of 2: not needed here
        return sampler.random(k)


def summary_text(rep: dict) -> str:
    """The fitted values, their uncertainty and the flags, as printed."""
    lines = [f"fit: cost {rep['cost']:.6g} at {rep['measurements']} measurement(s), {rep['runs']} "
             f"runs in {rep['wall_time_seconds']:.1f} s" + (f"; s² = {rep['s2']:.3g}" if rep["s2"] is not None else "")]
    width = max(len(q["key"]) for q in rep["parameters"])
    for q in rep["parameters"]:
        unit = f" {q['unit']}" if q["unit"] else ""
        if q["se"] is None:
            lines.append(f"  {q['key']:<{width}}  {q['value']:.6g}{unit}  (no standard error)")
            continue
        lo, hi = q["interval_95"]
        lines.append(f"  {q['key']:<{width}}  {q['value']:.6g}{unit} ± {q['se']:.3g}  "
                     f"95 %: [{lo:.4g}, {hi:.4g}]  ({q['scale']})")
    if len(rep["parameters"]) > 1 and rep["correlation"] is not None:
        keys = [q["key"] for q in rep["parameters"]]
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                c = rep["correlation"][i][j]
                if c is not None:
                    lines.append(f"  correlation {keys[i]} ~ {keys[j]}: {c:+.3f}")
    if len(rep["starts"]) > 1:
        lines.append(f"  {len(rep['starts'])} starts (the lowest cost kept):")
        for k, st in enumerate(rep["starts"]):
            where = ", ".join(f"{v:.4g}" for v in st["start"].values())
            end = (f"cost {st['cost']:.6g} at " + ", ".join(f"{v:.4g}" for v in st["end"].values())
                   if st["end"] is not None else st["error"])
            lines.append(f"    {k + 1}. from {where}: {end}")
    if rep["identifiability"]:
        lines.append("  identifiability:")
        lines += [f"    - {_flag_line(f)}" for f in rep["identifiability"]]
    else:
        lines.append("  identifiability: no parameter flagged")
    return "\n".join(lines)
