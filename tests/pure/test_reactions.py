"""The kill model and the clone dynamics (pure NumPy), against hand formulas and scipy.

Expected values are written out here from docs/model.md, Cancer cells, never taken from the code under test.
"""

import math
import os

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

from tme.config.clones import ClonesSpec
from tme.config.drugs import DrugSpec
from tme.cells.reactions import (KERNELS, TINY, CloneReactions, KillModel, Workspace,
                              clone_burdens, hill, hypoxia, intracellular, kill_rates,
                              resistant_fraction)

#: Both implementations of the clone step answer to the same closed forms and references.
BOTH = pytest.mark.parametrize("kernel", [k for k in KERNELS if k != "auto"])

KM, KIN = 1.5, 60.0          # µM, 1/hour (the section's defaults)


def A(c, ec50, n):
    """Hill activation, by hand."""
    return c ** n / (c ** n + ec50 ** n) if c > 0 else 0.0


def c_in_balance(c, vmax, km=KM, kin=KIN):
    """c_in from the flux balance k_in (c − c_in) = V_max c_in/(K_m + c_in), by bisection."""
    if c == 0 or vmax == 0:
        return c
    return brentq(lambda x: kin * (c - x) - vmax * x / (km + x), 0.0, c, xtol=1e-15, rtol=1e-15)


# --------------------------------------------------------------------------------------------
# Pharmacology of one drug


def test_intracellular_root_satisfies_the_quadratic_and_the_flux_balance():
    rng = np.random.default_rng(1)
    c = 10 ** rng.uniform(-4, 3, 2000)
    vmax = 10 ** rng.uniform(-3, 4, 2000)
    x = intracellular(c, vmax, KM, KIN)
    assert np.all((x > 0) & (x <= c))
    quad = KIN * x ** 2 + (KIN * KM + vmax - KIN * c) * x - KIN * KM * c
    scale = KIN * x ** 2 + (KIN * KM + vmax + KIN * c) * x + KIN * KM * c   # sum of |terms|
    assert np.max(np.abs(quad) / scale) < 1e-14
    flux_in, flux_out = KIN * (c - x), vmax * x / (KM + x)
    # (c − c_in cancels when the pump is weak: compare on the scale of the influx k_in c)
    assert np.max(np.abs(flux_in - flux_out) / (KIN * c)) < 1e-13
    for ci, vi, xi in list(zip(c, vmax, x))[:50]:
        assert xi == pytest.approx(c_in_balance(ci, vi), rel=1e-10)


def test_intracellular_limits():
    c = np.array([0.0, 1e-6, 0.3, 1.5, 40.0, 1e4])
    assert np.array_equal(intracellular(c, 0.0, KM, KIN), c)                  # no pump: c_in = c
    # a vanishing pump costs c·(V/k_in)/(K_m + c), without cancellation
    v = 1e-9
    expected = c - c * (v / KIN) / (KM + c)
    assert np.allclose(intracellular(c, v, KM, KIN), expected, rtol=1e-14, atol=0)
    # a strong pump: c_in ≈ k_in K_m c / V_max at low levels
    big = intracellular(0.01, 1e6, KM, KIN)
    assert big == pytest.approx(KIN * KM * 0.01 / 1e6, rel=1e-3) and big < 1e-6
    # the MDR line of Shen et al. 2008 accumulates 19 %: V_max = (1/0.19 − 1) k_in K_m
    assert intracellular(1e-4, (1 / 0.19 - 1) * KIN * KM, KM, KIN) / 1e-4 == pytest.approx(0.19, rel=1e-3)
    # saturating levels overwhelm the pump: c_in/c → 1
    assert intracellular(1e5, 300.0, KM, KIN) / 1e5 == pytest.approx(1.0, abs=1e-3)
    assert intracellular(-0.5, 10.0, KM, KIN) == 0.0                          # round-off below 0


def test_hill_values():
    assert hill(0.5, 0.5, 1.0) == pytest.approx(0.5)
    assert hill(3.0, 1.0, 2.0) == pytest.approx(0.9)
    assert hill(1.0, 3.0, 2.0) == pytest.approx(0.1)
    assert hill(2.0, 1.0, 0.5) == pytest.approx(math.sqrt(2) / (math.sqrt(2) + 1))
    assert hill(0.0, 1.0, 2.0) == 0.0 and hill(-1e-12, 1.0, 1.5) == 0.0
    assert hill(1e300, 1.0, 4.0) == 1.0 and hill(0.1, 0.0, 1.0) == 1.0 and hill(0.0, 0.0, 1.0) == 0.0


