"""Plasma pharmacokinetics (docs/model.md, Transport): the plasma concentration C_p(t) of each drug.

A drug's plasma level follows its dose schedule through a linear compartment model:

- ``one_compartment``:  dC/dt = -k C + R(t), with k = ln 2 / half_life (k12, k21 unused);
- ``two_compartment``:  dC/dt = -(k10 + k12) C + k21 P + R(t),  dP/dt = k12 C - k21 P,
  with k10 = ln 2 / half_life (elimination from the central compartment) and P the peripheral
  amount per central volume, so that both are in µM (half_life sets k10, not the terminal
  half-life, which is longer);
- ``constant``:         C = pk.level at all times; such a drug takes no doses.

A bolus raises C by its concentration at its start; an infusion delivers the same total at a
constant rate R over its duration. Between events (dose starts, infusion ends) the input is
constant and the system x' = A x + R e1 is solved exactly with the eigenvalues λ_i of A and its
spectral projectors P_i (Σ P_i = I):

    x(T + τ)      = Σ_i P_i [exp(λ_i τ) x(T) + τ φ1(λ_i τ) R e1]
    ∫_T^{T+τ} C dt = Σ_i e1·P_i [τ φ1(λ_i τ) x(T) + τ² φ2(λ_i τ) R e1]

with φ1(z) = (e^z - 1)/z and φ2(z) = (e^z - 1 - z)/z². C_p is right-continuous: a bolus given at
t counts at t. Before the first dose the plasma is drug-free.

Units: time in hours, concentrations in µM, infusion rates in µM/hour.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .config.drugs import Dose, DrugSpec, PKSpec, dose_concentration
from .config.spec import ScenarioError

LN2 = math.log(2.0)

#: next_event treats events within this relative distance of t as reached: a step that short
#: would only add round-off, since the step means integrate across events exactly anyway.
EVENT_TOL = 1e-12

# --------------------------------------------------------------------------------------------
# Exact propagation between events


def _phi1(z: float) -> float:
    """(e^z - 1)/z, accurate near 0."""
    return math.expm1(z) / z if z != 0.0 else 1.0


def _phi2(z: float) -> float:
    """(e^z - 1 - z)/z², accurate near 0 (the direct formula loses ~|1/z| ulps there)."""
    if abs(z) < 0.1:
        term, total = 0.5, 0.5  # Σ z^n/(n+2)!, truncated below 1e-17 for |z| < 0.1
        for n in range(1, 10):
            term *= z / (n + 2)
            total += term
        return total
    return (math.expm1(z) - z) / z / z


def _modes(pk: PKSpec) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues λ_i [1/hour] of the PK system matrix and its spectral projectors P_i.

    Returns (lam, proj) with proj[i] the n×n projector of λ_i (n = 1 or 2 compartments).
    """
    k10 = LN2 / pk.half_life
    if pk.model == "two_compartment" and pk.k12 > 0.0:
        k12, k21 = pk.k12, pk.k21
        # A = [[-(k10 + k12), k21], [k12, -k21]]; λ = (trace ± root)/2, with the discriminant
        # written as a sum of non-negative terms: > 0 when k12 > 0, so the eigenvalues are real
        # and distinct
        d = k10 + k12 - k21
        root = math.sqrt(d * d + 4.0 * k12 * k21)
        fast = -0.5 * (k10 + k12 + k21 + root)
        slow = k10 * k21 / fast  # det A / fast: avoids the cancellation in (trace + root)/2
        # diagonal of A - fast I, each written without cancellation: a rounding error here would
        # leak a non-decaying slow mode into C (e.g. k21 = 0, where slow = 0 and C must vanish)
        g = 4.0 * k12 * k21
        p = g / (2.0 * (root + d)) if d > 0.0 else 0.5 * (root - d)  # A_11 - fast = (root - d)/2
        q = 0.5 * (root + d) if d >= 0.0 else g / (2.0 * (root - d))  # A_22 - fast = (root + d)/2
        # spectral projectors: P_slow = (A - fast I)/root, P_fast = (slow I - A)/root
        proj = np.array([[[p, k21], [k12, q]], [[q, -k21], [-k12, p]]]) / root
        return np.array([slow, fast]), proj
    # one compartment; also a two-compartment drug with k12 = 0, whose peripheral stays empty
    return np.array([-k10]), np.ones((1, 1, 1))


