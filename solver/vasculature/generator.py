"""A seeded synthetic vessel network for a tissue block, with tumour-like vessels in a region.

The algorithm (docs/model.md, "Vessel networks", gives the sources of the defaults):

1. Capillary nodes on a jittered cubic lattice of spacing d (the mean inter-vessel distance,
   ~100 µm in normal tissue); inside the tumour only every m-th lattice node in each direction
   is kept (rarefaction: spacing m·d, m = 2–4).
2. Candidate vessels: the Gabriel graph of the nodes (the Delaunay edges whose diametral ball
   holds no other node), without edges longer than 1.6× the local spacing. It joins each node to
   its natural neighbours whatever the local density, so normal and rarefied parts meet.
3. A spanning tree of the candidates with random weights (every node reached once), plus a
   fraction of the remaining candidates as loops (anastomoses): fewer inside the tumour.
4. Tumour abnormalities: a fraction of the tumour's vessels is cut (dead ends, and pieces left
   with no flow), the rest is dilated by a random factor and made tortuous (each vessel becomes
   a polyline whose interior points are displaced sideways).
5. Feeding arterioles on the inlet faces and draining venules on the outlet faces: nodes on the
   face, on a jittered grid, each joined to its nearest capillary nodes, with a pressure.

The same seed gives the same network (NumPy's PCG64 stream and Qhull's Delaunay are
deterministic for the same input); in a parallel run rank 0 builds it and broadcasts it
(:func:`.network.shared`), so it does not depend on the number of ranks.
Units: µm, mmHg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.spatial import Delaunay, cKDTree

from ..config.spec import ScenarioError
from .network import Network

FACES = {"x-": (0, 0), "x+": (0, 1), "y-": (1, 0), "y+": (1, 1), "z-": (2, 0), "z+": (2, 1)}


@dataclass(frozen=True)
class GeneratorParams:
    """Parameters of :func:`generate` (µm, mmHg); defaults and their sources in docs/model.md.

    tumour: a predicate of positions (n, 3) [µm] -> bool (n,), or None for normal tissue only.
    """

    lower: tuple[float, float, float]
    upper: tuple[float, float, float]
    seed: int = 0
    spacing: float = 100.0               # µm, mean inter-capillary distance, normal tissue
    jitter: float = 0.3                  # of the spacing
    capillary_radius: float = 4.0        # µm
    radius_spread: float = 0.15          # relative (log-normal sd)
    loops: float = 0.15                  # fraction of non-tree candidates kept, normal tissue
    inlet_faces: tuple[str, ...] = ("x-",)
    outlet_faces: tuple[str, ...] = ("x+",)
    feeder_spacing: float = 300.0        # µm between inlets (outlets) on a face
    feeder_links: int = 3                # capillary nodes each inlet/outlet joins
    arteriole_radius: float = 7.5        # µm
    venule_radius: float = 10.0          # µm
    inlet_pressure: float = 40.0         # mmHg
    outlet_pressure: float = 15.0        # mmHg
    tumour: Callable[[np.ndarray], np.ndarray] | None = None
    rarefaction: int = 3                 # tumour spacing / normal spacing
    tumour_loops: float = 0.1
    dead_ends: float = 0.2               # fraction of tumour vessels cut
    dilation: tuple[float, float] = (1.5, 2.5)
    tortuosity: float = 0.15             # sideways displacement sd / vessel length
    pieces: int = 3                      # straight pieces per tumour vessel


def _check(p: GeneratorParams, key: str):
    lo, hi = np.asarray(p.lower, float), np.asarray(p.upper, float)
    if lo.shape != (3,) or hi.shape != (3,) or np.any(hi <= lo):
        raise ScenarioError(f"{key}: the block needs lower < upper in x, y and z (µm)")
    for name in p.inlet_faces + p.outlet_faces:
        if name not in FACES:
            raise ScenarioError(f"{key}: face '{name}' unknown; faces: {', '.join(FACES)}")
    if not p.inlet_faces or not p.outlet_faces:
        raise ScenarioError(f"{key}: the network needs at least one inlet face and one outlet face")
    if not 1 <= p.rarefaction <= 8:
        raise ScenarioError(f"{key}.rarefaction: must be an integer from 1 to 8, got {p.rarefaction}")
    if np.any((hi - lo) < p.spacing):
        raise ScenarioError(f"{key}.spacing: {p.spacing:g} µm exceeds an edge of the block")


def generate(p: GeneratorParams, key: str = "vasculature.generate") -> Network:
    """The network of the block ``p.lower``–``p.upper`` for seed ``p.seed`` (pure, serial)."""
    _check(p, key)
    rng = np.random.Generator(np.random.PCG64(p.seed))
    lo, hi = np.asarray(p.lower, float), np.asarray(p.upper, float)
    size = hi - lo
    counts = np.maximum(np.round(size / p.spacing).astype(int), 1)
    step = size / counts

    # 1. jittered lattice, thinned in the tumour
    idx = np.stack(np.meshgrid(*[np.arange(c) for c in counts], indexing="ij"), -1).reshape(-1, 3)
    base = lo + (idx + 0.5) * step
    pts = base + p.jitter * step * rng.uniform(-1.0, 1.0, size=base.shape)
    in_tumour = (np.asarray(p.tumour(base), bool).reshape(-1) if p.tumour is not None
                 else np.zeros(len(base), bool))
    m = int(p.rarefaction)
    keep = ~in_tumour | np.all(idx % m == m // 2, axis=1)
    pts, in_tumour = pts[keep], in_tumour[keep]
    if len(pts) < 5:
        raise ScenarioError(f"{key}: the block holds too few capillary nodes ({len(pts)}); "
                            f"use a smaller spacing or a larger block")
    local = p.spacing * np.where(in_tumour, m, 1.0)

    # 2. candidates: Gabriel edges of the Delaunay triangulation, not too long
    tets = Delaunay(pts).simplices
    pairs = np.concatenate([tets[:, [a, b]] for a in range(4) for b in range(a + 1, 4)])
    pairs = np.sort(pairs, axis=1)
    key = np.unique(pairs[:, 0].astype(np.int64) * len(pts) + pairs[:, 1])
    a, b = key // len(pts), key % len(pts)
    half = 0.5 * np.linalg.norm(pts[a] - pts[b], axis=1)
    inside = cKDTree(pts).query_ball_point(0.5 * (pts[a] + pts[b]), half * (1.0 - 1e-9), return_length=True)
    ok = (inside == 0) & (2 * half <= 1.6 * np.maximum(local[a], local[b]))
    a, b, length = a[ok], b[ok], 2 * half[ok]

    # 3. a random spanning tree plus loops
    n = len(pts)
    w = length * rng.uniform(0.5, 1.5, size=length.size)
    tree = csgraph.minimum_spanning_tree(sp.csr_matrix((w, (a, b)), shape=(n, n))).tocoo()
    is_tree = np.isin(a * n + b, np.minimum(tree.row, tree.col).astype(np.int64) * n
                      + np.maximum(tree.row, tree.col))
    tumour_edge = in_tumour[a] | in_tumour[b]
    u = rng.uniform(size=a.size)
    loop_p = np.where(tumour_edge, p.tumour_loops, p.loops)
    chosen = is_tree | (u < loop_p)
    # a tree's leaves are blind ends, rare in a normal capillary bed: join each normal leaf to
    # its nearest unused candidate (in the tumour the blind ends stay)
    deg = np.bincount(np.r_[a[chosen], b[chosen]], minlength=n)
    leaf = (deg == 1) & ~in_tumour
    spare = np.flatnonzero(~chosen & (leaf[a] | leaf[b]) & ~tumour_edge)
    spare = spare[np.argsort(length[spare], kind="stable")]
    ends = np.where(leaf[a[spare]], a[spare], b[spare])
    _, first = np.unique(ends, return_index=True)
    chosen[spare[first]] = True

    # 4. dead ends: cut a fraction of the tumour's vessels
    cut = tumour_edge & (rng.uniform(size=a.size) < p.dead_ends)
    chosen &= ~cut
    a, b, tumour_edge = a[chosen], b[chosen], tumour_edge[chosen]
    radius = p.capillary_radius * np.exp(p.radius_spread * rng.standard_normal(a.size))
    radius = np.where(tumour_edge, radius * rng.uniform(*p.dilation, size=a.size), radius)

    nodes = [pts]
    segs, rad, tum = [], [], []
    plain = ~tumour_edge
    segs.append(np.stack([a[plain], b[plain]], 1))
    rad.append(radius[plain])
    tum.append(np.zeros(plain.sum(), bool))
    # tortuous tumour vessels: polylines of p.pieces pieces displaced sideways
    k = max(int(p.pieces), 1)
    ta, tb, tr = a[tumour_edge], b[tumour_edge], radius[tumour_edge]
    if ta.size and k > 1:
        d = pts[tb] - pts[ta]
        L = np.linalg.norm(d, axis=1, keepdims=True)
        e = d / L
        t = np.arange(1, k) / k
        inner = pts[ta][:, None, :] + t[None, :, None] * d[:, None, :]
        kick = rng.standard_normal(inner.shape) * (p.tortuosity * L)[:, None, :]
        kick -= np.sum(kick * e[:, None, :], axis=2, keepdims=True) * e[:, None, :]  # sideways only
        inner = np.clip(inner + kick, lo + 1e-6 * size, hi - 1e-6 * size).reshape(-1, 3)
        first = n
        nodes.append(inner)
        ids = first + np.arange(ta.size * (k - 1)).reshape(ta.size, k - 1)
        chain = np.concatenate([ta[:, None], ids, tb[:, None]], axis=1)
        segs.append(np.stack([chain[:, :-1].ravel(), chain[:, 1:].ravel()], 1))
        rad.append(np.repeat(tr, k))
        tum.append(np.ones(ta.size * k, bool))
    elif ta.size:
        segs.append(np.stack([ta, tb], 1))
        rad.append(tr)
        tum.append(np.ones(ta.size, bool))

    # 5. feeding arterioles and draining venules on their faces
    capillary = cKDTree(pts)
    pressure = [np.full(sum(len(x) for x in nodes), np.nan)]
    count = sum(len(x) for x in nodes)
    for faces, r_f, p_f in ((p.inlet_faces, p.arteriole_radius, p.inlet_pressure),
                            (p.outlet_faces, p.venule_radius, p.outlet_pressure)):
        for face in faces:
            axis, side = FACES[face]
            others = [i for i in range(3) if i != axis]
            nf = np.maximum(np.round(size[others] / p.feeder_spacing).astype(int), 1)
            grid = np.stack(np.meshgrid(*[np.arange(c) for c in nf], indexing="ij"), -1).reshape(-1, 2)
            fstep = size[others] / nf
            where = np.empty((len(grid), 3))
            where[:, others] = lo[others] + (grid + 0.5 + 0.3 * rng.uniform(-1, 1, grid.shape)) * fstep
            where[:, axis] = hi[axis] if side else lo[axis]
            _, near = capillary.query(where, k=min(p.feeder_links, n))
            near = np.asarray(near).reshape(len(where), -1)
            ids = count + np.arange(len(where))
            nodes.append(where)
            pressure.append(np.full(len(where), p_f))
            segs.append(np.stack([np.repeat(ids, near.shape[1]), near.ravel()], 1))
            rad.append(np.full(near.size, r_f))
            tum.append(np.zeros(near.size, bool))
            count += len(where)

    nodes = np.concatenate(nodes)
    segs = np.concatenate(segs)
    pressure = np.concatenate(pressure)
    # drop capillary nodes left without vessels (all their candidates cut)
    used = np.zeros(len(nodes), bool)
    used[segs.ravel()] = True
    renum = np.cumsum(used) - 1
    return Network(nodes[used], renum[segs], np.concatenate(rad), pressure=pressure[used],
                   tumour=np.concatenate(tum), source=key)
