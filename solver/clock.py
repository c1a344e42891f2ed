"""The step clock: where the next step ends and how long the one after may be (docs/model.md, Coupling).

Pure Python, no DOLFINx: the problem asks the clock for the end of each step and tells it what
happened there.

- **Milestones** are times the steps land on exactly: fixed ones known before the run (field
  outputs, snapshots, checkpoints, the end) and moving ones the problem passes per step (the
  next PK event: a dose start or an infusion end; the next assessment of the protocol). A step
  whose natural end reaches a milestone, or comes within :attr:`Clock.tol` of it, ends *on* the
  milestone: ``t`` then equals the milestone's value to the last bit, so a dose at 48 h is
  logged at 48.0 h and an output frame at 96 h is at 96.0 h.
- **Step growth**: after a dose event (or a switch of line) the next step restarts at
  ``dt_first``; every other step may be ``growth`` (×1.5) times longer than the one just taken,
  bounded by ``dt_min`` below and ``dt_max`` above: short while plasma levels change fast, long
  in drug-free intervals.
- **Error control** (:class:`Controller`): the problem measures the local error of a step,
  reduces it to one number with :func:`error_norm` (1 = exactly the requested tolerance), and
  asks :meth:`Controller.decide` whether to keep the step and how long the next may be; a
  rejected step is redone from the state saved before it, with the shorter step the decision
  gives. :meth:`Controller.land` ends a step exactly on the next milestone without leaving a
  sliver before it.

Units: hours of simulated time; errors are normalised (dimensionless).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: Step growth factor between steps after a dose event.
GROWTH = 1.5


def regular(every: float | None, end: float) -> list[float]:
    """The times every, 2·every, ... below ``end`` [hour]; each is k·every, not a running sum,
    so the k-th time is the same float whatever came before it. None or 0: no times."""
    if not every or every <= 0 or not math.isfinite(every):
        return []
    n = int(math.floor(end / every + 1e-9))
    return [k * every for k in range(1, n + 1) if k * every < end]


@dataclass(frozen=True)
class Clock:
    """The step clock of one run, times in hours.

    end: end of the run; dt_max: the largest step; dt_first: the step after a dose event and
    the first step; dt_min: the smallest step growth starts from; milestones: the fixed times
    steps land on (the end is always one). ``tol`` [hour] is how close a step must come to a
    milestone to be taken as landing on it: 1e-9 of the run's length.
    """

    end: float
    dt_max: float
    dt_first: float
    dt_min: float
    milestones: tuple[float, ...] = ()
    growth: float = GROWTH

    def __post_init__(self):
        if not (self.end > 0 and self.dt_max > 0 and self.dt_first > 0 and self.dt_min > 0):
            raise ValueError("end, dt_max, dt_first and dt_min must be > 0")
        fixed = sorted({float(m) for m in self.milestones if 0 < m < self.end} | {float(self.end)})
        object.__setattr__(self, "milestones", tuple(fixed))

    @classmethod
    def of(cls, time, milestones: Iterable[float] = ()) -> "Clock":
        """The clock of a scenario's ``time`` section (end, dt, dt_min, dt_initial)."""
        return cls(end=time.end, dt_max=time.dt, dt_first=time.dt_initial or time.dt,
                   dt_min=time.dt_min, milestones=tuple(milestones))

    @property
    def tol(self) -> float:
        return 1e-9 * max(1.0, self.end)

    def done(self, t: float) -> bool:
        """Has the run reached its end at ``t``?"""
        return t >= self.end - self.tol

    def next_milestone(self, t: float, moving: Iterable[float] = ()) -> float:
        """The first milestone after ``t`` (beyond ``tol``): fixed or among ``moving``."""
        after = t + self.tol
        fixed = next((m for m in self.milestones if m > after), self.end)
        return min([fixed] + [m for m in moving if m > after])

    def step_end(self, t: float, dt: float, moving: Iterable[float] = ()) -> float:
        """The end of a step of at most ``dt`` from ``t``: t + dt, or exactly the first
        milestone (fixed or ``moving``) that t + dt reaches or comes within ``tol`` of."""
        m = self.next_milestone(t, moving)
        target = t + dt
        return m if target >= m - self.tol else target

    def at(self, t: float, times: Iterable[float]) -> bool:
        """Is ``t`` one of ``times`` (within ``tol``)?"""
        return any(abs(t - x) <= self.tol for x in times)

    def next_dt(self, dt: float, restart: bool) -> float:
        """The longest next step after a step of ``dt``: ``dt_first`` after a dose event or a
        switch (``restart``), else growth × dt within [dt_min, dt_max]."""
        if restart:
            return self.dt_first
        return min(self.dt_max, max(dt * self.growth, self.dt_min))