class _Input(NamedTuple):
    """One dose as planned: a bolus (end == start) or an infusion at ``rate``; it reaches the
    plasma at ``scale`` × its amount. A dose is *decided* (:meth:`Plasma.give`) when it
    starts: until then it counts at its planned scale 1."""

    start: float  # hour
    end: float    # hour; == start for a bolus
    bolus: float  # µM added at start
    rate: float   # µM/hour during [start, end)
    scale: float = 1.0    # the multiple of the planned amount given
    decided: float = 1.0  # 1 once given (or not), 0 while planned
    every: float = 0.0    # the cycle period of its dose [hour]; 0 for a single dose

    @property
    def amount(self) -> float:
        """The planned amount [µM]: the bolus, or rate × duration."""
        return self.bolus + self.rate * (self.end - self.start)


class Given(NamedTuple):
    """A dose as given: its ``drug``, ``start`` [hour], planned and given amounts [µM], the
    factor the protocol asked for, and the limits that cut it (policy 'reduce' or 'skip')."""

    drug: str
    start: float
    planned: float
    given: float
    factor: float
    limits: tuple[str, ...]


class Limits(NamedTuple):
    """One drug's limits in the units of the plasma: cumulative dose [µM], peak [µM], AUC per
    cycle [µM·hour] (each inf when not set), the AUC window [hour] (None: the dose's cycle),
    and the policy."""

    cumulative: float = math.inf
    peak: float = math.inf
    auc: float = math.inf
    window: float | None = None
    policy: str = "reduce"


# --------------------------------------------------------------------------------------------
# One drug


