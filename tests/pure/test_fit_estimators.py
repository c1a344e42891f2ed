"""The fit's arithmetic against closed forms: a forward model whose log-burden is linear in its
parameters, so that the weighted least-squares optimum, its covariance and the exact coverage of
its t-intervals are those of linear regression.

The model (evaluated in place of the finite-element runs, through the same evaluator interface):
ln B(t) = ln B0 + g t − e max(0, t − t_d), g the sensitive clone's growth rate, e the drug's
E_max (the drug starts at t_d), both in 1/hour. Pure: no DOLFINx.
"""

import math

import numpy as np
import pytest

import tme
from tme.config.scenario import value_at
from tme.studies import fit as F
from tme.studies.measurements import parse_noise, read_measurements

B0 = 3e8          # µm³ (0.3 mm³)
TD = 14 * 24.0    # hour
TIMES = [0, 7, 14, 21, 28, 42, 56, 70]   # day
G, E = 0.1 / 24.0, 0.02                  # 1/hour: the truth


def scenario():
    return tme.Scenario(
        name="closed_form",
        mesh={"kind": "box", "size": ["1 mm", "1 mm", "1 mm"], "cells": [1, 1, 1]},
        tissue={"regions": {"tissue": {"vascular_density": "0.01 1/um"}}},
        drugs={"chemo": {"class": "dna_damaging", "diffusivity": "10 um^2/s",
                         "permeability": "1 um/s", "emax": "0.04 1/hour"}},
        clones={"clones": {"sensitive": {"growth": "0.2 1/day", "initial": 0.3},
                           "resistant": {"growth": "0.05 1/day", "repair": 0.9, "initial": 0.003}}},
        time={"end": "80 day", "dt": "1 day"})


def ln_burden(g, e, t_hours):
    t = np.asarray(t_hours, float)
    return math.log(B0) + g * t - e * np.maximum(0.0, t - TD)


class ClosedForm:
    """An evaluator: each (name, scenario) -> an Evaluation from the closed form; ``fail(g, e)``
    says which parameter sets 'stop the run'. Counts the runs and the batches."""

    groups = 1

    def __init__(self, times_hours, fail=None, delay=TD):
        self.times, self.fail, self.delay = list(times_hours), fail, delay
        self.runs, self.batches = 0, []

    def __call__(self, runs):
        self.batches.append(len(runs))
        out = []
        for name, s in runs:
            self.runs += 1
            g = value_at(s, "clones.clones.sensitive.growth")
            e = value_at(s, "drugs.chemo.emax")
            if self.fail is not None and self.fail(g, e):
                out.append(F.Evaluation(False, "RunError: doxorubicin is not a number"))
                continue
            t = np.asarray(self.times)
            lnb = math.log(B0) + g * t - e * np.maximum(0.0, t - self.delay)
            obs = [{"t": ti, "burden": float(np.exp(v)), "resistant_fraction": 0.01,
                    "clones": {"sensitive": 0.99, "resistant": 0.01}, "regions": {}} for ti, v in zip(t, lnb)]
            out.append(F.Evaluation(True, None, obs, 3, list(t), [o["burden"] for o in obs], [0.01] * len(t)))
        return out


def data(seed=None, cv=0.1):
    """The measurements (mm³) from the truth, with log-normal noise of ``cv`` when ``seed``."""
    t = np.array(TIMES) * 24.0
    lnb = ln_burden(G, E, t)
    if seed is not None:
        lnb = lnb + math.sqrt(math.log1p(cv ** 2)) * np.random.default_rng(seed).standard_normal(t.size)
    text = "time [day],burden [mm^3]\n" + "".join(f"{d},{math.exp(v) * 1e-9!r}\n" for d, v in zip(TIMES, lnb))
    return read_measurements("d.csv", dict([parse_noise(f"lognormal:cv={cv}")]), text=text)


PARAMS = ["clones.clones.sensitive.growth=0.02 1/day..1 1/day", "drugs.chemo.emax=0.001 1/hour..0.1 1/hour"]


