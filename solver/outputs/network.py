"""The vessel network at the field output times, for ParaView: ``network.pvd`` + ``network/``.

ParaView opens ``network.pvd`` (File → Open) as one time series of VTK PolyData beside
``fields.xdmf``: per segment the radius [µm], flow [nl/min], perfused flag, whether the
generator made it a tumour vessel, whether it has collapsed under compression, and each
species' mean plasma level in it [µM] (over the last step); per node the
pressure [mmHg]. Written by rank 0 (the network is the same on every rank); each frame is a
complete file before the collection lists it (replaced atomically), so a killed run leaves a
readable series. Times in days, as in ``fields.xdmf``, so that ParaView steps both together.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ..vasculature.files import NetworkSeries


class NetworkOutput:
    """The network's state at the output times ``times`` [hour] (and wherever the fields are
    written explicitly: t = 0, a stop); ``coupling`` is the run's VascularCoupling."""

    def __init__(self, out: Path, coupling, times, comm):
        self.coupling, self.comm = coupling, comm
        self.milestones = tuple(times)
        self._times = set(self.milestones)
        self.index = Path(out) / "network.pvd"
        self.series = NetworkSeries(Path(out) / "network", coupling.net, stem="frame", index=self.index)

    def keep(self, n: int) -> None:
        """Continue after the first ``n`` frames (a resumed run)."""
        if self.comm.rank == 0:
            entries = []
            if self.index.exists():
                for ds in ET.parse(self.index).getroot().iter("DataSet"):
                    entries.append((float(ds.get("timestep")), ds.get("file")))
            if len(entries) < n:
                raise ValueError(f"{self.index}: lists {len(entries)} output times, the checkpoint {n}")
            self.series.entries = entries[:n]

    def due(self, state) -> bool:
        return state.t in self._times

    def write(self, state, t: float) -> None:
        if self.comm.rank == 0:
            # in days, like the fields (t [hour] is exact in fields.xdmf's time_hours)
            self.series.write(t / 24.0, self.coupling.flow.pressure, self.coupling.segment_data())

    def close(self, state) -> None:
        pass
