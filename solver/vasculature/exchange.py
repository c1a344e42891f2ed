"""The network as a line source in the tissue equation on P1 elements (the 3-D–1-D coupling).

Per unit length a segment of radius r passes q = T (C̄ − c_h) to the tissue, C̄ its plasma level
and c_h the discrete tissue level on its axis. A vessel thinner than the mesh cannot hold the
tissue level at its wall: around a line source c varies like −q/(2πD) ln ρ, and the P1 value on
the axis is the level at an equivalent radius r_eq ∝ h (Peaceman, SPE J. 18:183, 1978, for
wells in reservoir grids: r_eq ≈ 0.2 h). Putting the wall resistance and the unresolved radial
resistance in series (the well model),

    T = 1 / [ 1/(2π r P) + ln(r_eq/r)/(2π D) ],      r_eq = α h_cell,

with α calibrated on the Krogh cylinder for P1 tetrahedra and h_cell the diameter of the cell
holding the point (``ALPHA``; ``tme verify`` reports the calibration). Without the correction
T = 2π r P (``alpha=None``). Where the mesh resolves the vessel (r_eq < r) the log term is
negative; it is limited so that T stays positive and at most twice the series value of the wall.

Quadrature: each segment is cut into pieces no longer than ``spacing``; the piece midpoints are
located in this rank's OWNED cells (a point on a facet between two ranks is kept by the lower
rank), so each point is counted once over all ranks. At a point x_q with weight w_q (µm) the P1
basis φ_i(x_q) spreads w_q T: the matrix B[i, s] = Σ_q∈s w_q T_q φ_i(x_q) [µm³/h] gives the
diagonal B·1 and the right-hand side B·C̄ of the tissue step, so the step matrix stays
K + diag(d). Since Σ_i φ_i = 1 the line source is exact in mass: what the tissue gains is
Σ_s (∫T ds)_s C̄_s − (Bᵀ c_h)_s, exactly. Rows of B for ghost dofs are sent to their owners once,
so a step needs no communication but one reduction of m numbers (the tissue level per segment).

Units: µm, hour, µM; T in µm²/h, B in µm³/h.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from dolfinx import fem, geometry
from mpi4py import MPI

from .. import compat
from ..config.spec import ScenarioError
from .network import Network

#: r_eq / h_cell for P1 tetrahedra, h_cell the cell diameter (calibrated on the Krogh case).
ALPHA = 0.3


@dataclass(eq=False)
class LineQuadrature:
    """The quadrature points of a network held by this rank (in its owned cells).

    segment (p,) the segment of each point; weight (p,) [µm] its length of vessel; radius (p,)
    [µm]; cell_size (p,) [µm] the diameter of its cell; dofs (p, 4) local P1 dofs (owned and
    ghost) of its cell; basis (p, 4) the P1 basis values there (they sum to 1); points (p, 3)
    [µm]; cells (p,) its local cell.
    """

    V: fem.FunctionSpace
    num_segments: int
    segment: np.ndarray
    weight: np.ndarray
    radius: np.ndarray
    cell_size: np.ndarray
    dofs: np.ndarray
    basis: np.ndarray
    points: np.ndarray
    cells: np.ndarray

    @property
    def comm(self):
        return self.V.mesh.comm


def _pieces(net: Network, spacing: float):
    """Midpoints and lengths of the pieces of every segment (the same on every rank)."""
    L = net.lengths
    k = np.maximum(np.ceil(L / spacing).astype(np.int64), 1)
    seg = np.repeat(np.arange(net.num_segments), k)
    first = np.cumsum(k) - k
    t = (np.arange(seg.size) - first[seg] + 0.5) / k[seg]
    x0, x1 = net.nodes[net.segments[seg, 0]], net.nodes[net.segments[seg, 1]]
    return x0 + t[:, None] * (x1 - x0), seg, (L / k)[seg]


def locate(net: Network, V: fem.FunctionSpace, spacing: float | None = None,
           key: str = "vasculature") -> LineQuadrature:
    """Quadrature of ``net`` on the P1 space ``V`` of a 3-D mesh (collective).

    spacing [µm]: the longest piece of a segment; default a quarter of the smallest cell.
    A point outside the mesh is a ScenarioError naming its segment, raised on every rank.
    """
    msh = V.mesh
    comm = msh.comm
    tdim = msh.topology.dim
    if tdim != 3 or msh.geometry.dim != 3:
        raise ScenarioError(f"{key}: a vessel network needs a 3-D mesh (this one is {tdim}-D)")
    owned = msh.topology.index_map(tdim).size_local
    if spacing is None:
        h_min = float(msh.h(tdim, np.arange(owned, dtype=np.int32)).min()) if owned else np.inf
        spacing = comm.allreduce(h_min, op=MPI.MIN) / 4.0
    pts, seg, w = _pieces(net, spacing)

    found_cell = np.full(len(pts), -1, dtype=np.int64)
    x = msh.geometry.x
    gdofs = compat.geometry_dofmap(msh)[:owned]
    near_cells = _cells_near(msh, gdofs, pts, spacing)
    if near_cells.size:
        # a bounding-box tree of the cells near the network only: building one over all cells
        # of a 10⁶-dof mesh would cost more than everything else here
        pad = 1e-9 * float(np.ptp(pts, axis=0).max() + 1.0)
        tree = geometry.bb_tree(msh, tdim, entities=near_cells.astype(np.int32), padding=pad)
        box_lo, box_hi = x.min(axis=0) - pad, x.max(axis=0) + pad  # this rank's part of the mesh
        near = np.flatnonzero(np.all((pts >= box_lo) & (pts <= box_hi), axis=1))
        cand = geometry.compute_collisions_points(tree, np.ascontiguousarray(pts[near]))
        counts = np.diff(cand.offsets)
        cells = cand.array
        which = np.repeat(np.arange(near.size), counts)            # candidate pair -> point (in near)
        lam = _barycentric(x[gdofs[cells]], pts[near][which])
        hit = np.flatnonzero(lam.min(axis=1) >= -1e-10)
        pnt, first = np.unique(which[hit], return_index=True)      # the first containing candidate
        found_cell[near[pnt]] = cells[hit[first]]
    # a point held by owned cells of two ranks (on their common facet) is kept by the lower rank
    mine = np.where(found_cell >= 0, comm.rank, comm.size).astype(np.int32)
    keeper = np.empty_like(mine)
    comm.Allreduce(mine, keeper, op=MPI.MIN)
    lost = np.flatnonzero(keeper == comm.size)
    if lost.size:
        s = int(seg[lost[0]])
        a, b = net.segments[s]
        raise ScenarioError(
            f"{key}: segment {s} (nodes {a}-{b}, from {_xyz(net.nodes[a])} to {_xyz(net.nodes[b])} µm) "
            f"leaves the mesh; {lost.size} of {len(pts)} quadrature points lie outside it")
    kept = np.flatnonzero(keeper == comm.rank)
    cells = found_cell[kept].astype(np.int32)
    lam = _barycentric(x[gdofs[cells]], pts[kept])
    dofs = V.dofmap.list[cells]
    return LineQuadrature(V=V, num_segments=net.num_segments, segment=seg[kept], weight=w[kept],
                          radius=net.radius[seg[kept]], cell_size=msh.h(tdim, cells),
                          dofs=np.asarray(dofs, dtype=np.int64), basis=lam, points=pts[kept],
                          cells=cells)


def _xyz(p) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in p) + ")"


def _barycentric(vertices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """P1 basis values (barycentric coordinates) of ``points`` (n, 3) in tetrahedra (n, 4, 3).

    The k-th coordinate belongs to the cell's k-th geometry node, which for an affine mesh is
    the vertex of the k-th P1 dof of the cell. Cramer's rule with triple products: no batched
    matrix solve.
    """
    if len(points) == 0:
        return np.zeros((0, 4))
    e1, e2, e3 = (vertices[:, k] - vertices[:, 0] for k in (1, 2, 3))
    d = points - vertices[:, 0]
    c23 = np.cross(e2, e3)
    det = np.einsum("ij,ij->i", e1, c23)
    l1 = np.einsum("ij,ij->i", d, c23) / det
    l2 = np.einsum("ij,ij->i", e1, np.cross(d, e3)) / det
    l3 = np.einsum("ij,ij->i", e1, np.cross(e2, d)) / det
    return np.stack([1.0 - l1 - l2 - l3, l1, l2, l3], axis=1)


def _cells_near(msh, gdofs: np.ndarray, pts: np.ndarray, voxel: float, chunk: int = 1 << 20) -> np.ndarray:
    """Owned cells whose bounding box meets a voxel holding one of ``pts``.

    The voxels of the points are counted in a 3-D prefix sum, so the number of marked voxels in
    any cell's box is 8 look-ups (inclusion–exclusion), whatever the box's size. With voxels as
    small as the quadrature spacing the cells kept are those along the vessels, a fraction of
    the mesh (the point-location tree is then built on them only).
    """
    if len(gdofs) == 0 or len(pts) == 0:
        return np.empty(0, np.int64)
    x = msh.geometry.x
    origin = pts.min(axis=0)
    span = float(np.ptp(pts, axis=0).max())
    size = max(voxel, span / 255.0, 1e-9)  # at most 256³ voxels
    shape = np.floor((pts.max(axis=0) - origin) / size).astype(np.int64) + 1
    marked = np.zeros(tuple(shape), np.int32)
    vox = np.floor((pts - origin) / size).astype(np.int64)
    marked[vox[:, 0], vox[:, 1], vox[:, 2]] = 1
    S = np.zeros(tuple(shape + 1), np.int32)
    S[1:, 1:, 1:] = marked.cumsum(0).cumsum(1).cumsum(2)
    # the voxel of every vertex once, in small integers (−1 and shape mean outside), so that
    # the per-cell work is integer gathers and element-wise min/max over the 4 vertices
    vx = np.clip(np.floor((x - origin) / size), -1, shape).astype(np.int16)
    out = []
    for i in range(0, len(gdofs), chunk):  # in chunks: bounded memory
        g = gdofs[i:i + chunk]
        v = [vx[g[:, k]] for k in range(4)]
        lo = np.minimum(np.minimum(v[0], v[1]), np.minimum(v[2], v[3])).astype(np.int64)
        hi = np.maximum(np.maximum(v[0], v[1]), np.maximum(v[2], v[3])).astype(np.int64)
        inside = np.all((hi >= 0) & (lo < shape), axis=1)
        lo = np.clip(lo, 0, shape - 1)
        hi = np.clip(hi, 0, shape - 1) + 1
        count = np.zeros(len(g), np.int64)
        for corner in range(8):
            bits = [(corner >> k) & 1 for k in range(3)]
            c = [(hi if b else lo)[:, k] for k, b in enumerate(bits)]
            sign = -1 if (3 - sum(bits)) % 2 else 1
            count += sign * S[c[0], c[1], c[2]]
        out.append(i + np.flatnonzero((count > 0) & inside))
    return np.concatenate(out)


def well_conductance(radius, permeability: float, diffusivity, cell_size, alpha: float | None = ALPHA):
    """Exchange conductance per unit length T [µm²/h] (module docstring); alpha None: 2π r P."""
    r = np.asarray(radius, dtype=float)
    wall = 1.0 / (2.0 * np.pi * r * permeability) if permeability > 0 else np.inf
    if alpha is None:
        return 1.0 / wall if np.isfinite(wall).all() else np.zeros_like(r)
    log = np.log(alpha * np.asarray(cell_size, float) / r) / (2.0 * np.pi * np.asarray(diffusivity, float))
    resistance = wall + np.maximum(log, -0.5 * wall)
    return np.where(np.isfinite(resistance), 1.0 / resistance, 0.0)


class LineSource:
    """The network's exchange with one species on the P1 space of a quadrature.

    permeability P [µm/h] of the vessel wall, diffusivity D [µm²/h] of the species in the
    tissue around the vessels (a number, or one value per quadrature point); alpha: r_eq/h of
    the well model, None for the uncorrected exchange 2π r P.
    ``conductance`` (m,) [µm³/h] is ∫T ds per segment over the whole mesh (every rank).
    """

    def __init__(self, quad: LineQuadrature, permeability: float, diffusivity, alpha: float | None = ALPHA):
        self.quad = quad
        V = quad.V
        imap = V.dofmap.index_map
        n_owned, n_local = imap.size_local, imap.size_local + imap.num_ghosts
        T = well_conductance(quad.radius, permeability, diffusivity, quad.cell_size, alpha)
        vals = (quad.weight * T)[:, None] * quad.basis
        rows = quad.dofs.ravel()
        cols = np.repeat(quad.segment, quad.dofs.shape[1])
        vals = vals.ravel()
        m = quad.num_segments
        comm = quad.comm
        # ghost rows go to the ranks that own those dofs, once
        ghost = rows >= n_owned
        if comm.size > 1:
            ghosts_global = imap.ghosts
            owners = imap.owners
            g = rows[ghost] - n_owned
            dest = owners[g]
            send = [None] * comm.size
            for r in range(comm.size):
                sel = dest == r
                send[r] = (ghosts_global[g[sel]], cols[ghost][sel], vals[ghost][sel])
            recv = comm.alltoall(send)
            start = imap.local_range[0]
            rows = np.concatenate([rows[~ghost]] + [rg - start for rg, _, _ in recv]).astype(np.int64)
            cols = np.concatenate([cols[~ghost]] + [c for _, c, _ in recv])
            vals = np.concatenate([vals[~ghost]] + [v for _, _, v in recv])
        else:
            assert not ghost.any() or n_local == n_owned
        self.B = sp.csr_matrix((vals, (rows, cols)), shape=(n_owned, m))
        self.Bt = self.B.T.tocsr()
        local = np.asarray(self.B.sum(axis=0)).ravel()
        self.conductance = np.empty(m)
        comm.Allreduce(local, self.conductance, op=MPI.SUM)
        self.n_owned = n_owned

    def tissue_level(self, c: np.ndarray) -> np.ndarray:
        """The mean tissue level along each segment, (Bᵀ c)/∫T ds [µM] (collective).

        c: the species at the dofs (owned first)."""
        local = self.Bt @ c[: self.n_owned]
        total = np.empty_like(local)
        self.quad.comm.Allreduce(local, total, op=MPI.SUM)
        return np.divide(total, self.conductance, out=np.zeros_like(total), where=self.conductance > 0)

    def nodal(self, plasma: np.ndarray, active: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(diagonal [µm³/h], right-hand side [µM·µm³/h]) on the owned dofs for the mean plasma
        level per segment ``plasma`` [µM]; segments not ``active`` exchange nothing."""
        on = np.ones(self.B.shape[1]) if active is None else np.asarray(active, dtype=float)
        return self.B @ on, self.B @ (on * plasma)

    def delivered(self, plasma: np.ndarray, c: np.ndarray, active: np.ndarray | None = None) -> float:
        """What the network passes to the tissue per unit time at tissue level c [µM·µm³/h]."""
        d, b = self.nodal(plasma, active)
        return self.quad.comm.allreduce(float(b.sum() - d @ c[: self.n_owned]), op=MPI.SUM)