# --------------------------------------------------------------------------------------------
# Error control


@dataclass(frozen=True)
class Decision:
    """What to do after a step of ``dt`` [hour]: keep it (``accept``) or redo it; ``dt_next``
    [hour] is the next step to try (the redo when rejected); ``forced``: accepted although its
    error exceeded the tolerance, because the step was already at the smallest allowed."""

    accept: bool
    dt_next: float
    forced: bool = False


@dataclass(frozen=True)
class Controller:
    """A step-size controller: Gustafsson's predictive controller bounded by the integral one
    (Gustafsson 1994; Hairer & Wanner, Solving ODEs II, §IV.8, as in their RADAU5).

    The error estimate of a method of order p behaves as C dt^(p+1), k = p + 1. From the
    normalised error ε_n of this step of dt_n, and ε_{n−1} of the last accepted one of
    dt_{n−1}, the next step is dt_n · clamp(min(I, P), shrink, grow) with

        I = safety · ε_n^(−1/k)                                  (integral)
        P = safety · (dt_n/dt_{n−1}) · (ε_{n−1}/ε_n)^(1/k) · ε_n^(−1/k)   (predictive)

    P extrapolates how C itself moves from step to step (the ratio of the last two errors at
    their steps): where stiffness or a steepening solution makes the error rise faster than
    dt^k, P is the shorter and avoids the rejection I would run into; where the error stays
    well below 1 while the steps grow (a field growing from zero, whose relative error
    depends on dt/t), I lets the steps grow at its full rate. (The PI form
    ε_n^(−0.7/k) ε_{n−1}^(0.4/k) grows by only ε^(−0.3/k) per step at a steady ε: 1.13× at
    ε = 0.1, a crawl of tiny steps after every infusion start.) A step with ε > 1 is rejected
    and redone with I (the history says nothing about a failed step); the step after a
    rejection may not grow. ``dt_min``/``dt_max`` [hour] bound every step; a step already at
    ``dt_min`` is accepted whatever its error (``forced``).
    """

    order: int = 2
    safety: float = 0.9
    grow: float = 5.0
    shrink: float = 0.2
    dt_min: float = 0.0
    dt_max: float = math.inf

    def __post_init__(self):
        if self.order < 1:
            raise ValueError("order must be >= 1")
        if not (0 < self.safety <= 1 and self.grow > 1 and 0 < self.shrink < 1):
            raise ValueError("need 0 < safety <= 1, grow > 1 and 0 < shrink < 1")
        if not (0 <= self.dt_min < self.dt_max):
            raise ValueError("need 0 <= dt_min < dt_max")

    def _bounded(self, dt: float) -> float:
        return min(self.dt_max, max(self.dt_min, dt))

    def decide(self, dt: float, err: float, err_prev: float | None = None,
               after_reject: bool = False, dt_prev: float | None = None) -> Decision:
        """Keep or redo a step of ``dt`` [hour] with normalised error ``err``.

        err_prev, dt_prev: the normalised error and the length [hour] of the last accepted
        step (None at the start or after a restart: the integral step alone); after_reject:
        this step is the redo of a rejected one (it may not grow).
        """
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt!r}")
        if not math.isfinite(err) or err < 0:
            # a failed solve or a NaN: the most the controller may shrink
            if dt <= self.dt_min:
                raise FloatingPointError(f"step error {err!r} at the smallest step {dt:g} h")
            return Decision(False, self._bounded(dt * self.shrink))
        if err <= 1.0:
            k = self.order + 1
            if err == 0.0:
                ratio = self.grow
            else:
                ratio = self.safety * err ** (-1.0 / k)
                if err_prev is not None and err_prev > 0 and dt_prev is not None and dt_prev > 0:
                    ratio = min(ratio, ratio * (dt / dt_prev) * (err_prev / err) ** (1.0 / k))
            ratio = min(self.grow, max(self.shrink, ratio))
            if after_reject:
                ratio = min(ratio, 1.0)
            return Decision(True, self._bounded(dt * ratio))
        if dt <= self.dt_min * (1 + 1e-9):
            # (1e-9: a step of dt_min from t lands at t + dt_min, whose difference from t is
            # dt_min only to the rounding of t)
            return Decision(True, self._bounded(dt), forced=True)
        if after_reject:
            # a second failure in a row: the error does not follow C dt^k near this step (a
            # stiff transient, whose error is largest at λ dt ≈ 3 and falls both ways), so the
            # integral formula's shorter step may fail again; the largest shrink instead
            return Decision(False, self._bounded(dt * self.shrink))
        ratio = max(self.shrink, self.safety * err ** (-1.0 / (self.order + 1)))
        return Decision(False, self._bounded(dt * ratio))

    def reach(self, t: float, dt: float, milestone: float, tol: float = 0.0) -> float:
        """The end of the step of ``dt`` [hour] the controller asked for (not a redo) from
        ``t`` toward ``milestone``: :meth:`land`, stretched to the milestone when at most
        1/safety (and ``dt_max``) away. The step asked for is ``safety`` times the one
        predicted to meet the tolerance, so the stretched step's predicted error is at most 1;
        without it a step a few per cent short of a milestone became two of half the way,
        again at every milestone (measured: 42 steps instead of 31 over two days of
        bench/accuracy.py at tolerance 1e-2, every 3-h output interval taken in two steps)."""
        return self.land(t, dt, milestone, tol, stretch=max(1.0, min(1.0 / self.safety, self.dt_max / dt)))

    @staticmethod
    def land(t: float, dt: float, milestone: float, tol: float = 0.0, stretch: float = 1.0) -> float:
        """The end of a step of at most ``dt`` from ``t`` [hour] toward ``milestone``.

        Exactly ``milestone`` (the same float) when t + stretch·dt reaches it or comes within
        ``tol`` of it; half the way when one step of dt would leave less than a step before it
        (two equal steps instead of a long one and a sliver, whose tiny error would then make
        the controller's next step jump); else t + dt.
        """
        remaining = milestone - t
        if dt * stretch >= remaining - tol:
            return milestone
        if dt > 0.5 * remaining:
            return t + 0.5 * remaining
        return t + dt


