"""Transport of drugs, survival factor and oxygen through tissue (docs/model.md, Transport; Coupling).

Each species c obeys, on P1 Lagrange elements,

    dc/dt = div(D(x) grad c) + P S_V(x) (Cp - c) - (lam + k N_tot) c + q(x),

stepped by backward Euler (first order, positive) or TR-BDF2 (second order, L-stable; the
``scheme``), with the vessel-wall Robin condition -D dc/dn = P (Cp - c) on `vessel_wall` facets,
zero flux by default on the outer boundary, or a Dirichlet/Robin value per facet tag: fixed, or
following the plasma (c_b = f Cp: the medium around a spheroid, the stroma beyond the domain).
Cp enters as exact means over the step (backward Euler) or its stages (TR-BDF2), so a step
conserves the exact dosed amount whatever its length.

Why it is cheap per step: every term but diffusion is lumped (diagonal), so the system matrix is
A = K + diag(d) with K = the stiffness matrix of D(x), assembled ONCE per species, and d a vector
that changes with dt and N_tot. Both TR-BDF2 stages solve with the backward-Euler matrix of a
step τ = (γ/2) dt, so the two schemes share every piece below. A step writes the new diagonal
into A (O(n), no assembly), builds the right-hand side from precomputed vectors (no assembly),
and solves with a KSP that keeps its AMG preconditioner while only N_tot moved and the step
stays within :data:`PC_REUSE_RATIO` of the one it was built for. Lumping also keeps
backward Euler positive (an M-matrix on non-obtuse meshes) and is what makes the transport mass
balance exact per step.

Units: µm, hour, µM (see :mod:`tme.config.units`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import ufl
from dolfinx import fem
from dolfinx.fem import petsc as fem_petsc
from mpi4py import MPI
from petsc4py import PETSc

from . import compat
from .config.spec import BoundaryValue

#: Time schemes of a transport step: backward Euler (first order, positive) and TR-BDF2 (second
#: order, L-stable).
SCHEMES = ("backward_euler", "tr_bdf2")

#: TR-BDF2's γ = 2 − √2, the one value for which both stages have the same matrix M + (γ/2) dt A
#: (Bank et al. 1985; Hosea & Shampine 1996).
GAMMA = 2.0 - math.sqrt(2.0)
_BDF2_A = 1.0 / (GAMMA * (2.0 - GAMMA))                    # c1 = A c* − B c0 + (γ/2) dt f1
_BDF2_B = (1.0 - GAMMA) ** 2 / (GAMMA * (2.0 - GAMMA))
_W_TR = 1.0 / (2.0 * (2.0 - GAMMA))                        # weight of f0 and f* in the step
# b − b̂ for f at t0, t*, t1, with TR-BDF2's b = (w, w, d) and Hosea & Shampine's third-order
# b̂ = ((1 − w)/3, (3w + 1)/3, d/3), w = √2/4, d = γ/2
_E0, _E_TR, _E1 = (math.sqrt(2.0) - 1.0) / 3.0, -1.0 / 3.0, GAMMA / 3.0
#: Relative Krylov tolerance of the error estimate's filter solves: only the estimate's size
#: matters, and the controller needs it to 10-20 %. Measured on the 106k-dof block of
#: bench/accuracy.py (56 estimates, 1.5 h after the bolus): against filters solved to 1e-8 the
#: estimate's norm is 0.94-1.13 x (its vector within 25 %), and the filter solves cost 0.69 s
#: of a step instead of 1.79 s at 1e-2 (one AMG V-cycle, or 5-10 Jacobi-CG iterations, each).
ESTIMATE_RTOL = 0.2
#: The residual norm of the CG convergence test (PETSc's ``ksp_norm_type``): the true residual,
#: ||b − A x|| <= rtol ||b||. PETSc's default, the preconditioned residual, costs one more
#: preconditioner application per solve with an initial guess (for ||B b||) and one after the
#: last iteration; under AMG it also let the true residual be 2-20x rtol. Measured on the
#: 106k-dof block of bench/accuracy.py (the matrices of all four species at τ = 0.1 and 0.4 h,
#: rtol 1e-5 from the step's initial guess): 0-2 fewer V-cycles per solve, the solution as close
#: or up to 140x closer to the exact one; Jacobi-CG takes the same iterations. The filter solves
#: of the error estimate (rtol 0.2, from 0) take two iterations under a kept hierarchy where they
#: took one: the same two V-cycles.
NORM = "unpreconditioned"
#: How often the error estimate is filtered by (M + τA)⁻¹M: twice, so that a stiff mode's
#: estimate falls like its true error, as 1/(λ dt) (see :meth:`SpeciesSolver._embedded_error`).
FILTERS = 2
#: An AMG hierarchy built for steps of τ₀ preconditions steps of τ within this factor of τ₀
#: (a step-size controller changes τ every step; a BoomerAMG set-up costs about 15 V-cycles of
#: these matrices, a hierarchy built for a step up to 4x off 0.1-0.9 more iterations per solve on
#: the block of bench/accuracy.py).
PC_REUSE_RATIO = 4.0


@dataclass
class Counters:
    """How often the expensive operations ran: the time loop must not add to them."""

    form_compilations: int = 0
    matrix_assemblies: int = 0
    vector_assemblies: int = 0
    pc_setups: int = 0

    def snapshot(self) -> dict:
        return dict(self.__dict__)


COUNTERS = Counters()


def compile_form(expr) -> fem.Form:
    COUNTERS.form_compilations += 1
    return fem.form(expr)


def assemble_vector(form: fem.Form) -> PETSc.Vec:
    """Assemble a linear form into a PETSc vector with owned entries summed across ranks."""
    COUNTERS.vector_assemblies += 1
    vec = fem_petsc.assemble_vector(form)
    vec.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
    return vec


@dataclass
class SpeciesModel:
    """What the transport layer needs to know of one species (all in base units).

    diffusivity: UFL expression or Function, µm²/h (Ogston hindrance already applied).
    decay: λ [1/h]; uptake: k [1/h per unit cell density]; permeability: P [µm/h], used for the
    continuum vessel source P S_V (Cp − c) and the Robin vessel walls.
    vascular_density: S_V [1/µm] as a DG0 Function or None; source: q(x) [µM/h] or None.
    plasma: callable (t0, t1) -> mean plasma level over [t0, t1] in µM, or None (no vessels).
    boundary: outer-boundary values per facet name (Dirichlet, or Robin when `robin` is set); one
    with `plasma` set takes `plasma_fraction` times the mean plasma level of each step as its value.
    wall_facets: facet tag values of the vessel walls (Robin with P and the plasma level).
    """

    name: str
    diffusivity: object
    decay: float = 0.0
    uptake: float = 0.0
    permeability: float = 0.0
    vascular_density: object | None = None
    source: object | None = None
    plasma: Callable[[float, float], float] | None = None
    boundary: dict[str, BoundaryValue] = field(default_factory=dict)
    boundary_facets: dict[str, tuple[int, ...]] = field(default_factory=dict)
    wall_facets: tuple[int, ...] = ()
    initial: float | Callable = 0.0
    # an extra time-dependent source: a callable (test function, dx, ds) -> UFL linear form,
    # re-assembled every step (manufactured solutions only; scenarios never set it)
    time_source: Callable | None = None


class SpeciesSolver:
    """Stepper of one species on a P1 space (see the module docstring).

    scheme: 'backward_euler' or 'tr_bdf2' (:data:`SCHEMES`); estimate: with 'tr_bdf2', compute
    the local error estimate of every step into :attr:`error` [µM per dof]. steady: solve the
    steady problem A c = f at the end of every step instead (a species that relaxes far faster
    than any step: one solve, nothing to estimate), where it has one solution whatever the cell
    density (:attr:`steady` says whether it is used); line_exchange: a vessel network's exchange
    will join the diagonal (a sink the solver cannot see at set-up).
    """

    _instances = 0

    def __init__(self, model: SpeciesModel, V: fem.FunctionSpace, facet_tags, *, lumped: bool = True,
                 solver: str = "auto", amg_threshold: float = 10.0, rtol: float = 1e-10,
                 cell_size: float | None = None, prefix: str | None = None,
                 scheme: str = "backward_euler", estimate: bool = False, steady: bool = False,
                 line_exchange: bool = False):
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")
        if scheme != "backward_euler" and model.time_source is not None:
            raise ValueError("a time_source (manufactured solutions) is stepped by backward Euler only")
        if estimate and (scheme != "tr_bdf2" or not lumped):
            raise ValueError("the error estimate needs scheme 'tr_bdf2' and lumped mass")
        if steady and model.time_source is not None:
            raise ValueError("a quasi-steady species has no time source")
        self.scheme, self.estimate = scheme, estimate
        self.error: np.ndarray | None = None
        self.clipped = 0.0
        self.iterations_estimate = 0
        self.model, self.V = model, V
        self.mesh = V.mesh
        self.comm = self.mesh.comm
        self.lumped = lumped
        self.solver_choice, self.amg_threshold, self.rtol = solver, amg_threshold, rtol
        self.c = fem.Function(V, name=model.name)
        self._set_initial(model.initial)
        u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
        dx = ufl.dx(domain=self.mesh)
        ds = ufl.Measure("ds", domain=self.mesh, subdomain_data=facet_tags)

        def ds_of(tags):
            return sum((ds(int(t)) for t in tags[1:]), ds(int(tags[0])))

        # Dirichlet values on outer tags; Robin values (coefficient, value) on others. A boundary
        # that follows the plasma (plasma: true) splits its value as fixed + weight * Cp, both
        # per dof: the lifting is linear in the value, so it is computed once for the fixed part
        # and once for a unit plasma level, and a step only scales the second by its Cp.
        robin = []
        fdim = self.mesh.topology.dim - 1
        g_fixed, g_plasma = fem.Function(V), fem.Function(V)
        dofs_all = []
        for name, bv in model.boundary.items():
            if bv.plasma and model.plasma is None:
                raise ValueError(f"{model.name}: boundary {name!r} follows the plasma, but the species has none")
            tags = model.boundary_facets[name]
            if bv.robin is None:
                facets = np.concatenate([facet_tags.find(int(t)) for t in tags]) if tags else np.empty(0, np.int32)
                dofs = fem.locate_dofs_topological(V, fdim, facets)
                # the same dof on two boundaries (a corner): the later one wins, on every rank
                g_fixed.x.array[dofs] = 0.0 if bv.plasma else bv.value
                g_plasma.x.array[dofs] = bv.plasma_fraction if bv.plasma else 0.0
                dofs_all.append(dofs)
            else:
                robin.append((bv, tags))
        self.bcs = []
        if dofs_all:
            dofs = np.unique(np.concatenate(dofs_all)).astype(np.int32)
            self.bcs = [fem.dirichletbc(g_fixed, dofs)]
        self.plasma_bc = bool(self.bcs) and bool(np.any([bv.plasma and bv.robin is None
                                                         for bv in model.boundary.values()]))

        # Stiffness matrix: the only matrix ever assembled for this species.
        k_form = compile_form(ufl.inner(model.diffusivity * ufl.grad(u), ufl.grad(v)) * dx)
        self.A = compat.assemble_matrix(k_form, bcs=self.bcs)
        self.A.assemble()
        COUNTERS.matrix_assemblies += 1
        self.K_diag = self.A.getDiagonal()
        # Lifting of the Dirichlet values, once: of the fixed values, and of a unit plasma level.
        self.lift = self.c.x.petsc_vec.duplicate()  # ghosted, as apply_lifting needs
        self.lift.set(0.0)
        self.lift_plasma = self.lift.duplicate()
        self.lift_plasma.set(0.0)
        if self.bcs:
            fem_petsc.apply_lifting(self.lift, [k_form], bcs=[self.bcs])
            self.lift.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
            if self.plasma_bc:
                fem_petsc.apply_lifting(self.lift_plasma, [k_form], bcs=[[fem.dirichletbc(g_plasma, dofs)]])
                self.lift_plasma.ghostUpdate(addv=PETSc.InsertMode.ADD, mode=PETSc.ScatterMode.REVERSE)
        if self.bcs:
            owned = self.bcs[0].dof_indices()
            self.bc_rows = owned[0][: owned[1]].copy()
        else:
            self.bc_rows = np.empty(0, dtype=np.int32)
        self.bc_values = g_fixed.x.array[self.bc_rows].copy()
        self.bc_plasma = g_plasma.x.array[self.bc_rows].copy()

        # Lumped (diagonal) vectors, each a row sum of a weighted mass matrix.
        one = fem.Constant(self.mesh, PETSc.ScalarType(1.0))
        self.m = assemble_vector(compile_form(one * v * dx)).array.copy()
        self.exchange = np.zeros_like(self.m)  # P S_V (volume) + P (vessel walls): multiplies (Cp - c)
        if model.vascular_density is not None and model.permeability > 0:
            self.exchange += model.permeability * assemble_vector(
                compile_form(model.vascular_density * v * dx)).array
        if model.wall_facets and model.permeability > 0:
            self.exchange += model.permeability * assemble_vector(
                compile_form(one * v * ds_of(model.wall_facets))).array
        self.robin_coeff = np.zeros_like(self.m)
        # the diagonal of the last nodal exchange (a vessel network's line source), kept so that
        # the step matrix and a rebuilt preconditioner include it
        self.line_diagonal = np.zeros_like(self.m)
        self._line_source = None
        self.robin_source = np.zeros_like(self.m)
        self.robin_plasma = np.zeros_like(self.m)  # multiplies Cp: Robin boundaries that follow the plasma
        for bv, tags in robin:
            w = assemble_vector(compile_form(one * v * ds_of(tags))).array
            self.robin_coeff += bv.robin * w
            if bv.plasma:
                self.robin_plasma += bv.robin * bv.plasma_fraction * w
            else:
                self.robin_source += bv.robin * bv.value * w
        self.source = np.zeros_like(self.m)
        if model.source is not None:
            self.source += assemble_vector(compile_form(model.source * v * dx)).array
        self.time_source_form = (compile_form(model.time_source(v, dx, ds))
                                 if model.time_source is not None else None)
        self.free = np.ones_like(self.m, dtype=bool)
        self.free[self.bc_rows[self.bc_rows < self.m.size]] = False
        # the consistent mass (lumped_mass: false) enters the matrix; it needs its own copy of K
        self.M = None
        if not lumped:
            m_form = compile_form(u * v * dx)
            self.M = compat.assemble_matrix(m_form, bcs=self.bcs, diagonal=0.0)
            self.M.assemble()
            COUNTERS.matrix_assemblies += 1
            self.K = self.A.copy()
            self.M_diag = self.M.getDiagonal()
            # the right-hand side needs the mass columns of the Dirichlet dofs, which M lacks:
            # M_full (c_old - g_new on those dofs)/dt lifts a boundary value that changes in time
            self.M_rhs = self.M
            if self.bcs:
                self.M_rhs = compat.assemble_matrix(m_form)
                self.M_rhs.assemble()
                COUNTERS.matrix_assemblies += 1

        # quasi-steady where the steady problem has one solution whatever the cells: some sink
        # that does not vanish with them (vessel exchange, decay, a boundary value, a network's
        # line exchange); else stepped in time, and then estimated like the others
        self.steady = steady and (line_exchange or model.decay > 0 or bool(self.comm.allreduce(
            bool(self.bcs) or bool(np.any(self.exchange > 0)) or bool(np.any(self.robin_coeff > 0)), op=MPI.LOR)))
        if self.steady:
            self.estimate = estimate = False
        self.h = cell_size
        self.D_max = self._max_diffusivity()
        self.ksp = PETSc.KSP().create(self.comm)
        # a prefix of its own: options set for one solver never leak into another
        SpeciesSolver._instances += 1
        self.ksp.setOptionsPrefix(prefix or f"tme_{model.name}_{SpeciesSolver._instances}_")
        self.ksp.setOperators(self.A)
        self._dt = None
        self.pc_kind = None
        self.pc_n_tot = None   # the cell density the AMG preconditioner was built at
        self.pc_dt = None      # and the step [hour] it was built for
        self._diag = self.A.createVecLeft()
        self.b = self.A.createVecLeft()
        if estimate:
            self._est_x, self._est_y, self._est_e = (self.A.createVecRight() for _ in range(3))
        self.iterations = 0
        self.last = {}

    # ----------------------------------------------------------------------------------------
    def _set_initial(self, initial):
        if callable(initial):
            self.c.interpolate(initial)
        else:
            self.c.x.array[:] = float(initial)

    def _max_diffusivity(self) -> float:
        D = self.model.diffusivity
        if isinstance(D, fem.Function):
            local = float(np.max(D.x.array)) if D.x.array.size else 0.0
        elif isinstance(D, fem.Constant):
            local = float(D.value)
        elif isinstance(D, (int, float)):
            local = float(D)
        else:  # a UFL expression: its peak over the cells, through a DG0 projection by interpolation
            W = fem.functionspace(self.mesh, ("DG", 0))
            f = fem.Function(W)
            f.interpolate(fem.Expression(D, compat.interpolation_points(W)))
            local = float(np.max(f.x.array)) if f.x.array.size else 0.0
        return self.comm.allreduce(local, op=MPI.MAX)

    def _configure_solver(self, dt: float):
        opts = PETSc.Options()
        p = self.ksp.getOptionsPrefix()
        choice = self.solver_choice
        if choice == "auto":
            ratio = self.D_max * dt / self.h ** 2 if self.h else 0.0
            choice = "amg" if ratio > self.amg_threshold else "jacobi"
        self.pc_kind = choice
        if choice == "direct":
            opts[p + "ksp_type"] = "preonly"
            opts[p + "pc_type"] = "lu"
            opts.delValue(p + "ksp_norm_type")
        else:
            opts[p + "ksp_type"] = "cg"
            opts[p + "ksp_norm_type"] = NORM   # converged at ||b - A x|| <= rtol ||b||
            if choice == "amg":
                # BoomerAMG tuned for these P1 matrices: 2–3x cheaper per step than its defaults
                opts[p + "pc_type"] = "hypre"
                opts[p + "pc_hypre_type"] = "boomeramg"
                opts[p + "pc_hypre_boomeramg_strong_threshold"] = 0.5
                opts[p + "pc_hypre_boomeramg_coarsen_type"] = "HMIS"
                opts[p + "pc_hypre_boomeramg_interp_type"] = "ext+i"
                opts[p + "pc_hypre_boomeramg_P_max"] = 4
                opts[p + "pc_hypre_boomeramg_agg_nl"] = 1
            else:
                opts[p + "pc_type"] = "jacobi"
        self.ksp.setFromOptions()
        self.ksp.setTolerances(rtol=self.rtol, atol=1e-30, max_it=10000)
        self.ksp.setInitialGuessNonzero(choice != "direct")
        self.ksp.getPC().setReusePreconditioner(False)

    def diagonal(self, tau: float, n_tot: np.ndarray | None) -> np.ndarray:
        """The lumped diagonal terms of the matrix M/τ + A of a solve over τ [hour] (owned dofs)."""
        m = self.model
        d = self.exchange + self.robin_coeff + m.decay * self.m + self.line_diagonal
        if self.M is None:
            d = d + self.m / tau
        if m.uptake and n_tot is not None:
            d = d + m.uptake * self.m * n_tot[: self.m.size]
        d[~self.free] = 0.0
        return d

    def _keeps_hierarchy(self, tau: float) -> bool:
        """May the AMG hierarchy built for steps of :attr:`pc_dt` precondition steps of ``tau``?

        M/τ + A changes smoothly with τ: within a factor :data:`PC_REUSE_RATIO` the old
        hierarchy costs less than an iteration per solve, against a set-up of about 15
        V-cycles. Where the solver choice itself would change (``auto`` crossing
        ``amg_threshold``), the solver is configured afresh."""
        if self.pc_kind != "amg" or self.pc_dt is None or self._dt is None:
            return False
        if self.solver_choice == "auto" and not (self.h and self.D_max * tau / self.h ** 2 > self.amg_threshold):
            return False
        return max(tau / self.pc_dt, self.pc_dt / tau) <= PC_REUSE_RATIO

    def _matrix(self, tau: float, n_tot: np.ndarray | None) -> bool:
        """Write M/τ + A for cell density ``n_tot``: a diagonal write, and a copy and an AXPY
        of K when τ changed (consistent mass); never an assembly. True when τ changed."""
        new_tau = tau != self._dt
        keep = not new_tau or self._keeps_hierarchy(tau)
        if new_tau:
            self.step_matrix(tau, n_tot, keep_preconditioner=keep)
        else:
            self._diag.array[:] = self.base_diag + self.diagonal(tau, n_tot)
            self.A.setDiagonal(self._diag, addv=PETSc.InsertMode.INSERT_VALUES)
        # Re-use the preconditioner while only N_tot moved, or τ moved within PC_REUSE_RATIO of
        # the step it was built for: its hierarchy stays a good one.
        self.ksp.getPC().setReusePreconditioner(keep and self.pc_kind == "amg")
        if not keep or self.pc_kind != "amg":
            COUNTERS.pc_setups += 1
        if not keep and self.pc_kind == "amg":
            # a reused preconditioner is part of the state: a resumed run rebuilds it from this
            self._build_preconditioner()
            self.pc_n_tot = None if n_tot is None else n_tot[: self.m.size].copy()
            self.pc_dt = tau
        self._dt = tau
        return new_tau

    def _level(self, t: float) -> float:
        """The plasma level at ``t`` (just after any dose at ``t``) [µM]."""
        return self.model.plasma(t, t) if self.model.plasma is not None else 0.0

    def _sources(self, level: float, nodal: np.ndarray | None) -> np.ndarray:
        """The right-hand-side rate [µM·µm^d/h] of the sources at plasma level ``level`` and
        nodal source ``nodal`` [µM/h]: the vessels and plasma-Robin boundaries, the fixed Robin
        values, the constant source, and the nodal one (lumped). Linear in (level, nodal)."""
        src = level * (self.exchange + self.robin_plasma) + self.robin_source + self.source
        if nodal is not None:
            src = src + self.m * nodal[: self.m.size]
        if self._line_source is not None:
            src = src + self._line_source
        if self.time_source_form is not None:
            src = src + assemble_vector(self.time_source_form).array
        return src

    def _solve(self, u: np.ndarray, level_bc: float, src: np.ndarray, tau: float, t1: float) -> int:
        """Solve (M/τ + A) c = (M/τ) u + src with c = the boundary values at plasma level
        ``level_bc`` on the Dirichlet dofs, into ``self.c`` (its current value is the initial
        guess). The backward-Euler step and both TR-BDF2 stages are this solve."""
        b = self.b.array
        g = self.bc_values + level_bc * self.bc_plasma
        if self.M is None:
            b[:] = self.m / tau * u
        else:
            # the mass columns of the Dirichlet dofs lift a boundary value that changes in time
            tmp = self.M_rhs.createVecRight()
            tmp.array[:] = u
            tmp.array[self.bc_rows] -= g
            self.M_rhs.mult(tmp, self.b)
            b[:] = self.b.array / tau
        b += src + self.lift.array
        if self.plasma_bc:
            b += level_bc * self.lift_plasma.array
        b[self.bc_rows] = g
        # written through a NumPy view, which PETSc sees only when the view is released: until
        # then it would take ||b|| for the convergence test from its cache (0 for a new vector)
        self.b.stateIncrease()
        self.ksp.solve(self.b, self.c.x.petsc_vec)
        reason = self.ksp.getConvergedReason()
        if reason < 0:
            raise RuntimeError(f"{self.model.name}: linear solver diverged at t={t1:g} h "
                               f"(PETSc reason {reason}); try a smaller time.dt")
        self.c.x.scatter_forward()
        return self.ksp.getIterationNumber()

    def step(self, t0: float, t1: float, n_tot: np.ndarray | None = None,
             nodal_source: np.ndarray | tuple[np.ndarray, np.ndarray] | None = None,
             nodal_exchange: tuple[np.ndarray, np.ndarray] | None = None) -> int:
        """Advance c from t0 to t1 [hour] with the solver's scheme; returns the Krylov iterations.

        n_tot: cell density at the dofs (owned first), constant over the step; nodal_source: a
        source q [µM/h] at the dofs that changes from step to step (e.g. immune recruitment
        driven by a drug), lumped: one array (constant over the step) or the pair (q at t0,
        q at t1), linear in between; nodal_exchange: (d [µm³/h], b [µM·µm³/h]) on the owned
        dofs, an exchange b − d c already integrated over each dof's support (a vessel
        network's line source), constant over the step: d joins the diagonal, b the sources.
        """
        n = self.m.size
        if nodal_exchange is not None:
            self.line_diagonal[:] = nodal_exchange[0][:n]
        elif self.line_diagonal.any():
            self.line_diagonal[:] = 0.0
        self._line_source = None if nodal_exchange is None else nodal_exchange[1][:n]
        if isinstance(nodal_source, tuple):
            q0, q1 = nodal_source
        else:
            q0 = q1 = nodal_source
        dt = t1 - t0
        if self.steady:
            # the steady problem at t1: the matrix without M/dt (dt → ∞), the sources at t1
            self._matrix(math.inf, n_tot)
            cp = self._level(t1)
            c_old = self.c.x.array[:n].copy()
            self.iterations = self._solve(c_old, cp, self._sources(cp, q1), math.inf, t1)
            c_mean = self.c.x.array[:n]
            self.error = None
        elif self.scheme == "backward_euler":
            self._matrix(dt, n_tot)
            # Cp is the mean plasma level over [t0, t1], for the vessels and the plasma
            # boundaries alike: a Dirichlet value c = Cp is the limit of the Robin inflow
            # P (Cp - c) as P grows, so a plasma boundary sees the level the vessels see (the
            # exact mean of the step)
            cp = self.model.plasma(t0, t1) if self.model.plasma is not None else 0.0
            c_old = self.c.x.array[:n].copy()
            self.iterations = self._solve(c_old, cp, self._sources(cp, q1), dt, t1)
            c_mean = self.c.x.array[:n]
            self.error = None
        else:
            cp, c_old, c_mean = self._tr_bdf2(t0, t1, n_tot, q0, q1)
        self.last = {"t0": t0, "t1": t1, "plasma": cp, "c_old": c_old,
                     "n_tot": None if n_tot is None else n_tot[:n].copy(), "c_mean": c_mean.copy(),
                     "nodal_exchange": nodal_exchange}
        return self.iterations

    def _tr_bdf2(self, t0, t1, n_tot, q0, q1):
        """One TR-BDF2 step (docs/model.md, "Time integration"): a trapezoidal stage to
        t* = t0 + γ dt, then BDF2 through t0, t*, t1, both with the matrix M/τ + A, τ = γ dt/2.

        The trapezoidal stage is a backward-Euler solve over τ followed by the extrapolation
        c* = 2 x − c0, so neither stage multiplies by A. Sources enter as exact means: the
        trapezoidal stage takes the mean over [t0, t*]; the BDF2 stage takes (2 − γ) times the
        mean over [t*, t1] minus (1 − γ) times the mean over [t0, t*], which is the source at t1
        to second order and makes the step's total the exact integral over [t0, t1] (so a dose
        enters exactly). Dirichlet values are point values: c* = g(t*), c1 = g(t1).
        Returns (mean plasma level over the step, c at t0, the step's effective mean of c).
        """
        n = self.m.size
        dt = t1 - t0
        tau = 0.5 * GAMMA * dt
        self._matrix(tau, n_tot)
        ts = t0 + GAMMA * dt
        plasma = self.model.plasma
        L1 = plasma(t0, ts) if plasma is not None else 0.0
        L2 = plasma(ts, t1) if plasma is not None else 0.0
        g0, gs, g1 = self._level(t0), self._level(ts), self._level(t1)
        arr = self.c.x.array
        # the field at t0 takes the boundary values of t0 (after a dose at t0: the new level)
        arr[self.bc_rows] = self.bc_values + g0 * self.bc_plasma
        c_old = arr[:n].copy()
        if q0 is not None:
            qs = q0 + (0.5 * GAMMA) * (q1 - q0)   # mean of the linear q over [t0, t*]
        else:
            qs = None
        src1 = self._sources(L1, qs)
        its = self._solve(c_old, 0.5 * (g0 + gs), src1, tau, t1)
        c_star = 2.0 * arr[:n] - c_old
        u = _BDF2_A * c_star - _BDF2_B * c_old
        # initial guess: the line through c0 and c* extended to t1
        arr[:n] = c_old + (c_star - c_old) / GAMMA
        src2 = self._sources((2.0 - GAMMA) * L2 - (1.0 - GAMMA) * L1, q1)
        its += self._solve(u, g1, src2, tau, t1)
        c_new = arr[:n].copy()
        self.error = (self._embedded_error(c_old, c_star, c_new, src1, src2, g0, dt, tau)
                      if self.estimate else None)
        # the exact solution is >= 0, so an undershoot below 0 is part of the local error (the
        # estimate above measured it); it is removed, and the amount added recorded
        neg = c_new < 0.0
        self.clipped = float(-(self.m[neg] @ c_new[neg])) if neg.any() else 0.0
        arr[:n][neg] = 0.0
        self.c.x.scatter_forward()   # on every rank: a rank without undershoots has ghosts to update
        self.iterations = its
        c_mean = _W_TR * (c_old + c_star) + (0.5 * GAMMA) * c_new
        return L1 * GAMMA + L2 * (1.0 - GAMMA), c_old, c_mean

    def _embedded_error(self, c_old, c_star, c_new, src1, src2, g0, dt, tau) -> np.ndarray:
        """The local error estimate of a TR-BDF2 step [µM] (owned dofs): the difference to the
        embedded third-order solution of Hosea & Shampine (1996), dt Σ (b_i − b̂_i) f_i, filtered
        by (M + τ A)^{-1} M so that stiff modes (fast diffusion, strong uptake) give a bounded
        estimate.

        The sources enter the step as exact integrals (see :meth:`_tr_bdf2`), which is what a
        third-order solution would have too; so only the c-dependent part −A c of f enters:
        −A c0 from one MatMult, −A c* and −A c1 from the two stage equations. (With the point
        values of the sources in f the estimate would describe the scheme with point sources,
        whose error is larger: 1.6× on a decaying bolus.)

        Filtered twice (:data:`FILTERS`): for a mode of M⁻¹A with rate λ and amplitude δ at t0,
        z = λ dt, TR-BDF2's true error tends to 4.8 δ/z as z grows (it is L-stable: the mode
        is damped, and the exact one too); the raw difference grows as z, once filtered it
        tends to 1.6 δ whatever the step (so a stiff transient, such as oxygen relaxing in 30 s
        to the N_tot the reactions just changed, would hold every step to the tolerance however
        small its true error), twice filtered it is 5.4 δ/z. On the test equation the twice
        filtered estimate is 0.74–1.13 × the true error for every z (0.97–1.0 for z ≤ 0.1, where
        the 1/(1 + τλ) of the second filter is a higher-order term), the once filtered one
        1.0–330 ×. Each filter is one more solve with the step's matrix and preconditioner, to
        the loose :data:`ESTIMATE_RTOL`: only the size of the estimate matters."""
        n = self.m.size
        m = self.m
        # (A c0)_f = (A_τ c0)_f − m c0/τ + K_fb g0: the assembled matrix lacks the Dirichlet
        # columns, whose product with g0 is minus the lifting
        x = self._est_x
        x.array[:n] = c_old
        self.A.mult(x, self._est_y)
        Ac0 = self._est_y.array[:n] - m / tau * c_old - self.lift.array
        if self.plasma_bc:
            Ac0 = Ac0 - g0 * self.lift_plasma.array
        # dt A c* and dt A c1 from M(c* − c0) = γ dt src1 − τ A (c0 + c*) and
        # M (c1 − A c* + B c0) = τ (src2 − A c1)
        hAc0 = dt * Ac0
        hAcs = 2.0 * dt * src1 - (2.0 / GAMMA) * m * (c_star - c_old) - hAc0
        hAc1 = dt * src2 - (2.0 / GAMMA) * m * (c_new - _BDF2_A * c_star + _BDF2_B * c_old)
        Mest = -(_E0 * hAc0 + _E_TR * hAcs + _E1 * hAc1)
        Mest[self.bc_rows] = 0.0
        b = self.b
        b.array[:] = Mest / tau
        ksp = self.ksp
        ksp.setTolerances(rtol=ESTIMATE_RTOL, atol=1e-30, max_it=10000)
        ksp.setInitialGuessNonzero(False)
        its = 0
        try:
            for _ in range(FILTERS):
                ksp.solve(b, self._est_e)
                its += ksp.getIterationNumber()
                b.array[:] = m / tau * self._est_e.array[:n]
                b.array[self.bc_rows] = 0.0
        finally:
            ksp.setTolerances(rtol=self.rtol, atol=1e-30, max_it=10000)
            ksp.setInitialGuessNonzero(self.pc_kind != "direct")
        self.iterations_estimate = its
        return self._est_e.array[:n].copy()

    # ----------------------------------------------------------------------------------------
    @property
    def reuses_preconditioner(self) -> bool:
        """Is the AMG preconditioner carried from step to step (so part of a checkpoint)?"""
        return self._dt is not None and self.pc_kind == "amg"

    def restore_preconditioner(self, dt: float, n_tot: np.ndarray | None) -> None:
        """Rebuild the preconditioner a resumed run's next step reuses: the one the saved run
        built for solves over ``dt`` [hour] (:attr:`pc_dt`: the step of backward Euler, γ/2 of
        it for TR-BDF2) at cell density ``n_tot`` (owned dofs), so that the resumed run repeats
        the saved one's solves exactly (and, mid-run, the preconditioner a vessel collapse
        calls for: the same call, so that both runs build the same one)."""
        self.step_matrix(dt, n_tot)
        self._build_preconditioner()
        self.pc_n_tot = None if n_tot is None else np.array(n_tot[: self.m.size])
        self.pc_dt = dt

    def _build_preconditioner(self) -> None:
        """Build the preconditioner of the matrix as it is now. PETSc builds one lazily, at its
        first application after the matrix changed: a KSP set up once skips it in
        ``KSP.setUp()``, and a solve whose initial guess already meets the tolerance applies
        none. A hierarchy carried to later steps must be the one of the step that asked for it
        (which a resumed run rebuilds from :attr:`pc_dt` and :attr:`pc_n_tot`), so it is built
        here."""
        self.ksp.setUp()
        self.ksp.getPC().setUp()

    def step_matrix(self, dt: float, n_tot: np.ndarray | None, keep_preconditioner: bool = False) -> None:
        """Configure the solver for solves over ``dt`` [hour] (M/dt + A) and write that
        matrix at cell density ``n_tot``; ``keep_preconditioner``: the solver stays configured
        as it is and its AMG hierarchy is kept (:meth:`_keeps_hierarchy`)."""
        if self.M is not None:
            # A = K + M/dt; same sparsity, so a copy and an AXPY, not an assembly
            self.K.copy(self.A, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
            self.A.axpy(1.0 / dt, self.M, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
            self.base_diag = self.K_diag.array + self.M_diag.array / dt
        else:
            self.base_diag = self.K_diag.array.copy()
        if not keep_preconditioner:
            self._configure_solver(dt)
        self._diag.array[:] = self.base_diag + self.diagonal(dt, n_tot)
        self.A.setDiagonal(self._diag, addv=PETSc.InsertMode.INSERT_VALUES)
        self.ksp.getPC().setReusePreconditioner(keep_preconditioner)
        self._dt = dt

    def balance(self) -> dict:
        """Amounts over the last step: change, vessel inflow (continuum, walls and any nodal
        exchange), uptake, decay, boundary outflow.

        change = inflow − uptake − decay − outflow + source holds to solver tolerance (lumped mass,
        no Dirichlet boundary).
        """
        if self.bcs or self.M is not None:
            raise ValueError("the balance is defined for lumped mass without Dirichlet boundaries")
        L = self.last
        dt = L["t1"] - L["t0"]
        n = self.m.size
        # the sinks act on the step's effective mean of c (c at t1 for backward Euler; for
        # TR-BDF2 the stage weights), and any undershoot removed at the end is added back
        c = L["c_mean"]
        c_end = self.c.x.array[:n]
        m = self.model
        uptake = m.uptake * self.m * L["n_tot"] if (m.uptake and L["n_tot"] is not None) else 0.0 * c
        parts = {
            # a quasi-steady species stores nothing: its fluxes balance at t1
            "change": 0.0 if self.steady else float(self.m @ (c_end - L["c_old"])) - self.clipped,
            "inflow": dt * float(self.exchange @ (L["plasma"] - c)) + (
                dt * float(L["nodal_exchange"][1].sum() - L["nodal_exchange"][0] @ c)
                if L.get("nodal_exchange") is not None else 0.0),
            "uptake": dt * float(np.sum(uptake * c)),
            "decay": dt * m.decay * float(self.m @ c),
            "outflow": dt * float(self.robin_coeff @ c - self.robin_source.sum()
                                  - L["plasma"] * self.robin_plasma.sum()),
            "source": dt * float(self.source.sum()),
        }
        return {k: self.comm.allreduce(v, op=MPI.SUM) for k, v in parts.items()}


# --------------------------------------------------------------------------------------------
# Set-up checks that need the mesh and the tissue fields


def check_entry(scenario, domain, tissue_fields) -> None:
    """Refuse, before the first step, a drug that would do nothing silently.

    - a boundary with ``plasma: true`` on a species that has no plasma level (the survival
      factor, immune effectors), or on a drug whose plasma stays 0 all run (never dosed, and no
      constant pk.level);
    - a drug with a plasma level (dosed in some line, or a constant pk.level > 0) that has no way
      into the tissue: no vessel_wall facets with a permeability, S_V = 0 everywhere (or no
      permeability), no boundary with a value or ``plasma: true``, and a zero initial value. Its
      concentration would stay 0 all run while its plasma cycles.

    Every quantity is reduced over all ranks first, so every rank raises the same one-line
    ScenarioError (no rank is left waiting in a collective).
    """
    from .config.spec import ScenarioError

    comm = domain.mesh.comm
    for key, spec in (("survival_factor", scenario.survival_factor), ("immune", scenario.immune)):
        if not spec.enabled:
            continue
        for name, bv in spec.boundary.items():
            if bv.plasma:
                raise ScenarioError(f"{key}.boundary.{name}.plasma: the {key.replace('_', ' ')} has no "
                                    "plasma level to follow (only drugs and oxygen have one); give a value")
    # oxygen's plasma is its blood level: a plasma boundary on it is always meaningful

    dosed = {d.drug for line in scenario.treatment.lines for d in line.regimen}
    ft = domain.facet_tags
    wall_tags = domain.facets.get("vessel_wall", ())
    n_wall = comm.allreduce(int(sum(ft.find(int(t)).size for t in wall_tags)), op=MPI.SUM)
    sv = tissue_fields.vascular_density.x.array
    sv_max = comm.allreduce(float(np.max(sv)) if sv.size else 0.0, op=MPI.MAX)
    for name, d in scenario.drugs.items():
        key = f"drugs.{name}"
        constant = d.pk.model == "constant"
        has_plasma = name in dosed or (constant and d.pk.level > 0)
        for bname, bv in d.boundary.items():
            if bv.plasma and not has_plasma:
                why = ("its pk.level is 0" if constant else
                       "it is dosed in no line of treatment.lines")
                raise ScenarioError(f"{key}.boundary.{bname}.plasma: the plasma level of {name!r} is 0 "
                                    f"all run ({why}), so this boundary stays at 0")
        if not has_plasma:
            continue
        ways = []
        if d.permeability > 0 and n_wall > 0:
            ways.append("vessel walls")
        if d.permeability > 0 and sv_max > 0:
            ways.append("vascular density")
        if d.permeability > 0 and getattr(scenario, "vasculature", None) is not None:
            ways.append("vessel network")
        for bv in d.boundary.values():
            if bv.robin is not None and bv.robin <= 0:
                continue  # a Robin coefficient of 0 is a closed boundary
            if bv.plasma or bv.value > 0:
                ways.append("boundary")
        if d.initial > 0:
            ways.append("initial value")
        if ways:
            continue
        source = "is dosed" if name in dosed else "has a constant pk.level"
        missing = [f"vessel_wall facets (the mesh has {n_wall}) with {key}.permeability "
                   f"(now {d.permeability / 3600:g} um/s)",
                   f"tissue.vascular_density > 0 somewhere (max {sv_max:g} 1/um) with {key}.permeability",
                   f"{key}.boundary with a value > 0 or plasma: true (e.g. outer: {{plasma: true}})",
                   f"{key}.initial > 0"]
        raise ScenarioError(f"{key}: {name!r} {source} but has no way into the tissue, so it would "
                            f"stay 0 all run; ways in: {'; '.join(missing)}")