def calibration(meas, log=(), fail=None, start=None, fd_step=None):
    s = scenario()
    params = F.parse_parameters(PARAMS, s, list(log), start)
    ev = ClosedForm(meas.times, fail)
    return F.Calibration(s, meas, params, ev, fd_step=fd_step), ev


def ols(meas):
    """The weighted least-squares estimate of (g, e), its covariance s² (XᵀX)⁻¹ and the t quantile."""
    from scipy import stats

    t = np.asarray(meas.times)
    o = meas.observables[0]
    y = (np.log(np.asarray(o.values) * 1e9) - math.log(B0)) / np.asarray(o.sigmas)
    X = np.column_stack([t, -np.maximum(0.0, t - TD)]) / np.asarray(o.sigmas)[:, None]
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    res = y - X @ beta
    dof = t.size - 2
    s2 = float(res @ res) / dof
    return beta, s2 * np.linalg.inv(X.T @ X), float(stats.t.ppf(0.975, dof))


def test_noise_free_recovery_from_a_start_two_fold_off():
    cal, ev = calibration(data())
    best, starts = cal.solve([cal.start_point()])
    g, e = (q.theta(z) for q, z in zip(cal.params, best.z))
    assert g == pytest.approx(G, rel=1e-6) and e == pytest.approx(E, rel=1e-6)
    assert best.cost < 1e-10
    # every batch after the first holds the Jacobian's columns: one run per parameter
    assert set(ev.batches[1:]) <= {1, 2} and ev.runs == sum(ev.batches)


@pytest.mark.parametrize("log", [(), ("clones.clones.sensitive.growth", "drugs.chemo.emax")])
def test_estimate_and_laplace_covariance_are_those_of_linear_regression(log):
    meas = data(seed=3)
    beta, cov, t = ols(meas)
    cal, _ = calibration(meas, log=log)
    best, _ = cal.solve([cal.start_point()])
    z = np.asarray(best.z)
    ev, r = cal._run([z])[0]
    lap = F.laplace(cal.jac(z), r, cal.params, z)
    theta = np.array([q.theta(zj) for q, zj in zip(cal.params, z)])
    assert theta == pytest.approx(beta, rel=1e-6)
    assert lap["t"] == pytest.approx(t)
    se = np.sqrt(np.diag(cov))
    # the delta method's standard error of a log parameter is that of θ itself here; θ is not
    # linear in z on a log scale, so its forward difference is off by about h ln(b/a)/2
    # (1e-4 x ln(50)/2 = 2e-4 relative)
    rel = 1e-6 if not log else 1e-3
    assert np.array(lap["se"], float) == pytest.approx(se, rel=rel)
    corr = cov[0, 1] / (se[0] * se[1])
    assert lap["correlation"][0, 1] == pytest.approx(corr, abs=rel)
    for j, q in enumerate(cal.params):
        lo, hi = lap["interval"][j]
        if q.log:   # exp(ln θ ± t se/θ): positive, asymmetric about θ
            assert lo == pytest.approx(theta[j] * math.exp(-t * se[j] / theta[j]), rel=rel)
            assert hi == pytest.approx(theta[j] * math.exp(t * se[j] / theta[j]), rel=rel)
        else:
            assert (lo, hi) == (pytest.approx(theta[j] - t * se[j], rel=rel),
                                pytest.approx(theta[j] + t * se[j], rel=rel))


def test_t_intervals_cover_the_truth_95_percent_of_the_time():
    """For a model linear in its parameters the t-interval's coverage is exactly 95 %: over 1000
    noisy data sets (the optimum and the Jacobian from the closed form, the intervals from
    :func:`laplace`) each parameter's interval holds the truth 95 % ± 3 standard errors of a
    binomial proportion of the time; with the normal quantile (1.96) instead of Student's t
    (2.45 at 6 degrees of freedom) it would be about 90 %."""
    s = scenario()
    params = F.parse_parameters(PARAMS, s)
    du = np.array([q.du_dz() for q in params])
    n, inside = 1000, np.zeros(2)
    for seed in range(n):
        meas = data(seed=1000 + seed)
        beta, _, _ = ols(meas)
        t = np.asarray(meas.times)
        sig = np.asarray(meas.observables[0].sigmas)
        X = np.column_stack([t, -np.maximum(0.0, t - TD)]) / sig[:, None]
        r = (ln_burden(*beta, t) - np.log(np.asarray(meas.observables[0].values) * 1e9)) / sig
        z = np.array([q.z(b) for q, b in zip(params, beta)])
        lap = F.laplace(X * du[None, :], r, params, z)
        for j, truth in enumerate((G, E)):
            lo, hi = lap["interval"][j]
            inside[j] += lo <= truth <= hi
    half = 3 * math.sqrt(0.95 * 0.05 / n)
    assert np.all(np.abs(inside / n - 0.95) < half), inside / n