def error_norm(parts, comm=None) -> float:
    """The normalised error of a step: the largest, over fields, of the field's relative local
    error in the mass-weighted L2 norm, ‖e‖_M / max(rtol ‖u‖_M, atol ‖1‖_M) (1 = the tolerance
    met exactly).

    parts: (error estimate e, value u, dof weights m, rtol, atol) per field, NumPy arrays over
    this rank's owned dofs (u, m may be the same for several fields). The norm is the field's
    own: a local error of rtol relative to the field in L2 is ε = 1 wherever the error sits, so
    the tolerance means what an accuracy measure of a field (a relative L2 error of a map, an
    integral) means; a field smaller than atol/rtol in RMS is held to atol absolute (a drug
    before its first dose). A field is judged on its own, so a large accurate field does not
    hide a small inaccurate one. With ``comm`` the sums are reduced over its ranks (one
    allreduce for all fields).
    """
    sums = np.zeros(3 * len(parts))
    for k, (e, u, m, rtol, atol) in enumerate(parts):
        if len(e):
            sums[3 * k] = float(m @ (e * e))
            sums[3 * k + 1] = float(m @ (u * u))
            sums[3 * k + 2] = float(m.sum())
    if comm is not None and comm.size > 1:
        from mpi4py import MPI

        total = np.empty_like(sums)
        comm.Allreduce(sums, total, op=MPI.SUM)
        sums = total
    if not np.isfinite(sums).all():
        return math.nan   # a NaN or an overflow anywhere: the step failed, whatever the rest
    worst = 0.0
    for k, (_, _, _, rtol, atol) in enumerate(parts):
        ee, uu, vol = sums[3 * k: 3 * k + 3]
        if vol > 0:
            worst = max(worst, math.sqrt(ee / vol) / max(rtol * math.sqrt(uu / vol), atol))
    return float(worst)
