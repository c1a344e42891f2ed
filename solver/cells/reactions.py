"""Pointwise cell dynamics: the kill model (docs/model.md, Cancer cells) and the clone reaction step (docs/model.md, Coupling).

Everything here is a function of NumPy arrays over the dofs (one value per dof; no DOLFINx), so
it is the same on any number of ranks and is tested in milliseconds:

- :func:`intracellular`, :func:`hill`, :func:`hypoxia`: the pharmacology of one drug;
- :class:`KillModel` and :func:`kill_rates`: κ_ij of every drug on every clone, summed per clone;
- :class:`CloneReactions`: the clone dynamics over a step with drugs, survival factor, oxygen and
  immune effectors frozen, as Strang splitting uses it between transport steps.

Units: concentrations µM, rates 1/hour, time hour, P-gp capacity µM/hour; cell densities are
volume fractions of the packing capacity.

Arrays are processed in blocks of :data:`BLOCK` dofs with preallocated scratch rows: every
operation is a vectorised NumPy call with ``out=``, nothing is allocated during a step, and the
scratch memory is a few MB whatever the mesh (the ~40 intermediate arrays of a step over 1e6
dofs would be 320 MB). The cost against a sparse matrix-vector product is measured by
:func:`benchmark` (``python3 -m tme.cells.reactions``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from . import kernel
from ..config.clones import ClonesSpec
from ..pharmacology import DRUG_CLASSES
from ..config.drugs import DrugSpec

#: Dofs per block. The cost per dof was the same for 4k-16k dofs per block on a 2-core
#: test machine; fewer, larger blocks mean fewer Python-level calls.
BLOCK = 16384

#: Densities below this are set to 0, and the kill factor exp(-κ dt) is held above it: values
#: this small mean nothing (a cell is ~1e-6 of a dof's volume), and subnormal floats would make
#: the arithmetic 10-100x slower in regions where a clone has been wiped out.
TINY = 1e-150
_LOG_TINY = math.log(TINY)

#: How :class:`CloneReactions` computes a step: ``compiled`` (C generated for the population,
#: see :mod:`tme.cells.kernel`), ``numpy`` (the reference path), ``auto`` (compiled when a C
#: compiler is at hand, else NumPy with a warning).
KERNELS = ("auto", "compiled", "numpy")

#: Largest g·dt per substep of :meth:`CloneReactions.advance` (its accuracy control).
MAX_GROWTH_STEP = 0.1


# --------------------------------------------------------------------------------------------
# Pharmacology of one drug


def intracellular(c, vmax, km: float, kin: float) -> np.ndarray:
    """Intracellular level c_in [µM] of a P-gp substrate at outside level ``c`` [µM].

    The quasi-steady balance of passive influx and saturable efflux,
    k_in (c − c_in) = V_max c_in / (K_m + c_in), gives the positive root of
    k_in c_in² + (k_in K_m + V_max − k_in c) c_in − k_in K_m c = 0. ``vmax`` [µM/hour] is a
    number or an array broadcasting with ``c``; ``km`` [µM] > 0, ``kin`` [1/hour] > 0.
    ``c_in = c`` when V_max = 0, and c_in → 0 as V_max grows. A negative ``c`` counts as 0.
    """
    x, v = np.broadcast_arrays(np.maximum(np.asarray(c, float), 0.0), np.asarray(vmax, float))
    x = np.array(x, dtype=float)
    out = np.empty_like(x)
    _twice_intracellular(x, 1.0 / kin, np.array(v, dtype=float), km, out,
                         np.empty_like(x), np.empty_like(x), np.empty_like(x))
    out *= 0.5
    return out


def _twice_intracellular(x, ratio: float, scale, km: float, out, q, k4, a) -> np.ndarray:
    """2 c_in into ``out`` for x = c ≥ 0 and V_max/k_in = ``ratio`` · ``scale`` (``scale`` an
    array, or None for 1); ``q``, ``k4``, ``a`` are scratch. The kill model uses 2 c_in with
    2 EC50, which saves two sweeps."""
    # Divided by k_in the quadratic is c_in² + β c_in − K_m c = 0, β = K_m + V_max/k_in − c,
    # and 2 c_in = q − β with q = sqrt(β² + 4 K_m c). Written as
    #     2 c_in = 4 K_m c/(q + |β|) + |β| − β
    # (the two roots multiply to −K_m c) it has no cancellation for either sign of β: for
    # β ≥ 0 (V_max → 0 with c < K_m, where q − β would cancel) the last two terms are exactly
    # 0, and for β < 0 every term is positive. And it needs no select, which NumPy does slowly.
    if scale is None:
        np.subtract(km + ratio, x, out=out)
    else:
        np.multiply(scale, ratio, out=out)
        out += km
        out -= x
    np.multiply(x, 4.0 * km, out=k4)
    np.multiply(out, out, out=q)
    q += k4
    np.sqrt(q, out=q)
    np.abs(out, out=a)
    q += a
    np.subtract(a, out, out=out)
    np.divide(k4, q, out=q)
    out += q
    return out


def hill(c, ec50, n: float, out: np.ndarray | None = None):
    """Hill activation A = c^n / (c^n + EC50^n) ∈ [0, 1] (c and EC50 in the same unit).

    A negative ``c`` (solver round-off) counts as 0; A(0) = 0 even for EC50 = 0.
    """
    r = np.maximum(c, 0.0, out=out) if out is not None else np.array(np.maximum(c, 0.0), dtype=float)
    # as 1/(1 + (EC50/c)^n): no inf/inf for large c, and c = 0 gives 1/(1 + inf) = 0 (no select)
    with np.errstate(divide="ignore"):
        np.divide(np.maximum(ec50, 1e-300), r, out=r)
    if n != 1.0:
        np.power(r, n, out=r)
    r += 1.0
    np.reciprocal(r, out=r)
    return r if r.ndim else float(r)


def hypoxia(o, o_half: float | None, out: np.ndarray | None = None,
            scratch: np.ndarray | None = None):
    """Hypoxic slow-down h(o) = o/(o + o_half) ∈ [0, 1] (o, o_half in µM); a negative ``o``
    counts as 0. Returns 1.0 when oxygen is off (``o`` or ``o_half`` None)."""
    if o is None or o_half is None:
        return 1.0
    h = np.maximum(o, 0.0, out=out)
    np.divide(h, np.add(h, o_half, out=scratch), out=h)
    return h


# --------------------------------------------------------------------------------------------
# The kill model


@dataclass(frozen=True, eq=False)
class KillModel:
    """Per-(clone, drug) parameters of the kill rates κ_ij (docs/model.md, Cancer cells), built once.

    Shapes: (K,) per clone, (J,) per drug, (K, J) per pair, in the order of the specs. Units:
    ``coeff`` 1/hour, ``ec50`` µM, ``vmax`` µM/hour, ``km`` µM, ``kin`` 1/hour; ``factor_half``
    (K_s) and ``oxygen_half`` (o_half) µM, None when that field is off.

    κ_ij = coeff_ij · A(c_in,ij; ec50_ij, hill_j) · (1 − protection_ij s/(s + K_s)) · (h(o) if
    cycle_j), with coeff_ij = E_max,j (1 − b_ij)(1 − ρ_i if j is DNA-damaging; 0 for a drug
    without direct kill), ec50_ij = f_ij EC50_j, protection_ij = π_max,j · sensitivity_i and
    c_in = c unless j is a P-gp substrate and clone i pumps. A P-gp inhibitor l scales V_max by
    (1 − p_l A_l(c_l)); a factor blocker l scales s by (1 − A_l(c_l)) (both at the outside level).
    """

    clones: tuple[str, ...]
    drugs: tuple[str, ...]
    coeff: np.ndarray          # (K, J)
    ec50: np.ndarray           # (K, J)
    hill: np.ndarray           # (J,)
    substrate: np.ndarray      # (J,) bool
    cycle: np.ndarray          # (J,) bool
    protection: np.ndarray     # (K, J)
    vmax: np.ndarray           # (K,)
    km: float
    kin: float
    inhibitors: tuple[tuple[int, float, float, float], ...] = ()  # (j, p_j, EC50_j, n_j)
    blockers: tuple[tuple[int, float, float], ...] = ()           # (j, EC50_j, n_j)
    factor_half: float | None = None
    oxygen_half: float | None = None
    _plans: dict = field(default_factory=dict, repr=False)

    @property
    def n_clones(self) -> int:
        return len(self.clones)

    @property
    def n_drugs(self) -> int:
        return len(self.drugs)

    @classmethod
    def from_specs(cls, clones: ClonesSpec, drugs: dict[str, DrugSpec], *,
                   factor_half: float | None = None, oxygen_half: float | None = None) -> "KillModel":
        """Build from the validated scenario sections.

        ``drugs`` in the order of the rows of the concentration array ``c``; ``factor_half`` is
        K_s of the survival factor (None: factor off), ``oxygen_half`` the oxygen level of
        half-maximal proliferation (None: oxygen off). With ``clones.hypoxia_growth`` false,
        oxygen does not slow cycle-dependent kill either: both act through proliferation.
        """
        names = list(drugs)
        specs = [drugs[n] for n in names]
        K, J = len(clones.clones), len(names)
        coeff, ec50, prot = np.zeros((K, J)), np.ones((K, J)), np.zeros((K, J))
        for i, clone in enumerate(clones.clones.values()):
            for j, (name, d) in enumerate(zip(names, specs)):
                ec50[i, j] = clone.ec50_shift.get(name, 1.0) * d.ec50
                prot[i, j] = d.factor_protection * clone.factor_sensitivity
                kind = DRUG_CLASSES[d.drug_class]
                if not kind.kills:
                    continue
                bypass = 0.0
                if kind.bypassable:
                    # the drug's own name is the more specific entry
                    bypass = clone.bypass.get(name, clone.bypass.get(d.target, 0.0) if d.target else 0.0)
                repair = clone.repair if kind.repairable else 0.0
                coeff[i, j] = d.emax * (1.0 - bypass) * (1.0 - repair)
        return cls(
            clones=tuple(clones.clones), drugs=tuple(names), coeff=coeff,
            ec50=ec50, hill=np.array([d.hill for d in specs], float),
            substrate=np.array([d.pgp_substrate for d in specs], bool),
            cycle=np.array([d.cycle_dependent for d in specs], bool),
            protection=prot, vmax=np.array([c.pgp_vmax for c in clones.clones.values()], float),
            km=clones.pgp_km, kin=clones.influx,
            inhibitors=tuple((j, d.pgp_inhibition, d.ec50, d.hill) for j, d in enumerate(specs)
                             if DRUG_CLASSES[d.drug_class].inhibits_pgp and d.pgp_inhibition > 0),
            blockers=tuple((j, d.ec50, d.hill) for j, d in enumerate(specs)
                           if DRUG_CLASSES[d.drug_class].blocks_factor),
            factor_half=factor_half,
            oxygen_half=oxygen_half if clones.hypoxia_growth else None)

    def plan(self, shield: bool, oxygen: bool) -> "_Plan":
        """The distinct Hill terms of κ and their coefficients, for the fields present."""
        key = (shield, oxygen)
        if key not in self._plans:
            self._plans[key] = _Plan.compile(self, shield, oxygen)
        return self._plans[key]


@dataclass(frozen=True)
class _Plan:
    """κ_i = Σ_g coeff_ig T_g over the distinct terms T_g = w (1 − p S) h^[cyc] / (w + EC50^n).

    A source is a drug level seen by cells, w = c^n outside or (2 c_in)^n inside a pumping
    clone. Clones share every source, weight and term that does not depend on their own
    traits: 4 clones x 3 drugs typically need 6-8 terms rather than 12.
    """

    sources: tuple[tuple[int, int], ...]              # (drug j, pumping clone i or -1)
    weights: tuple[tuple[int, float, bool], ...]      # (source, p, cycle-dependent)
    terms: tuple[tuple[int, int, float, tuple[tuple[int, float], ...]], ...]
    #                 (source, weight, EC50^n, ((clone, coefficient), ...))
    drugs: tuple[int, ...]                            # drugs whose level is read
    shield: bool                                      # terms read s/(s + K_s)
    hypoxic: bool                                     # terms read h(o)
    pumps: bool                                       # terms read the P-gp capacity left

    @classmethod
    def compile(cls, m: KillModel, shield: bool, oxygen: bool) -> "_Plan":
        sources: dict = {}
        weights: dict = {}
        terms: dict = {}
        for j in range(m.n_drugs):
            n = float(m.hill[j])
            for i in range(m.n_clones):
                if m.coeff[i, j] == 0.0:
                    continue
                pumped = bool(m.substrate[j]) and m.vmax[i] > 0
                src = sources.setdefault((j, i if pumped else -1), len(sources))
                p = float(m.protection[i, j]) if shield else 0.0
                cyc = oxygen and bool(m.cycle[j])
                wt = weights.setdefault((src, p, cyc), len(weights))
                # 2 c_in is computed for pumping clones, so its EC50 is doubled; EC50^n is held
                # away from 0 so that c = 0 gives 0 rather than 0/0
                en = max(((2.0 if pumped else 1.0) * float(m.ec50[i, j])) ** n, 1e-300)
                terms.setdefault((src, wt, en), []).append((i, float(m.coeff[i, j])))
        return cls(sources=tuple(sources), weights=tuple(weights),
                   terms=tuple((src, wt, en, tuple(users)) for (src, wt, en), users in terms.items()),
                   drugs=tuple(sorted({j for j, _ in sources})),
                   shield=any(p > 0 for _, p, _ in weights),
                   hypoxic=any(c for _, _, c in weights),
                   pumps=any(i >= 0 for _, i in sources))


class Workspace:
    """Scratch rows of one block length, reused call after call (no allocation in a step)."""

    def __init__(self, size: int):
        self.size = size
        self._rows: list[np.ndarray] = []
        self._next = 0
        self.mask = np.empty(size, bool)

    def take(self, n: int) -> np.ndarray:
        """A free row, viewed at length ``n``."""
        if self._next == len(self._rows):
            self._rows.append(np.empty(self.size))
        row = self._rows[self._next]
        self._next += 1
        return row[:n]

    def release(self) -> None:
        self._next = 0


class _Sum:
    """Accumulates scaled rows into the clones' rows of ``out``; the first one is written."""

    def __init__(self, out: np.ndarray, tmp: np.ndarray):
        self.out, self.tmp = out, tmp
        self.written = [False] * out.shape[0]

    def add(self, i: int, row: np.ndarray, factor: float) -> None:
        if self.written[i]:
            np.multiply(row, factor, out=self.tmp)
            self.out[i] += self.tmp
        else:
            np.multiply(row, factor, out=self.out[i])
            self.written[i] = True

    def add_all(self, row: np.ndarray) -> None:
        """Add ``row`` (already scaled) to every clone."""
        for i, done in enumerate(self.written):
            if done:
                self.out[i] += row
            else:
                self.out[i] = row
        self.written = [True] * len(self.written)

    def finish(self) -> None:
        for i, done in enumerate(self.written):
            if not done:
                self.out[i] = 0.0


