"""Verification of the transport layer against closed forms (docs/model.md, Verification): ``tme verify``.

Each case solves a problem whose exact solution is known, on a sequence of meshes, and reports
the error and the observed order of convergence. Steady problems are reached with backward-Euler
steps so long (dt = 1e9 h) that the step IS the steady solve of the same matrices the time loop
uses. Lengths in µm, time in hours, concentrations in µM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import ufl
from dolfinx import fem
from mpi4py import MPI
from scipy import special

from .. import compat
from ..mesh import build as meshes
from ..config.scenario import BuiltinMesh, KroghMesh, RegionRule, SpheroidMesh
from ..config.spec import BoundaryValue
from ..tissue import hindrance
from ..transport import SpeciesModel, SpeciesSolver


@dataclass
class Result:
    """One verification case: errors per mesh, observed orders, and the verdict."""

    case: str
    sizes: list = field(default_factory=list)  # number of cells across (or h)
    errors: list = field(default_factory=list)
    measure: str = "rel L2"
    threshold: str = ""
    passed: bool = False
    note: str = ""
    convergence: bool = True  # False: the sizes are a range of meshes, not a refinement study

    @property
    def orders(self) -> list[float]:
        out = []
        if not self.convergence:
            return out
        for (h0, e0), (h1, e1) in zip(zip(self.sizes, self.errors), zip(self.sizes[1:], self.errors[1:])):
            if h0 == h1:  # not a refinement (several quantities on one mesh)
                continue
            out.append(math.log(e0 / e1) / math.log(h0 / h1) if e1 > 0 and e0 > 0 else float("nan"))
        return out


def _l2(comm, expr) -> float:
    return math.sqrt(comm.allreduce(fem.assemble_scalar(fem.form(expr)), op=MPI.SUM))


def _rel_l2(c: fem.Function, exact) -> float:
    """Relative L2 error of c against ``exact``: a UFL expression, or a NumPy function of the
    coordinates (3, n) -> (n,) interpolated into P4, whose own error is O(h^5)."""
    if not isinstance(exact, ufl.core.expr.Expr):
        V4 = fem.functionspace(c.function_space.mesh, ("Lagrange", 4))
        e = fem.Function(V4)
        e.interpolate(exact)
        exact = e
    dx = ufl.dx(metadata={"quadrature_degree": 8})
    comm = c.function_space.mesh.comm
    return _l2(comm, (c - exact) ** 2 * dx) / _l2(comm, exact ** 2 * dx)


def _steady(model: SpeciesModel, domain: meshes.Domain, solver="direct") -> fem.Function:
    V = fem.functionspace(domain.mesh, ("Lagrange", 1))
    s = SpeciesSolver(model, V, domain.facet_tags, solver=solver, rtol=1e-12, cell_size=domain.cell_size(),
                      steady=True)
    if not s.steady:
        raise ValueError(f"{model.name}: the steady problem has no unique solution (no sink)")
    s.step(0.0, 1.0)   # the solver's own steady solve, as a quasi-steady species takes it
    return s.c


# --------------------------------------------------------------------------------------------
def slab(comm, n_list=(25, 50, 100)) -> Result:
    """−D c'' + k c = 0, c(0) = c0, c'(L) = 0: c = c0 cosh((L−x)/λ)/cosh(L/λ); max nodal error."""
    L, D, k, c0 = 300.0, 1000.0, 0.1, 2.0
    lam = math.sqrt(D / k)
    res = Result("slab, cosh profile", measure="max rel", threshold="< 1 % at the middle mesh")
    for n in n_list:
        dom = meshes.build(BuiltinMesh(kind="rectangle", size=[L, L / 10], cells=[n, max(2, n // 10)],
                                       origin=[0.0, 0.0]), comm)
        model = SpeciesModel("c", fem.Constant(dom.mesh, D), decay=k,
                             boundary={"left": BoundaryValue(value=f"{c0!r} uM")},
                             boundary_facets={"left": dom.facet("left", "verify")})
        c = _steady(model, dom)
        x = c.function_space.tabulate_dof_coordinates()[:, 0]
        exact = c0 * np.cosh((L - x) / lam) / np.cosh(L / lam)
        err = comm.allreduce(float(np.max(np.abs(c.x.array - exact) / np.abs(exact))) if x.size else 0.0, op=MPI.MAX)
        res.sizes.append(L / n)
        res.errors.append(err)
    res.passed = res.errors[len(res.errors) // 2] < 0.01 and min(res.orders) > 1.8
    return res


def krogh(comm, wall="dirichlet", h_list=(5.0, 2.5, 1.25)) -> Result:
    """Krogh annulus with first-order uptake: the Bessel I0/K0 profile (Dirichlet or Robin wall)."""
    rv, R, D, k, cv, P = 10.0, 100.0, 1000.0, 0.4, 1.0, 20.0
    lam = math.sqrt(D / k)
    res = Result(f"Krogh annulus, {wall} wall", threshold="< 1 %, order >= 1.9")
    K1R, I1R = special.k1(R / lam), special.i1(R / lam)
    if wall == "dirichlet":
        beta = cv / (K1R * special.i0(rv / lam) + I1R * special.k0(rv / lam))
    else:  # inflow through the wall: −D c'(r_v) = P (c_v − c(r_v))
        f = K1R * special.i0(rv / lam) + I1R * special.k0(rv / lam)
        fp = (K1R * special.i1(rv / lam) - I1R * special.k1(rv / lam)) / lam
        beta = P * cv / (P * f - D * fp)
    for h in h_list:
        dom = meshes.build(KroghMesh(kind="krogh", dim=2, vessel_radius=rv, tissue_radius=R, h=h), comm)

        def exact(X, beta=beta):
            r = np.sqrt(X[0] ** 2 + X[1] ** 2)
            return beta * (K1R * special.i0(r / lam) + I1R * special.k0(r / lam))

        wall_tags = dom.facet("vessel_wall", "verify")
        if wall == "dirichlet":
            model = SpeciesModel("c", fem.Constant(dom.mesh, D), decay=k,
                                 boundary={"vessel_wall": BoundaryValue(value=f"{cv!r} uM")},
                                 boundary_facets={"vessel_wall": wall_tags})
        else:
            model = SpeciesModel("c", fem.Constant(dom.mesh, D), decay=k, permeability=P,
                                 plasma=lambda t0, t1: cv, wall_facets=wall_tags)
        c = _steady(model, dom)
        res.sizes.append(h)
        res.errors.append(_rel_l2(c, exact))
    res.passed = res.errors[-1] < 0.01 and min(res.orders) >= 1.9
    return res


def spheroid(comm, h=12.0) -> Result:
    """Spheroid fed from its surface: c = c0 (R/r) sinh(r/λ)/sinh(R/λ)."""
    R, D, k, c0 = 100.0, 1000.0, 0.4, 1.0
    lam = math.sqrt(D / k)
    dom = meshes.build(SpheroidMesh(kind="spheroid", radius=R, h=h), comm)
    x = ufl.SpatialCoordinate(dom.mesh)
    r = ufl.sqrt(ufl.dot(x, x)) + 1e-12
    exact = c0 * (R / r) * ufl.sinh(r / lam) / math.sinh(R / lam)
    model = SpeciesModel("c", fem.Constant(dom.mesh, D), decay=k,
                         boundary={"outer": BoundaryValue(value=f"{c0!r} uM")},
                         boundary_facets={"outer": dom.facet("outer", "verify")})
    c = _steady(model, dom, solver="amg")
    res = Result("spheroid, sinh profile (3-D)", sizes=[h], errors=[_rel_l2(c, exact)], threshold="< 2 %")
    res.passed = res.errors[0] < 0.02
    return res


def _sphere_modes(R: float, n_modes: int):
    """μ_m = mπ/R and the sine basis sin(μ_m r)/r of radial functions vanishing at r = R."""
    mu = np.arange(1, n_modes + 1) * math.pi / R

    def basis(r):  # (len(r), n_modes); the limit μ_m at r = 0
        r = np.asarray(r, float)[:, None]
        return np.where(r > 0, np.sin(mu * r) / np.where(r > 0, r, 1.0), mu)
    return mu, basis


def _ball_profile(r, R: float, beta2: float) -> np.ndarray:
    """(R/r) sinh(βr)/sinh(βR), β² = beta2 > 0: the radial solution of Dc'' + 2Dc'/r = D β² c, c(R) = 1."""
    b = math.sqrt(beta2)
    r = np.asarray(r, float)
    safe = np.where(r > 0, r, 1.0)
    # written with exp(β(r−R)) so that it does not overflow for βR of hundreds
    return np.where(r > 0, (R / safe) * (np.exp(b * (r - R)) - np.exp(-b * (r + R))) / (1.0 - np.exp(-2 * b * R)),
                    2 * b * R * np.exp(-b * R) / (1.0 - np.exp(-2 * b * R)))


def ball_decaying_surface(r, t, R, D, k, c0, alpha, n_modes=4000) -> np.ndarray:
    """Ball of radius R, ∂c/∂t = DΔc − k c, c = 0 at t = 0, surface c(R, t) = c0 exp(−α t), k > α.

    By Duhamel's principle on the eigen-expansion (or directly: the separable part e^{−αt} φ plus
    the decay of −φ in the Dirichlet modes sin(μ_m r)/r, μ_m = mπ/R):

        c = c0 e^{−αt} (R/r) sinh(βr)/sinh(βR)
            + Σ_m 2 c0 (−1)^m μ_m/(β² + μ_m²) e^{−(k + Dμ_m²) t} sin(μ_m r)/r,   β² = (k − α)/D.

    α = 0 is the step: a surface held at c0 from t = 0.
    """
    beta2 = (k - alpha) / D
    mu, basis = _sphere_modes(R, n_modes)
    a = 2 * c0 * (-1.0) ** np.arange(1, n_modes + 1) * mu / (beta2 + mu ** 2) * np.exp(-(k + D * mu ** 2) * t)
    return c0 * math.exp(-alpha * t) * _ball_profile(r, R, beta2) + basis(r) @ a


def ball_backward_euler(r, R, D, k, surface: list[float], dt: float, n_modes=4000) -> np.ndarray:
    """The same ball after backward-Euler steps of dt, exact in space: each step solves
    −DΔc + (k + 1/dt) c = c_old/dt, c(R) = surface[n], from c = 0.

    With ψ = (R/r) sinh(γr)/sinh(γR), γ² = (k + 1/dt)/D, the step is c = g_n ψ + w, w in the
    Dirichlet modes with coefficients (c_old)_m/dt/(k + 1/dt + Dμ_m²), and ψ's own coefficients
    −2 μ_m (−1)^m/(γ² + μ_m²). This separates the spatial error of the solver (against this) from
    its time error (against :func:`ball_decaying_surface`).
    """
    gamma2 = (k + 1.0 / dt) / D
    mu, basis = _sphere_modes(R, n_modes)
    psi_m = -2 * mu * (-1.0) ** np.arange(1, n_modes + 1) / (gamma2 + mu ** 2)
    w, g_old = np.zeros(n_modes), 0.0
    for g in surface:
        w = (g_old * psi_m + w) / dt / (k + 1.0 / dt + D * mu ** 2)
        g_old = g
    return g_old * _ball_profile(r, R, gamma2) + basis(r) @ w


#: the plasma-following spheroid: R [µm], D [µm²/h], uptake k [1/h], bolus c0 [µM], half-life [h], end [h]
_SPH = dict(R=100.0, D=3600.0, k=2.0, c0=1.0, half_life=1.0, T=0.4)


def spheroid_plasma_solver(dom, scheme="backward_euler", lumped=True, estimate=False):
    """The spheroid in a medium that follows a bolus's plasma level: outer ``plasma: true``
    (c = C_p), one-compartment PK through :class:`tme.pk.Plasma`, C_p = c0 e^{−αt}."""
    from ..config.drugs import PKSpec
    from ..pk import Plasma

    p = _SPH
    plasma = Plasma(PKSpec(model="one_compartment", half_life=f"{p['half_life']!r} hour"), "c")
    plasma.add_dose(0.0, p["c0"])
    model = SpeciesModel("c", fem.Constant(dom.mesh, p["D"]), decay=p["k"], plasma=plasma.mean,
                         boundary={"outer": BoundaryValue(plasma=True)},
                         boundary_facets={"outer": dom.facet("outer", "verify")})
    V = fem.functionspace(dom.mesh, ("Lagrange", 1))
    return SpeciesSolver(model, V, dom.facet_tags, lumped=lumped, solver="amg", rtol=1e-12,
                         cell_size=dom.cell_size(), scheme=scheme, estimate=estimate)


def _spheroid_plasma_solve(dom, dt, lumped=True, scheme="backward_euler"):
    """The field at T of :func:`spheroid_plasma_solver` after steps of dt, and the step means
    of the surface level."""
    s = spheroid_plasma_solver(dom, scheme, lumped)
    steps = int(round(_SPH["T"] / dt))
    for i in range(steps):
        s.step(i * dt, (i + 1) * dt)
    return s.c, [s.model.plasma(i * dt, (i + 1) * dt) for i in range(steps)]


def _radial(values, rr):
    return lambda X: np.interp(np.sqrt(X[0] ** 2 + X[1] ** 2 + X[2] ** 2), rr, values)


def spheroid_plasma_space(comm, h_list=(24.0, 16.0, 12.0), steps=2, lumped=True) -> Result:
    """Space order of the plasma-following spheroid: against the backward-Euler solution exact in
    space (same steps, same step means), so no time error enters."""
    p = _SPH
    rr = np.linspace(0.0, 1.05 * p["R"], 8401)  # closed forms on a fine radial grid, interpolated
    dt = p["T"] / steps
    res = Result("spheroid, surface = C_p(t) (bolus PK): space, 3-D"
                 + ("" if lumped else ", consistent mass"), threshold="order >= 1.8")
    for h in h_list:
        dom = meshes.build(SpheroidMesh(kind="spheroid", radius=p["R"], h=h), comm)
        c, g = _spheroid_plasma_solve(dom, dt, lumped)
        exact = ball_backward_euler(rr, p["R"], p["D"], p["k"], g, dt)
        res.sizes.append(dom.cell_size())
        res.errors.append(_rel_l2(c, _radial(exact, rr)))
    res.passed = min(res.orders) >= 1.8
    return res


def spheroid_plasma_time(comm, dt_list=(0.2, 0.1, 0.05, 0.025), h=12.0, scheme="backward_euler") -> Result:
    """Time order of the plasma-following spheroid: against the exact solution (Duhamel) at T,
    dt halved on one mesh; the note gives that mesh's own spatial error at the smallest dt
    (backward Euler), or the error is taken against the finest step's solution on the same mesh
    (TR-BDF2, whose time error falls below the spatial one: the differences of successive steps
    give the order, and the Duhamel error of the finest step is in the note)."""
    p = _SPH
    rr = np.linspace(0.0, 1.05 * p["R"], 8401)
    alpha = math.log(2.0) / p["half_life"]
    exact = ball_decaying_surface(rr, p["T"], p["R"], p["D"], p["k"], p["c0"], alpha)
    dom = meshes.build(SpheroidMesh(kind="spheroid", radius=p["R"], h=h), comm)
    if scheme == "backward_euler":
        res = Result("spheroid, surface = C_p(t) (bolus PK): time", measure="rel L2",
                     threshold="order >= 0.9 (backward Euler)")
        for dt in dt_list:
            c, g = _spheroid_plasma_solve(dom, dt)
            res.sizes.append(dt)
            res.errors.append(_rel_l2(c, _radial(exact, rr)))
        space_part = _rel_l2(c, _radial(ball_backward_euler(rr, p["R"], p["D"], p["k"], g, dt_list[-1]), rr))
        res.note = (f"sizes are dt [h] on h = {dom.cell_size():.3g} µm, t = {p['T']:g} h; spatial part of "
                    f"the last error {space_part:.2e}; C_p = {p['c0']:g} µM exp(−t ln2/{p['half_life']:g} h)")
        res.passed = min(res.orders) >= 0.9
        return res
    res = Result("spheroid, surface = C_p(t) (bolus PK): time, TR-BDF2", measure="rel L2 to dt/2",
                 threshold="order >= 1.8")
    fields = [_spheroid_plasma_solve(dom, dt, scheme=scheme)[0].copy() for dt in dt_list]
    for dt, c, finer in zip(dt_list, fields, fields[1:]):
        res.sizes.append(dt)
        res.errors.append(_rel_l2(c, finer))
    duhamel = _rel_l2(fields[-1], _radial(exact, rr))
    res.note = (f"sizes are dt [h] on h = {dom.cell_size():.3g} µm, t = {p['T']:g} h; error to the "
                f"solution with dt/2; the finest step against Duhamel: {duhamel:.2e} (spatial)")
    res.passed = min(res.orders) >= 1.8
    return res


def spheroid_plasma_robin(comm, h=12.0) -> Result:
    """Steady spheroid behind a permeable surface at a constant plasma level: outer
    ``{plasma: true, plasma_fraction: f, robin: P}``, D c'(R) = P (f C_p − c(R)):
    c = A (R/r) sinh(r/λ)/sinh(R/λ), A = P f C_p / (P + D (coth(R/λ)/λ − 1/R))."""
    from ..config.drugs import PKSpec
    from ..pk import Plasma

    R, D, k, P, level, frac = 100.0, 3600.0, 2.0, 60.0, 2.0, 0.5
    lam = math.sqrt(D / k)
    A = P * frac * level / (P + D * (1.0 / math.tanh(R / lam) / lam - 1.0 / R))
    dom = meshes.build(SpheroidMesh(kind="spheroid", radius=R, h=h), comm)
    x = ufl.SpatialCoordinate(dom.mesh)
    r = ufl.sqrt(ufl.dot(x, x)) + 1e-12
    exact = A * (R / r) * ufl.sinh(r / lam) / math.sinh(R / lam)
    plasma = Plasma(PKSpec(model="constant", level=f"{level!r} uM"), "c")
    model = SpeciesModel("c", fem.Constant(dom.mesh, D), decay=k, plasma=plasma.mean,
                         boundary={"outer": BoundaryValue(plasma=True, plasma_fraction=frac, robin=f"{P} um/hour")},
                         boundary_facets={"outer": dom.facet("outer", "verify")})
    c = _steady(model, dom, solver="amg")
    res = Result("spheroid, Robin surface to f C_p, steady (3-D)", sizes=[h], errors=[_rel_l2(c, exact)],
                 threshold="< 2 %")
    res.passed = res.errors[0] < 0.02
    return res


def manufactured(comm, n_list=(8, 16, 32), t_end=2.0, steps=4) -> Result:
    """Transient MMS: D(x) varying, continuum vessel source P S_V (Cp − c), a Robin wall, decay.

    u = (1 + t/T) g(x, y) is linear in time, so backward Euler has no time error and the observed
    order is that of space (with any dt).
    """
    L, D0, P, Cp, lam_d, T = 100.0, 500.0, 2.0, 1.5, 0.05, 1.0
    res = Result("manufactured transient (D(x), S_V(x), Robin wall)", threshold="order >= 1.9")
    for n in n_list:
        dom = meshes.build(BuiltinMesh(kind="rectangle", size=[L, L], cells=[n, n], origin=[0.0, 0.0]), comm)
        msh = dom.mesh
        x = ufl.SpatialCoordinate(msh)
        t = fem.Constant(msh, 0.0)
        g = 1.0 + 0.5 * ufl.cos(math.pi * x[0] / L) * ufl.sin(math.pi * x[1] / L) + 0.2 * x[0] / L
        u_ex = (1.0 + t / T) * g
        D = D0 * (1.0 + 0.5 * ufl.sin(math.pi * x[0] / L) ** 2 * ufl.cos(math.pi * x[1] / L) ** 2)
        W = fem.functionspace(msh, ("DG", 0))
        sv = fem.Function(W)
        sv.interpolate(lambda X: 0.01 * (1.0 + X[0] / L))
        f = g / T - ufl.div(D * ufl.grad(u_ex)) - P * sv * (Cp - u_ex) + lam_d * u_ex
        n_vec = ufl.FacetNormal(msh)
        wall = dom.facet("left", "verify")
        # boundary sources that make u_ex satisfy the conditions the solver imposes: zero flux
        # on the outer sides, and on the wall the inflow D grad u.n = P (Cp − u) (n the outward
        # normal of the tissue)
        flux = ufl.dot(D * ufl.grad(u_ex), n_vec)
        wall_mismatch = -P * (Cp - u_ex)

        def source(v, dx, ds, f=f, flux=flux, wall_mismatch=wall_mismatch, wall=wall):
            return f * v * dx + flux * v * ds + wall_mismatch * v * ds(wall[0])

        model = SpeciesModel("c", D, decay=lam_d, permeability=P, vascular_density=sv,
                             plasma=lambda t0, t1: Cp, wall_facets=wall, time_source=source)
        V = fem.functionspace(msh, ("Lagrange", 1))
        s = SpeciesSolver(model, V, dom.facet_tags, solver="direct", cell_size=L / n)
        s.c.interpolate(fem.Expression(u_ex, compat.interpolation_points(V)))
        dt = t_end / steps
        for i in range(steps):
            t.value = (i + 1) * dt  # backward Euler: sources at the new time
            s.step(i * dt, (i + 1) * dt)
        res.sizes.append(L / n)
        res.errors.append(_rel_l2(s.c, u_ex))
    res.passed = min(res.orders) >= 1.9
    return res


#: the uniform bolus case: vessel exchange a = P S_V [1/h], sink k [1/h], bolus c0 [µM], half-life [h], end [h]
_BOLUS = dict(P=20.0, SV=0.05, k=0.6, c0=2.0, half_life=0.5, T=2.0)


def bolus_uniform_exact(t: float) -> float:
    """c' = a (C_p(t) − c) − k c, c(0) = 0, C_p = c0 e^{−αt}: c = a c0 (e^{−αt} − e^{−βt})/(β − α),
    β = a + k (a uniform field: the transport step reduces to this ODE at every dof)."""
    p = _BOLUS
    a = p["P"] * p["SV"]
    alpha, beta = math.log(2.0) / p["half_life"], a + p["k"]
    return a * p["c0"] * (math.exp(-alpha * t) - math.exp(-beta * t)) / (beta - alpha)


def bolus_uniform_solver(comm, scheme="backward_euler", estimate=False, n=4):
    """A uniform field fed by continuum vessels from a bolus's plasma (one-compartment PK
    through :class:`tme.pk.Plasma`), with a first-order sink split into decay and uptake
    by a cell density of 0.5 (so the diagonal's N_tot part is exercised)."""
    from ..config.drugs import PKSpec
    from ..pk import Plasma

    p = _BOLUS
    dom = meshes.build(BuiltinMesh(kind="rectangle", size=[100.0, 100.0], cells=[n, n], origin=[0.0, 0.0]), comm)
    W = fem.functionspace(dom.mesh, ("DG", 0))
    sv = fem.Function(W)
    sv.x.array[:] = p["SV"]
    plasma = Plasma(PKSpec(model="one_compartment", half_life=f"{p['half_life']!r} hour"), "c")
    plasma.add_dose(0.0, p["c0"])
    model = SpeciesModel("c", fem.Constant(dom.mesh, 1000.0), decay=0.5 * p["k"], uptake=p["k"],
                         permeability=p["P"], vascular_density=sv, plasma=plasma.mean)
    V = fem.functionspace(dom.mesh, ("Lagrange", 1))
    s = SpeciesSolver(model, V, dom.facet_tags, solver="jacobi", rtol=1e-14, cell_size=100.0 / n,
                      scheme=scheme, estimate=estimate)
    n_tot = np.full(V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts, 0.5)
    return s, n_tot


def bolus_uniform(comm, scheme="backward_euler", dt_list=(0.4, 0.2, 0.1, 0.05)) -> Result:
    """Time order of transport with a time-varying source against its closed form: a uniform
    field (no spatial error at all) fed from a decaying bolus, max rel error at T."""
    T = _BOLUS["T"]
    exact = bolus_uniform_exact(T)
    want = 0.9 if scheme == "backward_euler" else 1.9
    res = Result(f"uniform field, bolus source: time, {scheme.replace('_', ' ')}", measure="max rel",
                 threshold=f"order >= {want}")
    for dt in dt_list:
        s, n_tot = bolus_uniform_solver(comm, scheme)
        steps = int(round(T / dt))
        for i in range(steps):
            s.step(i * dt, (i + 1) * dt, n_tot)
        c = s.c.x.array
        err = comm.allreduce(float(np.max(np.abs(c - exact))) if c.size else 0.0, op=MPI.MAX) / exact
        res.sizes.append(dt)
        res.errors.append(err)
    res.note = f"sizes are dt [h]; c(T = {T:g} h) = {exact:.6g} µM"
    res.passed = min(res.orders) >= want
    return res


def mass_balance(comm, n=24, steps=12, scheme="backward_euler") -> Result:
    """Per step: change = vessel inflow − uptake − decay − boundary outflow (lumped amounts);
    with TR-BDF2 the sinks act on the step's stage-weighted mean of c."""
    L = 200.0
    dom = meshes.build(BuiltinMesh(kind="rectangle", size=[L, L], cells=[n, n], origin=[0.0, 0.0]), comm)
    msh = dom.mesh
    V = fem.functionspace(msh, ("Lagrange", 1))
    W = fem.functionspace(msh, ("DG", 0))
    sv = fem.Function(W)
    sv.interpolate(lambda X: 0.02 * (X[0] < L / 2))
    n_tot = fem.Function(V)
    n_tot.interpolate(lambda X: 0.3 + 0.6 * X[1] / L)
    plasma = lambda t0, t1: 2.0 * math.exp(-0.1 * t0) if t1 > t0 else 0.0  # noqa: E731
    model = SpeciesModel("c", fem.Constant(msh, 800.0), decay=0.05, uptake=0.3, permeability=3.0,
                         vascular_density=sv, plasma=plasma, wall_facets=dom.facet("left", "verify"),
                         boundary={"right": BoundaryValue(value="0.1 uM", robin="5 um/s"),
                                   "top": BoundaryValue(plasma=True, plasma_fraction=0.5, robin="2 um/hour")},
                         boundary_facets={"right": dom.facet("right", "verify"),
                                          "top": dom.facet("top", "verify")})
    s = SpeciesSolver(model, V, dom.facet_tags, rtol=1e-13, cell_size=L / n, scheme=scheme)
    worst, t = 0.0, 0.0
    for i in range(steps):
        dt = 0.5 * (1 + i % 3)  # varying steps exercise the diagonal update
        s.step(t, t + dt, n_tot.x.array)
        t += dt
        b = s.balance()
        scale = max(abs(b["inflow"]), abs(b["change"]), abs(b["uptake"]), 1e-300)
        mismatch = b["change"] - (b["inflow"] - b["uptake"] - b["decay"] - b["outflow"] + b["source"])
        worst = max(worst, abs(mismatch) / scale)
    res = Result("mass balance per step" + ("" if scheme == "backward_euler" else ", TR-BDF2"),
                 sizes=[L / n], errors=[worst], measure="rel mismatch",
                 threshold="< 1e-8")
    res.passed = worst < 1e-8
    return res


def ecm_hindrance(comm, n=200) -> Result:
    """An antibody penetrates dense ECM less far than a small drug: λ = √(D_eff/k) on both.

    The diffusivity goes through the same path as in a run: the region's ECM fraction -> DG0
    tissue field -> Ogston hindrance. Both molecules get the same free diffusivity, so the
    difference is the matrix alone.
    """
    from ..config.scenario import RegionTissue, TissueSpec
    from ..problem import diffusivity
    from ..tissue import build as build_tissue

    L, D0, k, phi, rf = 400.0, 16.0 * 3600, 1.0, 0.3, 1.5e-3
    radii = {"small drug (0.5 nm)": 0.5e-3, "antibody (5 nm)": 5.0e-3}
    dom = meshes.build(BuiltinMesh(kind="rectangle", size=[L, 10.0], cells=[n, 2], origin=[0.0, 0.0],
                                   regions=[RegionRule(name="dense_ecm", where="x >= 0")]), comm)
    tf = build_tissue(TissueSpec(fibre_radius=f"{rf!r} um", regions={"dense_ecm": RegionTissue(ecm_fraction=phi)}), dom)
    res = Result("ECM hindrance: penetration length vs sqrt(D_eff/k)", measure="rel error of λ",
                 threshold="< 2 % each; antibody < small")
    lengths = {}
    for label, r in radii.items():
        D_eff = D0 * float(hindrance(np.array(phi), r, rf))
        model = SpeciesModel("c", diffusivity(D0, r, tf, rf, "c"), decay=k,
                             boundary={"left": BoundaryValue(value="1.0 uM")},
                             boundary_facets={"left": dom.facet("left", "verify")})
        c = _steady(model, dom)
        # measured penetration length: where the profile falls to 1/e (interpolated)
        xs = c.function_space.tabulate_dof_coordinates()[:, 0]
        xs_all = np.concatenate(comm.allgather(xs))
        cs_all = np.concatenate(comm.allgather(c.x.array.copy()))
        order = np.argsort(xs_all)
        xs_all, cs_all = xs_all[order], cs_all[order]
        ln = -np.log(np.maximum(cs_all, 1e-300))
        measured = float(np.interp(1.0, ln, xs_all))
        expected = math.sqrt(D_eff / k)
        # a slab of finite length bends the profile: compare against the same 1/e point of cosh
        lam = expected
        xx = np.linspace(0, L, 20001)
        prof = np.cosh((L - xx) / lam) / np.cosh(L / lam)
        expected_1e = float(np.interp(1.0, -np.log(prof), xx))
        lengths[label] = (measured, expected_1e, lam)
        res.sizes.append(L / n)
        res.errors.append(abs(measured - expected_1e) / expected_1e)
    (ms, _, ls), (ma, _, la) = lengths.values()
    res.note = (f"sqrt(D_eff/k): small drug {ls:.1f} µm, antibody {la:.1f} µm; measured 1/e depth "
                f"(slab of {L:g} µm): {ms:.1f} and {ma:.1f} µm")
    res.passed = max(res.errors) < 0.02 and ma < ms
    return res


def _partition_problem(c):
    """A transient problem with vessel walls, a patchy S_V and uptake; (dof coords, values)."""
    dom = meshes.build(BuiltinMesh(kind="rectangle", size=[200.0, 100.0], cells=[40, 20],
                                   origin=[0.0, 0.0]), c)
    V = fem.functionspace(dom.mesh, ("Lagrange", 1))
    W = fem.functionspace(dom.mesh, ("DG", 0))
    sv = fem.Function(W)
    sv.interpolate(lambda X: 0.01 + 0.02 * (X[0] > 100))
    model = SpeciesModel("c", fem.Constant(dom.mesh, 900.0), decay=0.1, uptake=0.2, permeability=2.0,
                         vascular_density=sv, plasma=lambda t0, t1: 1.0,
                         wall_facets=dom.facet("left", "verify"))
    s = SpeciesSolver(model, V, dom.facet_tags, rtol=1e-13, cell_size=5.0)
    ones = np.ones(V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts)
    for i in range(5):
        s.step(i * 2.0, (i + 1) * 2.0, ones)
    xy = V.tabulate_dof_coordinates()[: V.dofmap.index_map.size_local, :2]
    return xy, s.c.x.array[: V.dofmap.index_map.size_local].copy()


def partition_independence(comm) -> Result:
    """The same problem on this communicator and on one rank: fields agree to 1e-8 relative."""
    solve = _partition_problem
    xy, val = solve(comm)
    xy = np.concatenate(comm.gather(xy, root=0) or [np.zeros((0, 2))]) if comm.size > 1 else xy
    val = np.concatenate(comm.gather(val, root=0) or [np.zeros(0)]) if comm.size > 1 else val
    err = 0.0
    if comm.rank == 0:
        xy1, val1 = solve(MPI.COMM_SELF)
        # match dofs by coordinates, rounded: the same point may differ in its last bits
        xy, xy1 = np.round(xy, 6), np.round(xy1, 6)
        a = np.lexsort((xy[:, 1], xy[:, 0]))
        b = np.lexsort((xy1[:, 1], xy1[:, 0]))
        assert np.array_equal(xy[a], xy1[b]), "the two meshes do not have the same vertices"
        err = float(np.max(np.abs(val[a] - val1[b])) / np.max(np.abs(val1)))
    err = comm.bcast(err, root=0)
    res = Result(f"{comm.size} ranks vs 1 rank", sizes=[5.0], errors=[err], measure="max rel diff",
                 threshold="< 1e-8")
    res.passed = err < 1e-8
    return res


def vessel_flow(comm) -> Result:
    """Blood flow on a bifurcation with a loop vs its series/parallel closed form."""
    from ..vasculature import verification as vv

    e = vv.flow_errors()
    res = Result("vessel flow: bifurcation + loop (pressure-, flow-driven)", measure="max rel error",
                 errors=[e["pressure"], e["flow"], e["flow_driven"], e["junctions"]], threshold="< 1e-10",
                 note="errors: pressures, flows, flows when driven by the inflow, junction imbalance")
    res.passed = max(res.errors) < 1e-10
    return res


def vessel_transit(comm) -> Result:
    """Plasma level along one segment vs C_out = c + (C_in − c) exp(−2πrPL/Q); a chain of 16
    pieces; flow-weighted mixing at a confluence."""
    from ..vasculature import verification as vv

    e = vv.transit_errors()
    res = Result("vessel transit: exponential extraction, chain, mixing", measure="rel error",
                 errors=[e["outlet"], e["mean"], e["chain"], e["chain_mass"], e["confluence"]],
                 threshold="< 1e-12",
                 note="errors: outlet level, mean level, 16-piece chain, chain mass, confluence")
    res.passed = max(res.errors) < 1e-12
    return res


_LINE = {}


def _krogh_line(comm):
    from ..vasculature import verification as vv

    if id(comm) not in _LINE:  # both rows come from the same meshes and solves
        _LINE[id(comm)] = vv.krogh_line(comm)
    return _LINE[id(comm)]


def line_source(comm, corrected: bool = True) -> Result:
    """One vessel (r_v 5 µm) on the axis of a 3-D tissue cylinder, as a line source on P1
    tetrahedra of h = 2…10 r_v, vs the Krogh profile with a Robin wall (Bessel I0/K0)."""
    from ..vasculature.exchange import ALPHA

    r = _krogh_line(comm)
    o = r[ALPHA if corrected else None]
    if corrected:
        res = Result(f"Krogh line source, well model (r_eq = {ALPHA:g} h)", sizes=o["h"], errors=o["l2"],
                     measure="rel L2 at >= 2h", threshold="< 2 %, total < 2 %", convergence=False)
        res.passed = max(o["l2"]) < 0.02 and max(o["total"]) < 0.02
    else:
        well = r[ALPHA]
        res = Result("Krogh line source, no well correction", sizes=o["h"], errors=o["l2"],
                     measure="rel L2 at >= 2h", threshold="worse than the well model", convergence=False)
        res.passed = o["total"][-1] > 5 * well["total"][-1]
    res.note = ("total exchange rel error: " + ", ".join(f"{e:.2e}" for e in o["total"])
                + "; fitted r_eq/h_cell: " + ", ".join(f"{a:.3f}" for a in o["alpha_fit"]))
    return res


def network_mass_balance(comm) -> Result:
    """Per step with a generated network: delivery − uptake − decay = change of tissue drug."""
    from ..vasculature import verification as vv

    r = vv.network_mass_balance(comm)
    res = Result("mass balance per step with a vessel network", errors=[r["mismatch"]], measure="rel mismatch",
                 threshold="< 1e-8")
    res.passed = r["mismatch"] < 1e-8
    return res


CASES = {
    "slab": slab,
    "krogh_dirichlet": lambda comm: krogh(comm, "dirichlet"),
    "krogh_robin": lambda comm: krogh(comm, "robin"),
    "spheroid": spheroid,
    "spheroid_plasma_space": spheroid_plasma_space,
    "spheroid_plasma_time": spheroid_plasma_time,
    "spheroid_plasma_time_tr_bdf2": lambda comm: spheroid_plasma_time(comm, scheme="tr_bdf2"),
    "spheroid_plasma_robin": spheroid_plasma_robin,
    "bolus_uniform_backward_euler": bolus_uniform,
    "bolus_uniform_tr_bdf2": lambda comm: bolus_uniform(comm, "tr_bdf2"),
    "manufactured": manufactured,
    "mass_balance": mass_balance,
    "mass_balance_tr_bdf2": lambda comm: mass_balance(comm, scheme="tr_bdf2"),
    "ecm_hindrance": ecm_hindrance,
    "partition": partition_independence,
    "vessel_flow": vessel_flow,
    "vessel_transit": vessel_transit,
    "line_source_well": line_source,
    "line_source_plain": lambda comm: line_source(comm, corrected=False),
    "network_mass_balance": network_mass_balance,
}


def table(results: list[Result]) -> str:
    lines = [f"{'case':<52} {'sizes (h, µm)':<24} {'error':<40} {'order':<14} {'threshold':<28} result"]
    for r in results:
        sizes = ", ".join(f"{s:g}" for s in r.sizes)
        errs = ", ".join(f"{e:.2e}" for e in r.errors)
        orders = ", ".join(f"{o:.2f}" for o in r.orders) or "-"
        lines.append(f"{r.case:<52} {sizes:<24} {errs:<40} {orders:<14} {r.threshold:<28} "
                     f"{'pass' if r.passed else 'FAIL'}")
        if r.note:
            lines.append(f"    {r.note}")
    return "\n".join(lines)


def main(comm, cases: list[str] = ()) -> int:
    from ..config.spec import ScenarioError

    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ScenarioError(f"--case {unknown[0]}: unknown; cases: {', '.join(CASES)}")
    results = []
    for name, fn in CASES.items():
        if cases and name not in cases:
            continue
        results.append(fn(comm))
        if comm.rank == 0:
            print(table(results[-1:]).splitlines()[-1 if not results[-1].note else -2], flush=True)
    if comm.rank == 0:
        print()
        print(table(results))
        print(f"\n{sum(r.passed for r in results)} passed, {sum(not r.passed for r in results)} failed")
    return 0 if all(r.passed for r in results) else 1
