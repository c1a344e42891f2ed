"""Vessel networks checked against closed forms: the rows of ``tme verify`` for vasculature.

- flow on a bifurcation with a loop: pressures and flows from series/parallel conductances;
- transit along one segment: the exponential extraction, and a chain of pieces equal to it;
- the Krogh line source: one straight vessel on the axis of a tissue cylinder, constant plasma
  level, against the Bessel I0/K0 profile with a Robin wall, with and without the well model;
- mass balance per step with a generated network.

Each returns a :class:`tme.studies.verify.Result`-like record (built by the caller's class) through
the ``result`` factory, so this module does not import the verification table.
Units: µm, hour, µM, mmHg.
"""

from __future__ import annotations

import math

import numpy as np
import ufl
from dolfinx import fem
from mpi4py import MPI
from scipy import optimize, special

from .. import compat
from ..mesh import build as meshes
from ..transport import SpeciesModel, SpeciesSolver
from . import flow as blood
from .exchange import ALPHA, LineSource, locate
from .network import Network
from .transit import Transit

STEADY = 1.0e9  # h: one backward-Euler step this long is a steady solve
LAYERS = 8
BIOT = 0.25
ALGORITHM = 10


# --------------------------------------------------------------------------------------------
def loop_network() -> tuple[Network, dict]:
    """A bifurcation with a loop and its closed-form pressures and flows.

        0 --a-- 1 --b-- 2 --e-- 4 (p_out)       b parallel to c+d (the loop 1-2-3),
                 \\--c-- 3 --d--/                 f a second branch from 1 to outlet 5
                 \\--f-- 5 (p_out)
    Node 0 has p_in. Radii and lengths differ so every conductance differs.
    """
    nodes = np.array([[0, 0, 0], [100, 0, 0], [250, 0, 0], [175, 60, 0], [400, 0, 0], [160, -120, 0]], float)
    segs = np.array([[0, 1], [1, 2], [1, 3], [3, 2], [2, 4], [1, 5]])
    radius = np.array([8.0, 4.0, 5.0, 3.5, 6.0, 4.5])
    p_in, p_out = 45.0, 12.0
    pressure = np.full(6, np.nan)
    pressure[[0, 4, 5]] = [p_in, p_out, p_out]
    net = Network(nodes, segs, radius, pressure=pressure, source="loop network")
    Ra, Rb, Rc, Rd, Re, Rf = 1.0 / blood.conductance(net)
    R_loop = 1.0 / (1.0 / Rb + 1.0 / (Rc + Rd)) + Re
    R_1 = 1.0 / (1.0 / R_loop + 1.0 / Rf)
    Qa = (p_in - p_out) / (Ra + R_1)
    p1 = p_in - Qa * Ra
    Qf = (p1 - p_out) / Rf
    Qe = (p1 - p_out) / R_loop
    p2 = p_out + Qe * Re
    Qb = (p1 - p2) / Rb
    Qcd = (p1 - p2) / (Rc + Rd)
    p3 = p1 - Qcd * Rc
    exact = {"pressure": np.array([p_in, p1, p2, p3, p_out, p_out]),
             "flow": np.array([Qa, Qb, Qcd, Qcd, Qe, Qf])}
    return net, exact


def flow_errors() -> dict:
    """Relative errors of the flow solve on :func:`loop_network`, pressure- and flow-driven."""
    net, exact = loop_network()
    f = blood.solve(net)
    out = {"pressure": float(np.max(np.abs(f.pressure - exact["pressure"])) / np.max(exact["pressure"])),
           "flow": float(np.max(np.abs(f.flow - exact["flow"])) / np.max(np.abs(exact["flow"]))),
           "junctions": blood.junction_imbalance(net, f)}
    # the same network driven by its inflow at node 0: the same solution
    pressure, inflow = net.pressure.copy(), np.full(net.num_nodes, np.nan)
    pressure[0], inflow[0] = np.nan, exact["flow"][0]
    g = blood.solve(Network(net.nodes, net.segments, net.radius, pressure=pressure, inflow=inflow))
    out["flow_driven"] = float(np.max(np.abs(g.flow - exact["flow"])) / np.max(np.abs(exact["flow"])))
    out["junctions_flow_driven"] = blood.junction_imbalance(net, g)
    return out


