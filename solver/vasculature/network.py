"""A vessel network: nodes, straight segments with a radius, and boundary conditions of flow.

Units: node coordinates and radii in µm; boundary pressures in mmHg; boundary flows in µm³/h
(positive into the network). The module is pure NumPy: no DOLFINx, no MPI collectives except
:func:`shared`, which makes one network on rank 0 and gives it to every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ..config.spec import ScenarioError

#: Diameter below which the apparent-viscosity law of Pries et al. is singular (D − 1.1 µm).
MIN_RADIUS = 0.6  # µm

#: One nanolitre per minute in µm³/h (1 nl = 10⁶ µm³).
NL_PER_MIN = 1.0e6 * 60.0


@dataclass(frozen=True, eq=False)
class Network:
    """Nodes (n, 3) [µm], segments (m, 2) of node indices, radius (m,) [µm].

    ``pressure`` (n,) [mmHg] and ``inflow`` (n,) [µm³/h, into the network] hold the boundary
    conditions, NaN where a node has none; a node never has both. ``tumour`` (m,) marks the
    segments the generator made abnormal (all False for a network read from a file).
    """

    nodes: np.ndarray
    segments: np.ndarray
    radius: np.ndarray
    pressure: np.ndarray = None
    inflow: np.ndarray = None
    tumour: np.ndarray = None
    source: str = field(default="network", compare=False)

    def __post_init__(self):
        nodes = np.ascontiguousarray(self.nodes, dtype=float).reshape(-1, 3)
        segs = np.ascontiguousarray(self.segments, dtype=np.int64).reshape(-1, 2)
        n, m = len(nodes), len(segs)
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "segments", segs)
        object.__setattr__(self, "radius", np.ascontiguousarray(self.radius, dtype=float).reshape(m))
        for name in ("pressure", "inflow"):
            value = getattr(self, name)
            value = np.full(n, np.nan) if value is None else np.asarray(value, dtype=float).reshape(n)
            object.__setattr__(self, name, value)
        tumour = np.zeros(m, bool) if self.tumour is None else np.asarray(self.tumour, bool).reshape(m)
        object.__setattr__(self, "tumour", tumour)
        self._check()

    def _check(self):
        where = self.source
        if len(self.segments) == 0:
            raise ScenarioError(f"{where}: the network has no segments")
        if not np.all(np.isfinite(self.nodes)):
            raise ScenarioError(f"{where}: node coordinates must be finite numbers")
        if self.segments.min() < 0 or self.segments.max() >= len(self.nodes):
            raise ScenarioError(f"{where}: a segment names a node that does not exist "
                                f"(nodes are numbered 0..{len(self.nodes) - 1})")
        if np.any(self.segments[:, 0] == self.segments[:, 1]):
            s = int(np.flatnonzero(self.segments[:, 0] == self.segments[:, 1])[0])
            raise ScenarioError(f"{where}: segment {s} joins node {self.segments[s, 0]} to itself")
        bad = ~(self.radius >= MIN_RADIUS)
        if bad.any():
            s = int(np.flatnonzero(bad)[0])
            raise ScenarioError(f"{where}: segment {s} has radius {self.radius[s]:g} µm; radii must be "
                                f">= {MIN_RADIUS} µm (the blood viscosity law needs a diameter > 1.1 µm)")
        short = self.lengths <= 0
        if short.any():
            raise ScenarioError(f"{where}: segment {int(np.flatnonzero(short)[0])} has zero length")
        both = np.isfinite(self.pressure) & np.isfinite(self.inflow)
        if both.any():
            raise ScenarioError(f"{where}: node {int(np.flatnonzero(both)[0])} has both a pressure and a flow")

    # ----------------------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def num_segments(self) -> int:
        return len(self.segments)

    @property
    def lengths(self) -> np.ndarray:
        """Segment lengths [µm]."""
        return np.linalg.norm(self.nodes[self.segments[:, 1]] - self.nodes[self.segments[:, 0]], axis=1)

    @property
    def degree(self) -> np.ndarray:
        """Number of segments at each node."""
        return np.bincount(self.segments.ravel(), minlength=self.num_nodes)

    def with_radius(self, radius: np.ndarray) -> "Network":
        """The same network with new radii (e.g. vessels narrowed or collapsed) [µm]."""
        return replace(self, radius=np.asarray(radius, dtype=float))

    def summary(self) -> dict:
        """Sizes of the network, in µm."""
        L = self.lengths
        return {"nodes": self.num_nodes, "segments": self.num_segments, "length_um": float(L.sum()),
                "mean_radius_um": float(np.average(self.radius, weights=L)),
                "pressure_nodes": int(np.isfinite(self.pressure).sum()),
                "flow_nodes": int(np.isfinite(self.inflow).sum()),
                "tumour_segments": int(self.tumour.sum())}

    def fingerprint(self) -> str:
        """A digest of every array: equal networks have equal fingerprints (used across ranks)."""
        import hashlib

        h = hashlib.sha256()
        for a in (self.nodes, self.segments, self.radius, self.pressure, self.inflow, self.tumour):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def shared(comm, make: Callable[[], Network]) -> Network:
    """``make()`` on rank 0, the same network on every rank of ``comm``.

    One rank building and broadcasting makes the network independent of the number of ranks by
    construction; a ScenarioError raised while making it is raised on every rank.
    """
    if comm.size == 1:
        return make()
    net, msg = None, None
    if comm.rank == 0:
        try:
            net = make()
        except ScenarioError as exc:
            msg = str(exc)
    msg = comm.bcast(msg, root=0)
    if msg is not None:
        raise ScenarioError(msg)
    arrays = comm.bcast(None if net is None else
                        (net.nodes, net.segments, net.radius, net.pressure, net.inflow, net.tumour, net.source),
                        root=0)
    if comm.rank == 0:
        return net
    nodes, segs, radius, pressure, inflow, tumour, source = arrays
    return Network(nodes, segs, radius, pressure, inflow, tumour, source)
