"""Blood flow on a vessel network: Poiseuille conductances and a sparse solve of the pressures.

Each segment of radius r and length L carries Q = G (p_i − p_j) from node i to node j with

    G = π r⁴ / (8 μ_app L),    μ_app = μ_plasma · μ_rel(D = 2r, H_D)

where μ_rel is the in-vivo apparent viscosity of Pries et al. (Circ. Res. 75:904, 1994; the
fit restated in Pries & Secomb, Am. J. Physiol. 289:H2657, 2005), which includes the
endothelial surface layer, unlike their in-vitro law of 1992 (Am. J. Physiol. 263:H1770).
Mass conservation at every node without a pressure condition, Σ_j G_ij (p_i − p_j) = inflow_i,
is a graph-Laplacian system solved with a sparse direct solver (SuperLU). Parts of the network
connected to no pressure node carry no flow, and so do segments ``closed`` (collapsed vessels:
no conductance).

Units: pressure mmHg, flow µm³/h, lengths µm, viscosity mmHg·h (so G is in µm³/(h·mmHg)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.sparse.linalg import splu

from ..config.spec import ScenarioError
from ..config.vasculature import HAEMATOCRIT
from .network import Network

#: 1 mmHg in Pa.
MMHG = 133.322
#: Plasma viscosity 1.2 mPa·s (Pries et al. 1994 use 1.2 cP at 37 °C) in mmHg·h.
PLASMA_VISCOSITY = 1.2e-3 / MMHG / 3600.0

def relative_viscosity(diameter, haematocrit=HAEMATOCRIT):
    """In-vivo apparent viscosity relative to plasma (Pries et al. 1994); diameter in µm.

    μ_rel = [1 + (μ₀.₄₅ − 1) ((1 − H)^C − 1)/((1 − 0.45)^C − 1) (D/(D − 1.1))²] (D/(D − 1.1))²
    μ₀.₄₅ = 6 e^(−0.085 D) + 3.2 − 2.44 e^(−0.06 D^0.645)
    C = (0.8 + e^(−0.075 D)) (−1 + 1/(1 + 10⁻¹¹ D¹²)) + 1/(1 + 10⁻¹¹ D¹²)
    """
    D = np.asarray(diameter, dtype=float)
    H = np.asarray(haematocrit, dtype=float)
    mu45 = 6.0 * np.exp(-0.085 * D) + 3.2 - 2.44 * np.exp(-0.06 * D ** 0.645)
    s = 1.0 / (1.0 + 1e-11 * D ** 12)
    C = (0.8 + np.exp(-0.075 * D)) * (-1.0 + s) + s
    w = (D / (D - 1.1)) ** 2
    return (1.0 + (mu45 - 1.0) * ((1.0 - H) ** C - 1.0) / ((1.0 - 0.45) ** C - 1.0) * w) * w


def conductance(net: Network, haematocrit=HAEMATOCRIT, plasma_viscosity=PLASMA_VISCOSITY) -> np.ndarray:
    """Poiseuille conductance of every segment [µm³/(h·mmHg)]."""
    mu = plasma_viscosity * relative_viscosity(2.0 * net.radius, haematocrit)
    return np.pi * net.radius ** 4 / (8.0 * mu * net.lengths)


@dataclass(frozen=True, eq=False)
class Flow:
    """The flow state of a network.

    pressure (n,) [mmHg], NaN on parts connected to no pressure node; flow (m,) [µm³/h], positive
    from ``segments[:, 0]`` to ``segments[:, 1]``; perfused (m,) the segments that carry flow;
    conductance (m,) [µm³/(h·mmHg)]; viscosity (m,) the apparent viscosity [mmHg·h].
    """

    pressure: np.ndarray
    flow: np.ndarray
    perfused: np.ndarray
    conductance: np.ndarray
    viscosity: np.ndarray

    def perfused_length(self, net: Network) -> float:
        """Total length of the perfused segments [µm]."""
        return float(net.lengths[self.perfused].sum())

    def perfused_fraction(self, net: Network) -> float:
        """Perfused length over total length."""
        L = net.lengths
        return float(L[self.perfused].sum() / L.sum())


def solve(net: Network, haematocrit=HAEMATOCRIT, plasma_viscosity=PLASMA_VISCOSITY,
          threshold: float = 1e-6, closed: np.ndarray | None = None) -> Flow:
    """Pressures and flows of ``net`` (see the module docstring).

    A segment is unperfused when |Q| ≤ threshold · max |Q|: dead ends and parts without a
    pressure node carry no flow (exactly zero up to round-off). ``closed`` (m,) bool: segments
    taken out of the network (collapsed); they carry exactly no flow and their conductance is 0.
    """
    n, m = net.num_nodes, net.num_segments
    G = conductance(net, haematocrit, plasma_viscosity)
    open_ = np.ones(m, bool) if closed is None else ~np.asarray(closed, bool).reshape(m)
    G = np.where(open_, G, 0.0)
    i, j = net.segments[:, 0], net.segments[:, 1]
    # incidence A (m × n): +1 at the upstream end, −1 at the downstream end; Laplacian AᵀGA
    A = sp.csr_matrix((np.r_[np.ones(m), -np.ones(m)], (np.r_[np.arange(m), np.arange(m)], np.r_[i, j])),
                      shape=(m, n))
    L = (A.T @ sp.diags(G) @ A).tocsr()
    fixed = np.isfinite(net.pressure)
    injected = np.nan_to_num(net.inflow)

    k = int(open_.sum())
    _, comp = csgraph.connected_components(sp.csr_matrix((np.ones(k), (i[open_], j[open_])), shape=(n, n)),
                                           directed=False)
    has_pressure = np.bincount(comp, weights=fixed, minlength=comp.max() + 1) > 0
    has_flow = np.bincount(comp, weights=np.isfinite(net.inflow), minlength=comp.max() + 1) > 0
    bad = has_flow & ~has_pressure
    if bad.any() and open_.all():  # (collapsed vessels may cut an inflow off: it is then blocked)
        node = int(np.flatnonzero((comp == np.flatnonzero(bad)[0]) & np.isfinite(net.inflow))[0])
        raise ScenarioError(f"{net.source}: node {node} has a boundary flow but its part of the network "
                            f"has no pressure node; give at least one node of it a pressure")
    active = has_pressure[comp]
    free = active & ~fixed
    p = np.full(n, np.nan)
    p[fixed] = net.pressure[fixed]
    if free.any():
        rhs = injected[free] - L[free][:, fixed] @ p[fixed]
        # symmetric positive definite: a symmetric ordering keeps the fill (and the time) small
        lu = splu(L[free][:, free].tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})
        p[free] = lu.solve(rhs)
    Q = np.zeros(m)
    live = active[i] & open_  # an open segment's two ends lie in the same part
    Q[live] = G[live] * (p[i[live]] - p[j[live]])
    qmax = np.abs(Q).max() if m else 0.0
    perfused = np.abs(Q) > threshold * qmax if qmax > 0 else np.zeros(m, bool)
    mu = plasma_viscosity * relative_viscosity(2.0 * net.radius, haematocrit)
    return Flow(pressure=p, flow=Q, perfused=perfused, conductance=G, viscosity=mu)


def junction_imbalance(net: Network, flow: Flow) -> float:
    """Largest |Σ inflow − Σ outflow − boundary inflow| over nodes without a pressure condition,
    relative to the largest segment flow: conservation at every junction."""
    n = net.num_nodes
    net_in = (np.bincount(net.segments[:, 1], weights=flow.flow, minlength=n)
              - np.bincount(net.segments[:, 0], weights=flow.flow, minlength=n))
    free = ~np.isfinite(net.pressure)
    residual = net_in[free] + np.nan_to_num(net.inflow)[free]
    scale = max(np.abs(flow.flow).max(), 1e-300)
    return float(np.abs(residual).max() / scale) if residual.size else 0.0