def transit_errors() -> dict:
    """One segment with a constant tissue level vs C_out = c + (C_in − c) e^(−TL/Q); the same
    segment cut into 16 pieces; and a confluence mixing two inflows by flow."""
    L, r, P, c, Cp = 200.0, 4.0, 3600.0, 0.3, 2.0
    net = Network([[0, 0, 0], [L, 0, 0]], [[0, 1]], [r], pressure=[30.0, 10.0])
    f = blood.solve(net)
    T = 2 * np.pi * r * P
    lv = Transit(net, f, np.array([T * L])).levels(np.array([c]), Cp)
    Q = f.flow[0]
    out_exact = c + (Cp - c) * math.exp(-T * L / Q)
    mean_exact = c + (Cp - c) * (1 - math.exp(-T * L / Q)) * Q / (T * L)
    res = {"outlet": abs(lv.outlet[0] - out_exact) / out_exact, "mean": abs(lv.mean[0] - mean_exact) / mean_exact}
    k = 16
    chain = Network(np.c_[np.linspace(0, L, k + 1), np.zeros((k + 1, 2))], np.c_[np.arange(k), np.arange(1, k + 1)],
                    np.full(k, r), pressure=np.r_[30.0, np.full(k - 1, np.nan), 10.0])
    fc = blood.solve(chain)
    tc = Transit(chain, fc, np.full(k, T * L / k))
    lc = tc.levels(np.full(k, c), Cp)
    res["chain"] = abs(lc.outlet[-1] - out_exact) / out_exact
    # mass: what the pieces pass to the tissue equals what the plasma lost
    res["chain_mass"] = abs(tc.delivered(lc).sum() - Q * (Cp - lc.outlet[-1])) / (Q * (Cp - lc.outlet[-1]))
    # confluence: two inlets at different pressures join and leave together
    conf = Network([[0, 0, 0], [0, 100, 0], [100, 50, 0], [300, 50, 0]], [[0, 2], [1, 2], [2, 3]],
                   [4.0, 5.0, 6.0], pressure=[40.0, 35.0, np.nan, 10.0])
    fq = blood.solve(conf)
    tq = Transit(conf, fq, np.zeros(3))
    lq = tq.levels(np.zeros(3), Cp)
    res["confluence"] = abs(lq.inlet[2] - Cp) / Cp
    return res


# --------------------------------------------------------------------------------------------
def _cylinder(comm, R: float, length: float, h: float):
    """A solid tissue cylinder of radius R along z (centred on 0), uniform tetrahedra of size h."""
    def make():
        import gmsh

        occ = gmsh.model.occ
        vol = occ.addCylinder(0, 0, -length / 2, 0, 0, length, R)
        occ.synchronize()
        gmsh.model.addPhysicalGroup(3, [vol], 1, name="tissue")
        surf = [abs(t) for _, t in gmsh.model.getBoundary([(3, vol)], oriented=False)]
        gmsh.model.addPhysicalGroup(2, surf, 1, name="outer")
        gmsh.option.setNumber("Mesh.MeshSizeMin", h)
        gmsh.option.setNumber("Mesh.MeshSizeMax", h)
        gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
        gmsh.option.setNumber("Mesh.Algorithm3D", ALGORITHM)
        gmsh.model.mesh.generate(3)

    if comm.rank == 0:
        with meshes.gmsh_session("krogh_line") as gmsh:
            make()
            msh, _, ft = compat.model_to_mesh(gmsh.model, comm, 0, gdim=3)
    else:
        msh, _, ft = compat.model_to_mesh(None, comm, 0, gdim=3)
    return msh, ft