def test_hypoxia():
    o = np.array([0.0, 5.0, 15.0, -1.0])
    assert np.allclose(hypoxia(o, 5.0), [0.0, 0.5, 0.75, 0.0])
    assert hypoxia(o, None) == 1.0 and hypoxia(None, 5.0) == 1.0


# --------------------------------------------------------------------------------------------
# Kill rates, mechanism by mechanism

DRUGS = {
    "dox": {"class": "dna_damaging", "emax": "0.10 1/hour", "ec50": "0.5 uM", "pgp_substrate": True, "factor_protection": 0.6},
    "pac": {"class": "antimitotic", "emax": "0.08 1/hour", "ec50": "0.05 uM", "hill": 2.0, "pgp_substrate": True,
            "cycle_dependent": True},
    "erl": {"class": "targeted", "emax": "0.06 1/hour", "ec50": "0.2 uM", "hill": 1.5, "target": "EGFR"},
    "tar": {"class": "pgp_inhibitor", "pgp_inhibition": 0.9, "ec50": "0.1 uM"},
    "met_ab": {"class": "factor_blocker", "ec50": "1.0 uM", "hill": 2.0},
    "nivo": {"class": "checkpoint_inhibitor", "emax": "0.5 1/hour"},
}
CLONES = {
    "sens": {"growth": "0.6 1/day"},
    "t790m": {"growth": "0.5 1/day", "ec50_shift": {"erl": 50}},
    "met": {"growth": "0.5 1/day", "bypass": {"EGFR": 0.7}},
    "mdr": {"growth": "0.45 1/day", "pgp_vmax": "300 uM/hour"},
    "brca": {"growth": "0.5 1/day", "repair": 0.6},
    "calm": {"growth": "0.5 1/day", "factor_sensitivity": 0.25},
}
KS, OHALF = 0.01, 5.0
ORDER = list(DRUGS)


def specs(clones=CLONES, drugs=DRUGS, **section):
    cl = ClonesSpec.model_validate({"clones": clones, **section})
    dr = {n: DrugSpec.model_validate({"diffusivity": "16 um**2/s", **d}) for n, d in drugs.items()}
    return cl, dr


def levels(**given):
    """One dof per dict: drug levels in the order of DRUGS."""
    return np.array([[given.get(d, 0.0)] for d in ORDER])


def rates(c, s=None, o=None, **section):
    cl, dr = specs(**section)
    model = KillModel.from_specs(cl, dr, factor_half=KS, oxygen_half=OHALF)
    return dict(zip(cl.clones, kill_rates(model, c, s, o)[:, 0]))


def test_each_drug_on_the_sensitive_clone():
    k = rates(levels(dox=0.4))
    assert k["sens"] == pytest.approx(0.10 * A(0.4, 0.5, 1))
    k = rates(levels(pac=0.07))
    assert k["sens"] == pytest.approx(0.08 * A(0.07, 0.05, 2))
    k = rates(levels(erl=0.3))
    assert k["sens"] == pytest.approx(0.06 * A(0.3, 0.2, 1.5))


def test_drugs_add_their_kill_rates():
    k = rates(levels(dox=0.4, pac=0.07, erl=0.3))
    assert k["sens"] == pytest.approx(0.10 * A(0.4, 0.5, 1) + 0.08 * A(0.07, 0.05, 2) + 0.06 * A(0.3, 0.2, 1.5))


def test_target_mutation_shifts_the_ec50_of_its_drug_only():
    k = rates(levels(erl=0.3))
    assert k["t790m"] == pytest.approx(0.06 * A(0.3, 50 * 0.2, 1.5))
    assert k["t790m"] < k["sens"] / 20
    assert rates(levels(dox=0.4))["t790m"] == pytest.approx(0.10 * A(0.4, 0.5, 1))


