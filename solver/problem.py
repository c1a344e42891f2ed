"""The problem: a validated scenario built into fields and solvers, stepped in time, written out.

    scenario -> domain (mesh, tags) -> tissue fields -> species (drugs, factor, oxygen, immune)
             -> clones -> protocol -> Strang-split steps -> outputs

``Problem(scenario, comm, out)`` follows the lifecycle declare → build → run:
:meth:`Problem.initialise` builds everything (mesh, tissue, species, clones, protocol, clock)
and checks every name the scenario uses before the first step, writing nothing; with an output
directory it then opens the outputs. :meth:`Problem.iterate` takes one step,
:meth:`Problem.run` steps to the end. All that changes in time is in ``problem.state`` (a
:class:`tme.state.State`) and in the fields; a checkpoint saves both and
:meth:`Problem.resume` continues from one, on any number of ranks.

One step from t to t + dt (docs/model.md, Coupling): a half step of the pointwise clone reactions with the
concentrations at t, a full transport step of every species (backward Euler or TR-BDF2) with the
cell density after that half step, and a second half step of reactions with the new
concentrations. The step clock (:mod:`tme.clock`) lands steps exactly on doses, infusion ends,
assessments, outputs, snapshots, checkpoints and the end; with ``time.tolerance`` its controller
sizes each step from the step's error estimates and redoes a rejected one from the saved fields.

SIGINT, SIGTERM and SIGUSR1 (Slurm's ``--signal``) on any rank stop the run at the end of the
current step on every rank: a checkpoint is written, the files closed, and the run reports where
it stopped and how to resume. Ranks agree on it within the one reduction each step already does.

Units: µm, hour, µM; densities are volume fractions.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time as wallclock
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ufl
from dolfinx import fem
from mpi4py import MPI

from . import log

from .mesh import build as meshes

from . import outputs

from . import provenance

from . import tissue
from .clock import Clock, Controller, error_norm, regular
from .config.clones import check_references as check_clones
from .cells.kernel import KernelError
from .pharmacology import DRUG_CLASSES
from .outputs import checkpoint as checkpoints
from .outputs.checkpoint import Checkpoint
from .outputs.fields import FieldOutput, frame_bytes, mesh_bytes
from .outputs.memory import MemoryFields
from .outputs import pictures
from .outputs.series import EventLog, TimeSeries
from .pk import PlasmaSet
from .protocol import Event, Protocol
from .config.treatment import check_references as check_treatment
from .cells.reactions import CloneReactions, hill
from .config.scenario import Scenario, resolved_yaml
from .config.spec import ScenarioError, located
from .state import State
from .transport import COUNTERS, SpeciesModel, SpeciesSolver, assemble_vector, check_entry, compile_form
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # a run without a vessel network never imports the network code (scipy)
    from .vasculature.coupling import VascularCoupling

#: The signals that stop a run cleanly; the exit status is 128 + the signal's number.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class RunError(ScenarioError):
    """A run that cannot go on (a NaN or a negative density, a checkpoint that cannot be
    resumed); the message is one line."""


class RunComplete(RunError):
    """``--resume`` of a run that has already finished: nothing to do (not a failure)."""


# --------------------------------------------------------------------------------------------
# The model: what is built from a scenario before the first step


@dataclass
class Species:
    """A transported species and how it is reported; ec50 [µM] for drugs, whose exposure maps
    are ``auc`` [µM·hour] and ``above`` (time above EC50) [hour]."""

    name: str
    solver: SpeciesSolver
    kind: str  # 'drug', 'factor', 'oxygen', 'immune'
    ec50: float | None = None
    auc: fem.Function | None = None
    above: fem.Function | None = None


@dataclass
class Model:
    """Everything built from a scenario before the first step."""

    scenario: Scenario
    domain: meshes.Domain
    tissue: tissue.TissueFields
    V: fem.FunctionSpace
    plasma: PlasmaSet
    species: list[Species] = field(default_factory=list)
    n_tot: fem.Function | None = None
    region: fem.Function | None = None
    mass: np.ndarray | None = None                # lumped dof volumes (owned) [µm^d]
    region_mass: dict[str, np.ndarray] = field(default_factory=dict)
    clone_names: list[str] = field(default_factory=list)
    N: np.ndarray | None = None                   # (K, n_local incl. ghosts) clone densities
    clone_fields: list[fem.Function] = field(default_factory=list)
    resistant: np.ndarray | None = None           # (K,) bool
    resistant_field: fem.Function | None = None
    reactions: CloneReactions | None = None
    motility: list[SpeciesSolver] = field(default_factory=list)
    sv_dofs: np.ndarray | None = None             # S_V at the dofs (immune recruitment) [1/µm]
    vessels: VascularCoupling | None = None       # the vessel network and its exchange
    vessel_dofs: np.ndarray | None = None         # perfused vessel length per dof volume [1/µm²]
    setup_seconds: float = 0.0                    # wall time of build()

    def describe(self) -> str:
        """One line: the mesh, the unknowns and how long the set-up took."""
        d = self.domain
        return (f"mesh: {d.dim}-D, {d.mesh.topology.index_map(d.dim).size_global} cells, "
                f"{self.V.dofmap.index_map.size_global} dofs per field, regions: {', '.join(d.regions)}; "
                f"{d.mesh.comm.size} rank(s); set up in {self.setup_seconds:.2f} s")

    def get(self, kind: str) -> Species | None:
        return next((s for s in self.species if s.kind == kind), None)

    @property
    def drugs(self) -> list[Species]:
        return [s for s in self.species if s.kind == "drug"]


def diffusivity(D0: float, radius: float, tf: tissue.TissueFields, fibre_radius: float, name: str):
    """D(x) = D0 exp(−√φ (1 + r/r_f)) as a DG0 function (Ogston hindrance)."""
    D = fem.Function(tf.ecm_fraction.function_space, name=f"D_{name}")
    D.x.array[:] = D0 * tissue.hindrance(tf.ecm_fraction.x.array, radius, fibre_radius)
    return D


def _lumped(V, weight, dx) -> np.ndarray:
    """Row sums of the mass matrix weighted by ``weight`` (owned dofs)."""
    v = ufl.TestFunction(V)
    return assemble_vector(compile_form(weight * v * dx)).array.copy()


def _to_dofs(V, cell_values: fem.Function, mass: np.ndarray) -> np.ndarray:
    """A DG0 field at the P1 dofs, by lumped L2 projection (exact for constants), with ghosts."""
    f = fem.Function(V)
    n = mass.size
    f.x.array[:n] = _lumped(V, cell_values, ufl.dx) / np.where(mass > 0, mass, 1.0)
    f.x.scatter_forward()
    return f.x.array.copy()


# --------------------------------------------------------------------------------------------
# The species table: one row per kind of transported species


@dataclass(frozen=True)
class _Context:
    """What a species row needs to describe its transport."""

    scenario: Scenario
    domain: meshes.Domain
    tissue: tissue.TissueFields
    plasma: PlasmaSet

    def hindered(self, spec, name):
        return diffusivity(spec.diffusivity, spec.radius, self.tissue, self.scenario.tissue.fibre_radius, name)

    def boundary(self, spec, key):
        return dict(boundary=dict(spec.boundary),
                    boundary_facets={n: self.domain.facet(n, f"{key}.boundary.{n}") for n in spec.boundary})

    def vessels(self, spec, plasma):
        return dict(permeability=spec.permeability, vascular_density=self.tissue.vascular_density,
                    plasma=plasma, wall_facets=self.domain.facets.get("vessel_wall", ()))


@dataclass(frozen=True)
class SpeciesKind:
    """A kind of transported species: which of the scenario's sections declare one
    (``entries``: scenario -> [(name, key, spec)]), and its transport (``model``)."""

    kind: str
    entries: Callable[[Scenario], list]
    model: Callable[[_Context, str, str, object], SpeciesModel]


def _if_enabled(section: str, name: str):
    return lambda sc: [(name, section, getattr(sc, section))] if getattr(sc, section).enabled else []


def _mean_of(plasma: PlasmaSet, name: str):
    return lambda t0, t1: plasma.means(t0, t1)[name]


SPECIES = (
    SpeciesKind("drug", lambda sc: [(n, f"drugs.{n}", d) for n, d in sc.drugs.items()],
                lambda c, name, key, d: SpeciesModel(
                    name=name, diffusivity=c.hindered(d, name), decay=d.decay, uptake=d.uptake,
                    initial=d.initial, **c.vessels(d, _mean_of(c.plasma, name)), **c.boundary(d, key))),
    SpeciesKind("factor", _if_enabled("survival_factor", "factor"),
                lambda c, name, key, f: SpeciesModel(
                    name=name, diffusivity=c.hindered(f, name), decay=f.decay, uptake=f.uptake,
                    source=f.secretion * c.tissue.caf_density, initial=f.initial, **c.boundary(f, key))),
    SpeciesKind("oxygen", _if_enabled("oxygen", "oxygen"),
                lambda c, name, key, o: SpeciesModel(
                    name=name, diffusivity=c.hindered(o, name), decay=o.decay, uptake=o.consumption,
                    initial=o.blood_level if o.initial is None else o.initial,
                    **c.vessels(o, lambda t0, t1, level=o.blood_level: level), **c.boundary(o, key))),
    SpeciesKind("immune", _if_enabled("immune", "immune"),
                lambda c, name, key, e: SpeciesModel(
                    name=name, diffusivity=fem.Constant(c.domain.mesh, e.diffusivity), decay=e.clearance,
                    initial=e.initial, **c.boundary(e, key))),
)


def build(scenario: Scenario, comm, max_memory: float | None = None) -> Model:
    """Mesh, tissue, species and clones of ``scenario``; checks every name it uses against the
    mesh. Writes nothing.

    The mesh is refused before it is built when its estimated memory exceeds ``max_memory``
    [bytes] (default: the memory available on the job's machines).
    """
    t0 = wallclock.perf_counter()
    meshes.check_size(scenario.mesh, comm, max_memory)
    domain = meshes.build(scenario.mesh, comm)
    tf = tissue.build(scenario.tissue, domain)
    V = fem.functionspace(domain.mesh, ("Lagrange", 1))
    _check_regions(scenario, domain)
    check_entry(scenario, domain, tf)  # every drug has a way into the tissue (needs mesh + tissue)
    plasma = PlasmaSet(scenario.drugs)
    model = Model(scenario, domain, tf, V, plasma)
    num = scenario.numerics
    h = domain.cell_size()
    nloc = V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts
    one = fem.Constant(domain.mesh, 1.0)
    model.mass = _lumped(V, one, ufl.dx)
    dx_tags = ufl.Measure("dx", domain=domain.mesh, subdomain_data=domain.cell_tags)
    for name, tag in domain.regions.items():
        model.region_mass[name] = _lumped(V, one, dx_tags(tag))

    model.n_tot = fem.Function(V, name="total")
    model.n_tot.x.array[:] = 1.0  # cells fill the tissue unless clones say otherwise

    ctx = _Context(scenario, domain, tf, plasma)
    for kind in SPECIES:
        for name, key, spec in kind.entries(scenario):
            steady = kind.kind == "oxygen" and scenario.oxygen.quasi_steady
            solver = SpeciesSolver(kind.model(ctx, name, key, spec), V, domain.facet_tags,
                                   lumped=num.lumped_mass, solver=num.solver,
                                   amg_threshold=num.amg_threshold, rtol=scenario.linear_rtol,
                                   cell_size=h, scheme=scenario.scheme,
                                   estimate=scenario.time.tolerance is not None,
                                   steady=steady, line_exchange=steady and scenario.vasculature is not None)
            sp = Species(name, solver, kind.kind, getattr(spec, "ec50", None) if kind.kind == "drug" else None)
            if kind.kind == "drug":
                sp.auc = fem.Function(V, name=f"auc_{name}")
                sp.above = fem.Function(V, name=f"time_above_ec50_{name}")
            model.species.append(sp)
    if model.get("immune") is not None:
        model.sv_dofs = _to_dofs(V, tf.vascular_density, model.mass)
    if scenario.vasculature is not None:
        _build_vessels(model, h)

    # region tags as a DG0 field, for ParaView
    W = tf.ecm_fraction.function_space
    model.region = fem.Function(W, name="region")
    ct = domain.cell_tags
    ncells = domain.mesh.topology.index_map(domain.dim).size_local
    keep = ct.indices < ncells
    model.region.x.array[ct.indices[keep]] = ct.values[keep]
    model.region.x.scatter_forward()

    cl = scenario.clones
    if cl is not None and cl.clones:
        _build_clones(model, cl, nloc, domain, num, h)
    for s in model.species:
        if s.solver.steady:
            _settle(model, s, 0.0)   # a quasi-steady species starts at its steady state
    model.setup_seconds = wallclock.perf_counter() - t0
    return model


def _line_exchange(model: Model, s: Species, t0: float, t1: float):
    """Species ``s``'s nodal exchange with the vessel network over t0 → t1, or None."""
    if model.vessels is not None and s.name in model.vessels.species:
        return model.vessels.exchange(s.name, s.solver.c.x.array, t0, t1)
    return None


def _settle(model: Model, s: Species, t: float) -> None:
    """Solve quasi-steady species ``s`` at time ``t`` for the cell density of now."""
    s.solver.step(t, t, model.n_tot.x.array, nodal_exchange=_line_exchange(model, s, t, t))


def _build_vessels(model: Model, h: float):
    """The vessel network of ``scenario.vasculature``: its flow, and the exchange of every drug
    (inlet level: its plasma level) and of oxygen (inlet level: the blood level) with the tissue."""
    sc = model.scenario
    spec = sc.vasculature
    from .vasculature import coupling as vessels

    msh = model.domain.mesh
    net = vessels.build(spec, msh, getattr(sc.mesh, "regions", []))
    vessels.check_inside(net, msh)
    vc = vessels.VascularCoupling(net, spec, model.V, spacing=h / 4.0)
    for s in model.species:
        if s.kind == "drug":
            vc.add(s.name, sc.drugs[s.name].permeability, s.solver.model.diffusivity, _mean_of(model.plasma, s.name))
        elif s.kind == "oxygen":
            vc.add(s.name, sc.oxygen.permeability, s.solver.model.diffusivity,
                   lambda t0, t1, level=sc.oxygen.blood_level: level)
    model.vessels = vc
    if spec.collapse is not None and (sc.clones is None or not sc.clones.clones):
        raise ScenarioError("vasculature.collapse: vessels collapse where cells are packed; the scenario "
                            "has no clones (give clones.clones, or remove vasculature.collapse)")
    if spec.collapse is not None and spec.collapse.every_steps is None and not sc.treatment.lines:
        raise ScenarioError("vasculature.collapse: give every_steps (a number of time steps); without "
                            "treatment lines there are no assessments to check the vessels at")
    _vessel_line_density(model)
    log.get().info(f"vasculature: {net.num_segments} segments, {vc.perfused_length() / 1e3:.1f} mm of vessel, "
                   f"{100 * vc.perfused_fraction():.0f} % of it perfused")


def _vessel_line_density(model: Model):
    """Perfused vessel length per dof volume, for immune recruitment along the network."""
    if model.get("immune") is not None:
        model.vessel_dofs = model.vessels.line_density() / np.where(model.mass > 0, model.mass, 1.0)


def _check_regions(scenario: Scenario, domain: meshes.Domain):
    """Region and facet names the scenario uses must exist in the mesh (one-line errors)."""
    regions = list(domain.regions)
    try:
        if scenario.clones is not None:
            check_clones(scenario.clones, scenario.drugs, regions)
        check_treatment(scenario.treatment, set(scenario.drugs),
                        scenario.clones.mechanisms() if scenario.clones else {}, regions)
    except ValueError as exc:
        raise ScenarioError(located(exc)) from None


def _build_clones(model: Model, cl, nloc, domain, num, h):
    sc = model.scenario
    V = model.V
    key = "clones.clones"
    model.clone_names = list(cl.clones)
    K = len(model.clone_names)
    model.N = np.zeros((K, nloc))
    W = model.tissue.ecm_fraction.function_space
    for i, (name, c) in enumerate(cl.clones.items()):
        if isinstance(c.initial, dict):
            cellwise = fem.Function(W)
            for region, frac in c.initial.items():
                tag = domain.region(region, f"{key}.{name}.initial.{region}")
                cellwise.x.array[model.region.x.array == tag] = frac
            model.N[i] = _to_dofs(V, cellwise, model.mass)
        else:
            model.N[i] = c.initial
        model.clone_fields.append(fem.Function(V, name=name))
    model.resistant = np.array(cl.resistant(), bool)
    model.resistant_field = fem.Function(V, name="resistant_fraction")
    sf, ox = sc.survival_factor, sc.oxygen
    model.reactions = CloneReactions.from_specs(
        cl, sc.drugs, nloc, factor_half=sf.half_effect if sf.enabled else None,
        oxygen_half=ox.hypoxia if ox.enabled else None, kernel=num.reaction_kernel)
    # the compiled step is built now, so that a compiler failure stops the run before any file
    # is written; every rank learns of a failure on any rank
    try:
        model.reactions.prepare(bool(model.drugs), model.get("factor") is not None,
                                model.get("oxygen") is not None, model.get("immune") is not None)
        failure = None
    except KernelError as exc:
        failure = f"numerics.reaction_kernel: 'compiled' cannot be used: {exc}"
    failure = next((f for f in model.V.mesh.comm.allgather(failure) if f), None)
    if failure:
        raise ScenarioError(failure)
    if cl.motility > 0:
        for name in model.clone_names:
            model.motility.append(SpeciesSolver(
                SpeciesModel(name=f"motility_{name}", diffusivity=fem.Constant(domain.mesh, cl.motility)),
                V, domain.facet_tags, lumped=num.lumped_mass, solver=num.solver,
                amg_threshold=num.amg_threshold, rtol=model.scenario.linear_rtol, cell_size=h, scheme=model.scenario.scheme,
                estimate=model.scenario.time.tolerance is not None))
    np.sum(model.N, axis=0, out=model.n_tot.x.array)


# --------------------------------------------------------------------------------------------
# Signals


class StopSignals:
    """While a run steps (or a comparison runs its runs): SIGINT, SIGTERM and SIGUSR1 only note
    that a stop was asked for; the run agrees on it across ranks at the end of the step."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._note)
        return self

    def _note(self, signum, frame):
        if self.received is None:
            self.received = signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def flags(self) -> list[float]:
        return [float(self.received == s) for s in STOP_SIGNALS]


# --------------------------------------------------------------------------------------------
# The problem


class Problem:
    """One simulation of a scenario (see the module docstring).

    ``out``: the output directory, or None to write nothing and keep the time series, the
    events and the fields at the output times in memory (``series.rows``, ``events.events``,
    ``fields``; :func:`tme.run` hands them out as :class:`tme.results.Results`; ``tme validate``
    builds through :meth:`initialise` only). ``overwrite``: replace a previous run's
    files in ``out``. ``max_memory``: the memory [bytes] the mesh may need (default: what the
    job's machines have available). ``inputs``: the files the run reads (scenario, mesh), which
    ``out`` must not replace. Times in hours; ``state`` holds everything that changes in time.
    """

    def __init__(self, scenario: Scenario, comm=MPI.COMM_WORLD, out: Path | None = None, *,
                 overwrite: bool = False, max_memory: float | None = None, inputs=()):
        self.scenario, self.comm = scenario, comm
        self.out = None if out is None else Path(out)
        self.overwrite = overwrite
        self.max_memory, self.inputs = max_memory, tuple(inputs)
        self.logger = log.get()
        self.model: Model | None = None
        self.outputs: list = []
        self.state = State()
        self.signal: int | None = None
        self._resume_from: Path | None = None
        self._new_events: list[Event] = []
        self._last = None

    # -- set-up ---------------------------------------------------------------------------------
    def initialise(self) -> "Problem":
        """Build the model, the protocol and the clock, then open the outputs (when ``out``).

        Everything a scenario can get wrong is found before any file is written."""
        self.resolved = resolved_yaml(self.scenario)   # the scenario's text, written once a run
        self.provenance = provenance.collect(self.resolved, self.comm)
        if self.out is not None and self._resume_from is None:
            outputs.check_directory(self.out, self.comm, self.overwrite, self.inputs)
        sc = self.scenario
        self.model = build(sc, self.comm, self.max_memory)
        m = self.model
        self.protocol = Protocol(sc.treatment, sc.clones.mechanisms() if sc.clones else {},
                                 sc.cell_scale(m.domain.dim))
        end = sc.time.end
        self.field_times = sorted(set(regular(sc.output.every or end / 20.0, end))
                                  | set(self._snapshot_times()) | {end})
        self.checkpoint_times = regular(sc.output.checkpoint.every, end)
        self.clock = Clock.of(sc.time, self.field_times + self.checkpoint_times
                              + [t for t in sc.treatment.report_times if t <= end])
        m.plasma.set_limits(sc.treatment.limits, sc.drugs)
        self._c = np.zeros((len(m.drugs), m.V.dofmap.index_map.size_local + m.V.dofmap.index_map.num_ghosts))
        self._ici = [i for i, s in enumerate(m.drugs)
                     if DRUG_CLASSES[sc.drugs[s.name].drug_class].activates_immunity]
        tol = sc.time.tolerance
        self.controller = None
        if tol is not None:
            self.controller = Controller(order=2, dt_min=sc.time.dt_min, dt_max=sc.time.dt)
            if sc.time.dt_initial is None:
                self.clock = Clock(end=self.clock.end, dt_max=self.clock.dt_max,
                                   dt_first=self._restart_step(tol), dt_min=self.clock.dt_min,
                                   milestones=self.clock.milestones)
        self._step_info = ("", 0)
        self.state = State(dt_next=self.clock.dt_first)
        if self._resume_from is not None:
            self._restore(self._resume_from)
        if self.out is not None:
            self._check_pictures()
            if self._resume_from is None:
                outputs.check_space(self.out, self.comm, *self._output_size())
            self._open_outputs()
            # only now: a refused run prints its one error line and nothing else
            self.logger.info(m.describe())
        else:
            self._keep_outputs()
        return self

    def _check_pictures(self) -> None:
        """The plots need matplotlib, the snapshots pyvista (the ``pictures`` extra, or the
        system's packages): refused before the run, not at its end."""
        import importlib.util

        sc = self.scenario
        needs = []
        if sc.output.plots:
            needs.append(("matplotlib", "output.plots", "tme[plots]", "set output.plots: false"))
        if self._snapshot_times():
            needs.append(("pyvista", "output.snapshots", "tme[pictures]", "set output.snapshots.times: []"))
        for module, key, extra, instead in needs:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise ScenarioError(f"{key}: needs {module}, which is not installed (the system's "
                                    f"package, or pip install '{extra}'); or {instead}")

    def _keep_outputs(self) -> None:
        """Without an output directory: the rows, the events and the fields at the output
        times are kept in memory; nothing is written."""
        m = self.model
        self.series = TimeSeries(None, self._columns(), self.comm, row=self._current_row)
        self.events = EventLog(None, self.comm, pending=self._take_events)
        self.fields = MemoryFields(self._fields(), self.field_times, before_write=self._update_fields)
        self.network = None
        self.outputs = [self.series, self.events, self.fields]
        self.logger.debug(m.describe())

    def _output_size(self) -> tuple[float, str]:
        """About how many bytes the run writes, and of what (checked against the free space)."""
        m, sc = self.model, self.scenario
        frames = len(self.field_times) + 2  # and t = 0, and a stop between output times
        dofs = m.V.dofmap.index_map.size_global
        functions = self._fields()
        fields = frames * frame_bytes(functions) + mesh_bytes(m.domain.mesh)
        rows = 2 * sc.time.end / sc.time.dt + 2  # steps shrink after each dose: a margin
        series = rows * 24.0 * len(self._columns())
        pictures = 300e3 * len(self._snapshot_times()) + (300e3 if sc.output.plots else 0.0)
        what = f"{frames} frames of {len(functions)} fields on {dofs} dofs, the time series and pictures"
        return fields + series + pictures, what

    def _network_picture_field(self) -> str:
        """The field the network picture slices: the first drug, else the first species, that
        the vessels carry."""
        m = self.model
        s = next((s for s in m.drugs if s.name in m.vessels.species), None) or next(
            s for s in m.species if s.name in m.vessels.species)
        return s.name

    def _snapshot_times(self) -> list[float]:
        times = self.scenario.output.snapshots.times
        return [self.scenario.time.end] if times is None else list(times)

    def _open_outputs(self):
        sc, m, comm, st = self.scenario, self.model, self.comm, self.state
        resumed = self._resume_from is not None
        if not resumed:
            self.out = outputs.prepare_directory(self.out, comm, self.overwrite)
        if comm.rank == 0:
            outputs.replace_text(self.out / "config.resolved.yaml",
                                 provenance.header(self.provenance) + self.resolved)
        self.series = TimeSeries(self.out / "timeseries.csv", self._columns(), comm, row=self._current_row)
        self.events = EventLog(self.out, comm, pending=self._take_events)
        self.fields = FieldOutput(self.out, m.domain.mesh, self._fields(), self.field_times,
                                  before_write=self._update_fields, segment=st.segments,
                                  info=self.provenance, regions=m.domain.regions)
        self.snapshots = _Snapshots(self, self._snapshot_times())
        self.network = None
        if m.vessels is not None:
            from .outputs.network import NetworkOutput

            self.network = NetworkOutput(self.out, m.vessels, self.field_times, comm)
        ck = sc.output.checkpoint
        self.checkpoint = Checkpoint(self.out, comm, self._checkpoint_functions(), self.checkpoint_times,
                                     None if ck.wall is None else ck.wall * 3600.0, self.resolved,
                                     before_write=self._before_checkpoint,
                                     meta={"dofs_per_field": m.V.dofmap.index_map.size_global})
        # the checkpoint after those it counts; the summary and the plots when the run ends
        self.outputs = [self.series, self.events, self.fields, self.snapshots, self.checkpoint,
                        _Summary(self)] + ([_Plots(self)] if sc.output.plots else [])
        if self.network is not None:
            self.outputs.insert(3, self.network)
        try:
            if resumed:
                w = st.written
                self.series.keep(w.get("rows", 0))
                self.events.keep(w.get("events", 0))
                self.fields.keep(w.get("frames", 0))
                if self.network is not None:
                    self.network.keep(w.get("frames", 0))
        except (OSError, ValueError) as exc:
            err = f"--resume {self.out}: its outputs do not match the checkpoint: {exc}"
        else:
            err = None
        err = comm.bcast(err, root=0)
        if err:
            raise RunError(err)
        if not resumed:
            self.series.open()
            self.events.open()

    # -- stepping -------------------------------------------------------------------------------
    def start(self) -> None:
        """The state at t = 0: line 1 starts, its doses are scheduled, t = 0 is written."""
        sc, st = self.scenario, self.state
        burden, fractions, regions = self._observe(0.0)
        if sc.treatment.lines:
            self._new_events += self.protocol.start(0.0, burden, fractions, regions)
            self._schedule(self.protocol.line.regimen, 0.0, self.protocol.index)
            self._give(0.0)
        self._report(0.0, burden, fractions)
        st.nadir = (burden, 0.0)
        self._last = (0.0, burden, fractions, None)
        if self.model.vessels is not None and sc.vasculature.collapse is not None:
            # a tumour presents with vessels already compressed where it is packed
            self._compress_vessels(0.0, sc.vasculature.collapse.threshold)
        if self.outputs:
            self.events.write(st, 0.0)
            self.fields.write(st, 0.0)
            if self.network is not None:
                self.network.write(st, 0.0)
            self.series.write(st, 0.0)

    def iterate(self) -> None:
        """One step: to the next milestone or by the longest step the clock allows."""
        sc, m, st, clock = self.scenario, self.model, self.state, self.clock
        next_event = m.plasma.next_event(st.t)
        next_assess = self.protocol.next_assessment() if sc.treatment.lines else math.inf
        t0 = st.t
        if self.controller is None:
            t1 = clock.step_end(t0, st.dt_next, (next_event, next_assess))
            self._step(t0, t1)
        else:
            t1, dt_controlled = self._controlled_step(t0, (next_event, next_assess))
        dt = t1 - t0
        st.t, st.steps = t1, st.steps + 1
        burden, fractions, regions = self._observe(t1)
        if burden < st.nadir[0]:
            st.nadir = (burden, t1)
        assessed = None
        switched = False
        if clock.at(t1, [next_assess]):
            decision = self.protocol.assess(t1, burden, self._resistant_fraction(fractions), fractions, regions)
            self._new_events += decision.events
            assessed = decision
            if decision.new_line is not None:
                m.plasma.cancel_from(t1)
                st.pending_doses = [d for d in st.pending_doses if d[0] < t1 - clock.tol]
                self._schedule(decision.new_line.regimen, t1, self.protocol.index)
                switched = True
            if decision.stop:
                st.stopped = decision.events[-1].reason
        # after the assessment: a switch at t cancels the old line's doses at t, a pause or a
        # new dose level applies to those at t
        self._give(t1)
        self._log_doses(t1)
        self._report(t1, burden, fractions)
        collapse = sc.vasculature.collapse if m.vessels is not None else None
        if collapse is not None and (assessed is not None if collapse.every_steps is None
                         else st.steps % collapse.every_steps == 0):
            self._compress_vessels(t1, collapse.threshold)
        self._last = (dt, burden, fractions, assessed)
        # a dose starts or an infusion ends, or a new line starts: small steps again
        restart = switched or clock.at(t1, [next_event])
        if self.controller is None:
            st.dt_next = clock.next_dt(dt, restart=restart)
        elif restart:
            # the plasma jumps: the error history says nothing about the next step
            st.dt_next, st.err_prev = min(dt_controlled, clock.dt_first), None
        else:
            st.dt_next = dt_controlled
        for o in self.outputs:
            if o.due(st):
                o.write(st, t1)

    def run(self) -> dict:
        """Step to the end (or a stop); returns the summary (also written to summary.json)."""
        sc, st, clock = self.scenario, self.state, self.clock
        self._segment_start = wallclock.perf_counter()
        if st.steps == 0:
            self.start()
        counters_before = COUNTERS.snapshot()
        progress = _Progress(clock.end, self.logger, self.comm)
        self.summary = None   # set once the run ends (the summary output writes it)
        try:
            with StopSignals() as self._signals:
                while not clock.done(st.t) and st.stopped is None and self.signal is None:
                    self.iterate()
                    progress.update(st.t)
            if self.outputs and st.stopped is not None and self.fields.times[-1:] != [st.t]:
                self.fields.write(st, st.t)
                if self.network is not None:
                    self.network.write(st, st.t)
            if self.signal is None and st.stopped is None and sc.treatment.lines:
                self._new_events += self.protocol.end(st.t)
                if self.outputs:
                    self.events.write(st, st.t)
            loop = {k: COUNTERS.snapshot()[k] - counters_before[k] for k in counters_before}
            wall = st.wall_seconds + wallclock.perf_counter() - self._segment_start
            self.summary = self._summary(wall, loop)
        finally:
            # the summary and the plots are written only by a run that ended (not by an error)
            for o in self.outputs:
                o.close(st)
            progress.done()
        if self.outputs:
            self.comm.barrier()   # every rank returns with the files complete
        summary = self.summary
        if self.signal is not None:
            name = signal.Signals(self.signal).name
            where = (f"checkpoint {self.checkpoint.path}; continue with: tme run --resume {self.out}"
                     if self.out is not None else "the results up to it are kept in memory")
            self.logger.warning(f"tme: stopped by {name} at t = {st.t:g} h ({st.t / 24:.4g} day), step "
                                f"{st.steps}; {where}")
        else:
            self.logger.info(f"done: {st.steps} steps in {summary['wall_time_seconds']:.1f} s" +
                             (f"; results in {self.out}" if self.out else ""))
        return summary

    # -- checkpoint and resume ------------------------------------------------------------------
    @classmethod
    def resume(cls, out: Path, comm=MPI.COMM_WORLD, scenario: Scenario | None = None,
               with_changes: bool = False, overrides=()) -> "Problem":
        """The problem of the run in ``out``, to continue from its last complete checkpoint.

        ``scenario``: the scenario to continue with (default: the checkpoint's, with
        ``overrides``); it must equal the checkpoint's unless ``with_changes`` and every
        difference is one that can take effect mid-run (:data:`RESUMABLE_CHANGES`). Raises
        RunError with one line otherwise. Call :meth:`initialise` then :meth:`run`.
        """
        from .config import scenario as scn

        out = Path(out)
        info = None
        if comm.rank == 0:
            info = _resumable(out)
        info = comm.bcast(info, root=0)
        if isinstance(info, str):
            raise RunError(info)
        if info[0] == "complete":
            raise RunComplete(info[1], info[2])
        path, saved_yaml = Path(info[0]), info[1]
        saved = scn.load(path / "scenario.yaml")
        new = scenario if scenario is not None else (scn.load(path / "scenario.yaml", list(overrides))
                                                     if overrides else saved)
        diff = first_difference(saved.model_dump(mode="json"), new.model_dump(mode="json"))
        if diff is not None:
            if not with_changes:
                raise RunError(f"--resume {out}: the scenario differs from the checkpoint's at {diff}; "
                               f"pass --resume-with-changes if the change is meant (allowed: "
                               f"{', '.join(RESUMABLE_CHANGES)})")
            for key in all_differences(saved.model_dump(mode="json"), new.model_dump(mode="json")):
                if not any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES):
                    raise RunError(f"--resume-with-changes: {key} cannot change in the middle of a run; "
                                   f"only {', '.join(RESUMABLE_CHANGES)} can")
        state = checkpoints.read_state(path) if comm.rank == 0 else None
        state = comm.bcast(state, root=0)
        if new.time.end <= state.t:
            raise RunError(f"time.end: {new.time.end:g} hour is not after the checkpoint's time "
                           f"{state.t:g} hour")
        p = cls(new, comm, out)
        p._resume_from = path
        p._saved_state = state
        return p

    def _restore(self, path: Path) -> None:
        st = self._saved_state
        st.segments += 1
        self.state = st
        self.protocol.restore(st.protocol)
        self.model.plasma.restore(st.plasma)
        m = self.model
        funcs = self._checkpoint_functions()
        pcs = {name: fem.Function(m.V) if saved["n_tot"] else None for name, saved in st.solvers.items()}
        checkpoints.read_fields(path, {**funcs, **{f"pc_{n}": f for n, f in pcs.items() if f is not None}})
        if m.N is not None:
            for i, f in enumerate(m.clone_fields):
                m.N[i] = f.x.array
        n = m.mass.size
        if m.vessels is not None:
            # the collapsed vessels, and the line diagonals the saved preconditioners were built with
            if st.vessels.get("closed"):
                closed = np.zeros(m.vessels.net.num_segments, bool)
                closed[st.vessels["closed"]] = True
                m.vessels.close(closed)
            self._vessels_changed(rebuild=False)
        for s in self._all_solvers():
            if s.model.name in st.solvers:
                f = pcs[s.model.name]
                s.restore_preconditioner(st.solvers[s.model.name]["dt"], None if f is None else f.x.array[:n])
        st.dt_next = min(st.dt_next, self.clock.dt_max)   # time.dt may have been lowered
        self.logger.info(f"resumed from {path} at t = {st.t:g} h ({st.t / 24:.4g} day), step {st.steps}")

    def _compress_vessels(self, t: float, threshold: float) -> None:
        """Close the vessels where the cells exceed ``threshold``; log what changed. Only the
        small network is solved again and the line sources' diagonals rewritten; a species
        solver that carries its preconditioner from step to step rebuilds it for the new
        diagonal (so that a resumed run, which rebuilds it from the saved state, takes the same
        steps)."""
        m, st = self.model, self.state
        vc = m.vessels
        new = vc.compress(m.n_tot.x.array, threshold)
        if not new.size:
            return
        st.vessels = {"closed": np.flatnonzero(vc.closed).tolist()}
        self._vessels_changed(rebuild=True)
        pf = vc.perfused_fraction()
        self._new_events.append(Event(
            t, "vessel_collapse", f"{new.size} vessel segment(s) collapsed where the cell density exceeds "
            f"{threshold:g}; {100 * pf:.1f} % of the vessel length perfused",
            {"segments_closed": int(new.size), "closed_total": int(vc.closed.sum()),
             "perfused_fraction": pf, "perfused_length_um": vc.perfused_length()}))

    def _vessels_changed(self, rebuild: bool) -> None:
        """The network's flow changed: each species' line diagonal and the immune recruitment
        along the vessels follow; ``rebuild``: reused preconditioners too."""
        m = self.model
        _vessel_line_density(m)
        n = m.mass.size
        for s in m.species:
            if s.name in m.vessels.species:
                s.solver.line_diagonal[:] = m.vessels.diagonal(s.name)[:n]
                if rebuild and s.solver.reuses_preconditioner:
                    s.solver.restore_preconditioner(s.solver.pc_dt, m.n_tot.x.array if s.solver.pc_n_tot is not None
                                                    else None)
                    COUNTERS.pc_setups += 1

    def _all_solvers(self) -> list[SpeciesSolver]:
        return [s.solver for s in self.model.species] + list(self.model.motility)

    def _checkpoint_functions(self) -> dict:
        m = self.model
        funcs = {f"c_{s.name}": s.solver.c for s in m.species}
        funcs.update({f"auc_{s.name}": s.auc for s in m.drugs})
        funcs.update({f"above_{s.name}": s.above for s in m.drugs})
        funcs.update({f"N_{c}": f for c, f in zip(m.clone_names, m.clone_fields)})
        if m.N is not None:
            funcs["n_tot"] = m.n_tot
        return funcs

    def _before_checkpoint(self):
        m, st = self.model, self.state
        if m.N is not None:
            for i, f in enumerate(m.clone_fields):
                f.x.array[:] = m.N[i]
        st.protocol = self.protocol.state()
        st.plasma = m.plasma.state()
        st.wall_seconds = st.wall_seconds + wallclock.perf_counter() - self._segment_start
        self._segment_start = wallclock.perf_counter()
        st.solvers = {}
        extra = {}
        n = m.mass.size
        for s in self._all_solvers():
            if s.reuses_preconditioner:
                st.solvers[s.model.name] = {"dt": s.pc_dt, "n_tot": s.pc_n_tot is not None}
                if s.pc_n_tot is not None:
                    f = fem.Function(m.V)
                    f.x.array[:n] = s.pc_n_tot
                    f.x.scatter_forward()
                    extra[f"pc_{s.model.name}"] = f
        self.checkpoint.functions = {**self._checkpoint_functions(), **extra}

    # -- one step -------------------------------------------------------------------------------
    def _schedule(self, regimen, t0, index):
        key = f"treatment.lines.{index}.regimen"
        self.model.plasma.add_regimen(regimen, t0, key)
        for dose in regimen:
            for k in range(dose.cycles):
                ts = t0 + dose.start + k * (dose.every or 0.0)
                if ts <= self.scenario.time.end:
                    self.state.pending_doses.append((ts, dose.drug, k + 1))
        self.state.pending_doses.sort()

    def _give(self, t):
        """Give the doses starting at ``t``: at the protocol's factor (holiday, modulation),
        within the drugs' limits; log each as a dose, a skip or a limit event."""
        if not self.scenario.treatment.lines:
            return
        tol, st = self.clock.tol, self.state
        for g in self.model.plasma.give(t + tol, self.protocol.dose_factor):
            k = next((i for i, d in enumerate(st.pending_doses)
                      if d[1] == g.drug and abs(d[0] - g.start) <= tol), None)
            cycle = st.pending_doses.pop(k)[2] if k is not None else None
            data = {"drug": g.drug, "cycle": cycle, "planned_uM": g.planned, "given_uM": g.given,
                    "factor": g.factor}
            what = f"{g.drug}, cycle {cycle}"
            if g.limits:
                policy = self.scenario.treatment.limits[g.drug].policy
                self._new_events.append(Event(g.start, "limit", f"{what}: {', '.join(g.limits)} limit "
                                              f"reached, {'skipped' if g.given == 0 else 'reduced'} "
                                              f"({policy})", {**data, "limits": list(g.limits)}))
            if g.given > 0:
                scale = g.given / g.planned if g.planned > 0 else 1.0
                self._new_events.append(Event(g.start, "dose", what + (f" at {scale:.4g} × its amount"
                                                                        if scale != 1.0 else ""), data))
            elif not g.limits:
                self._new_events.append(Event(g.start, "skip", f"{what} not given: "
                                              + ("treatment holiday" if self.protocol.on_holiday(g.drug)
                                                 else "dose level below skip_below"), data))

    def _report(self, t, burden, fractions):
        """Keep the burden and the resistant fraction at a reporting time."""
        times = self.scenario.treatment.report_times
        if self.model.N is not None and times and self.clock.at(t, times):
            cells = self._in_cells({"c": burden}).get("c")
            self.state.reports.append({"time_hours": t, "burden": burden, "burden_cells": cells,
                                       "resistant_fraction": self._resistant_fraction(fractions)})

    def _log_doses(self, t):
        tol = self.clock.tol
        st = self.state
        due = [d for d in st.pending_doses if d[0] <= t + tol]
        if due:
            st.pending_doses = [d for d in st.pending_doses if d[0] > t + tol]
            self._new_events += [Event(ts, "dose", f"{drug}, cycle {k}", {"drug": drug, "cycle": k})
                                 for ts, drug, k in due]

    def _take_events(self) -> list[Event]:
        events, self._new_events = self._new_events, []
        return events

    def _concentrations(self, activation=None):
        """Drug levels, factor, oxygen and immune effectors for a reaction half step;
        ``activation``: the checkpoint-inhibitor activation at the current levels when the
        caller has it."""
        m = self.model
        for j, s in enumerate(m.drugs):
            np.copyto(self._c[j], s.solver.c.x.array)
        sf, ox, im = m.get("factor"), m.get("oxygen"), m.get("immune")
        e = None
        if im is not None:
            e = im.solver.c.x.array
            if self._ici:
                if activation is None:
                    activation = self._activation()
                e = e * (1.0 + self.scenario.immune.kill_boost * activation)
        return (self._c if m.drugs else None, None if sf is None else sf.solver.c.x.array,
                None if ox is None else ox.solver.c.x.array, e)

    def _activation(self) -> np.ndarray:
        """Checkpoint-inhibitor activation A_I at the dofs (the strongest one when several)."""
        m = self.model
        out = 0.0
        for j in self._ici:
            d = self.scenario.drugs[m.drugs[j].name]
            out = np.maximum(out, hill(np.maximum(m.drugs[j].solver.c.x.array, 0.0), d.ec50, d.hill))
        return out

    def _restart_step(self, tol: float) -> float:
        """The first step, and the first after a dose event, under ``time.tolerance`` [hour].

        A bolus makes the plasma jump, and a well-perfused drug follows it within minutes; the
        first reaction half step still sees the level before the dose, so it misses about
        E_max dt/2 of kill (relative) — a splitting error neither estimate sees. A first step of
        2 tol/E_max (the fastest drug) keeps it at the tolerance; the controller then grows the
        steps by up to 5x each. Without drugs: dt tol^(1/3)."""
        sc = self.scenario
        guess = sc.time.dt * tol ** (1.0 / 3.0)
        emax = max((d.emax for d in sc.drugs.values()), default=0.0)
        if emax > 0:
            guess = min(guess, 2.0 * tol / emax)
        return min(sc.time.dt, max(sc.time.dt_min, guess))

    def _controlled_step(self, t0: float, moving) -> tuple[float, float]:
        """One step under ``time.tolerance``: tried, measured, and redone shorter from the saved
        fields until its normalised error is at most 1. Returns (its end, the next step)."""
        st, clock, ctl = self.state, self.clock, self.controller
        saved = self._save_fields()
        dt_try, rejected = st.dt_next, 0
        while True:
            milestone = clock.next_milestone(t0, moving)
            # a redo lands without a stretch: its step is already the one that should pass
            t1 = (ctl.land(t0, dt_try, milestone, clock.tol) if rejected
                  else ctl.reach(t0, dt_try, milestone, clock.tol))
            self._step(t0, t1, estimate=True)
            err = self._error_norm()
            if not math.isfinite(err):
                # a NaN is the model's failure, not the step's: name the field, time and place
                # (every rank sees the same err: the norm is reduced over them all)
                msgs = [w for w in self.comm.allgather(self._check_local(t1)) if w]
                raise RunError((msgs[0] if msgs else f"the step from t = {t0:g} h to {t1:g} h has "
                                f"a non-finite error estimate") + "; the outputs written so far are "
                               "complete up to the previous step")
            d = ctl.decide(t1 - t0, err, st.err_prev, after_reject=rejected > 0, dt_prev=st.dt_prev)
            if d.accept:
                break
            for a, copy in saved:
                a[...] = copy
            rejected += 1
            dt_try = d.dt_next
        dt_next = d.dt_next
        if t1 - t0 < dt_try * (1 - 1e-9) and not rejected:
            # a milestone cut the step short: its small error says nothing against the longer
            # step the controller had asked for
            dt_next = max(dt_next, min(dt_try, ctl.dt_max))
        st.err_prev, st.dt_prev = max(err, 1e-10), t1 - t0
        st.rejections += rejected
        self._step_info = (err, rejected)
        return t1, dt_next

    def _save_fields(self) -> list:
        """(array, copy) of everything a step changes, for redoing a rejected step."""
        m = self.model
        arrays = ([s.solver.c.x.array for s in m.species] + [s.c.x.array for s in m.motility]
                  + [m.n_tot.x.array] + [s.auc.x.array for s in m.drugs] + [s.above.x.array for s in m.drugs])
        if m.N is not None:
            arrays.append(m.N)
        return [(a, a.copy()) for a in arrays]

    def _levels(self) -> list[float]:
        """The level at which each transported field acts, in the order of :meth:`_error_norm`'s
        solvers: a drug's EC50, the survival factor's half effect K_s, the oxygen level of
        half-maximal proliferation, the immune effectors' well-mixed level without inhibitor
        (max r_e S_V / clearance), 1 (the capacity) for a moving clone [each field's unit]."""
        if getattr(self, "_levels_cache", None) is None:
            sc, m = self.scenario, self.model
            out = []
            for s in m.species:
                if s.kind == "drug":
                    out.append(s.ec50)
                elif s.kind == "factor":
                    out.append(sc.survival_factor.half_effect)
                elif s.kind == "oxygen":
                    out.append(sc.oxygen.hypoxia)
                else:
                    im = sc.immune
                    local = float(np.max(m.sv_dofs, initial=0.0)) if m.sv_dofs is not None else 0.0
                    sv = self.comm.allreduce(local, op=MPI.MAX)
                    out.append(im.recruitment * sv / im.clearance if im.clearance > 0 else 0.0)
            self._levels_cache = out + [1.0] * len(m.motility)
        return self._levels_cache

    def _error_norm(self) -> float:
        """The step's normalised error (:func:`tme.clock.error_norm`): the transport estimate
        of every species and the reaction estimate of every clone, each field's relative local
        error in the mass-weighted L2 norm against ``time.tolerance``, held to the absolute
        floor ``tolerance_floor`` × its scale where the field is smaller than that.

        A field's scale is the larger of its largest value so far and the level at which it
        acts (:meth:`_levels`). Without that level, a drug whose infusion has just started
        would be held to the tolerance relative to its first, vanishing values: its relative
        local error there is about 0.08 λ dt (λ its exchange and uptake rate) — first order,
        since the field itself is O(dt²) — and steps of the smallest size would still fail."""
        sc, m, st = self.scenario, self.model, self.state
        tol, floor = sc.time.tolerance, sc.time.tolerance_floor
        solvers = [s.solver for s in m.species] + list(m.motility)
        n = m.mass.size
        local = np.array([float(np.max(np.abs(s.c.x.array[:n]), initial=0.0)) for s in solvers])
        peaks = local
        if self.comm.size > 1:
            peaks = np.empty_like(local)
            self.comm.Allreduce(local, peaks, op=MPI.MAX)
        parts = []
        for s, peak, level in zip(solvers, peaks, self._levels()):
            if s.error is None:
                continue   # quasi-steady: no time error
            name = s.model.name
            scale = st.scales[name] = max(st.scales.get(name, 0.0), float(peak))
            atol = tol * floor * max(scale, level)
            parts.append((s.error, s.c.x.array[:n], s.m, tol, max(atol, 1e-300)))
        if m.reactions is not None:
            # the first half step's estimate stands for both halves: its kept (finer) result
            # carries a quarter of it, the second half about all of it
            for i in range(len(m.clone_names)):
                parts.append((1.25 * self._rx_error[i, :n], m.N[i, :n], m.mass, tol, tol * floor))
        return error_norm(parts, self.comm)

    def _step(self, t0, t1, estimate: bool = False):
        m = self.model
        dt = t1 - t0
        if m.reactions is not None:
            if estimate:
                self._rx_error = m.reactions.advance_estimated(m.N, *self._concentrations(), 0.5 * dt,
                                                               total=m.n_tot.x.array)
            else:
                m.reactions.advance(m.N, *self._concentrations(), 0.5 * dt, total=m.n_tot.x.array)
        n_tot = m.n_tot.x.array
        # immune recruitment follows the checkpoint inhibitors' activation, which moves with the
        # drugs during the step: its values at t0 and t1 (drugs are stepped first), linear between
        act0 = self._activation() if (self._ici and m.get("immune") is not None) else None
        activation = None   # of the checkpoint inhibitors at t1
        for s in m.species:
            source = None
            if s.kind == "immune":
                im = self.scenario.immune
                if self._ici:
                    activation = self._activation()
                # recruitment from the continuum S_V and, with a network, per unit length of
                # perfused vessel
                rate = im.recruitment * m.sv_dofs
                if m.vessel_dofs is not None:
                    rate = rate + self.scenario.vasculature.immune_recruitment * m.vessel_dofs
                if self._ici:
                    source = (rate * (1.0 + im.boost * act0), rate * (1.0 + im.boost * activation))
                else:
                    source = rate
            s.solver.step(t0, t1, n_tot, nodal_source=source, nodal_exchange=_line_exchange(m, s, t0, t1))
        if m.reactions is not None:
            for i, solver in enumerate(m.motility):
                solver.c.x.array[:] = m.N[i]
                solver.step(t0, t1)
                m.N[i] = np.maximum(solver.c.x.array, 0.0)
            m.reactions.advance(m.N, *self._concentrations(activation), 0.5 * dt,
                                total=m.n_tot.x.array)
        for s in m.drugs:
            # the exposure over the step: the scheme's own mean of c (c at t1 for backward
            # Euler, the stage-weighted mean for TR-BDF2: second order, and the mean the
            # transport balance uses)
            n = s.solver.m.size
            s.auc.x.array[:n] += dt * s.solver.last["c_mean"]
            s.auc.x.scatter_forward()
            c = s.solver.c.x.array
            s.above.x.array[:] += dt * (c >= s.ec50)

    def _observe(self, t):
        """Burden ∫ N_tot dx, clone fractions (whole domain) and clone amounts per region; raises
        RunError on a NaN or a negative density.

        One reduction per step gathers these, the amount of every species, whether any rank
        found a bad value, whether any rank was sent a stop signal, and whether rank 0's wall
        clock calls for a checkpoint.
        """
        m = self.model
        n = m.mass.size
        bad = self._check_local(t)
        signals = getattr(self, "_signals", None)
        ck = getattr(self, "checkpoint", None)
        flags = [float(bad is not None)] + (signals.flags() if signals else [0.0] * len(STOP_SIGNALS)) \
            + [float(self.comm.rank == 0 and ck is not None and ck.wall_elapsed())]
        parts = [np.array(flags), np.array([float(m.mass @ s.solver.c.x.array[:n]) for s in m.species])]
        if m.N is not None:
            parts.append((m.N[:, :n] @ m.mass).ravel())
            parts += [(m.N[:, :n] @ m.region_mass[r]).ravel() for r in m.region_mass]
        flat = self.comm.allreduce(np.concatenate(parts), op=MPI.SUM)
        nf = len(flags)
        if flat[0] > 0:
            msgs = [w for w in self.comm.allgather(bad) if w]
            raise RunError(msgs[0] + "; the outputs written so far are complete up to the previous step")
        stop = [s for s, v in zip(STOP_SIGNALS, flat[1:nf - 1]) if v > 0]
        if stop and self.signal is None:
            self.signal = int(stop[0])
            if ck is not None:
                ck.requested = True
        if ck is not None:
            ck.wall_due = bool(flat[nf - 1] > 0)
        flat = flat[nf:]
        n_sp = len(m.species)
        self._species_totals = {s.name: float(v) for s, v in zip(m.species, flat[:n_sp])}
        if m.N is None:
            return float("nan"), {}, {}
        K = len(m.clone_names)
        tot = flat[n_sp:].reshape(-1, K)
        names = m.clone_names
        whole = tot[0]
        burden = float(whole.sum())
        frac = {c: (float(whole[i]) / burden if burden > 0 else 0.0) for i, c in enumerate(names)}
        self._amounts = whole
        self._region_amounts = {r: tot[k + 1] for k, r in enumerate(m.region_mass)}
        # amounts per region: a biopsy's sequencing normalises them to fractions
        regions = {r: {c: float(a[i]) for i, c in enumerate(names)} for r, a in self._region_amounts.items()}
        return burden, frac, regions

    def _resistant_fraction(self, fractions) -> float:
        m = self.model
        return float(sum(f for c, f in fractions.items() if m.resistant[m.clone_names.index(c)]))

    def _check_local(self, t) -> str | None:
        """This rank's first NaN or negative density, as a message; None when all are fine."""
        m = self.model
        arrays = [(s.name, s.solver.c.x.array) for s in m.species]
        if m.N is not None:
            arrays += [(name, m.N[i]) for i, name in enumerate(m.clone_names)]
        for name, a in arrays:
            if not np.all(np.isfinite(a)):
                i = int(np.argmax(~np.isfinite(a)))
                what = "not a number"
            elif a.size and a.min() < -1e-8 * max(1.0, float(np.abs(a).max())):
                i = int(np.argmin(a))
                what = "negative"
            else:
                continue
            x = m.V.tabulate_dof_coordinates()[i]
            return (f"{name} is {what} ({a[i]:.3g}) at t = {t:g} h, "
                    f"x = ({', '.join(f'{v:.1f}' for v in x[: m.domain.dim])}) µm")
        return None

    # -- what is written ------------------------------------------------------------------------
    def _fields(self) -> list:
        m = self.model
        out = [s.solver.c for s in m.species] + list(m.clone_fields)
        if m.N is not None:
            out += [m.n_tot, m.resistant_field]
        out += [m.region] + [s.auc for s in m.drugs] + [s.above for s in m.drugs]
        return out

    def _update_fields(self):
        m = self.model
        if m.N is None:
            return
        for i, f in enumerate(m.clone_fields):
            f.x.array[:] = m.N[i]
        tot = m.n_tot.x.array
        res = m.N[m.resistant].sum(axis=0) if m.resistant.any() else np.zeros_like(tot)
        m.resistant_field.x.array[:] = np.where(tot > 1e-12, res / np.maximum(tot, 1e-300), 0.0)

    def _columns(self) -> list[str]:
        m = self.model
        cols = ["t", "dt", "line"]
        if self.scenario.time.tolerance is not None:
            cols += ["error", "rejected"]
        if m.N is not None:
            cols += ["burden", "burden_cells", "resistant_fraction"]
            cols += [f"clone_{c}" for c in m.clone_names]
            cols += [f"clone_{c}@{r}" for r in m.region_mass for c in m.clone_names]
        cols += [f"total_{s.name}" for s in m.species] + [f"plasma_{s.name}" for s in m.drugs]
        if m.vessels is not None:
            cols += ["perfused_length_um", "perfused_fraction"]
        if self.scenario.treatment.lines:
            cols += ["assessment", "nadir", "progression", "holiday"]
            cols += [f"cumulative_dose_{s.name}" for s in m.drugs if not m.plasma[s.name].constant]
        return cols

    def _in_cells(self, burdens: dict) -> dict:
        """Burdens [µm^d] as cell counts (clones.cell_volume; in 2-D mesh.thickness)."""
        scale = self.protocol.scale
        return {} if scale is None else {k: scale.cells(v) for k, v in burdens.items()}

    def _current_row(self) -> dict:
        m, t = self.model, self.state.t
        dt, burden, fractions, assessed = self._last
        protocol = self.protocol
        row = {"t": t, "dt": dt, "line": protocol.line.name if self.scenario.treatment.lines else ""}
        if self.scenario.time.tolerance is not None:
            row["error"], row["rejected"] = self._step_info
        if m.N is not None:
            row["burden"] = burden
            scale = protocol.scale
            row["burden_cells"] = scale.cells(burden) if scale is not None else ""
            row["resistant_fraction"] = self._resistant_fraction(fractions)
            for i, c in enumerate(m.clone_names):
                row[f"clone_{c}"] = float(self._amounts[i])
                for r, amounts in self._region_amounts.items():
                    row[f"clone_{c}@{r}"] = float(amounts[i])
        levels = m.plasma.levels(t)
        for s in m.species:
            row[f"total_{s.name}"] = self._species_totals[s.name]
            if s.kind == "drug":
                row[f"plasma_{s.name}"] = levels[s.name]
        if m.vessels is not None:
            row["perfused_length_um"] = m.vessels.perfused_length()
            row["perfused_fraction"] = m.vessels.perfused_fraction()
        if self.scenario.treatment.lines:
            row["assessment"] = int(assessed is not None)
            row["nadir"] = protocol.nadir if assessed is not None else ""
            row["progression"] = int(bool(assessed is not None and assessed.progression))
            row["holiday"] = int(protocol.paused)
            for s in m.drugs:
                if not m.plasma[s.name].constant:
                    row[f"cumulative_dose_{s.name}"] = m.plasma[s.name].given_until(t)
        return row

    def curve(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(t [hour], values) of a time-series column over the whole run."""
        rows = self.series.rows
        return np.array([r["t"] for r in rows]), np.array([r[column] for r in rows])

    def _summary(self, wall, loop_counters) -> dict:
        m, sc, st = self.model, self.scenario, self.state
        stopped = st.stopped or ("end time" if self.signal is None
                                 else f"signal {signal.Signals(self.signal).name}")
        summary = {
            "scenario": sc.name,
            "provenance": provenance.finished(self.provenance),
            "end_time_hours": st.t,
            "stopped": stopped,
            "steps": st.steps,
            "ranks": self.comm.size,
            "dofs_per_field": m.V.dofmap.index_map.size_global,
            "wall_time_seconds": wall,
            "time_scheme": self.scenario.scheme,
            "rejected_steps": st.rejections,
            "in_loop": {"matrix_assemblies": loop_counters["matrix_assemblies"],
                        "form_compilations": loop_counters["form_compilations"]},
            "final_totals": dict(self._species_totals),
        }
        if self.signal is not None:
            summary["signal"] = int(self.signal)
        if st.segments > 1:
            summary["segments"] = st.segments
        rows = self.series.rows if self.outputs else []
        if m.N is not None and rows:
            burdens = np.array([r["burden"] for r in rows])
            rf = np.array([r["resistant_fraction"] for r in rows])
            summary.update({
                "initial_burden": float(burdens[0]),
                "final_burden": float(burdens[-1]),
                "max_burden": float(burdens.max()),
                "nadir_burden": st.nadir[0],
                **self._in_cells({"final_burden_cells": float(burdens[-1]),
                                  "nadir_burden_cells": st.nadir[0]}),
                "nadir_time_hours": st.nadir[1],
                "final_resistant_fraction": float(rf[-1]),
                "max_resistant_fraction": float(rf.max()),
                "final_clone_amounts": {c: float(self._amounts[i]) for i, c in enumerate(m.clone_names)},
                "final_clone_amounts_by_region": {
                    r: {c: float(a[i]) for i, c in enumerate(m.clone_names)}
                    for r, a in self._region_amounts.items()},
            })
        if sc.treatment.lines:
            evs = self.events.events if self.outputs else self.protocol.events
            prog = [e for e in evs if e.event == "progression"]
            summary.update({
                "time_to_progression_hours": prog[0].time if prog else None,
                "progressions": len(prog),
                "lines_used": self.protocol.index + 1,
                "final_line": self.protocol.line.name,
            })
            if m.N is not None and rows:
                summary.update(self.protocol.metrics(st.t, float(burdens[-1]), m.plasma.cumulative(),
                                                     {d: sc.drugs[d].pk.volume for d in sc.drugs}, evs))
                summary["reports"] = list(st.reports)
        return summary


class _Snapshots:
    """Pictures of the chosen fields at the snapshot times [hour], drawn when the run ends from
    the field frames written at those times (one colour range per field over the whole run)."""

    def __init__(self, problem: Problem, times):
        self.problem = problem
        self.milestones = tuple(times)   # field output times too: the frames exist

    def due(self, state) -> bool:
        return False

    def write(self, state, t: float) -> None:
        pass

    def close(self, state) -> None:
        p = self.problem
        if p.summary is None or p.comm.rank != 0 or not self.milestones:
            return
        sc = p.scenario
        wanted = sc.snapshot_fields()
        names = [f.name for f in p._fields() if f.name in wanted] or sc.species_names()
        pictures.snapshots(p.out, self.milestones, names, {n: outputs.field_unit(n, sc) for n in names},
                           sc.output.snapshots.scale)
        if p.network is not None:
            from .outputs.network_picture import network_pictures

            name = p._network_picture_field()
            network_pictures(p.out, self.milestones, name, outputs.field_unit(name, sc))


class _AtEnd:
    """An output written once, when the run ends (``close``): no times of its own."""

    milestones: tuple[float, ...] = ()

    def __init__(self, problem: Problem):
        self.problem = problem

    def due(self, state) -> bool:
        return False

    def write(self, state, t: float) -> None:
        pass


class _Summary(_AtEnd):
    """``summary.json``: the whole run in numbers (see README), written when the run ends."""

    def close(self, state) -> None:
        p = self.problem
        if p.summary is not None:
            outputs.write_json(p.out / "summary.json", p.summary, p.comm)


class _Plots(_AtEnd):
    """``plots/burden.png`` and ``plots/species.png`` over the whole run, when it ends (rank 0)."""

    def close(self, state) -> None:
        p = self.problem
        m, sc = p.model, p.scenario
        volume = p.comm.allreduce(float(m.mass.sum()))   # |Ω| [µm^d]: mean levels
        if p.summary is None or p.comm.rank != 0:
            return
        rows, evs = p.series.rows, p.events.events
        tt = np.array([r["t"] for r in rows])
        if m.N is not None:
            scale = p.protocol.scale
            per = (lambda a: np.asarray(a, float) * scale.cells(1.0)) if scale else np.asarray
            unit = "cells" if scale else "µm^%d (∫ N dx)" % m.domain.dim
            detection = scale.in_cells(sc.treatment.detection_limit) if scale else None
            outputs.burden_plot(p.out / "plots" / "burden.png", tt,
                                {c: per([r[f"clone_{c}"] for r in rows]) for c in m.clone_names},
                                per([r["burden"] for r in rows]), unit,
                                f"{sc.name}: tumour burden per clone", events=evs, detection=detection)
        panels = [(s.name, outputs.field_unit(s.name, sc),
                   np.array([r[f"total_{s.name}"] for r in rows]) / volume,
                   np.array([r[f"plasma_{s.name}"] for r in rows]) if s.kind == "drug" else None)
                  for s in m.species]
        outputs.species_plot(p.out / "plots" / "species.png", tt, panels,
                             f"{sc.name}: transported species", events=evs)


#: Scenario keys a resumed run may change (``--resume-with-changes``): they act from the next
#: step on without invalidating the state (the end, the step bounds, what is written and when).
RESUMABLE_CHANGES = ("time.end", "time.dt", "time.dt_min", "time.dt_initial", "output")


def all_differences(a, b, prefix: str = "") -> list[str]:
    """The dotted keys at which two plain-data trees differ, in document order."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(key)
            else:
                out += all_differences(a[k], b[k], key)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += all_differences(x, y, f"{prefix}.{i}" if prefix else str(i))
        return out
    return [] if a == b else [prefix or "(the whole scenario)"]


def first_difference(a, b) -> str | None:
    diffs = all_differences(a, b)
    return diffs[0] if diffs else None


def _resumable(out: Path):
    """(checkpoint path, its scenario YAML) of run directory ``out``, or the one-line reason it
    cannot be resumed (rank 0)."""
    if not out.is_dir():
        return f"--resume {out}: no such directory"
    found = checkpoints.complete(out)
    if not found:
        if not (out / "timeseries.csv").exists():
            return f"--resume {out}: not the output directory of a tme run (no timeseries.csv)"
        return (f"--resume {out}: no complete checkpoint in {out / 'checkpoint'} (the run stopped before "
                f"its first one; set output.checkpoint.every or .wall); run it again with --overwrite")
    path = found[-1]
    try:
        checkpoints.read_state(path)
        text = (path / "scenario.yaml").read_text()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"--resume {out}: checkpoint {path.name} cannot be read: {exc}"
    summary = out / "summary.json"
    if summary.exists():
        import json

        try:
            s = json.loads(summary.read_text())
        except ValueError:
            s = {}
        if "signal" not in s and s.get("end_time_hours", -1) >= checkpoints.read_state(path).t:
            return ("complete", f"tme: {out}: the run is complete (stopped: {s.get('stopped')} at "
                                f"t = {s.get('end_time_hours'):g} h); nothing to resume", s)
    return str(path), text


class _Progress:
    """A progress bar on a terminal, periodic log lines otherwise (rank 0 only)."""

    def __init__(self, end, logger, comm):
        import sys

        self.end, self.logger = end, logger
        self.on = comm.rank == 0 and logger.isEnabledFor(20)
        self.tty = self.on and sys.stderr.isatty()
        self.last_log = wallclock.perf_counter()
        self.t_start = self.last_log

    def update(self, t):
        if not self.on:
            return
        now = wallclock.perf_counter()
        frac = t / self.end if self.end else 1.0
        if self.tty:
            import sys

            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r[{bar:<30}] {100 * frac:5.1f}%  t = {t / 24:7.2f} d  ({now - self.t_start:5.1f} s)")
            sys.stderr.flush()
        elif now - self.last_log > 10:
            self.logger.info(f"  t = {t / 24:.2f} d ({100 * frac:.0f} %), {now - self.t_start:.0f} s")
            self.last_log = now

    def done(self):
        if self.tty:
            import sys

            sys.stderr.write("\n")


def run(scenario: Scenario | None, out: Path, comm=MPI.COMM_WORLD, overwrite: bool = False,
        quiet: bool = False, resume: bool = False, with_changes: bool = False, overrides=(),
        max_memory: float | None = None, inputs=()) -> dict:
    """Run a scenario into ``out`` (or continue the run in ``out``: ``resume``); returns the
    summary (also written to summary.json). ``max_memory``, ``inputs``: see :class:`Problem`."""
    with logging_for(quiet) as logger:
        if resume:
            try:
                problem = Problem.resume(out, comm, scenario, with_changes, overrides)
            except RunComplete as done:
                logger.warning(done.args[0])
                return done.args[1]
        else:
            problem = Problem(scenario, comm, out, overwrite=overwrite, max_memory=max_memory, inputs=inputs)
        return problem.initialise().run()


@contextlib.contextmanager
def logging_for(quiet: bool):
    """Within: with ``quiet`` only warnings and errors are logged."""
    logger = log.get()
    level = logger.level
    if quiet:
        logger.setLevel(30)
    try:
        yield logger
    finally:
        logger.setLevel(level)