class Plasma:
    """Plasma concentration C_p(t) [µM] of one drug, t in hours of simulated time.

    Doses are added with :meth:`add_dose` or :meth:`schedule`, stopped with :meth:`cancel_from`;
    :meth:`concentration`, :meth:`mean` and :meth:`events` read the result. States are cached at
    the event times and each query propagates exactly from the last event before it; queries at
    increasing times (the time loop) cost O(1) amortised, any order works.
    """

    def __init__(self, pk: PKSpec, name: str = "drug"):
        self.pk, self.name = pk, name
        self.constant = pk.model == "constant"
        self._inputs: list[_Input] = []
        self._times: list[float] = []   # event times, sorted, distinct [hour]
        self._jump: list[float] = []    # bolus added at each event [µM]
        self._rate: list[float] = []    # infusion rate from each event to the next [µM/hour]
        self._states: list[np.ndarray] = []  # state just after event j (bolus included)
        self._areas: list[float] = []   # ∫ C over [T_j, T_{j+1}] [µM·hour], one fewer than states
        self._cursor = 0
        self.version = 0  # bumped on every change of the schedule, for callers that memoise
        if not self.constant:
            if not pk.half_life > 0.0:
                raise ScenarioError(f"drugs.{name}.pk.half_life: must be > 0 for pk.model "
                                    f"{pk.model!r} (got {pk.half_life} hour)")
            self._lam, self._proj = _modes(pk)
            self._input = self._proj[:, :, 0]  # each mode's share of an input into the central compartment

    # ---- doses -----------------------------------------------------------------------------
    def add_dose(self, start: float, concentration: float, infusion: float = 0.0,
                 every: float = 0.0) -> None:
        """Give ``concentration`` [µM] at ``start`` [hour]: a bolus, or over ``infusion`` hours
        (``every``: the cycle period [hour] it belongs to, for an AUC limit)."""
        self._add([self._make(start, concentration, infusion)._replace(every=float(every))])

    def schedule(self, doses: Sequence[Dose], offset: float, key: str) -> None:
        """Give this drug's doses among ``doses``, each cycle k at offset + start + k·every [hour].

        ``key`` is the key path of the list in the scenario (errors name ``key.<index>...``).
        """
        self._add(self._plan(doses, offset, key))

    def cancel_from(self, t: float) -> None:
        """Stop the regimen at ``t`` [hour]: drop doses starting at or after t, cut an infusion running at t."""
        kept = []
        for d in self._inputs:
            if d.start >= t:
                continue
            if d.end > t:
                d = d._replace(end=t)  # same rate, so what ran before t is unchanged
            kept.append(d)
        if kept != self._inputs:
            self._inputs = kept
            self._rebuild(t)

    def _make(self, start: float, concentration: float, infusion: float) -> _Input:
        if self.constant:
            raise ScenarioError(f"drugs.{self.name}.pk.model: 'constant' keeps the plasma at pk.level "
                                "and takes no doses; use one_compartment or two_compartment")
        if not (math.isfinite(start) and math.isfinite(concentration) and concentration >= 0.0
                and math.isfinite(infusion) and infusion >= 0.0):
            raise ValueError(f"dose of {self.name}: start {start}, concentration {concentration} uM, "
                             f"infusion {infusion} hour; expected finite values, concentration and infusion >= 0")
        if infusion > 0.0:
            return _Input(float(start), float(start + infusion), 0.0, concentration / infusion, 1.0, 0.0)
        return _Input(float(start), float(start), float(concentration), 0.0, 1.0, 0.0)

    def _plan(self, doses: Sequence[Dose], offset: float, key: str) -> list[_Input]:
        """This drug's doses among ``doses``, cycles expanded; validated before anything changes."""
        plan = []
        for k, dose in enumerate(doses):
            if dose.drug != self.name:
                continue
            where = f"{key}.{k}"
            if self.constant:
                raise ScenarioError(f"{where}: drug {self.name!r} has pk.model 'constant' (plasma level "
                                    "fixed at pk.level), so it takes no doses; remove the dose or give "
                                    "the drug pk.model one_compartment or two_compartment")
            every = dose.every or 0.0
            if dose.cycles > 1 and not every > 0.0:
                raise ScenarioError(f"{where}.every: {dose.cycles} cycles need a cycle period > 0 "
                                    "(e.g. every: 21 day)")
            conc = dose_concentration(dose.amount, self.pk, f"{where}.amount")
            plan += [self._make(offset + dose.start + c * every, conc, dose.infusion)._replace(every=every)
                     for c in range(dose.cycles)]
        return plan

    def _add(self, inputs: list[_Input]) -> None:
        if inputs:
            self._inputs += inputs
            self._rebuild(min(d.start for d in inputs))

    def _rebuild(self, since: float) -> None:
        """Recompute the event table after a change at or after ``since`` [hour].

        Nothing before ``since`` changed, so the states cached at earlier events stay valid; the
        area of the last of them does not (the event after it may have moved).
        """
        inputs = [d for d in self._inputs if d.scale != 0.0]  # a dose not given changes nothing
        times = sorted({d.start for d in inputs} | {d.end for d in inputs})
        index = {t: j for j, t in enumerate(times)}
        jump, rate = [0.0] * len(times), [0.0] * len(times)
        for d in inputs:
            j = index[d.start]
            jump[j] += d.bolus * d.scale
            # summed per interval, not as running +/- increments, so the rate returns to
            # exactly 0 when the infusions end
            for i in range(j, index[d.end]):
                rate[i] += d.rate * d.scale
        # the cache holds states by position: keep those of the unchanged leading events
        old = self._times
        keep = min(bisect.bisect_left(times, since), len(old))
        keep = next((k for k in range(keep) if old[k] != times[k]), keep)
        self._times, self._jump, self._rate = times, jump, rate
        del self._states[keep:]
        del self._areas[max(keep - 1, 0):]
        self._cursor = 0
        self.version += 1

    # ---- doses as given: the protocol's factor and the limits ---------------------------------
    def give(self, t: float, factor: float = 1.0, limits: Limits | None = None) -> list[Given]:
        """Decide every planned dose starting at or before ``t`` [hour], in order of start: it
        is given at ``factor`` × its planned amount, cut by ``limits`` (each dose checked
        against the doses given before it). Returns what was given."""
        out = []
        while True:
            todo = [i for i, d in enumerate(self._inputs) if not d.decided and d.start <= t]
            if not todo:
                return out
            i = min(todo, key=lambda k: self._inputs[k].start)
            d = self._inputs[i]
            scale, cut = max(float(factor), 0.0), []
            if limits is not None and scale > 0.0:
                scale, cut = self._limited(i, scale, limits)
            self._inputs[i] = d._replace(scale=scale, decided=1.0)
            self._rebuild(d.start)
            out.append(Given(self.name, d.start, d.amount, scale * d.amount, float(factor), tuple(cut)))

    def _limited(self, i: int, scale: float, limits: Limits) -> tuple[float, list[str]]:
        """The largest scale <= ``scale`` at which dose ``i`` meets ``limits``, and the limits
        that bound it (the scale is 0 under policy 'skip' when any does)."""
        d = self._inputs[i]
        bounds = {}
        if math.isfinite(limits.cumulative):
            before = math.fsum(e.amount * e.scale for e in self._inputs if e.decided)
            bounds["cumulative"] = (limits.cumulative - before) / d.amount if d.amount > 0 else math.inf
        if math.isfinite(limits.auc):
            window = limits.window if limits.window is not None else d.every
            a0 = self._trial(i, 0.0).integral(d.start, d.start + window)
            a1 = self._trial(i, 1.0).integral(d.start, d.start + window) - a0
            bounds["auc"] = (limits.auc - a0) / a1 if a1 > 0 else math.inf
        if math.isfinite(limits.peak):
            bounds["peak"] = self._peak_scale(i, scale, limits.peak)
        cut = sorted(k for k, b in bounds.items() if b < scale)
        if not cut:
            return scale, []
        if limits.policy == "skip":
            return 0.0, cut
        return max(min(bounds[k] for k in cut), 0.0), cut

    def _trial(self, i: int, scale: float) -> "Plasma":
        """This drug's plasma with the doses decided so far and dose ``i`` at ``scale``."""
        trial = Plasma(self.pk, self.name)
        trial._inputs = [d for d in self._inputs if d.decided] + [self._inputs[i]._replace(scale=scale, decided=1.0)]
        trial._rebuild(-math.inf)
        return trial

    def _peak_scale(self, i: int, scale: float, peak: float) -> float:
        """The largest s <= ``scale`` whose plasma peak over dose ``i``'s delivery is <= ``peak``.

        A bolus: C(start) before it plus s × its amount (closed form). An infusion: the peak
        max_τ [f(τ) + s g(τ)] is convex and non-decreasing in s, bisected to the last bit on
        the exact :meth:`peak`."""
        d = self._inputs[i]
        if d.end == d.start:
            base = self._trial(i, 0.0).concentration(d.start)
            return (peak - base) / d.bolus if d.bolus > 0 else math.inf
        def top(s):
            return self._trial(i, s).peak(d.start, d.end)
        if top(scale) <= peak:
            return math.inf
        lo, hi = 0.0, scale
        if top(0.0) > peak:
            return 0.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):
                break
            lo, hi = (mid, hi) if top(mid) <= peak else (lo, mid)
        return lo

    def peak(self, t0: float, t1: float) -> float:
        """The exact maximum of C_p [µM] over [t0, t1] [hour] (boluses at t counted at t).

        Between events the input is constant and C(τ) = Σ_i a_i e^{λ_i τ} + c (a term b τ for a
        zero eigenvalue): monotone for one mode, at most one interior extremum for two, found
        from C'(τ) = 0 in closed form."""
        if self.constant:
            return self.pk.level
        T = self._times
        cuts = [t0] + [x for x in T if t0 < x < t1] + [t1]
        best = self.concentration(t0)
        for a, b in zip(cuts[:-1], cuts[1:]):
            best = max(best, self.concentration(b), self._interior_max(a, b))
        return best

    def _interior_max(self, a: float, b: float) -> float:
        """The largest interior extremum of C over (a, b), an interval of constant input; -inf if none."""
        j = self._index(a)
        if j < 0 or len(self._lam) < 2:
            return -math.inf
        x, _ = self._advance(self._state(j), self._rate[j], a - self._times[j])
        r = self._rate[j]
        px = self._proj @ x
        coef, lin = [], 0.0
        for m, lam in enumerate(self._lam):
            w = self._input[m][0]
            if lam == 0.0:
                coef.append(0.0)
                lin += r * w  # a term (x_m + r w τ): its slope
                continue
            coef.append(px[m][0] + r * w / lam)
        (l1, l2), (a1, a2) = self._lam, coef
        # C'(τ) = a1 λ1 e^{λ1 τ} + a2 λ2 e^{λ2 τ} + lin = 0
        if lin == 0.0 and l1 != 0.0 and l2 != 0.0:
            num, den = -a2 * l2, a1 * l1
            if den == 0.0 or num / den <= 0.0:
                return -math.inf
            tau = math.log(num / den) / (l1 - l2)
        elif l1 == 0.0 or l2 == 0.0:
            lam, av = (l2, a2) if l1 == 0.0 else (l1, a1)
            if av * lam == 0.0 or -lin / (av * lam) <= 0.0:
                return -math.inf
            tau = math.log(-lin / (av * lam)) / lam
        else:
            return -math.inf
        if not 0.0 < tau < b - a:
            return -math.inf
        return self.concentration(a + tau)

    def cumulative(self) -> tuple[float, float]:
        """(given, planned) [µM]: the total amount of the doses decided so far, as given and at
        their planned amounts (the continuous schedule of the same doses)."""
        done = [d for d in self._inputs if d.decided]
        return math.fsum(d.amount * d.scale for d in done), math.fsum(d.amount for d in done)

    def given_until(self, t: float) -> float:
        """The amount [µM] given by the doses decided so far, counted up to ``t`` [hour] (an
        infusion running at t counts pro rata)."""
        total = []
        for d in self._inputs:
            if not d.decided or d.start > t:
                continue
            if d.end > d.start:
                total.append(d.rate * d.scale * (min(d.end, t) - d.start))
            else:
                total.append(d.bolus * d.scale)
        return math.fsum(total)

    def state(self) -> list[list[float]]:
        """The doses given so far, as plain data (JSON): :meth:`restore` takes it."""
        return [list(d) for d in self._inputs]

    def restore(self, state: list[list[float]]) -> None:
        """Continue from a :meth:`state`; the event table is rebuilt from the doses in their
        order, so every later level equals the saved run's to the last bit."""
        self._inputs = [_Input(*map(float, d)) for d in state]
        self._states, self._areas = [], []
        self._rebuild(-math.inf)

    # ---- evaluation ------------------------------------------------------------------------
    def _advance(self, x: np.ndarray, rate: float, tau: float) -> tuple[np.ndarray, float]:
        """State after ``tau`` hours at constant input ``rate`` from state ``x``, and ∫ C over them."""
        e, f1, f2 = [], [], []
        for lam in self._lam:
            z = lam * tau
            e.append(math.exp(z))
            f1.append(tau * _phi1(z))
            f2.append(tau * tau * _phi2(z))
        px = self._proj @ x  # (modes, n): x split into modes
        x_new = np.asarray(e) @ px + rate * (np.asarray(f1) @ self._input)
        area = float(np.asarray(f1) @ px[:, 0] + rate * (np.asarray(f2) @ self._input[:, 0]))
        return x_new, area

    def _index(self, t: float) -> int:
        """Index of the last event at or before ``t``; -1 before the first."""
        T, c = self._times, self._cursor
        # the time loop asks at increasing times: try the cursor's interval and the next first
        if c < len(T) and T[c] <= t:
            if c + 1 == len(T) or t < T[c + 1]:
                return c
            if c + 2 == len(T) or t < T[c + 2]:
                self._cursor = c + 1
                return c + 1
        j = bisect.bisect_right(T, t) - 1
        self._cursor = max(j, 0)
        return j

    def _state(self, j: int) -> np.ndarray:
        """State just after event ``j``, computing the cache up to it."""
        states, areas = self._states, self._areas
        while len(states) <= j:
            i = len(states)
            if i == 0:
                x = np.zeros(self._proj.shape[1])
            else:
                x, area = self._advance(states[i - 1], self._rate[i - 1], self._times[i] - self._times[i - 1])
                areas.append(area)
            x[0] += self._jump[i]
            states.append(x)
        return states[j]

    def concentration(self, t: float) -> float:
        """C_p(t) [µM] at time ``t`` [hour]."""
        if self.constant:
            return self.pk.level
        j = self._index(t)
        if j < 0:
            return 0.0
        x, _ = self._advance(self._state(j), self._rate[j], t - self._times[j])
        return float(x[0])

    def mean(self, t0: float, t1: float) -> float:
        """Exact time average of C_p [µM] over [t0, t1] [hour]; C_p(t0) when t1 == t0."""
        if t1 < t0:
            raise ValueError(f"mean plasma level of {self.name}: interval [{t0}, {t1}] ends before it starts")
        if self.constant:
            return self.pk.level
        if t1 == t0:
            return self.concentration(t0)
        return self.integral(t0, t1) / (t1 - t0)

    def integral(self, t0: float, t1: float) -> float:
        """∫ C_p dt [µM·hour] over [t0, t1] [hour], t0 <= t1."""
        if self.constant:
            return self.pk.level * (t1 - t0)
        T, rate = self._times, self._rate
        j0, j1 = self._index(t0), self._index(t1)
        if j1 < 0:
            return 0.0
        if j0 == j1:
            x, _ = self._advance(self._state(j0), rate[j0], t0 - T[j0])
            return self._advance(x, rate[j0], t1 - t0)[1]
        parts = []
        if j0 >= 0:  # before the first event the plasma is empty
            x, _ = self._advance(self._state(j0), rate[j0], t0 - T[j0])
            parts.append(self._advance(x, rate[j0], T[j0 + 1] - t0)[1])
        last = self._state(j1)  # also fills the areas of the whole events between
        parts += self._areas[j0 + 1:j1]
        parts.append(self._advance(last, rate[j1], t1 - T[j1])[1])
        return math.fsum(parts)

    def events(self, t0: float, t1: float) -> list[float]:
        """Times [hour] in (t0, t1] where the input changes: dose starts and infusion ends."""
        T = self._times
        return T[bisect.bisect_right(T, t0):bisect.bisect_right(T, t1)]

    def next_event(self, t: float) -> float:
        """The first event [hour] after ``t`` (beyond EVENT_TOL), or inf."""
        T = self._times
        j = bisect.bisect_right(T, t + EVENT_TOL * max(1.0, abs(t)))
        return T[j] if j < len(T) else math.inf


