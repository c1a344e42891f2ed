"""The step clock: where the next step ends and how long the one after may be (MODEL.md §5).

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

Units: hours of simulated time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

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