def test_the_step_follows_the_noise_level():
    s = scenario()
    assert F.noise_level(s) == pytest.approx(1e-8)            # fixed steps: the linear solves
    assert F.default_step(F.noise_level(s)) == pytest.approx(1e-4)
    tol = s.with_changes({"time.tolerance": 1e-3})
    assert F.noise_level(tol) == 1e-3
    assert F.default_step(1e-5) == pytest.approx(math.sqrt(1e-5))
    assert F.default_step(1e-3) == F.FD_STEP_RANGE[1] == 0.01
    assert F.default_step(1e-16) == F.FD_STEP_RANGE[0] and F.default_step(0.5) == F.FD_STEP_RANGE[1]


def test_a_failing_forward_difference_column_is_taken_backwards():
    """Runs with e above the start's fail: the e column is differenced backwards, and equals
    the closed form's derivative."""
    meas = data()
    start = {"drugs.chemo.emax": "0.03 1/hour"}
    cal, ev = calibration(meas, fail=lambda g, e: e > 0.03 * (1 + 1e-12), start=start)
    z = cal.start_point()
    cal.fun(z)
    J = cal.jac(z)
    t = np.asarray(meas.times)
    sig = np.asarray(meas.observables[0].sigmas)
    de_dz = cal.params[1].du_dz()
    assert J[:, 1] == pytest.approx(-np.maximum(0.0, t - TD) / sig * de_dz, rel=1e-4, abs=1e-6)
    assert len(cal.failures) == 1 and "RunError" in cal.failures[0]["error"]


def test_failed_runs_are_rejected_steps_and_the_fit_goes_on():
    """The optimiser's first two trial points 'stop their runs' (runs 4 and 5: the start and
    its two Jacobian columns come first): those steps are rejected, the fit still reaches the
    truth, and each failure is in the history."""
    meas = data()
    count = iter(range(1, 10 ** 6))
    cal, ev = calibration(meas, fail=lambda g, e: next(count) in (4, 5))
    best, _ = cal.solve([cal.start_point()])
    g, e = (q.theta(z) for q, z in zip(cal.params, best.z))
    assert g == pytest.approx(G, rel=1e-5) and e == pytest.approx(E, rel=1e-5)
    failed = [h for h in cal.history if not h["ok"]]
    assert failed and all("RunError" in h["error"] for h in failed)
    assert len(cal.failures) >= len(failed)


def test_a_failing_start_is_one_line():
    cal, _ = calibration(data(), fail=lambda g, e: True)
    with pytest.raises(tme.ScenarioError) as err:
        cal.solve([cal.start_point()])
    assert "the run at the start point (clones.clones.sensitive.growth = 0.2 1/day, drugs.chemo.emax = " \
           "0.04 1/hour) failed: RunError" in str(err.value)


def test_parameters_that_act_only_together_are_flagged():
    """With the drug from t = 0, ln B = ln B0 + (g − e) t: only g − e is determined."""
    meas = data()
    s = scenario()
    params = F.parse_parameters(PARAMS, s)
    cal = F.Calibration(s, meas, params, ClosedForm(meas.times, delay=0.0))
    z = cal.start_point()
    _, r = cal._run([z])[0]
    lap = F.laplace(cal.jac(z), r, cal.params, z)
    reasons = " | ".join(f["reason"] for f in lap["flags"])
    assert "singular" in reasons or "correlation" in reasons, reasons


