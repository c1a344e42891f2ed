"""Step-size control as pure functions (solver/clock.py): no DOLFINx, milliseconds."""

import math

import numpy as np
import pytest

from tme.clock import Controller, Decision, error_norm


def test_accepts_within_tolerance_and_rejects_beyond():
    c = Controller()
    assert c.decide(1.0, 0.5).accept
    assert c.decide(1.0, 1.0).accept
    d = c.decide(1.0, 1.01)
    assert not d.accept and d.dt_next < 1.0


def test_integral_step_of_a_second_order_method():
    # no history: dt_new = dt * safety * err^(-1/3)
    c = Controller(order=2, safety=0.9)
    assert c.decide(2.0, 0.1).dt_next == pytest.approx(2.0 * 0.9 * 0.1 ** (-1 / 3))
    # rejected: the same integral formula, shorter
    assert c.decide(2.0, 8.0).dt_next == pytest.approx(2.0 * 0.9 * 8.0 ** (-1 / 3))


def test_predictive_step_uses_the_previous_step_and_error():
    c = Controller(order=2, safety=0.9)
    # the error rose faster than dt^3 (0.25 -> 0.5 at the same step): the predictive step,
    # 0.9 (1/1) (0.25/0.5)^(1/3) 0.5^(-1/3), is shorter than the integral one
    d = c.decide(1.0, 0.5, err_prev=0.25, dt_prev=1.0)
    assert d.dt_next == pytest.approx(0.9 * (0.25 / 0.5) ** (1 / 3) * 0.5 ** (-1 / 3))
    assert d.dt_next < c.decide(1.0, 0.5).dt_next
    # a steady error far below 1 while the steps grow (a field growing from zero): the full
    # integral growth, never the crawl of a PI controller (0.9 * 0.1^(-0.1) = 1.13 per step)
    d = c.decide(1.0, 0.1, err_prev=0.1, dt_prev=0.8)
    assert d.dt_next == pytest.approx(0.9 * 0.1 ** (-1 / 3))
    # without the previous step's length: the integral step alone
    assert c.decide(1.0, 0.5, err_prev=0.25).dt_next == pytest.approx(0.9 * 0.5 ** (-1 / 3))


def test_predictive_steps_settle_where_the_error_meets_the_tolerance():
    # err = C dt^3 with C rising 20 % per step: the steps settle at err ~ 1, without rejections
    c = Controller(order=2)
    C, dt, prev, errs, rejects = 1.0, 0.1, None, [], 0
    for _ in range(40):
        err = C * dt ** 3
        d = c.decide(dt, err, None if prev is None else prev[1], dt_prev=None if prev is None else prev[0])
        if not d.accept:
            rejects += 1
            dt = d.dt_next
            continue
        prev, dt, C = (dt, err), d.dt_next, C * 1.2
        errs.append(err)
    assert rejects == 0
    assert all(0.5 < e <= 1.0 for e in errs[-10:]), errs[-10:]


def test_growth_and_shrink_are_bounded():
    c = Controller(grow=5.0, shrink=0.2)
    assert c.decide(1.0, 1e-12).dt_next == pytest.approx(5.0)
    assert c.decide(1.0, 0.0).dt_next == pytest.approx(5.0)
    assert c.decide(1.0, 1e9).dt_next == pytest.approx(0.2)
    assert c.decide(1.0, math.nan) == Decision(False, 0.2)
    assert c.decide(1.0, math.inf) == Decision(False, 0.2)


def test_no_growth_right_after_a_rejection():
    c = Controller()
    assert c.decide(1.0, 1e-6, after_reject=True).dt_next == pytest.approx(1.0)
    assert c.decide(1.0, 0.9, after_reject=True).dt_next < 1.0


def test_a_second_rejection_in_a_row_shrinks_the_most():
    # a stiff transient's error rises as the step shrinks toward λ dt ~ 3: the integral step
    # (x0.87 at ε = 1.5) would fail again and again; the redo of a redo shrinks by 0.2
    c = Controller(shrink=0.2)
    assert c.decide(1.0, 1.5).dt_next == pytest.approx(0.9 * 1.5 ** (-1 / 3))
    d = c.decide(1.0, 1.5, after_reject=True)
    assert not d.accept and d.dt_next == pytest.approx(0.2)


def test_step_bounds_and_forced_acceptance_at_the_smallest_step():
    c = Controller(dt_min=0.01, dt_max=2.0)
    assert c.decide(1.0, 1e-9).dt_next == 2.0
    assert c.decide(0.02, 1e6).dt_next == 0.01
    d = c.decide(0.01, 50.0)
    assert d.accept and d.forced and d.dt_next == 0.01
    with pytest.raises(FloatingPointError):
        c.decide(0.01, math.nan)
    # a step of dt_min measured as (t + dt_min) - t at t = 24 h differs from dt_min in its last
    # bits; it is still the smallest step (a rejection would retry the same step for ever)
    c = Controller(dt_min=1e-3, dt_max=2.0)
    dt = (24.0 + 1e-3) - 24.0
    assert dt != 1e-3
    d = c.decide(dt, 2.4)
    assert d.accept and d.forced


