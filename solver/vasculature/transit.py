"""The plasma level of a species along the network: extraction by the wall, mixing at junctions.

Plasma crosses a segment in seconds while tissue levels change over minutes to hours, so within
a time step the level along a segment is steady:  |Q| dC/ds = −T (C − c),  with T the exchange
conductance per unit length [µm²/h] and c the tissue level. With c constant along the segment,

    C_out = c + (C_in − c) e^(−β),      β = ∫T ds / |Q|,

and the segment passes |Q| (C_in − C_out) = (∫T ds) (C̄ − c) to the tissue, C̄ the mean plasma
level along it:  C̄ = c + (C_in − c) (1 − e^(−β))/β.  At a node the level is the flow-weighted
mean of what flows in (the inlet level for flow entering from outside). In flow order (pressure
falling) this is a lower-triangular linear system in the outlet levels, factorised once per flow
state and exchange conductance and solved per step in O(m). Unperfused segments carry nothing:
their plasma is not renewed, so they exchange nothing (C̄ = c).

Units: flow µm³/h, conductance µm³/h per segment (∫T ds), levels µM (any one unit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from .flow import Flow
from .network import Network


@dataclass(frozen=True, eq=False)
class Levels:
    """Plasma levels per segment [µM]: at its upstream end, downstream end, and its mean."""

    inlet: np.ndarray
    outlet: np.ndarray
    mean: np.ndarray


class Transit:
    """The plasma level along a network for one exchange conductance per segment.

    conductance: ∫T ds per segment [µm³/h] (what multiplies C̄ − c in the segment's exchange).
    """

    def __init__(self, net: Network, flow: Flow, conductance: np.ndarray):
        m = net.num_segments
        q = np.abs(flow.flow)
        live = flow.perfused
        self.live = live
        up = np.where(flow.flow >= 0, net.segments[:, 0], net.segments[:, 1])
        down = np.where(flow.flow >= 0, net.segments[:, 1], net.segments[:, 0])
        n = net.num_nodes
        inflow = np.bincount(down[live], weights=q[live], minlength=n)      # from segments
        outflow = np.bincount(up[live], weights=q[live], minlength=n)
        external = np.maximum(outflow - inflow, 0.0)                        # from outside (inlets)
        total = inflow + external
        self.q, self.up = q, up
        beta = np.zeros(m)
        beta[live] = np.asarray(conductance, dtype=float)[live] / q[live]
        self.beta = beta
        self.a = np.exp(-beta)
        # (1 − e^(−β))/β without cancellation for small β
        self.mean_factor = np.where(beta > 1e-12, -np.expm1(-beta) / np.where(beta > 0, beta, 1.0), 1.0)
        # W[s, s'] = q_s'/total(up(s)) for every live s' flowing into up(s)
        feed = np.flatnonzero(live)
        by_down = sp.csr_matrix((np.ones(feed.size), (down[feed], feed)), shape=(n, m))
        S = sp.csr_matrix((np.ones(feed.size), (feed, up[feed])), shape=(m, n))  # segment -> upstream node
        into = S @ by_down                                                       # s -> s' feeding up(s)
        into = into.tocoo()
        rows, cols = into.row, into.col
        tot = total[up[rows]]
        W = sp.csr_matrix((q[cols] / tot, (rows, cols)), shape=(m, m))
        self.inlet_share = np.zeros(m)
        self.inlet_share[feed] = external[up[feed]] / np.where(total[up[feed]] > 0, total[up[feed]], 1.0)
        # (I − diag(a) W) C_out = a e C_p + (1 − a) c. Pressure falls along the flow, so ordering
        # the segments by the pressure at their upstream end makes the system lower triangular:
        # its LU in that order has no fill and a solve is one sweep.
        p_up = np.nan_to_num(flow.pressure[up], nan=-np.inf)
        self.order = np.argsort(-p_up, kind="stable")
        system = (sp.identity(m, format="csr") - sp.diags(self.a) @ W).tocsr()
        ordered = system[self.order][:, self.order].tocsc()
        self._lu = splu(ordered, permc_spec="NATURAL", diag_pivot_thresh=0.0,
                        options={"SymmetricMode": True})
        self.W = W

    def levels(self, tissue: np.ndarray, plasma: float) -> Levels:
        """Plasma levels for the tissue level ``tissue`` per segment [µM] and the inlet level
        ``plasma`` [µM] (the species' plasma level where blood enters the network)."""
        c = np.asarray(tissue, dtype=float)
        a = self.a
        rhs = a * self.inlet_share * plasma + (1.0 - a) * c
        rhs[~self.live] = 0.0
        out = np.empty_like(rhs)
        out[self.order] = self._lu.solve(rhs[self.order])
        inlet = self.W @ out + self.inlet_share * plasma
        mean = c + (inlet - c) * self.mean_factor
        # an unperfused segment holds plasma at the tissue level: it exchanges nothing
        inlet = np.where(self.live, inlet, c)
        out = np.where(self.live, out, c)
        mean = np.where(self.live, mean, c)
        return Levels(inlet=inlet, outlet=out, mean=mean)

    def delivered(self, levels: Levels) -> np.ndarray:
        """What each segment passes to the tissue per unit time, |Q| (C_in − C_out) [µM·µm³/h]."""
        return np.where(self.live, self.q * (levels.inlet - levels.outlet), 0.0)