def kill_rates(model: KillModel, c: np.ndarray | None, s: np.ndarray | None, o: np.ndarray | None,
               out: np.ndarray | None = None, work: Workspace | None = None) -> np.ndarray:
    """Σ_j κ_ij [1/hour] per clone i and dof: an array (K, n).

    ``c`` (J, n) drug levels [µM] in the order of ``model.drugs`` (None when there are no
    drugs); ``s`` (n,) survival factor [µM] or None (no protection); ``o`` (n,) oxygen [µM] or
    None (cycle-dependent drugs at full effect). ``work``: scratch to reuse between calls.
    """
    n = _length(c, s, o)
    K = model.n_clones
    out = np.empty((K, n)) if out is None else out
    if out.shape != (K, n):
        raise ValueError(f"out has shape {out.shape}, expected {(K, n)}")
    plan = _plan_for(model, c is not None, s is not None, o is not None)
    work = work or Workspace(min(n, BLOCK) or 1)
    for a in range(0, n, work.size):
        b = min(a + work.size, n)
        work.release()
        acc = _Sum(out[:, a:b], work.take(b - a))
        if c is not None:
            _kill_into(acc, 1.0, model, plan, c[:, a:b], s if s is None else s[a:b],
                       o if o is None else o[a:b], None, work)
        acc.finish()
    return out