def test_a_parameter_without_effect_is_flagged():
    meas = data(seed=1)
    s = scenario()
    params = F.parse_parameters(PARAMS + ["clones.clones.resistant.growth=0.01 1/day..0.1 1/day"], s)
    cal = F.Calibration(s, meas, params, ClosedForm(meas.times))
    z = cal.start_point()
    _, r = cal._run([z])[0]
    lap = F.laplace(cal.jac(z), r, cal.params, z)
    assert any("clones.clones.resistant.growth does not change the residuals" in f["reason"] for f in lap["flags"])
    assert lap["se"][2] is None


def test_multistart_keeps_the_best_and_reports_every_start():
    cal, _ = calibration(data(seed=5))
    starts = [cal.start_point()] + list(F.sobol_starts(2, 3, seed=7))
    best, done = cal.solve(starts)
    assert len(done) == 4 and best.cost == min(s.cost for s in done)
    again = F.sobol_starts(2, 3, seed=7)
    assert np.array_equal(again, F.sobol_starts(2, 3, seed=7))
    assert not np.array_equal(again, F.sobol_starts(2, 3, seed=8))
    assert np.all((again > 0) & (again < 1))


def test_scaled_coordinates():
    s = scenario()
    lin, lg = F.parse_parameters(PARAMS, s, ["drugs.chemo.emax"])
    assert lin.theta(0.0) == pytest.approx(0.02 / 24) and lin.theta(1.0) == pytest.approx(1 / 24)
    assert lg.theta(0.5) == pytest.approx(math.sqrt(0.001 * 0.1))
    assert lg.z(lg.theta(0.3)) == pytest.approx(0.3)
    assert lg.du_dz() == pytest.approx(math.log(100))
    # as scenario text with a unit, reading back exactly
    from tme.config.units import parse_quantity
    for q in (lin, lg):
        assert parse_quantity(q.text(q.theta(0.25)), q.base) == pytest.approx(q.theta(0.25), rel=1e-14)
    assert lin.shown(1 / 24) == pytest.approx(1.0) and lin.unit == "1/day"


@pytest.mark.parametrize("spec, extra, message", [
    ("drugs.chemo.emax=0.01..0.1 1/hour", {}, "--fit drugs.chemo.emax: lower bound: a bare number is ambiguous; write e.g. '0.01 1/hour'"),
    ("drugs.chemo.emax=0.01 uM..0.1 1/hour", {}, "--fit drugs.chemo.emax: lower bound: '0.01 uM' has dimension"),
    ("drugs.chemo.emax=0.1 1/hour..0.01 1/hour", {}, "the upper bound 0.01 1/hour must exceed the lower bound 0.1 1/hour"),
    ("drugs.chemo.emax=0.05 1/hour..0.1 1/hour", {}, "--fit drugs.chemo.emax: the start 0.04 1/hour lies outside the bounds 0.05 1/hour..0.1 1/hour"),
    ("drugs.chemo.emax", {}, "expected KEY=LOW..HIGH"),
    ("drugs.chemo.emax=0.05 1/hour", {}, "two bounds joined by '..'"),
    ("drugs.chemox.emax=0.01 1/hour..0.1 1/hour", {}, "drugs.chemox.emax: no key 'drugs.chemox'; keys here: chemo"),
    ("drugs.chemo=0.01 1/hour..0.1 1/hour", {}, "--fit drugs.chemo: holds DrugSpec"),
    ("drugs.chemo.emax=0 1/hour..0.1 1/hour", {"log": ["drugs.chemo.emax"]}, "a log-scale parameter (--log) needs a lower bound > 0"),
    ("clones.clones.resistant.repair=0.5..1.5", {}, "clones.clones.resistant.repair"),
])
def test_parameter_errors(spec, extra, message):
    with pytest.raises(tme.ScenarioError) as e:
        F.parse_parameters([spec], scenario(), extra.get("log", ()))
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_parameter_list_errors():
    s = scenario()
    with pytest.raises(tme.ScenarioError, match="given twice"):
        F.parse_parameters([PARAMS[0], PARAMS[0]], s)
    with pytest.raises(tme.ScenarioError, match="--log time.end: not a fitted key"):
        F.parse_parameters(PARAMS, s, ["time.end"])
    with pytest.raises(tme.ScenarioError, match="--start time.end: not a fitted key"):
        F.parse_parameters(PARAMS, s, (), {"time.end": "1 day"})
    with pytest.raises(tme.ScenarioError, match="name at least one parameter"):
        F.parse_parameters([], s)
    p = F.parse_parameters(PARAMS, s, (), {"drugs.chemo.emax": "0.03 1/hour"})
    assert p[1].start == pytest.approx(0.03)


