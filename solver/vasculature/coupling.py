"""A vessel network in a run: built from the scenario, solved for flow, coupled to the species.

:func:`build` makes the network of a ``vasculature:`` section (read, or generated for the mesh's
block, on rank 0 and broadcast); :class:`VascularCoupling` holds its flow, the quadrature on
the tissue mesh and, per species, the line source and the transit, and gives each species step
its nodal exchange (diagonal, right-hand side). Units: µm, hour, µM, mmHg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from dolfinx import fem
from dolfinx.la import InsertMode
from mpi4py import MPI

from ..mesh import build as meshes
from ..config.spec import ScenarioError
from . import files
from . import flow as blood
from .exchange import ALPHA, LineSource, locate
from .generator import GeneratorParams, generate
from .network import Network, shared
from ..config.vasculature import VasculatureSpec
from .transit import Levels, Transit


def _bounds(msh) -> tuple[np.ndarray, np.ndarray]:
    x = msh.geometry.x
    lo = np.full(3, np.inf) if len(x) == 0 else x.min(axis=0)
    hi = np.full(3, -np.inf) if len(x) == 0 else x.max(axis=0)
    glo, ghi = np.empty(3), np.empty(3)
    msh.comm.Allreduce(np.ascontiguousarray(lo, dtype=float), glo, op=MPI.MIN)  # element-wise
    msh.comm.Allreduce(np.ascontiguousarray(hi, dtype=float), ghi, op=MPI.MAX)
    return glo, ghi


def build(spec: VasculatureSpec, msh, region_rules=()) -> Network:
    """The network of ``spec`` (the same on every rank; collective)."""
    comm = msh.comm
    if spec.file is not None:
        f = spec.file

        def make():
            net = files.read(f.path, f.unit, key="vasculature.file.path")
            return _end_conditions(net, f.boundary)

        return shared(comm, make)
    g = spec.generate
    lo, hi = _bounds(msh)
    lower = np.asarray(g.lower, float) if g.lower is not None else lo
    upper = np.asarray(g.upper, float) if g.upper is not None else hi
    tumour = None
    if g.tumour is not None:
        rules = {r.name: r.where for r in region_rules}
        where = rules.get(g.tumour, g.tumour)
        key = "vasculature.generate.tumour"
        meshes.evaluate(where, np.zeros((1, 3)), key)  # a bad expression fails here, on every rank

        def tumour(X, where=where, key=key):
            return meshes.evaluate(where, X, key).astype(bool)

    params = GeneratorParams(
        lower=tuple(lower), upper=tuple(upper), seed=g.seed, spacing=g.spacing,
        capillary_radius=g.capillary_radius, loops=g.loops, inlet_faces=tuple(g.inlet_faces),
        outlet_faces=tuple(g.outlet_faces), feeder_spacing=g.feeder_spacing,
        arteriole_radius=g.arteriole_radius, venule_radius=g.venule_radius,
        inlet_pressure=g.inlet_pressure, outlet_pressure=g.outlet_pressure, tumour=tumour,
        rarefaction=g.rarefaction, tumour_loops=g.tumour_loops, dead_ends=g.dead_ends,
        dilation=tuple(g.dilation), tortuosity=g.tortuosity)
    return shared(comm, lambda: generate(params, key="vasculature.generate"))


def _end_conditions(net: Network, conditions) -> Network:
    """Apply ``vasculature.file.boundary`` to the end nodes that have no condition yet."""
    if not conditions:
        return net
    pressure, inflow = net.pressure.copy(), net.inflow.copy()
    free_end = (net.degree == 1) & ~np.isfinite(pressure) & ~np.isfinite(inflow)
    for i, c in enumerate(conditions):
        hit = free_end & meshes.evaluate(c.where, net.nodes, f"vasculature.file.boundary[{i}].where").astype(bool)
        if c.pressure is not None:
            pressure[hit] = c.pressure
        else:
            inflow[hit] = c.flow
        free_end &= ~hit
    return Network(net.nodes, net.segments, net.radius, pressure=pressure, inflow=inflow,
                   tumour=net.tumour, source=net.source)


@dataclass
class _Species:
    source: LineSource
    transit: Transit
    inlet: Callable[[float, float], float]
    diagonal: np.ndarray
    levels: Levels | None = None


class VascularCoupling:
    """The network's flow and its exchange with the tissue species of a run.

    ``add(name, permeability [µm/h], diffusivity [µm²/h], inlet)`` registers a species whose
    level in the blood entering the network is ``inlet(t0, t1)`` [µM] (the step mean);
    ``exchange(name, c, t0, t1)`` gives its step's nodal exchange (d [µm³/h], b [µM·µm³/h]).
    """

    def __init__(self, net: Network, spec: VasculatureSpec, V: fem.FunctionSpace,
                 spacing: float | None = None):
        self.net, self.spec, self.V = net, spec, V
        self.closed = np.zeros(net.num_segments, bool)   # collapsed segments
        self.flow = self._solve_flow()
        self.quad = locate(net, V, spacing, key="vasculature")
        self.alpha = ALPHA if spec.well_model else None
        self.species: dict[str, _Species] = {}

    def _solve_flow(self) -> blood.Flow:
        b = self.spec.blood
        return blood.solve(self.net, b.haematocrit, b.plasma_viscosity, closed=self.closed)

    def add(self, name: str, permeability: float, diffusivity, inlet: Callable[[float, float], float]):
        """diffusivity [µm²/h]: a number, or a DG0 Function (e.g. hindered by the ECM), read in the
        cell of each quadrature point."""
        if isinstance(diffusivity, fem.Function):
            W = diffusivity.function_space
            diffusivity = diffusivity.x.array[W.dofmap.list[self.quad.cells, 0]]
        elif isinstance(diffusivity, fem.Constant):
            diffusivity = float(diffusivity.value)
        src = LineSource(self.quad, permeability, diffusivity, self.alpha)
        tr = Transit(self.net, self.flow, src.conductance)
        self.species[name] = _Species(src, tr, inlet, src.B @ self.flow.perfused.astype(float))

    # -- vessels that collapse ------------------------------------------------------------------
    def density_along(self, n_tot: np.ndarray) -> np.ndarray:
        """The largest cell density at the quadrature points of each segment (m,) [fraction]
        (collective; −inf for a segment without points). n_tot: at the dofs, ghosts included."""
        q = self.quad
        local = np.full(self.net.num_segments, -np.inf)
        if q.segment.size:
            np.maximum.at(local, q.segment, np.einsum("pk,pk->p", q.basis, n_tot[q.dofs]))
        out = np.empty_like(local)
        q.comm.Allreduce(local, out, op=MPI.MAX)
        return out

    def compress(self, n_tot: np.ndarray, threshold: float) -> np.ndarray:
        """Close every open segment along which the cell density exceeds ``threshold``
        somewhere (collective); returns the segments closed now (indices, ascending)."""
        new = np.flatnonzero(~self.closed & (self.density_along(n_tot) > threshold))
        if new.size:
            closed = self.closed.copy()
            closed[new] = True
            self.close(closed)
        return new

    def close(self, closed: np.ndarray) -> None:
        """Set the collapsed segments to ``closed`` (m,) bool: the flow is solved again, and each
        species' transit and diagonal follow (the quadrature and the line sources stay)."""
        self.closed = np.asarray(closed, bool).copy()
        self.flow = self._solve_flow()
        on = self.flow.perfused.astype(float)
        for s in self.species.values():
            s.transit = Transit(self.net, self.flow, s.source.conductance)
            s.diagonal = s.source.B @ on

    def diagonal(self, name: str) -> np.ndarray:
        """The line source's diagonal of species ``name`` [µm³/h] (owned dofs)."""
        return self.species[name].diagonal

    def exchange(self, name: str, c: np.ndarray, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """The nodal exchange of species ``name`` for the step t0 → t1; c its current field (the
        tissue level along each vessel is taken from it: lagged by one step)."""
        s = self.species[name]
        s.levels = s.transit.levels(s.source.tissue_level(c), s.inlet(t0, t1))
        return s.diagonal, s.source.B @ np.where(self.flow.perfused, s.levels.mean, 0.0)

    def line_density(self) -> np.ndarray:
        """Perfused vessel length carried by each owned dof, Σ_q w_q φ_i(x_q) [µm] (for sources
        given per unit vessel length, e.g. immune recruitment)."""
        q = self.quad
        n = self.V.dofmap.index_map.size_local
        vals = (q.weight * self.flow.perfused[q.segment])[:, None] * q.basis
        out = np.zeros(n + self.V.dofmap.index_map.num_ghosts)
        np.add.at(out, q.dofs.ravel(), vals.ravel())
        f = fem.Function(self.V)
        f.x.array[:] = out
        f.x.scatter_reverse(InsertMode.add)
        return f.x.array[:n].copy()

    # ----------------------------------------------------------------------------------------
    def perfused_length(self) -> float:
        return self.flow.perfused_length(self.net)

    def perfused_fraction(self) -> float:
        return self.flow.perfused_fraction(self.net)

    def segment_data(self) -> dict[str, np.ndarray]:
        """Per-segment arrays for output: radius [µm], flow [nl/min], perfused, tumour, collapsed, and each
        species' mean plasma level [µM] (NaN before its first step)."""
        from .network import NL_PER_MIN

        out = {"radius": self.net.radius, "flow": self.flow.flow / NL_PER_MIN,
               "perfused": self.flow.perfused.astype(np.uint8), "tumour": self.net.tumour.astype(np.uint8),
               "collapsed": self.closed.astype(np.uint8)}
        for name, s in self.species.items():
            out[f"plasma_{name}"] = s.levels.mean if s.levels is not None else np.full(self.net.num_segments, np.nan)
        return out


def check_inside(net: Network, msh, key: str = "vasculature"):
    """A ScenarioError naming the first node outside the mesh's bounding box (cheap, early)."""
    lo, hi = _bounds(msh)
    tol = 1e-9 * float(np.max(hi - lo))
    out = np.flatnonzero(np.any((net.nodes < lo - tol) | (net.nodes > hi + tol), axis=1))
    if out.size:
        p = net.nodes[out[0]]
        raise ScenarioError(f"{key}: node {out[0]} at ({p[0]:.4g}, {p[1]:.4g}, {p[2]:.4g}) µm lies outside "
                            f"the mesh (x {lo[0]:.4g}..{hi[0]:.4g}, y {lo[1]:.4g}..{hi[1]:.4g}, "
                            f"z {lo[2]:.4g}..{hi[2]:.4g} µm)")