def test_bypass_scales_the_emax_of_targeted_drugs_on_its_pathway():
    k = rates(levels(erl=0.3))
    assert k["met"] == pytest.approx((1 - 0.7) * 0.06 * A(0.3, 0.2, 1.5))
    assert rates(levels(dox=0.4))["met"] == pytest.approx(0.10 * A(0.4, 0.5, 1))
    # named by drug instead of target: the same
    by_drug = dict(CLONES, met={"growth": "0.5 1/day", "bypass": {"erl": 0.7}})
    assert rates(levels(erl=0.3), clones=by_drug)["met"] == pytest.approx(k["met"])


def test_repair_scales_dna_damaging_kill_only():
    assert rates(levels(dox=0.4))["brca"] == pytest.approx((1 - 0.6) * 0.10 * A(0.4, 0.5, 1))
    assert rates(levels(pac=0.07))["brca"] == pytest.approx(0.08 * A(0.07, 0.05, 2))
    assert rates(levels(erl=0.3))["brca"] == pytest.approx(0.06 * A(0.3, 0.2, 1.5))


def test_pgp_lowers_the_intracellular_level_of_substrates_only():
    c_dox, c_pac = 0.4, 0.07
    k = rates(levels(dox=c_dox))
    assert k["mdr"] == pytest.approx(0.10 * A(c_in_balance(c_dox, 300), 0.5, 1), rel=1e-9)
    assert k["mdr"] < k["sens"] / 2
    k = rates(levels(pac=c_pac))
    assert k["mdr"] == pytest.approx(0.08 * A(c_in_balance(c_pac, 300), 0.05, 2), rel=1e-9)
    assert rates(levels(erl=0.3))["mdr"] == pytest.approx(0.06 * A(0.3, 0.2, 1.5))


def test_pgp_inhibitor_restores_the_substrate_kill():
    c_dox, c_tar = 0.4, 0.5
    left = 1 - 0.9 * A(c_tar, 0.1, 1)
    k = rates(levels(dox=c_dox, tar=c_tar))
    assert k["mdr"] == pytest.approx(0.10 * A(c_in_balance(c_dox, 300 * left), 0.5, 1), rel=1e-9)
    assert rates(levels(dox=c_dox))["mdr"] < k["mdr"] < k["sens"]
    assert k["sens"] == pytest.approx(0.10 * A(c_dox, 0.5, 1))   # no pump, nothing to restore


def test_caf_factor_protects_and_a_factor_blocker_removes_the_shield():
    s = np.array([0.03])
    shield = 0.03 / (0.03 + KS)
    k = rates(levels(dox=0.4), s=s)
    assert k["sens"] == pytest.approx(0.10 * A(0.4, 0.5, 1) * (1 - 0.6 * shield))
    assert k["calm"] == pytest.approx(0.10 * A(0.4, 0.5, 1) * (1 - 0.25 * 0.6 * shield))
    assert rates(levels(erl=0.3), s=s)["sens"] == pytest.approx(0.06 * A(0.3, 0.2, 1.5))  # π = 0
    s_eff = 0.03 * (1 - A(2.0, 1.0, 2))
    k = rates(levels(dox=0.4, met_ab=2.0), s=s)
    assert k["sens"] == pytest.approx(0.10 * A(0.4, 0.5, 1) * (1 - 0.6 * s_eff / (s_eff + KS)))


def test_cycle_dependent_kill_follows_oxygen():
    o = np.array([2.0])
    k = rates(levels(pac=0.07, dox=0.4), o=o)
    h = 2.0 / (2.0 + OHALF)
    assert k["sens"] == pytest.approx(0.08 * A(0.07, 0.05, 2) * h + 0.10 * A(0.4, 0.5, 1))
    # without hypoxic growth, oxygen does not slow the cycle-dependent kill either
    k = rates(levels(pac=0.07), o=o, hypoxia_growth=False)
    assert k["sens"] == pytest.approx(0.08 * A(0.07, 0.05, 2))


def test_checkpoint_inhibitor_and_no_drug_kill_nothing():
    k = rates(levels(nivo=10.0, tar=1.0, met_ab=1.0))
    assert all(v == 0.0 for v in k.values())
    assert all(v == 0.0 for v in rates(levels()).values())