def krogh_line(comm, h_list=(10.0, 20.0, 30.0, 50.0), alphas=(ALPHA, None), rv=5.0, R=300.0,
               lam=200.0) -> dict:
    """One vessel on the axis of a tissue cylinder vs the Krogh profile with a Robin wall.

    The tissue (D, uptake k = D/λ², zero flux outside) fills the whole cylinder; the vessel is
    the line source of the network code. For each well-model ``alpha`` (None: uncorrected) and
    each h: the relative L2 error of c at distances ≥ 2h from the axis, the relative error of
    the total exchange, and (for the calibration) the r_eq/h_cell at which the profile of a line
    source of the computed strength takes the discrete level on the axis.
    """
    D, Cp = 1000.0, 1.0
    k = D / lam ** 2
    P = BIOT * D / rv
    I0, I1, K0, K1 = special.i0, special.i1, special.k0, special.k1
    f = lambda r: K1(R / lam) * I0(r / lam) + I1(R / lam) * K0(r / lam)  # noqa: E731
    fp = (K1(R / lam) * I1(rv / lam) - I1(R / lam) * K1(rv / lam)) / lam
    A = P * Cp / (P * f(rv) - D * fp)  # from −D c'(r_v) = P (C_p − c(r_v))
    q_exact = 2 * np.pi * rv * P * (Cp - A * f(rv))  # exchange per unit length [µM µm²/h]
    out = {a: {"h": [], "l2": [], "total": [], "alpha_fit": []} for a in alphas}
    for h in h_list:
        length = LAYERS * h  # the exact solution does not depend on z: a few layers suffice
        msh, facets = _cylinder(comm, R, length, h)
        V = fem.functionspace(msh, ("Lagrange", 1))
        net = Network([[0, 0, -length / 2], [0, 0, length / 2]], [[0, 1]], [rv], source="Krogh vessel")
        quad = locate(net, V)
        x = ufl.SpatialCoordinate(msh)
        rho = ufl.sqrt(x[0] ** 2 + x[1] ** 2)
        ex = fem.Function(fem.functionspace(msh, ("Lagrange", 4)))
        ex.interpolate(lambda X: A * f(np.maximum(np.hypot(X[0], X[1]), h)))  # finite on the axis
        far = ufl.conditional(ufl.ge(rho, 2 * h), 1.0, 0.0)
        dx = ufl.dx(metadata={"quadrature_degree": 6})
        model = SpeciesModel("c", fem.Constant(msh, D), decay=k)
        s = SpeciesSolver(model, V, facets, solver="amg", rtol=1e-12, cell_size=h)
        err_form = fem.form(far * (s.c - ex) ** 2 * dx)
        den = comm.allreduce(fem.assemble_scalar(fem.form(far * ex ** 2 * dx)), op=MPI.SUM)
        h_cell = comm.allreduce(float(np.sum(quad.cell_size * quad.weight)), op=MPI.SUM) / length
        for alpha in alphas:
            src = LineSource(quad, P, D, alpha)
            exch = src.nodal(np.array([Cp]))
            s.c.x.array[:] = 0.0
            s.step(0.0, STEADY, nodal_exchange=exch)
            s.step(STEADY, 2 * STEADY, nodal_exchange=exch)
            num = comm.allreduce(fem.assemble_scalar(err_form), op=MPI.SUM)
            q_num = src.delivered(np.array([Cp]), s.c.x.array) / length
            c_axis = float(src.tissue_level(s.c.x.array)[0])
            amplitude = q_num / (2 * np.pi * D * I1(R / lam))
            r_fit = optimize.brentq(lambda r: amplitude * f(r) - c_axis, 1e-9 * R, R)
            o = out[alpha]
            o["h"].append(h)
            o["l2"].append(math.sqrt(num / den))
            o["total"].append(abs(q_num - q_exact) / q_exact)
            o["alpha_fit"].append(r_fit / h_cell)
    return out


# --------------------------------------------------------------------------------------------
def network_mass_balance(comm, steps: int = 6) -> dict:
    """A generated network in a small block: per step, network delivery − uptake − decay =
    change of the tissue amount (lumped), with the plasma level along the network recomputed
    from the previous tissue level every step."""
    from ..config.scenario import BuiltinMesh
    from .generator import GeneratorParams, generate
    from .network import shared

    size = (400.0, 300.0, 200.0)
    dom = meshes.build(BuiltinMesh(kind="box", size=list(size), cells=[16, 12, 8], origin=[0.0, 0.0, 0.0]), comm)
    V = fem.functionspace(dom.mesh, ("Lagrange", 1))
    params = GeneratorParams(lower=(0, 0, 0), upper=size, seed=3, spacing=80.0, feeder_spacing=150.0,
                             tumour=lambda X: X[:, 0] > 250.0)
    net = shared(comm, lambda: generate(params))
    fl = blood.solve(net)
    D, P = 16.0 * 3600, 0.5 * 3600  # µm²/h, µm/h
    src = LineSource(locate(net, V), P, D)
    transit = Transit(net, fl, src.conductance)
    n_tot = fem.Function(V)
    n_tot.interpolate(lambda X: 0.4 + 0.5 * X[1] / size[1])
    model = SpeciesModel("c", fem.Constant(dom.mesh, D), decay=0.2, uptake=0.5)
    s = SpeciesSolver(model, V, dom.facet_tags, rtol=1e-13, cell_size=dom.cell_size())
    worst, t, delivered = 0.0, 0.0, []
    for i in range(steps):
        dt = 0.25 * (1 + i % 2)
        cp = 2.0 * math.exp(-0.3 * t)
        lv = transit.levels(src.tissue_level(s.c.x.array), cp)
        exch = src.nodal(lv.mean, fl.perfused)
        s.step(t, t + dt, n_tot.x.array, nodal_exchange=exch)
        t += dt
        b = s.balance()
        scale = max(abs(b["inflow"]), abs(b["change"]), 1e-300)
        worst = max(worst, abs(b["change"] - (b["inflow"] - b["uptake"] - b["decay"])) / scale)
        delivered.append(b["inflow"])
    return {"mismatch": worst, "delivered": delivered, "perfused_fraction": fl.perfused_fraction(net)}