def _length(c, *fields) -> int:
    if c is not None and np.ndim(c) == 2 and c.shape[0]:
        return c.shape[1]
    for f in fields:
        if f is not None:
            return len(f)
    raise ValueError("no field gives the number of dofs")


def _plan_for(m: KillModel, drugs: bool, factor: bool, oxygen: bool) -> _Plan:
    """The kill plan when drug levels, the survival factor and oxygen are given or not."""
    return m.plan(shield=drugs and factor and m.factor_half is not None,
                  oxygen=oxygen and m.oxygen_half is not None)


def _kill_into(acc: _Sum, scale: float, m: KillModel, plan: _Plan, c, s, o, h, ws: Workspace) -> None:
    """Add ``scale`` κ_i of one block to ``acc``. ``h``: h(o) of the block when the caller
    has it (else computed here if a term needs it)."""
    B = c.shape[1]
    x = {j: np.maximum(c[j], 0.0, out=ws.take(B)) for j in plan.drugs}
    if plan.hypoxic and h is None:
        h = hypoxia(o, m.oxygen_half, out=ws.take(B), scratch=ws.take(B))
    tmp = ws.take(B)
    shield = None   # S = s_eff/(s_eff + K_s), s_eff = s Π(1 − A_blocker)
    if plan.shield:
        shield = np.maximum(s, 0.0, out=ws.take(B))
        for j, ec50, n in m.blockers:
            hill(c[j], ec50, n, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            shield *= tmp
        np.add(shield, m.factor_half, out=tmp)
        np.divide(shield, tmp, out=shield)
    left = None     # Π(1 − p A_inhibitor): the fraction of P-gp capacity left
    if plan.pumps and m.inhibitors:
        left = ws.take(B)
        left[...] = 1.0
        for j, p, ec50, n in m.inhibitors:
            hill(c[j], ec50, n, out=tmp)
            tmp *= -p
            tmp += 1.0
            left *= tmp
    w = []
    if plan.pumps:
        scratch = (tmp, ws.take(B), ws.take(B))
    for j, i in plan.sources:
        n = float(m.hill[j])
        if i >= 0:
            v = _twice_intracellular(x[j], m.vmax[i] / m.kin, left, m.km, ws.take(B), *scratch)
            w.append(v if n == 1.0 else np.power(v, n, out=v))
        else:
            w.append(x[j] if n == 1.0 else np.power(x[j], n, out=ws.take(B)))
    weighted = []
    for src, p, cyc in plan.weights:
        if p == 0.0 and not cyc:
            weighted.append(w[src])
            continue
        row = ws.take(B)
        if p:
            np.multiply(shield, -p, out=row)
            row += 1.0
            row *= w[src]
            if cyc:
                row *= h
        else:
            np.multiply(w[src], h, out=row)
        weighted.append(row)
    for src, wt, en, users in plan.terms:
        np.add(w[src], en, out=tmp)
        np.divide(weighted[wt], tmp, out=tmp)
        for i, coeff in users:
            acc.add(i, tmp, coeff * scale)


# --------------------------------------------------------------------------------------------
# Clone dynamics


class CloneReactions:
    """The pointwise clone dynamics over a step, with c, s, o, e frozen (docs/model.md, Cancer cells):

        dN_i/dt = g_i h N_i (1 − N_tot) − L_i N_i + Σ_k (μ_ki g_k h N_k − μ_ik g_i h N_i)(1 − N_tot)

    with L_i = Σ_j κ_ij + κ_imm,i e + δ_nec(o). Units: ``growth`` and ``immune_kill`` 1/hour,
    ``necrosis`` = (rate 1/hour, oxygen threshold µM), dt hour; N volume fractions.

    Scheme: with F = 1 − N_tot the system reads dN_i/dt = (b_i h F − L_i) N_i + h F Σ_k M_ik N_k
    (b_i = g_i (1 − Σ_k μ_ik), M_ik = μ_ki g_k). A substep τ is an exponential Heun step: a
    predictor (exponential Euler, the mutation inflow added à la Lawson) gives F at the end;
    then every clone is advanced exactly for its linear rate with F at the trapezoidal mean F̄
    and the mutation inflow at its trapezoidal mean S̄_i,

        N_i ← N_i exp(z_i) + φ1(z_i) S̄_i,   z_i = τ (b_i h F̄ − L_i),   φ1(z) = (e^z − 1)/z.

    This is second order in τ, exact for the kill and for exponential growth at low density,
    and positive for any τ. N_tot ≤ 1 holds for the exact solution; a substep that would
    overshoot it by its O(τ³) error is scaled back onto N_tot = 1 (a projection, which keeps the
    order). A step dt is split into ceil(dt max_i g_i / max_growth_step) equal substeps: the
    error is set by g τ alone, since the kill is integrated exactly.
    """

    #: the compiled step reads the same floor as the NumPy one
    tiny = TINY

    def __init__(self, model: KillModel, growth: Sequence[float], mutation, n_dofs: int, *,
                 immune_kill: Sequence[float] | None = None,
                 necrosis: tuple[float, float] | None = None,
                 max_growth_step: float = MAX_GROWTH_STEP, block: int = BLOCK,
                 kernel: str = "auto"):
        K = model.n_clones
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
        self.kernel = kernel
        self._compiled: dict = {}
        self.model = model
        self.n_dofs = int(n_dofs)
        self.growth = np.asarray(growth, float).reshape(K)
        mu = np.zeros((K, K)) if mutation is None else np.array(mutation, float).reshape(K, K)
        if ((self.growth < 0).any() or (mu < 0).any() or np.diagonal(mu).any()
                or (mu.sum(axis=1) > 1 + 1e-12).any()):
            raise ValueError("growth and mutation must be non-negative, mu[i][i] = 0 and every "
                             "row of mu must sum to at most 1")
        if not (max_growth_step > 0 and math.isfinite(max_growth_step)):
            raise ValueError("max_growth_step must be a positive number")
        self.retained = self.growth * (1.0 - mu.sum(axis=1))          # b_i
        inflow = (mu * self.growth[:, None]).T                          # M_ik = μ_ki g_k
        self.inflow = inflow
        self.donors = [k for k in range(K) if inflow[:, k].any()]
        # receivers: (clone i, [(row of donor k in the flux rows, M_ik), ...])
        self.receivers = [(i, [(self.donors.index(k), float(inflow[i, k])) for k in self.donors
                               if inflow[i, k] > 0]) for i in range(K) if inflow[i].any()]
        self.immune = np.zeros(K) if immune_kill is None else np.asarray(immune_kill, float).reshape(K)
        self.necrosis = necrosis
        self.max_growth_step = float(max_growth_step)
        B = max(1, min(block, self.n_dofs))
        self.block = B
        self.work = Workspace(B)
        self._negloss = np.empty((K, B))    # −τ L_i
        self._decay = np.empty((K, B))      # exp(−τ L_i) ≥ TINY, the same for every substep
        self._E = np.empty((K, B))
        self._N1 = np.empty((K, B))         # predictor
        self._rows = np.empty((7, B))       # F, h F, F1, h F̄, N_tot, scratch, h
        self._flux = np.empty((len(self.donors), B))      # h F N_k of the donors
        self._src = np.empty((len(self.receivers), B))    # τ Σ_k M_ik h F N_k
        self._mask = np.empty((K, B), bool)

    @classmethod
    def from_specs(cls, clones: ClonesSpec, drugs: dict[str, DrugSpec], n_dofs: int, *,
                   factor_half: float | None = None, oxygen_half: float | None = None,
                   **kwargs) -> "CloneReactions":
        """Build from the scenario sections (see :meth:`KillModel.from_specs` for the halves)."""
        model = KillModel.from_specs(clones, drugs, factor_half=factor_half, oxygen_half=oxygen_half)
        nec = clones.necrosis
        return cls(model, [c.growth for c in clones.clones.values()], clones.mutation_matrix(),
                   n_dofs, immune_kill=[c.immune_kill for c in clones.clones.values()],
                   necrosis=None if nec is None else (nec.rate, nec.threshold), **kwargs)

    # ----------------------------------------------------------------------------------------
    def substeps(self, dt: float) -> int:
        """Number of substeps of a step dt [hour]."""
        g = float(self.growth.max(initial=0.0))
        return max(1, math.ceil(dt * g / self.max_growth_step - 1e-9))

    def cell_density(self, N: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """N_tot = Σ_i N_i per dof: the cell density that takes up drugs, factor and oxygen
        (the factor of the sink k N_tot c of transport)."""
        return _total(N, np.empty(N.shape[1]) if out is None else out)

    def advance(self, N: np.ndarray, c: np.ndarray | None, s: np.ndarray | None,
                o: np.ndarray | None, e: np.ndarray | None, dt: float,
                total: np.ndarray | None = None, substeps: int | None = None) -> None:
        """Advance the densities ``N`` (K, n) in place over ``dt`` [hour].

        ``c`` (J, n) drug levels [µM] (None without drugs), ``s`` survival factor [µM], ``o``
        oxygen [µM], ``e`` immune effector density (each (n,) or longer, or None when off), all
        held constant over the step. ``total``: an (n,) array (or longer) that receives N_tot
        at the end, or None. ``substeps``: how many substeps (default :meth:`substeps`).
        """
        K, n = self.model.n_clones, self.n_dofs
        if N.shape != (K, n):
            raise ValueError(f"N has shape {N.shape}, expected {(K, n)}")
        if c is not None and c.shape != (self.model.n_drugs, n):
            raise ValueError(f"c has shape {c.shape}, expected {(self.model.n_drugs, n)}")
        for name, f in (("s", s), ("o", o), ("e", e), ("total", total)):
            if f is not None and (f.ndim != 1 or len(f) < n):
                raise ValueError(f"{name} has shape {f.shape}, expected ({n},)")
        if not dt > 0 or K == 0:
            if total is not None:
                _total(N, total[:n])
            return
        steps = self.substeps(dt) if substeps is None else int(substeps)
        tau = dt / steps
        step = None
        if N.dtype == np.float64 and N.flags.c_contiguous:
            step = self.prepare(c is not None, s is not None, o is not None, e is not None)
        elif self.kernel == "compiled":
            raise ValueError("the compiled clone kernel needs N as a C-contiguous float64 array")
        if step is not None:
            # inputs are copied only if they are not C-contiguous float64 already (the list
            # keeps the copies alive during the call); N and total are written, so
            # kernel.pointer refuses them otherwise
            fields = [None if f is None else np.ascontiguousarray(f, dtype=float) for f in (c, s, o, e)]
            step(n, kernel.pointer(N), *map(kernel.pointer, fields), tau, steps, kernel.pointer(total))
            return
        m, ws = self.model, self.work
        plan = _plan_for(m, c is not None, s is not None, o is not None)
        immune = [(i, -tau * float(v)) for i, v in enumerate(self.immune) if v > 0] if e is not None else []
        for a in range(0, n, self.block):
            sl = slice(a, min(a + self.block, n))
            B = sl.stop - a
            ws.release()
            ob = None if o is None else o[sl]
            h = hypoxia(ob, m.oxygen_half, out=self._rows[6, :B], scratch=self._rows[5, :B])
            h = h if isinstance(h, np.ndarray) else None
            negloss, decay = self._negloss[:, :B], self._decay[:, :B]
            acc = _Sum(negloss, ws.take(B))
            if c is not None:
                _kill_into(acc, -tau, m, plan, c[:, sl], None if s is None else s[sl], ob, h, ws)
            if immune:
                ee = np.maximum(e[sl], 0.0, out=ws.take(B))
                for i, factor in immune:
                    acc.add(i, ee, factor)
            if self.necrosis is not None and ob is not None:
                rate, threshold = self.necrosis
                dead = np.less(ob, threshold, out=ws.mask[:B])
                acc.add_all(np.multiply(dead, -tau * rate, out=ws.take(B)))
            acc.finish()
            # exp(−τL) ≥ TINY: beyond that a clone is gone anyway (see TINY)
            np.maximum(negloss, _LOG_TINY, out=decay)
            np.exp(decay, out=decay)
            Nb = N[:, sl]
            for step in range(steps):
                self._substep(Nb, negloss, decay, h, tau, B)
            if total is not None:
                _total(Nb, total[sl])

    def advance_estimated(self, N: np.ndarray, c, s, o, e, dt: float,
                          total: np.ndarray | None = None) -> np.ndarray:
        """Advance like :meth:`advance`, with twice its substeps, and return the local error
        estimate of :meth:`advance` over ``dt`` (its usual substeps), (K, n) [volume fraction].

        Step doubling: the scheme is second order, so with N_1 from the usual substeps and N_2
        from twice as many, the error of N_1 is (N_1 − N_2)·4/3 to leading order (Richardson).
        ``N`` receives N_2, which is the more accurate of the two and costs nothing more. The
        kill and the decay are integrated exactly at any substep, so the estimate measures the
        growth and mutation terms and their coupling through N_tot.
        """
        n = self.n_dofs
        coarse = np.array(N[:, :n], dtype=float, order="C")
        steps = self.substeps(dt)
        self.advance(coarse, c, s, o, e, dt, substeps=steps)
        self.advance(N, c, s, o, e, dt, total=total, substeps=2 * steps)
        coarse -= N[:, :n]
        coarse *= 4.0 / 3.0
        return coarse

    def prepare(self, drugs: bool, factor: bool, oxygen: bool, immune: bool):
        """The compiled step for the fields present (drug levels, survival factor, oxygen,
        immune effectors), built on first use; None for the NumPy path. A run calls it while
        setting up, so that a compiler failure shows before anything is computed. Raises
        :class:`~tme.cells.kernel.KernelError` with ``kernel="compiled"``."""
        if self.kernel == "numpy":
            return None
        m = self.model
        plan = _plan_for(m, drugs, factor, oxygen) if drugs else None
        key = (plan, oxygen and m.oxygen_half is not None, immune and bool((self.immune > 0).any()),
               self.necrosis is not None and oxygen)
        if key not in self._compiled:
            try:
                source = kernel.generate(self, plan, oxygen=key[1], immune=key[2], necrosis=key[3])
                self._compiled[key] = kernel.build(source)
            except kernel.KernelError as exc:
                if self.kernel == "compiled":
                    raise
                _warn_once(f"clone reactions use the NumPy path: {exc}")
                self._compiled[key] = None
        return self._compiled[key]

    # ----------------------------------------------------------------------------------------
    def _substep(self, N, negloss, decay, h, tau: float, B: int) -> None:
        F, hF, F1, hFbar, tot, tmp = (row[:B] for row in self._rows[:6])
        E, N1 = self._E[:, :B], self._N1[:, :B]
        flux, src = self._flux[:, :B], self._src[:, :B]
        bt = (self.retained * tau)[:, None]
        _total(N, tot)  # from N itself: a total carried over from the last substep went stale
        np.subtract(1.0, tot, out=F)
        np.maximum(F, 0.0, out=F)
        if h is None:
            hF = F
        else:
            np.multiply(F, h, out=hF)
        # predictor: N1_i = e^{z_i} (N_i + S_i) with z_i from F at the start
        np.multiply(bt, hF, out=E)
        np.exp(E, out=E)
        E *= decay
        np.multiply(N, E, out=N1)
        if self.receivers:
            self._sources(N, hF, tau, flux, src, tmp)
            for r, (i, _) in enumerate(self.receivers):
                np.multiply(src[r], E[i], out=tmp)
                N1[i] += tmp
        _total(N1, tot)
        # corrector: F at the trapezoidal mean, mutation inflow at its trapezoidal mean
        np.subtract(1.0, tot, out=F1)
        np.maximum(F1, 0.0, out=F1)
        np.add(F, F1, out=hFbar)
        hFbar *= 0.5
        if h is not None:
            hFbar *= h
            F1 *= h                     # now h F1, for the inflow at the end
        np.multiply(bt, hFbar, out=E)
        if self.receivers:
            z = N1                      # the predictor is used up once its inflow is known
            self._sources(N1, F1, tau, flux, None, tmp)
            for r, (i, donors) in enumerate(self.receivers):
                for d, weight in donors:
                    np.multiply(flux[d], weight * tau, out=tmp)
                    src[r] += tmp
                src[r] *= 0.5
                np.add(E[i], negloss[i], out=z[r])
        np.exp(E, out=E)
        E *= decay
        N *= E
        for r, (i, _) in enumerate(self.receivers):
            src[r] *= _phi1(z[r], tmp)
            N[i] += src[r]
        # projection onto N_tot ≤ 1, and meaningless densities set to 0 (see TINY)
        _total(N, tot)
        if tot.max(initial=0.0) > 1.0:
            np.maximum(tot, 1.0, out=tot)
            N /= tot
            np.minimum(tot, 1.0, out=tot)
        mask = self._mask[:, :B]
        np.less(N, TINY, out=mask)
        N[mask] = 0.0                   # (faster than np.copyto with where=)

    def _sources(self, N, hF, tau: float, flux, src, tmp) -> None:
        """Donor fluxes h F N_k into ``flux`` (one row per donor), and, if ``src`` is given,
        the inflows τ Σ_k M_ik h F N_k of the receivers into it."""
        for d, k in enumerate(self.donors):
            np.multiply(N[k], hF, out=flux[d])
        if src is None:
            return
        for r, (_, donors) in enumerate(self.receivers):
            (d, weight), *rest = donors
            np.multiply(flux[d], weight * tau, out=src[r])
            for d, weight in rest:
                np.multiply(flux[d], weight * tau, out=tmp)
                src[r] += tmp


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        from .. import log
        log.get().warning(message)


def _total(N, out) -> np.ndarray:
    """Σ_i N_i into ``out`` (row by row: NumPy's sum over axis 0 of a block is 5x slower)."""
    if N.shape[0] == 0:
        out[...] = 0.0
        return out
    if N.shape[0] == 1:
        out[...] = N[0]
        return out
    np.add(N[0], N[1], out=out)
    for row in N[2:]:
        out += row
    return out


def _phi1(z, out) -> np.ndarray:
    """φ1(z) = (e^z − 1)/z into ``out``; ``z`` is overwritten."""
    # z + copysign(ε, z) is never 0 and equals z unless |z| < 1e-284, where φ1 = 1 anyway
    np.copysign(1e-300, z, out=out)
    z += out
    np.expm1(z, out=out)
    np.divide(out, z, out=out)
    return out


# --------------------------------------------------------------------------------------------
# Summaries


def clone_burdens(N: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Amount of each clone, Σ_dofs w N_i: shape (K,). ``weights`` are the lumped-mass dof
    volumes (µm^d) for ∫ N_i dx, or None for plain sums (well-mixed). Rank-local: sum over
    ranks before dividing."""
    return N.sum(axis=1) if weights is None else N @ weights


def resistant_fraction(N: np.ndarray, resistant_mask: Sequence[bool],
                       weights: np.ndarray | None = None) -> float:
    """Fraction of the cells that belong to resistant clones (0 when there are no cells).

    ``N`` is either the densities (K, n) or the clone burdens (K,) of :func:`clone_burdens`
    (pass globally reduced burdens on several ranks).
    """
    burdens = np.asarray(N, float)
    if burdens.ndim == 2:
        burdens = clone_burdens(burdens, weights)
    total = float(burdens.sum())
    mask = np.asarray(resistant_mask, bool)
    return float(burdens[mask].sum()) / total if total > 0 else 0.0
