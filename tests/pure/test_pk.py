"""Plasma pharmacokinetics against closed forms, an ODE solver and quadrature (docs/model.md, Transport)."""

import math
import random

import numpy as np
import pytest
from scipy.integrate import quad, solve_ivp

from tme.config.drugs import Dose, DrugSpec, PKSpec
from tme.pk import Plasma, PlasmaSet, dose_concentration
from tme.config.spec import ScenarioError

HALF_LIFE = 3.0  # hour
K = math.log(2.0) / HALF_LIFE


def one_compartment() -> Plasma:
    return Plasma(PKSpec(half_life=f"{HALF_LIFE} hour"), "dox")


def bolus(c0, t0, t):
    """Closed form of one bolus of c0 µM at t0."""
    return np.where(t >= t0, c0 * np.exp(-K * (t - t0)), 0.0)


def infusion(total, t0, T, t):
    """Closed form of an infusion of ``total`` µM over [t0, t0 + T]."""
    R = total / T
    during = R / K * (1 - np.exp(-K * (t - t0)))
    after = R / K * (1 - np.exp(-K * T)) * np.exp(-K * (t - t0 - T))
    return np.where(t < t0, 0.0, np.where(t < t0 + T, during, after))


def test_bolus_decays_exponentially():
    p = one_compartment()
    p.add_dose(2.0, 5.0)
    assert p.concentration(1.9) == 0.0
    assert p.concentration(2.0) == pytest.approx(5.0, rel=1e-15)  # a bolus counts at its time
    for t in (2.5, 5.0, 11.0, 50.0):
        assert p.concentration(t) == pytest.approx(5.0 * math.exp(-K * (t - 2.0)), rel=1e-13)


def test_infusion_matches_closed_form_during_and_after():
    p = one_compartment()
    p.add_dose(1.0, 6.0, infusion=4.0)
    ts = np.array([0.5, 1.0, 1.3, 3.0, 4.999, 5.0, 5.2, 9.0, 30.0])
    got = [p.concentration(t) for t in ts]
    np.testing.assert_allclose(got, infusion(6.0, 1.0, 4.0, ts), rtol=1e-13, atol=1e-15)


def test_cycles_superpose_as_the_sum_of_single_doses():
    p = one_compartment()
    doses = [Dose(drug="dox", amount="5 uM", start="1.0 hour", every="8.0 hour", cycles=4),
             Dose(drug="dox", amount="3.0 uM", start="2.0 hour", infusion="2.5 hour", every="10.0 hour", cycles=3),
             Dose(drug="other", amount="100.0 uM")]  # not this drug's
    p.schedule(doses, offset=10.0, key="treatment.lines.0.regimen")
    ts = np.linspace(0.0, 80.0, 161)
    expected = sum(bolus(5.0, 11.0 + 8.0 * k, ts) for k in range(4)) \
        + sum(infusion(3.0, 12.0 + 10.0 * k, 2.5, ts) for k in range(3))
    np.testing.assert_allclose([p.concentration(t) for t in ts], expected, rtol=1e-12, atol=1e-14)