def test_bad_settings_are_refused():
    for kw in ({"order": 0}, {"safety": 1.5}, {"grow": 1.0}, {"shrink": 1.0}, {"dt_min": 2.0, "dt_max": 1.0}):
        with pytest.raises(ValueError):
            Controller(**kw)
    with pytest.raises(ValueError):
        Controller().decide(0.0, 0.5)


def test_landing_on_a_milestone_is_exact_and_leaves_no_sliver():
    land = Controller.land
    m = 48.0
    assert land(40.0, 10.0, m) == m                  # reaches it: ends on it, the same float
    assert land(47.9, 0.1000000001, m, tol=1e-6) == m
    assert land(0.1 + 0.2, 47.7, m, tol=1e-9) == m   # 0.30000000000000004 + 47.7 is not 48.0
    assert land(40.0, 6.0, m) == 44.0                # 6 of 8 would leave 2: two steps of 4
    assert land(40.0, 3.0, m) == 43.0                # far enough: the step as asked
    assert land(40.0, 4.0, m) == 44.0


def test_a_step_asked_for_stretches_to_a_milestone_within_the_safety_margin():
    """A step the controller asks for (safety x the step of error 1) ends on a milestone up to
    1/safety beyond it, and never beyond dt_max; without that, a step 4 % short of an output
    interval took it in two halves at every output. A redo is landed without the stretch."""
    c = Controller(order=2, safety=0.9, dt_max=3.2)
    assert c.reach(15.0, 2.88, 18.0) == 18.0            # 3/2.88 = 1.04 <= 1/0.9: one step
    assert Controller.land(15.0, 2.88, 18.0) == 16.5     # the plain landing: two halves
    assert c.reach(15.0, 2.6, 18.0) == 16.5              # 3/2.6 = 1.15 > 1/0.9: two halves
    assert c.reach(15.0, 1.0, 18.0) == 16.0              # far from it: the step as asked
    assert Controller(safety=0.9, dt_max=2.9).reach(15.0, 2.88, 18.0) == 16.5   # beyond dt_max
    assert Controller(safety=0.9).reach(15.0, 2.88, 18.0) == 18.0                # no dt_max


def test_error_norm_is_each_fields_relative_l2_error_with_an_absolute_floor():
    m = np.ones(4)
    u = np.array([1.0, 1.0, 0.0, 0.0])
    e = np.array([1e-3, 1e-3, 0.0, 0.0])
    # relative in L2: ||e||_M / ||u||_M = 1e-3 against rtol 1e-3 -> 1
    assert error_norm([(e, u, m, 1e-3, 1e-12)]) == pytest.approx(1.0)
    # where the error sits does not matter, only its size against the field's: the same error
    # on the dofs where u = 0 (pointwise, relative to 0) counts the same
    assert error_norm([(e[::-1], u, m, 1e-3, 1e-12)]) == pytest.approx(1.0)
    # the floor: a field whose RMS is below atol/rtol is held to atol absolute (RMS of e / atol)
    tiny = np.full(4, 1e-5)
    e2 = np.array([0.0, 0.0, 1e-6, 1e-6])
    assert error_norm([(e2, tiny, m, 1e-3, 1e-6)]) == pytest.approx(math.sqrt(0.5))
    # the largest field decides; weights are dof volumes
    assert error_norm([(e, u, m, 1e-3, 1e-12), (4 * e, u, m, 1e-3, 1e-12)]) == pytest.approx(4.0)
    w = np.array([3.0, 1.0, 0.0, 0.0])
    # ||e||^2_w = 3e-6, ||u||^2_w = 4: sqrt(3/4) 1e-3 relative
    assert error_norm([(np.array([1e-3, 0, 0, 0]), u, w, 1e-3, 1e-12)]) == pytest.approx(math.sqrt(0.75))
    assert error_norm([(np.zeros(0), np.zeros(0), np.zeros(0), 1e-3, 1e-6)]) == 0.0
    # a NaN anywhere is a failed step, whatever the other fields
    assert math.isnan(error_norm([(e, u, m, 1e-3, 1e-12), (np.array([math.nan, 0, 0, 0]), u, m, 1e-3, 1e-12)]))


# ------------------------------------------------------------------------------------------
# The whole control loop on an ODE with doses: TR-BDF2 for y' = -k y + s(t), its embedded
# estimate, rejected steps redone from the saved state, milestones landed exactly