def test_measurement_times_are_report_times():
    meas = data()
    prepared = F.prepare(scenario(), meas)
    assert prepared.treatment.report_times == [t * 24.0 for t in TIMES]


def test_the_patient_example_reads_and_its_strategies_apply():
    """configs/patient_fit: the scenario validates and says what it shows, its measurements read
    and fit it, and the combination fragment merges into it (a drug added, the lines replaced)."""
    import yaml

    from pathlib import Path

    from tme.studies import strategies
    from tme.studies.forecast import parse_strategies
    from tme.studies.measurements import mesh_dim

    folder = Path(__file__).resolve().parents[2] / "configs" / "patient_fit"
    s = tme.load(folder / "patient.yaml")
    assert s.name == "patient" and (folder / "patient.yaml").read_text().startswith("# ")
    meas = read_measurements(folder / "measurements.csv", dict([parse_noise("lognormal:cv=0.1")]))
    meas.check(s, mesh_dim(s))
    assert [o.column for o in meas.observables] == ["burden", "resistant_fraction"]
    assert "made by the solver" in (folder / "measurements.csv").read_text()
    (st,) = parse_strategies([f"combination={folder / 'combination.yaml'}"])
    data, _ = strategies.apply(s.model_dump(mode="json", by_alias=True), st)
    combined = tme.config.scenario.validate(data)
    assert set(combined.drugs) == {"chemo", "inhibitor"}
    assert [d.drug for d in combined.treatment.lines[0].regimen] == ["chemo", "inhibitor"]
    assert combined.treatment.stop.stop_when_exhausted is False     # kept from the scenario
    fragment = yaml.safe_load((folder / "combination.yaml").read_text())
    assert set(fragment) == {"drugs", "treatment"}


def _fake_fit(tmp_path, z, cov_z):
    """A fit directory as tme fit writes it, for the closed-form scenario (fitted.yaml, fit.json)."""
    import json

    from tme.config.scenario import resolved_yaml

    s = scenario()
    params = F.parse_parameters(PARAMS, s, ["drugs.chemo.emax"])
    (tmp_path / "fitted.yaml").write_text(resolved_yaml(s))
    rep = {"parameters": [{"key": p.key, "unit": p.unit, "value": p.shown(p.theta(zj)), "low": p.shown(p.low),
                           "high": p.shown(p.high), "scale": "log" if p.log else "linear", "z": zj}
                          for p, zj in zip(params, z)],
           "covariance": {"matrix_z": np.asarray(cov_z).tolist()}, "residuals": []}
    (tmp_path / "fit.json").write_text(json.dumps(rep))
    return params


def test_forecast_draws_follow_the_fit_truncated_to_the_bounds(tmp_path):
    from tme.studies.forecast import Plan, parse_strategies

    cov = np.array([[0.01 ** 2, 0.5 * 0.01 * 0.02], [0.5 * 0.01 * 0.02, 0.02 ** 2]])
    _fake_fit(tmp_path, [0.4, 0.6], cov)
    plan = Plan(tmp_path, parse_strategies(["a="]), 4000, seed=3)
    zs = plan.draws()
    assert zs.mean(axis=0) == pytest.approx([0.4, 0.6], abs=5e-4)
    assert np.cov(zs.T) == pytest.approx(cov, rel=0.08, abs=2e-6)
    assert np.array_equal(zs, Plan(tmp_path, parse_strategies(["a="]), 4000, seed=3).draws())
    # near a bound: every draw inside, the mean pushed inwards
    _fake_fit(tmp_path, [0.005, 0.6], cov)
    zs = Plan(tmp_path, parse_strategies(["a="]), 2000, seed=1).draws()
    assert np.all((zs >= 0) & (zs <= 1)) and zs[:, 0].mean() > 0.005