def test_kill_rates_over_many_dofs_and_blocks():
    cl, dr = specs()
    model = KillModel.from_specs(cl, dr, factor_half=KS, oxygen_half=OHALF)
    rng = np.random.default_rng(3)
    n = 50
    c = rng.uniform(-1e-9, 1.0, (len(DRUGS), n))            # a little round-off below 0 too
    c[ORDER.index("met_ab")] = 0.0
    s, o = rng.uniform(0, 0.05, n), rng.uniform(0, 50, n)
    whole = kill_rates(model, c, s, o, work=Workspace(7))    # 8 blocks, the last one short
    for x in (0, 17, 49):
        one = kill_rates(model, c[:, x:x + 1], s[x:x + 1], o[x:x + 1])[:, 0]
        assert np.allclose(whole[:, x], one, rtol=1e-14, atol=0)
    dox, pac, erl = (np.maximum(c[ORDER.index(d)], 0) for d in ("dox", "pac", "erl"))
    shield, h = s / (s + KS), o / (o + OHALF)
    sensitive = (0.10 * dox / (dox + 0.5) * (1 - 0.6 * shield)
                 + 0.08 * pac ** 2 / (pac ** 2 + 0.05 ** 2) * h
                 + 0.06 * erl ** 1.5 / (erl ** 1.5 + 0.2 ** 1.5))
    assert np.allclose(whole[0], sensitive, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------------
# Clone dynamics against scipy

DAY = 24.0
WELL_MIXED = {
    "clones": {
        "sensitive": {"growth": "0.7 1/day", "initial": 0.3, "immune_kill": "0.004 1/hour"},
        "t790m": {"growth": "0.55 1/day", "ec50_shift": {"erl": 40}, "initial": 2e-4},
        "mdr": {"growth": "0.5 1/day", "pgp_vmax": "300 uM/hour", "immune_kill": "0.002 1/hour"},
    },
    "mutation": {"sensitive": {"t790m": 1e-3, "mdr": 5e-4}, "t790m": {"mdr": 2e-4}},
    "necrosis": {"rate": "0.3 1/day", "threshold": "1.0 uM"},
}
MIX_DRUGS = {k: DRUGS[k] for k in ("dox", "pac", "erl")}
# three uniform conditions, one per dof: the targeted drug at full oxygen; the P-gp substrates
# with the CAF factor and immune effectors; hypoxia with necrosis and no drug
C3 = np.array([[0.0, 0.15, 0.0], [0.0, 0.02, 0.0], [0.3, 0.0, 0.0]])   # rows dox, pac, erl
S3 = np.array([0.0, 0.02, 0.0])
O3 = np.array([40.0, 20.0, 0.6])
E3 = np.array([0.0, 3.0, 0.0])


def reference_rhs(x: int):
    """dN/dt of dof ``x``, written from docs/model.md, Cancer cells with hand-computed kill rates."""
    g = np.array([0.7, 0.55, 0.5]) / DAY
    mu = np.array([[0, 1e-3, 5e-4], [0, 0, 2e-4], [0, 0, 0]])
    h = O3[x] / (O3[x] + OHALF)
    shield = S3[x] / (S3[x] + KS)
    dox, pac, erl = C3[:, x]
    cin = {"dox": c_in_balance(dox, 300), "pac": c_in_balance(pac, 300)}
    kill = np.array([
        0.10 * A(dox, 0.5, 1) * (1 - 0.6 * shield) + 0.08 * A(pac, 0.05, 2) * h + 0.06 * A(erl, 0.2, 1.5),
        0.10 * A(dox, 0.5, 1) * (1 - 0.6 * shield) + 0.08 * A(pac, 0.05, 2) * h + 0.06 * A(erl, 8.0, 1.5),
        0.10 * A(cin["dox"], 0.5, 1) * (1 - 0.6 * shield) + 0.08 * A(cin["pac"], 0.05, 2) * h
        + 0.06 * A(erl, 0.2, 1.5),
    ])
    loss = kill + np.array([0.004, 0.0, 0.002]) * E3[x] + (0.3 / DAY if O3[x] < 1.0 else 0.0)

    def rhs(t, N):
        free = 1.0 - N.sum()
        births = g * h * N
        return births * free - loss * N + (mu.T @ births - mu.sum(axis=1) * births) * free
    return rhs


@pytest.fixture(scope="module")
def reference():
    t = np.arange(1, 31) * DAY
    N0 = [0.3, 2e-4, 0.0]
    return t, np.stack([solve_ivp(reference_rhs(x), (0, t[-1]), N0, method="DOP853", t_eval=t,
                                  rtol=1e-12, atol=1e-20).y for x in range(3)], axis=1)   # (K, 3, 30)


def simulate(dt: float, days: int = 30, **kwargs):
    cl, dr = specs(WELL_MIXED["clones"], MIX_DRUGS, mutation=WELL_MIXED["mutation"],
                   necrosis=WELL_MIXED["necrosis"])
    rx = CloneReactions.from_specs(cl, dr, 3, factor_half=KS, oxygen_half=OHALF, **kwargs)
    N = np.array([[c.initial] * 3 for c in cl.clones.values()])
    out = []
    per_day = round(DAY / dt)
    for _ in range(days):
        for _ in range(per_day):
            rx.advance(N, C3, S3, O3, E3, dt)
        out.append(N.copy())
    return np.stack(out, axis=-1)


def rel_error(N, ref):
    return float(np.max(np.abs(N - ref) / np.abs(ref)))


@BOTH
def test_advance_matches_solve_ivp_at_dt_one_hour(reference, kernel):
    t, ref = reference
    # the test is meaningful: under the targeted drug the sensitive clone is wiped out and the
    # target mutant fills the tissue; under the P-gp substrates the MDR clone, absent at the
    # start, arises by mutation and overtakes; in hypoxia every clone dies back
    assert ref[0, 0, -1] < 1e-6 and ref[1, 0, -1] > 0.9
    assert ref[2, 1, -1] > 100 * ref[0, 1, -1] and ref[2, 1, -1] > 10 * ref[2, 1, 0]
    assert ref[:, 2, -1].sum() < 1e-3
    N = simulate(1.0, kernel=kernel)
    assert rel_error(N, ref) < 1e-3


@BOTH
def test_advance_is_second_order(reference, kernel):
    t, ref = reference
    errors = [rel_error(simulate(dt, max_growth_step=10.0, kernel=kernel), ref) for dt in (6.0, 3.0, 1.5)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all((orders > 1.8) & (orders < 2.3)), (errors, orders)


@BOTH
def test_substeps_keep_long_steps_accurate(reference, kernel):
    t, ref = reference
    rx = CloneReactions.from_specs(*specs(WELL_MIXED["clones"], MIX_DRUGS), 1)
    # the fastest clone grows 0.7/day: g dt ≤ 0.1 per substep
    assert rx.substeps(1.0) == 1 and rx.substeps(24.0) == math.ceil(24 * 0.7 / DAY / 0.1) == 7
    assert rel_error(simulate(24.0, kernel=kernel), ref) < 2e-3


# --------------------------------------------------------------------------------------------
# Invariants


def random_states(rng, n):
    N = rng.uniform(0, 1, (3, n)) * rng.choice([0.0, 1e-12, 1e-3, 1.0], (3, n))
    N /= np.maximum(N.sum(axis=0), 1.0)                                 # N_tot ≤ 1
    N[:, :5] = [[1.0] * 5, [0.0] * 5, [0.0] * 5]                         # full tissue
    N[:, 5:10] = 0.0                                                     # empty
    return N


@BOTH
@pytest.mark.parametrize("emax", [0.0, 1e3])
def test_positive_and_below_capacity_for_any_step(emax, kernel):
    rng = np.random.default_rng(7)
    n = 200
    drugs = {k: dict(v, emax=f"{emax} 1/hour") if "emax" in v else v for k, v in MIX_DRUGS.items()}
    cl, dr = specs(WELL_MIXED["clones"], drugs, mutation=WELL_MIXED["mutation"],
                   necrosis=WELL_MIXED["necrosis"])
    c = rng.uniform(0, 5, (3, n))
    s, o, e = rng.uniform(0, 0.1, n), rng.uniform(0, 50, n), rng.uniform(0, 5, n)
    for control in (0.1, 1e6):          # with substeps, and one step for the whole dt
        rx = CloneReactions.from_specs(cl, dr, n, factor_half=KS, oxygen_half=OHALF,
                                       max_growth_step=control, kernel=kernel)
        N = random_states(rng, n)
        for dt in (1e4, 1e4, 0.5, 1e3):
            rx.advance(N, c, s, o, e, dt)
            assert np.all(np.isfinite(N)) and N.min() >= 0.0
            assert N.sum(axis=0).max() <= 1.0 + 1e-12
            assert np.all((N == 0) | (N >= TINY))           # no subnormal leftovers
        if emax == 0.0 and control == 0.1:
            # no drug, ~2e4 hours: the cells have filled most of the tissue somewhere
            assert N.sum(axis=0).max() > 0.99


@BOTH
def test_full_tissue_without_loss_does_not_change(kernel):
    cl, dr = specs(WELL_MIXED["clones"], MIX_DRUGS, mutation=WELL_MIXED["mutation"])
    rx = CloneReactions.from_specs(cl, dr, 2, kernel=kernel)
    N = np.array([[0.5, 0.9], [0.3, 0.1], [0.2, 0.0]])
    before = N.copy()
    rx.advance(N, np.zeros((3, 2)), None, None, None, 10.0)
    assert np.allclose(N, before, rtol=1e-15, atol=0)       # no free space: no division, no mutation


@BOTH
def test_pure_kill_is_exact_and_pure_growth_is_logistic(kernel):
    cl, dr = specs({"a": {"growth": "0.6 1/day"}}, {"dox": DRUGS["dox"]})
    rx = CloneReactions.from_specs(cl, dr, 3, kernel=kernel)
    g = 0.6 / DAY
    N0 = np.array([[1e-3, 0.2, 0.9]])
    # no drug: logistic growth N(t) = N0 e^{gt} / (1 + N0 (e^{gt} − 1))
    N = N0.copy()
    for _ in range(48):
        rx.advance(N, np.zeros((1, 3)), None, None, None, 1.0)
    exact = N0 * math.exp(48 * g) / (1 + N0 * (math.exp(48 * g) - 1))
    assert np.allclose(N, exact, rtol=1e-4)
    # kill only (full tissue: no growth): N = N0 e^{−κt} to round-off, whatever dt
    rx = CloneReactions(KillModel.from_specs(cl, dr), [0.0], None, 3, kernel=kernel)
    N = N0.copy()
    rx.advance(N, np.full((1, 3), 0.4), None, None, None, 100.0)
    kappa = 0.10 * A(0.4, 0.5, 1)
    assert np.allclose(N, N0 * math.exp(-kappa * 100.0), rtol=1e-13)


def test_blocks_give_the_same_result():
    rng = np.random.default_rng(5)
    n = 40
    cl, dr = specs(WELL_MIXED["clones"], MIX_DRUGS, mutation=WELL_MIXED["mutation"],
                   necrosis=WELL_MIXED["necrosis"])
    c, s, o, e = rng.uniform(0, 1, (3, n)), rng.uniform(0, .1, n), rng.uniform(0, 50, n), rng.uniform(0, 2, n)
    N0 = random_states(rng, n)
    results = []
    for block in (n, 6):
        rx = CloneReactions.from_specs(cl, dr, n, factor_half=KS, oxygen_half=OHALF, block=block)
        N = N0.copy()
        rx.advance(N, c, s, o, e, 5.0)
        results.append(N)
    assert np.array_equal(results[0], results[1])


def test_shape_errors_and_zero_step():
    cl, dr = specs(WELL_MIXED["clones"], MIX_DRUGS)
    rx = CloneReactions.from_specs(cl, dr, 4)
    N = np.full((3, 4), 0.1)
    with pytest.raises(ValueError, match=r"N has shape \(3, 5\), expected \(3, 4\)"):
        rx.advance(np.zeros((3, 5)), None, None, None, None, 1.0)
    with pytest.raises(ValueError, match="c has shape"):
        rx.advance(N, np.zeros((2, 4)), None, None, None, 1.0)
    rx.advance(N, None, None, None, None, 0.0)
    assert np.all(N == 0.1)


# --------------------------------------------------------------------------------------------
# Summaries and cost


def test_cell_density_and_resistant_fraction():
    cl, dr = specs(WELL_MIXED["clones"], MIX_DRUGS)
    rx = CloneReactions.from_specs(cl, dr, 2)
    N = np.array([[0.2, 0.1], [0.3, 0.0], [0.1, 0.3]])
    assert np.allclose(rx.cell_density(N), [0.6, 0.4])
    resistant = cl.resistant()
    assert resistant == [False, True, True]
    assert resistant_fraction(N, resistant) == pytest.approx(0.7 / 1.0)
    w = np.array([1.0, 3.0])    # dof volumes
    assert np.allclose(clone_burdens(N, w), [0.5, 0.3, 1.0])
    assert resistant_fraction(N, resistant, w) == pytest.approx(1.3 / 1.8)
    assert resistant_fraction(clone_burdens(N, w), resistant) == pytest.approx(1.3 / 1.8)
    assert resistant_fraction(np.zeros((3, 2)), resistant) == 0.0


def test_benchmark_reports_cost_in_matmults():
    """bench/reactions.py runs (its figures at 10^6 dofs are in docs/performance.md)."""
    from reactions import benchmark

    n = 10 ** 6 if os.environ.get("TME_BENCH") else 20 ** 3
    b = benchmark(n, repeat=3 if n > 10 ** 5 else 1)
    print(f"\nreactions benchmark, {b['dofs']} dofs, {b['clones']} clones x {b['drugs']} drugs, "
          f"MatMult {b['matmult_s'] * 1e3:.1f} ms:")
    for kernel in ("compiled", "numpy"):
        print(f"  {kernel}: half step {b[f'advance_{kernel}_s'] * 1e3:.1f} ms = "
              f"{b[f'advance_{kernel}_per_mm']:.2f} MatMult; both half steps "
              f"{b[f'step_per_mm_per_clone_{kernel}']:.2f} MatMult per clone per step")
    assert b["substeps"] == 1 and 14 < b["nonzeros_per_row"] <= 15
    assert all(b[f"advance_{k}_s"] > 0 for k in ("compiled", "numpy")) and b["matmult_s"] > 0


def _every_mechanism(n, **kwargs):
    """The example population of bench/reactions.py with every term of the kill model."""
    from reactions import example_specs

    clones, drugs = example_specs(every_mechanism=True)
    return CloneReactions.from_specs(clones, drugs, n, factor_half=0.01, oxygen_half=5.0, **kwargs)


@BOTH
def test_substeps_are_the_same_as_shorter_steps(kernel):
    """One step of 8 substeps = 8 steps of one substep (same frozen fields)."""
    n = 500
    rng = np.random.default_rng(3)
    N0 = rng.uniform(0.0, 0.3, (4, n))
    c = rng.uniform(0.0, 2.0, (6, n))
    s, o, e = rng.uniform(0, 0.05, n), rng.uniform(0.0, 50, n), rng.uniform(0, 1, n)
    rx = _every_mechanism(n, kernel=kernel)
    assert rx.substeps(30.0) == 8 and rx.substeps(30.0 / 8) == 1
    one, many = N0.copy(), N0.copy()
    rx.advance(one, c, s, o, e, 30.0)
    for _ in range(8):
        rx.advance(many, c, s, o, e, 30.0 / 8)
    assert np.max(np.abs(one - many)) < 1e-13


@BOTH
def test_step_doubling_estimates_the_local_error(reference, kernel):
    """advance_estimated: its estimate is the local error of advance over the same step (solve_ivp
    from the same state), to 10 %, for three conditions at once; it keeps the finer result."""
    t, ref = reference
    cl, dr = specs(WELL_MIXED["clones"], MIX_DRUGS, mutation=WELL_MIXED["mutation"],
                   necrosis=WELL_MIXED["necrosis"])
    rx = CloneReactions.from_specs(cl, dr, 3, factor_half=KS, oxygen_half=OHALF, kernel=kernel,
                                   max_growth_step=10.0)
    start = np.ascontiguousarray(ref[:, :, 2])  # day 3: every clone present in every condition
    for dt in (12.0, 6.0):
        coarse = start.copy()
        rx.advance(coarse, C3, S3, O3, E3, dt)
        fine = start.copy()
        est = rx.advance_estimated(fine, C3, S3, O3, E3, dt)
        exact = np.stack([solve_ivp(reference_rhs(x), (0, dt), start[:, x], method="DOP853",
                                    rtol=1e-13, atol=1e-22).y[:, -1] for x in range(3)], axis=1)
        true = coarse - exact
        big = np.abs(true) > 1e-3 * np.abs(true).max()
        assert np.allclose(est[big], true[big], rtol=0.1), (est, true)
        assert np.max(np.abs(fine - exact)) < 0.3 * np.max(np.abs(true))
