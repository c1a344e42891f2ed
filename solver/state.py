"""Everything of a run that changes in time, in one object that can be saved and restored.

Pure Python and NumPy, no DOLFINx. A :class:`State` holds the clock (time, next step), the
counters, the nadir, the protocol and the plasma schedules, the doses not yet logged and how
far each output has got; the fields (concentrations, clone densities, the exposure maps) are
arrays owned by the problem and saved beside the state by the checkpoint. ``to_json`` and
``from_json`` round-trip every float exactly (``repr``), infinities and NaN included.

Units: hours of simulated time, seconds of wall time, burdens in µm^d (d = 2 or 3).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

#: Bumped when the saved form changes: a checkpoint of another version is refused.
VERSION = 1


@dataclass
class State:
    """The time-dependent state of a run.

    t [hour]: the time reached; dt_next [hour]: the longest next step; steps: steps taken;
    nadir: (burden [µm^d], time [hour]) of the smallest burden so far; stopped: why the run
    stopped early (the protocol's reason), None while it runs; protocol, plasma: the states of
    :class:`tme.protocol.Protocol` and :class:`tme.pk.PlasmaSet`; pending_doses: doses
    scheduled but not yet logged, (time [hour], drug, cycle); solvers: for each transport
    solver that reuses its AMG preconditioner, ``{"dt": the step [hour] it was built for,
    "n_tot": whether a cell density entered it}`` (that density is saved with the fields); written: how many rows, events,
    field frames and checkpoints each output holds; wall_seconds: wall time of the earlier
    segments of a resumed run [s]; segments: how many times the run was started. With
    ``time.tolerance``: err_prev and dt_prev [hour], the normalised error and the length of the
    last accepted step (err_prev None after a restart); rejections, the steps redone so far;
    scales, each field's largest value so far (the scale of its absolute error floor) [its
    unit]. reports: the burden [µm^d], its cell count and the resistant fraction at each of
    ``treatment.report_times`` reached. vessels: the vessel
    network's state, ``{"closed": [segments collapsed so far]}`` (empty while none has).
    """

    t: float = 0.0
    dt_next: float = math.nan
    steps: int = 0
    nadir: tuple[float, float] = (math.nan, 0.0)
    stopped: str | None = None
    protocol: dict = field(default_factory=dict)
    plasma: dict = field(default_factory=dict)
    pending_doses: list[tuple[float, str, int]] = field(default_factory=list)
    solvers: dict[str, dict] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    segments: int = 1
    err_prev: float | None = None
    dt_prev: float | None = None
    rejections: int = 0
    scales: dict[str, float] = field(default_factory=dict)
    reports: list[dict] = field(default_factory=list)
    vessels: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "State":
        data = json.loads(text)
        version = data.pop("version", None)
        if version != VERSION:
            raise ValueError(f"state version {version!r}; this tme reads version {VERSION}")
        data["nadir"] = tuple(data["nadir"])
        data["pending_doses"] = [tuple(d) for d in data["pending_doses"]]
        return cls(**data)
