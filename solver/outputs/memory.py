"""Fields kept in memory: what a run without an output directory keeps of its fields.

:class:`MemoryFields` is the in-memory counterpart of :class:`tme.outputs.fields.FieldOutput`:
at each output time it copies the values of every field (this rank's part, ghosts included),
so that :class:`tme.results.Results` can hand them out as DOLFINx functions or NumPy arrays.
Nothing is written. Units: as the fields (µM, volume fractions, µM·hour, hour); times in hours.
"""

from __future__ import annotations

import numpy as np


class MemoryFields:
    """All ``functions`` at the output times ``times`` [hour] (and those the problem asks for:
    t = 0, a stop), as copies of their value arrays; ``before_write`` refreshes derived fields."""

    def __init__(self, functions: list, times, before_write=None):
        self.functions = list(functions)
        self.milestones = tuple(times)
        self._times = set(self.milestones)
        self.before_write = before_write
        self.times: list[float] = []
        self.frames: list[dict[str, np.ndarray]] = []

    def due(self, state) -> bool:
        return state.t in self._times   # the clock lands on milestones exactly

    def write(self, state, t: float) -> None:
        if self.before_write is not None:
            self.before_write()
        if self.times and self.times[-1] == t:
            self.frames[-1] = self._copy()
            return
        self.frames.append(self._copy())
        self.times.append(t)

    def _copy(self) -> dict[str, np.ndarray]:
        return {f.name: f.x.array.copy() for f in self.functions}

    def close(self, state) -> None:
        pass