def ode_reference(pk: PKSpec, doses, ts):
    """C(ts) of the two-compartment system by solve_ivp, restarted at each event for the jumps."""
    k10 = math.log(2.0) / pk.half_life
    bounds = sorted({0.0, *[s for s, _, _ in doses], *[s + d for s, _, d in doses if d > 0], ts[-1]})

    def rhs(t, x, rate):
        c, per = x
        return [-(k10 + pk.k12) * c + pk.k21 * per + rate, pk.k12 * c - pk.k21 * per]

    x, out = np.zeros(2), {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        x[0] += sum(c for s, c, d in doses if d == 0 and s == a)
        rate = sum(c / d for s, c, d in doses if d > 0 and s <= a < s + d)
        inside = [t for t in ts if a <= t < b]
        sol = solve_ivp(rhs, (a, b), x, args=(rate,), method="DOP853", rtol=1e-10, atol=1e-22,
                        t_eval=[*inside, b])
        out.update(zip(inside, sol.y[0]))
        x = sol.y[:, -1].copy()
    out[ts[-1]] = x[0]
    return np.array([out[t] for t in ts])


@pytest.mark.parametrize("k12, k21", [(0.7, 0.2), (0.5, 0.0), (0.0, 0.3), (1e-9, math.log(2.0) / 2.0)],
                         ids=["exchange", "no_return", "no_peripheral", "nearly_repeated_eigenvalues"])
def test_two_compartment_matches_ode_solution(k12, k21):
    pk = PKSpec(model="two_compartment", half_life="2.0 hour", k12=f"{k12} 1/hour", k21=f"{k21} 1/hour")
    doses = [(1.0, 5.0, 0.0), (3.0, 3.0, 4.0), (5.0, 2.0, 0.0)]  # (start h, µM, infusion h)
    p = Plasma(pk, "pac")
    for s, c, d in doses:
        p.add_dose(s, c, infusion=d)
    ts = np.array([0.5, 1.0, 1.7, 3.0, 4.2, 5.0, 6.5, 7.0, 9.0, 20.0, 40.0])
    ref = ode_reference(pk, doses, ts)
    got = np.array([p.concentration(t) for t in ts])
    assert got[0] == 0.0
    np.testing.assert_array_less(np.abs(got[1:] - ref[1:]) / ref[1:], 1e-7)


@pytest.mark.parametrize("pk", [PKSpec(half_life=f"{HALF_LIFE} hour"),
                                PKSpec(model="two_compartment", half_life="2.0 hour", k12="0.7 1/hour", k21="0.2 1/hour")],
                         ids=["one_compartment", "two_compartment"])
def test_mean_is_the_exact_time_average(pk):
    p = Plasma(pk, "dox")
    p.add_dose(1.0, 5.0)
    p.add_dose(2.0, 4.0, infusion=3.0)
    p.add_dose(4.0, 1.0)
    for t0, t1 in [(0.0, 0.5), (0.0, 1.5), (1.2, 1.8), (1.5, 4.5), (3.0, 30.0), (4.0, 5.0), (10.0, 10.0 + 1e-6)]:
        jumps = [t for t in p.events(t0, t1) if t < t1] or None
        ref, _ = quad(p.concentration, t0, t1, points=jumps, epsabs=0.0, epsrel=1e-13, limit=200)
        assert p.mean(t0, t1) * (t1 - t0) == pytest.approx(ref, rel=1e-10, abs=1e-300)
    assert p.mean(2.5, 2.5) == p.concentration(2.5)
    with pytest.raises(ValueError):
        p.mean(3.0, 2.0)


def test_eliminated_amount_equals_the_dose():
    # one compartment: dC/dt = -k C + R, so k ∫_0^T C dt + C(T) = all that was dosed by T
    p = one_compartment()
    p.add_dose(0.0, 4.0)
    p.add_dose(5.0, 6.0, infusion=10.0)
    p.add_dose(8.0, 2.0)
    for T, dosed in [(3.0, 4.0), (9.0, 4.0 + 2.4 + 2.0), (15.0, 12.0), (40.0, 12.0)]:
        assert K * p.mean(0.0, T) * T + p.concentration(T) == pytest.approx(dosed, rel=1e-12)
    assert K * p.mean(0.0, 40 * HALF_LIFE) * 40 * HALF_LIFE == pytest.approx(12.0, rel=1e-11)


def test_cancel_from_stops_the_regimen_and_truncates_a_running_infusion():
    p = one_compartment()
    p.schedule([Dose(drug="dox", amount="8.0 uM", infusion="10.0 hour", every="24.0 hour", cycles=3)], 0.0, "r")
    before = [p.concentration(t) for t in (2.0, 4.0)]
    p.mean(0.0, 30.0)  # fills the cache past the cut, which must not survive it
    p.cancel_from(4.0)
    assert [p.concentration(t) for t in (2.0, 4.0)] == before
    assert p.events(-1.0, 100.0) == [0.0, 4.0]
    for t in (4.0, 6.0, 8.0, 30.0):  # 0.8 µM/h for 4 h, then free decay
        assert p.concentration(t) == pytest.approx(float(infusion(3.2, 0.0, 4.0, np.array(t))), rel=1e-13)
    assert K * p.mean(0.0, 60.0) * 60.0 + p.concentration(60.0) == pytest.approx(3.2, rel=1e-12)
    p.cancel_from(4.0)  # nothing left to stop
    assert p.events(-1.0, 100.0) == [0.0, 4.0]


def test_events_of_a_cycled_infusion():
    p = one_compartment()
    p.schedule([Dose(drug="dox", amount="1.0 uM", start="1.0 hour", infusion="2.0 hour", every="24.0 hour", cycles=3)], 0.0, "r")
    assert p.events(0.0, 100.0) == [1.0, 3.0, 25.0, 27.0, 49.0, 51.0]
    assert p.events(1.0, 25.0) == [3.0, 25.0]  # (t0, t1]
    assert p.next_event(0.0) == 1.0
    assert p.next_event(3.0) == 25.0
    assert p.next_event(3.0 - 1e-14) == 25.0  # within round-off of an event counts as on it
    assert p.next_event(51.0) == math.inf


def test_queries_in_any_order_agree_with_increasing_ones():
    pk = PKSpec(model="two_compartment", half_life="2.0 hour", k12="0.7 1/hour", k21="0.2 1/hour")
    doses = [Dose(drug="pac", amount="2.0 uM", start="1.0 hour", infusion="3.0 hour", every="6.0 hour", cycles=5)]
    ts = [0.37 * i for i in range(100)]
    forward = Plasma(pk, "pac")
    forward.schedule(doses, 0.0, "r")
    expected = {t: forward.concentration(t) for t in ts}
    shuffled = Plasma(pk, "pac")
    shuffled.schedule(doses, 0.0, "r")
    order = ts[:]
    random.Random(1).shuffle(order)
    assert {t: shuffled.concentration(t) for t in order} == pytest.approx(expected, rel=1e-14, abs=1e-300)
    # a dose added inside the cached range (a new line) leaves the same result as given upfront
    shuffled.mean(0.0, 36.0)
    shuffled.add_dose(7.5, 1.0)
    fresh = Plasma(pk, "pac")
    fresh.schedule(doses, 0.0, "r")
    fresh.add_dose(7.5, 1.0)
    for t0, t1 in [(0.0, 36.0), (7.0, 8.0), (7.5, 13.5)]:
        assert shuffled.mean(t0, t1) == pytest.approx(fresh.mean(t0, t1), rel=1e-14)
    assert shuffled.concentration(20.0) == pytest.approx(fresh.concentration(20.0), rel=1e-14)


MOLAR_MASS = 543.5  # g/mol (doxorubicin)


@pytest.mark.parametrize("amount, expected", [
    ("5 uM", 5.0),
    ("5 µM", 5.0),
    ("0.2 mM", 200.0),
    ("10 umol", 0.25),
    ("50 mg", 50e-3 / MOLAR_MASS * 1e6 / 40.0),
    ("2 mg/L", 2e-3 / MOLAR_MASS * 1e6),
])
def test_dose_amounts_in_units(amount, expected):
    pk = PKSpec(volume="40 L", molar_mass=f"{MOLAR_MASS} g/mol")
    assert dose_concentration(amount, pk, "k") == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("amount, molar_mass, hint", [
    ("five", MOLAR_MASS, "cannot read"),
    ("5 hour", MOLAR_MASS, "dimension"),
    ("50 mg", None, "molar_mass"),
    ("-1 uM", MOLAR_MASS, ">= 0"),
    (True, MOLAR_MASS, "got bool"),
    (7, MOLAR_MASS, "a bare number is ambiguous"),
    ("3", MOLAR_MASS, "a bare number is ambiguous"),
    ("9**9**9 uM", MOLAR_MASS, "powers must be small"),
])
def test_dose_amount_errors_name_the_key(amount, molar_mass, hint):
    pk = PKSpec(molar_mass=molar_mass and f"{molar_mass} g/mol")
    with pytest.raises(ScenarioError, match=r"^treatment\.lines\.0\.regimen\.2\.amount: ") as err:
        dose_concentration(amount, pk, "treatment.lines.0.regimen.2.amount")
    assert hint in str(err.value) and "uM" in str(err.value)


def drugs(**pk) -> dict:
    return {"dox": DrugSpec(**{"class": "dna_damaging"}, diffusivity="1.0 um**2/s", pk=PKSpec(half_life=f"{HALF_LIFE} hour")),
            "o2": DrugSpec(**{"class": "targeted"}, diffusivity="1.0 um**2/s", pk=PKSpec(model="constant", level="2.5 uM")),
            **{name: DrugSpec(**{"class": "antimitotic"}, diffusivity="1.0 um**2/s", pk=spec) for name, spec in pk.items()}}


def test_plasma_set_routes_each_dose_to_its_drug():
    pset = PlasmaSet(drugs(pac=PKSpec(model="two_compartment", half_life="2.0 hour", k12="0.7 1/hour", k21="0.2 1/hour")))
    pset.add_regimen([Dose(drug="dox", amount="5.0 uM", start="1.0 hour"), Dose(drug="pac", amount="3.0 uM", infusion="2.0 hour")],
                     10.0, "treatment.lines.0.regimen")
    levels = pset.levels(12.0)
    assert levels["dox"] == pytest.approx(float(bolus(5.0, 11.0, np.array(12.0))), rel=1e-13)
    assert levels["pac"] == pset["pac"].concentration(12.0) > 0.0
    assert levels["o2"] == 2.5
    means = pset.means(10.0, 12.0)
    assert means["dox"] == pytest.approx(5.0 * (1 - math.exp(-K)) / K / 2.0, rel=1e-13)
    assert means["o2"] == 2.5
    assert pset.events(0.0, 20.0) == [10.0, 11.0, 12.0]
    assert pset.next_event(10.0) == 11.0
    pset.cancel_from(11.0)  # stops pac's infusion and drops dox's bolus at 11
    assert pset.events(0.0, 20.0) == [10.0, 11.0]
    assert pset.means(10.0, 12.0)["dox"] == 0.0  # the memo of the step follows the change
    assert pset.next_event(11.0) == math.inf


@pytest.mark.parametrize("dose, where, hint", [
    (Dose(drug="cis", amount="1.0 uM"), r"regimen\.1\.drug", "defined drugs: dox, o2"),
    (Dose(drug="o2", amount="1.0 uM"), r"regimen\.1", "constant"),
    (Dose(drug="dox", amount="1.0 uM", cycles=3), r"regimen\.1\.every", "cycle period"),
    (Dose(drug="dox", amount="1 kg/s"), r"regimen\.1\.amount", "dimension"),
])
def test_regimen_errors_name_the_key_and_give_nothing(dose, where, hint):
    pset = PlasmaSet(drugs())
    with pytest.raises(ScenarioError, match=rf"^treatment\.lines\.1\.{where}: .*{hint}"):
        pset.add_regimen([Dose(drug="dox", amount="1.0 uM"), dose], 0.0, "treatment.lines.1.regimen")
    assert pset.events(-1.0, 1e9) == []


def test_constant_model_and_invalid_pk():
    p = Plasma(PKSpec(model="constant", level="3.0 uM"), "o2")
    assert p.concentration(5.0) == p.mean(0.0, 7.0) == 3.0
    assert p.events(0.0, 1e9) == [] and p.next_event(0.0) == math.inf
    with pytest.raises(ScenarioError, match=r"^drugs\.o2\.pk\.model: .*no doses"):
        p.add_dose(0.0, 1.0)
    with pytest.raises(ScenarioError, match=r"^drugs\.dox\.pk\.half_life: must be > 0"):
        Plasma(PKSpec(half_life="0.0 hour"), "dox")


# --------------------------------------------------------------------------------------------
# Doses as given: the protocol's factor, toxicity and dose limits (closed forms)

from tme.pk import Limits  # noqa: E402


def give_all(p, limits=None, factor=1.0):
    """Decide every planned dose in time order, as the time loop does at each dose start."""
    given = []
    while True:
        t = min((d.start for d in p._inputs if not d.decided), default=None)
        if t is None:
            return given
        given += p.give(t, factor, limits)


def test_a_factor_scales_or_drops_the_doses_and_the_cumulative_dose_is_exact():
    p = one_compartment()
    p.add_dose(0.0, 4.0)
    p.add_dose(5.0, 6.0, infusion=2.0)
    assert [g.given for g in p.give(5.0, 0.5)] == [2.0, 3.0]
    assert p.cumulative() == (5.0, 10.0)
    ts = np.array([0.0, 1.0, 5.0, 6.0, 7.0, 12.0])
    expected = bolus(2.0, 0.0, ts) + infusion(3.0, 5.0, 2.0, ts)
    np.testing.assert_allclose([p.concentration(t) for t in ts], expected, rtol=1e-13)
    assert p.given_until(6.0) == pytest.approx(2.0 + 1.5, rel=1e-15)  # the infusion pro rata
    q = one_compartment()
    q.add_dose(0.0, 4.0)
    q.add_dose(3.0, 4.0)
    q.give(0.0, 1.0)
    q.give(3.0, 0.0)                                       # a dose not given: no event, no level
    assert q.next_event(0.0) == math.inf and q.cumulative() == (4.0, 8.0)
    assert q.concentration(4.0) == pytest.approx(4.0 * math.exp(-K * 4.0), rel=1e-14)


def test_peak_limit_reduces_a_bolus_to_the_limit_closed_form():
    p = one_compartment()
    for k in range(4):
        p.add_dose(k * HALF_LIFE, 5.0)
    given = give_all(p, Limits(peak=8.0))
    # C before dose k: half of the peak after dose k-1; 2.5 + 5 = 7.5 fits, 3.75 + 5 does not
    assert [g.given for g in given[:2]] == [5.0, 5.0] and given[1].limits == ()
    assert given[2].given == pytest.approx(8.0 - 3.75, rel=1e-14) and given[2].limits == ("peak",)
    assert p.concentration(2 * HALF_LIFE) == pytest.approx(8.0, rel=1e-14)
    assert given[3].given == pytest.approx(4.0, rel=1e-14)
    skipped = one_compartment()
    for k in range(3):
        skipped.add_dose(k * HALF_LIFE, 5.0)
    assert [g.given for g in give_all(skipped, Limits(peak=8.0, policy="skip"))] == [5.0, 5.0, 0.0]


def test_peak_limit_on_an_infusion_closed_form():
    p = one_compartment()
    p.add_dose(0.0, 4.0)                                   # 4 µM at t = 0, then 6 µM over 2 h at t = 3
    p.add_dose(3.0, 6.0, infusion=2.0)
    given = give_all(p, Limits(peak=4.0))
    c0, decay = 4.0 * math.exp(-K * 3.0), math.exp(-K * 2.0)
    # one compartment: the peak of an infusion is at its end, c0 e^{-kT} + s (R/k)(1 - e^{-kT})
    s = (4.0 - c0 * decay) / (3.0 / K * (1.0 - decay))
    assert given[1].given == pytest.approx(6.0 * s, rel=1e-12)
    assert p.peak(3.0, 5.0) == pytest.approx(4.0, rel=1e-12)


def test_two_compartment_peak_is_the_exact_maximum():
    pk = PKSpec(model="two_compartment", half_life="2.0 hour", k12="0.7 1/hour", k21="0.2 1/hour")
    p = Plasma(pk, "pac")
    p.add_dose(0.0, 5.0, infusion=1.0)
    p.add_dose(6.0, 2.0, infusion=8.0)                     # a slow infusion over a falling level
    for a, b in [(0.0, 1.0), (0.0, 20.0), (6.0, 14.0), (7.0, 9.0)]:
        ts = np.linspace(a, b, 20001)
        sampled = max(p.concentration(t) for t in ts)
        assert sampled <= p.peak(a, b) * (1 + 1e-12)
        assert p.peak(a, b) == pytest.approx(sampled, rel=1e-7)


def test_auc_limit_per_cycle_closed_form_for_boluses_and_infusions():
    W = 12.0
    p = one_compartment()
    for k in range(3):
        p.add_dose(k * W, 5.0, every=W)
    given = give_all(p, Limits(auc=21.0))
    area = (1.0 - math.exp(-K * W)) / K                    # ∫_0^W e^{-kt} dt
    carry = 0.0
    for g in given:
        s_max = (21.0 - carry * area) / (5.0 * area)       # the AUC of the cycle: carry-over + dose
        assert g.given == pytest.approx(min(5.0, 5.0 * s_max), rel=1e-12)
        c_start = carry + g.given
        assert p.integral(g.start, g.start + W) == pytest.approx(min(21.0, c_start * area), rel=1e-12)
        carry = c_start * math.exp(-K * W)
    assert given[0].limits == () and given[1].limits == ("auc",)
    q = one_compartment()
    q.add_dose(0.0, 30.0, infusion=3.0, every=W)
    (g,) = give_all(q, Limits(auc=50.0))
    # ∫_0^W of the infusion, by quadrature of its closed form
    full = quad(lambda t: float(infusion(30.0, 0.0, 3.0, np.array([t]))[0]), 0.0, W, points=[3.0],
                epsabs=1e-13, epsrel=1e-13)[0]
    assert g.given == pytest.approx(30.0 * 50.0 / full, rel=1e-9)
    assert q.integral(0.0, W) == pytest.approx(50.0, rel=1e-12)


def test_cumulative_limit_reduce_and_skip():
    for policy, expected in [("reduce", [5.0, 5.0, 2.0, 0.0]), ("skip", [5.0, 5.0, 0.0, 0.0])]:
        p = one_compartment()
        for k in range(4):
            p.add_dose(k * 24.0, 5.0)
        given = give_all(p, Limits(cumulative=12.0, policy=policy))
        assert [g.given for g in given] == pytest.approx(expected, abs=1e-14)
        assert [bool(g.limits) for g in given] == [False, False, True, True]
        assert p.cumulative()[0] == pytest.approx(sum(expected), rel=1e-15)


def test_limits_reached_mid_cycle_cut_only_the_doses_after():
    p = one_compartment()
    p.add_dose(0.0, 4.0, infusion=10.0)                    # a long infusion running
    p.add_dose(4.0, 4.0)                                   # a bolus during it: mid-cycle
    given = give_all(p, Limits(cumulative=6.0))
    assert [g.given for g in given] == pytest.approx([4.0, 2.0])
    assert p.cumulative() == pytest.approx((6.0, 8.0))


def test_plasma_state_carries_the_decisions():
    p = one_compartment()
    for k in range(3):
        p.add_dose(k * 5.0, 5.0)
    p.give(0.0, 0.5)
    q = one_compartment()
    q.restore(p.state())
    assert q.cumulative() == p.cumulative()
    assert [g.given for g in q.give(20.0, 0.0)] == [0.0, 0.0]   # what was decided stays decided
    assert q.concentration(12.0) == pytest.approx(2.5 * math.exp(-K * 12.0), rel=1e-14)