_G = 2.0 - math.sqrt(2.0)
_A, _B = 1.0 / (_G * (2 - _G)), (1 - _G) ** 2 / (_G * (2 - _G))
K_RATE, ALPHA, DOSES, END = 0.8, 3.0, (0.0, 30.0, 31.0, 60.0), 96.0


def _mean_source(t0, t1):
    """Mean over [t0, t1] of s(t) = Σ_doses e^{-α (t - d)} for t >= d (a bolus each dose)."""
    total = 0.0
    for d in DOSES:
        a, b = max(t0, d), t1
        if b > a:
            total += (math.exp(-ALPHA * (a - d)) - math.exp(-ALPHA * (b - d))) / ALPHA
    return total / (t1 - t0)


def _exact(t):
    """y(0) = 0: the sum over doses of (e^{-α τ} − e^{-k τ})/(k − α), τ = t − d >= 0."""
    return sum((math.exp(-ALPHA * (t - d)) - math.exp(-K_RATE * (t - d))) / (K_RATE - ALPHA)
               for d in DOSES if t >= d)


def _trbdf2(y0, t0, dt):
    """One step and its local error estimate (exact source means; see solver/transport.py)."""
    tau, ts = 0.5 * _G * dt, t0 + _G * dt
    L1, L2 = _mean_source(t0, ts), _mean_source(ts, t0 + dt)
    LG = (2 - _G) * L2 - (1 - _G) * L1
    x = (y0 / tau + L1) / (1 / tau + K_RATE)
    ys = 2 * x - y0
    y1 = ((_A * ys - _B * y0) / tau + LG) / (1 / tau + K_RATE)
    hA0, hAs, hA1 = dt * K_RATE * y0, dt * K_RATE * ys, dt * K_RATE * y1
    est = -((math.sqrt(2) - 1) / 3 * hA0 - hAs / 3 + _G / 3 * hA1) / (1 + tau * K_RATE) ** 2
    return y1, est


def _integrate(tol, dt_first=0.01):
    c = Controller(order=2, dt_min=1e-6, dt_max=24.0)
    milestones = sorted(set(DOSES[1:]) | {END})
    t, y, dt, err_prev, dt_prev, rejected = 0.0, 0.0, dt_first, None, None, False
    landed, rejects, steps, worst = [], 0, 0, 0.0
    while t < END:
        m = next(x for x in milestones if x > t)
        t1 = c.land(t, dt, m, tol=1e-9)
        saved = (t, y)                       # the state a rejected step is redone from
        y1, est = _trbdf2(y, t, t1 - t)
        err = abs(est) / (1e-3 * tol + tol * abs(y1))
        d = c.decide(t1 - t, err, err_prev, after_reject=rejected, dt_prev=dt_prev)
        if not d.accept:
            t, y = saved
            dt, rejected, rejects = d.dt_next, True, rejects + 1
            continue
        err_prev, dt_prev = max(err, 1e-10), t1 - t
        t, y, steps, rejected = t1, y1, steps + 1, False
        dt = d.dt_next
        if t == m:
            landed.append(t)
            if t in DOSES:
                dt, err_prev = dt_first, None    # a dose: the plasma changes fast again
        worst = max(worst, abs(y - _exact(t)) / max(abs(_exact(t)), 1e-3))
    return landed, rejects, steps, worst


def test_control_loop_lands_on_every_milestone_and_the_error_follows_the_tolerance():
    """Each step's local error is held at the tolerance, so the global error after the ~130-550
    steps of this run is a few tens of tolerances (14-70 x) and falls as tol^(2/3) (error per step
    control of a second-order method: steps ~ tol^(-1/3)); the steps rise as tol^(-1/3)."""
    errors = {}
    for tol in (1e-3, 1e-4, 1e-5):
        landed, rejects, steps, worst = _integrate(tol)
        assert landed == [30.0, 31.0, 60.0, 96.0]  # each exactly, as floats
        errors[tol] = (worst, steps, rejects)
        assert worst < 100 * tol, (tol, worst)
    (w3, s3, _), (w4, s4, _), (w5, s5, _) = errors[1e-3], errors[1e-4], errors[1e-5]
    for a, b in ((w3, w4), (w4, w5)):
        assert 10 ** 0.5 < a / b < 10 ** 0.85, errors
    for a, b in ((s3, s4), (s4, s5)):
        assert 10 ** 0.2 < b / a < 10 ** 0.45, errors


def test_rejected_steps_are_redone_shorter():
    # a first step far too long for the bolus: rejected, then redone from the saved state
    landed, rejects, steps, worst = _integrate(1e-4, dt_first=5.0)
    assert rejects >= 1
    assert landed == [30.0, 31.0, 60.0, 96.0]
    assert worst < 5e-3