def test_forecast_strategies(tmp_path):
    from tme.studies.forecast import Plan, parse_strategies

    _fake_fit(tmp_path, [0.4, 0.6], np.eye(2) * 1e-4)
    frag = tmp_path / "two_lines.yaml"
    frag.write_text("treatment:\n  lines:\n    - {name: a, regimen: [{drug: chemo, amount: 5 uM}]}\n")
    sts = parse_strategies(["actual=", f"frag={frag}", "frag=time.dt=2 hour",
                            "hol=treatment.assessment.every=2 week"])
    assert [s.name for s in sts] == ["actual", "frag", "hol"]
    assert sts[1].changes[1] == ("set", "time.dt=2 hour") and sts[1].files == [frag]
    plan = Plan(tmp_path, sts, 3, seed=0, end="10 day")
    jobs = plan.jobs()
    assert [j.name for j in jobs][:4] == ["actual__0000", "actual__0001", "actual__0002", "frag__0000"]
    by = {j.name: j for j in jobs}
    assert by["frag__0001"].scenario.treatment.lines[0].name == "a"
    assert by["frag__0001"].scenario.time.dt == 2.0 and by["frag__0001"].scenario.time.end == 240.0
    # the same parameter sets under every strategy, applied on top
    for i in range(3):
        a, f = by[f"actual__{i:04d}"], by[f"frag__{i:04d}"]
        assert a.tags["drugs.chemo.emax"] == f.tags["drugs.chemo.emax"]
        assert f.scenario.drugs["chemo"].emax == pytest.approx(a.tags["drugs.chemo.emax"], rel=1e-14)
    bad = [(["x=drugs.chemo.emax=0.1 1/hour"], "--strategy x: drugs.chemo.emax is determined by the fit"),
           (["x=drugs.chemo={class: targeted}"], "--strategy x: drugs.chemo is determined by the fit"),
           (["x=time.ned=1 day"], "time.ned: unknown key 'ned'"),
           (["x=nofile.yaml"], "--strategy x: nofile.yaml: cannot read"),
           (["x y="], "the name 'x y' names files"),
           (["x=notyaml.txt"], "is neither a YAML file"),
           ([], "name at least one --strategy")]
    for items, message in bad:
        with pytest.raises(tme.ScenarioError) as e:
            Plan(tmp_path, parse_strategies(items), 3, seed=0)
        assert message in str(e.value), str(e.value)
    with pytest.raises(tme.ScenarioError, match="no fit.json"):
        Plan(tmp_path / "nothing", sts, 3, seed=0)


def test_a_signal_between_two_batches_stops_the_fit_at_the_next():
    """A signal that arrives while the optimiser does its arithmetic (no batch of runs under
    way) is noted and stops the fit when the next batch would start: no further run, and the
    evaluations so far kept."""
    import os
    import signal

    from tme.studies.batch import Stopped

    cal, ev = calibration(data())

    class Noted:      # what the fit's StopSignals holds: the signal noted by its handler
        received = None

    def note(signum, frame):
        Noted.received = signum

    class Signalling(ClosedForm):
        def __call__(self, jobs):
            out = super().__call__(jobs)
            if len(self.batches) == 2:       # after the second batch has returned
                os.kill(os.getpid(), signal.SIGTERM)
            return out

    cal.evaluate = Signalling(cal.measurements.times)
    cal.signals = Noted
    old = signal.signal(signal.SIGTERM, note)
    try:
        with pytest.raises(Stopped) as stop:
            cal.solve([cal.start_point()])
    finally:
        signal.signal(signal.SIGTERM, old)
    assert stop.value.signal == signal.SIGTERM
    assert len(cal.evaluate.batches) == 2 and len(cal.history) >= 1