# --------------------------------------------------------------------------------------------
# All drugs of a scenario


class PlasmaSet:
    """Plasma concentrations [µM] of every drug of a scenario, t in hours of simulated time."""

    def __init__(self, drugs: dict[str, DrugSpec], limits: dict | None = None):
        self.plasma = {name: Plasma(d.pk, name) for name, d in drugs.items()}
        self._memo: tuple | None = None
        self.limits: dict[str, Limits] = {}
        self.set_limits(limits or {}, drugs)

    def set_limits(self, limits: dict, drugs: dict[str, DrugSpec]) -> None:
        """Each drug's :class:`tme.config.treatment.LimitSpec` (``treatment.limits``), in the
        units of the plasma (a cumulative amount is converted like a dose)."""
        out = {}
        for name, spec in limits.items():
            cum = math.inf
            if spec.max_cumulative is not None:
                cum = dose_concentration(spec.max_cumulative, drugs[name].pk,
                                         f"treatment.limits.{name}.max_cumulative")
            out[name] = Limits(cum, math.inf if spec.max_peak is None else spec.max_peak,
                               math.inf if spec.max_auc is None else spec.max_auc,
                               spec.auc_window, spec.policy)
        self.limits = out

    def give(self, t: float, factor=lambda drug: 1.0) -> list[Given]:
        """Decide every drug's doses starting at or before ``t`` [hour] (:meth:`Plasma.give`),
        at ``factor(drug)`` × their amount and within the drug's limits."""
        out = []
        for name, p in self.plasma.items():
            if p.constant:
                continue
            out += p.give(t, factor(name), self.limits.get(name))
        return sorted(out, key=lambda g: g.start)

    def cumulative(self) -> dict[str, tuple[float, float]]:
        """Each dosed drug's (given, planned) total [µM] (:meth:`Plasma.cumulative`)."""
        return {name: p.cumulative() for name, p in self.plasma.items()
                if not p.constant and p._inputs}

    def __getitem__(self, name: str) -> Plasma:
        return self.plasma[name]

    def add_regimen(self, doses: Sequence[Dose], start: float, key: str) -> None:
        """Give a line's ``doses`` with their times counted from ``start`` [hour].

        ``key`` is the key path of the list (e.g. ``treatment.lines.1.regimen``). The whole
        regimen is checked before any dose is given.
        """
        for k, dose in enumerate(doses):
            if dose.drug not in self.plasma:
                known = ", ".join(sorted(self.plasma)) or "(none)"
                raise ScenarioError(f"{key}.{k}.drug: unknown drug {dose.drug!r}; defined drugs: {known}")
        plans = {name: p._plan(doses, start, key) for name, p in self.plasma.items()}
        for name, plan in plans.items():
            self.plasma[name]._add(plan)

    def state(self) -> dict[str, list]:
        """Every drug's doses so far (JSON): :meth:`restore` takes it."""
        return {name: p.state() for name, p in self.plasma.items()}

    def restore(self, state: dict[str, list]) -> None:
        for name, p in self.plasma.items():
            p.restore(state.get(name, []))
        self._memo = None

    def cancel_from(self, t: float) -> None:
        """Stop every drug's regimen at ``t`` [hour] (a switch of line)."""
        for p in self.plasma.values():
            p.cancel_from(t)

    def levels(self, t: float) -> dict[str, float]:
        """C_p(t) [µM] of each drug."""
        return {name: p.concentration(t) for name, p in self.plasma.items()}

    def means(self, t0: float, t1: float) -> dict[str, float]:
        """Exact mean C_p [µM] of each drug over [t0, t1] [hour]."""
        # transport asks once per drug for the same step: compute the step once
        key = (t0, t1, tuple(p.version for p in self.plasma.values()))
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, {name: p.mean(t0, t1) for name, p in self.plasma.items()})
        return dict(self._memo[1])

    def events(self, t0: float, t1: float) -> list[float]:
        """Times [hour] in (t0, t1] where any drug's input changes, sorted, without repeats."""
        return sorted({t for p in self.plasma.values() for t in p.events(t0, t1)})

    def next_event(self, t: float) -> float:
        """The first event [hour] of any drug after ``t``, or inf."""
        return min((p.next_event(t) for p in self.plasma.values()), default=math.inf)

