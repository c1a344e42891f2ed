"""The time loop: a validated scenario in, results on disk out.

    scenario -> domain (mesh, tags) -> tissue fields -> species (drugs, factor, oxygen, immune)
             -> clones -> protocol -> Strang-split time loop -> outputs

One step from t to t + dt (MODEL.md §5): a half step of the pointwise clone reactions with the
concentrations at t, a full backward-Euler transport step of every species with the cell density
after that half step, and a second half step of reactions with the new concentrations.

Steps land exactly on every milestone: dose starts and infusion ends (PK), assessments (the
protocol), output and snapshot times, and the end. After each dose event the step restarts at
``time.dt_initial`` and grows by ×1.5 per step up to ``time.dt``: short while plasma levels
change fast, long in drug-free intervals.

Units: µm, hour, µM; densities are volume fractions.
"""

from __future__ import annotations

import json
import time as wallclock
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ufl
from dolfinx import fem
from mpi4py import MPI

from . import log, meshes, outputs, tissue
from .kernel import KernelError
from .pharmacology import DRUG_CLASSES
from .pk import PlasmaSet
from .protocol import Event, Protocol
from .reactions import CloneReactions, hill
from .clones import check_references as check_clones
from .protocol import check_references as check_treatment
from .scenario import Scenario, resolved_yaml
from .spec import ScenarioError, located
from .transport import COUNTERS, SpeciesModel, SpeciesSolver, assemble_vector, check_entry, compile_form

GROWTH = 1.5  # step growth factor after a dose event


@dataclass
class Species:
    """A transported species and how it is reported."""

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


def build(scenario: Scenario, comm) -> Model:
    logger = log.get()
    t0 = wallclock.perf_counter()
    domain = meshes.build(scenario.mesh, comm)
    tf = tissue.build(scenario.tissue, domain)
    V = fem.functionspace(domain.mesh, ("Lagrange", 1))
    ndofs = V.dofmap.index_map.size_global
    _check_regions(scenario, domain)
    check_entry(scenario, domain, tf)  # every drug has a way into the tissue (needs mesh + tissue)
    plasma = PlasmaSet(scenario.drugs)
    model = Model(scenario, domain, tf, V, plasma)
    num = scenario.numerics
    h = domain.cell_size()
    wall = domain.facets.get("vessel_wall", ())
    nloc = V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts
    one = fem.Constant(domain.mesh, 1.0)
    model.mass = _lumped(V, one, ufl.dx)
    dx_tags = ufl.Measure("dx", domain=domain.mesh, subdomain_data=domain.cell_tags)
    for name, tag in domain.regions.items():
        model.region_mass[name] = _lumped(V, one, dx_tags(tag))

    model.n_tot = fem.Function(V, name="total")
    model.n_tot.x.array[:] = 1.0  # cells fill the tissue unless clones say otherwise

    def boundary_facets(bmap: dict, key: str) -> dict:
        return {name: domain.facet(name, f"{key}.boundary.{name}") for name in bmap}

    def make(name, kind, spec_model, ec50=None):
        solver = SpeciesSolver(spec_model, V, domain.facet_tags, lumped=num.lumped_mass,
                               solver=num.solver, amg_threshold=num.amg_threshold, rtol=num.rtol,
                               cell_size=h)
        sp = Species(name, solver, kind, ec50)
        if kind == "drug":
            sp.auc = fem.Function(V, name=f"auc_{name}")
            sp.above = fem.Function(V, name=f"time_above_ec50_{name}")
        model.species.append(sp)

    rf = scenario.tissue.fibre_radius
    for name, d in scenario.drugs.items():
        key = f"drugs.{name}"
        make(name, "drug", SpeciesModel(
            name=name, diffusivity=diffusivity(d.diffusivity, d.radius, tf, rf, name),
            decay=d.decay, uptake=d.uptake, permeability=d.permeability,
            vascular_density=tf.vascular_density, plasma=_mean_of(plasma, name),
            boundary=dict(d.boundary), boundary_facets=boundary_facets(d.boundary, key),
            wall_facets=wall, initial=d.initial), ec50=d.ec50)
    sf = scenario.survival_factor
    if sf.enabled:
        make("factor", "factor", SpeciesModel(
            name="factor", diffusivity=diffusivity(sf.diffusivity, sf.radius, tf, rf, "factor"),
            decay=sf.decay, uptake=sf.uptake, source=sf.secretion * tf.caf_density,
            boundary=dict(sf.boundary), boundary_facets=boundary_facets(sf.boundary, "survival_factor"),
            initial=sf.initial))
    ox = scenario.oxygen
    if ox.enabled:
        level = ox.blood_level
        make("oxygen", "oxygen", SpeciesModel(
            name="oxygen", diffusivity=diffusivity(ox.diffusivity, ox.radius, tf, rf, "oxygen"),
            decay=ox.decay, uptake=ox.consumption, permeability=ox.permeability,
            vascular_density=tf.vascular_density, plasma=lambda t0, t1: level,
            boundary=dict(ox.boundary), boundary_facets=boundary_facets(ox.boundary, "oxygen"),
            wall_facets=wall, initial=level if ox.initial is None else ox.initial))
    im = scenario.immune
    if im.enabled:
        make("immune", "immune", SpeciesModel(
            name="immune", diffusivity=fem.Constant(domain.mesh, im.diffusivity), decay=im.clearance,
            boundary=dict(im.boundary), boundary_facets=boundary_facets(im.boundary, "immune"),
            initial=im.initial))
        model.sv_dofs = _to_dofs(V, tf.vascular_density, model.mass)

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
    logger.info(f"mesh: {domain.dim}-D, {domain.mesh.topology.index_map(domain.dim).size_global} cells, "
                f"{ndofs} dofs per field, regions: {', '.join(domain.regions)}; "
                f"{comm.size} rank(s); built in {wallclock.perf_counter() - t0:.1f} s")
    return model


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
                amg_threshold=num.amg_threshold, rtol=num.rtol, cell_size=h))
    np.sum(model.N, axis=0, out=model.n_tot.x.array)


def _mean_of(plasma: PlasmaSet, name: str):
    return lambda t0, t1: plasma.means(t0, t1)[name]


class EventLog:
    """``events.csv`` and ``events.json``: every dose, assessment and decision (rank 0 writes)."""

    def __init__(self, out: Path, comm):
        self.out, self.rank0 = out, comm.rank == 0
        self.events: list[Event] = []
        if self.rank0:
            self._csv = open(out / "events.csv", "w")
            self._csv.write("time_hours,time_days,event,reason,data\n")
            self._csv.flush()

    def add(self, events):
        for e in events:
            self.events.append(e)
            if self.rank0:
                data = json.dumps(e.data, default=float).replace('"', '""')
                reason = e.reason.replace('"', '""')
                self._csv.write(f'{e.time!r},{e.time / 24:.6g},{e.event},"{reason}","{data}"\n')
        if self.rank0:
            self._csv.flush()
            tmp = self.out / "events.json.tmp"
            tmp.write_text(json.dumps([e.as_dict() for e in self.events], indent=1, default=float) + "\n")
            tmp.replace(self.out / "events.json")

    def close(self):
        if self.rank0:
            self._csv.close()


class Run:
    """One simulation of a scenario, writing into ``out``."""

    def __init__(self, scenario: Scenario, out: Path, comm=MPI.COMM_WORLD, overwrite: bool = False):
        self.scenario, self.comm = scenario, comm
        self.logger = log.get()
        # everything a scenario can get wrong is found while building: before any file is written
        outputs.check_directory(Path(out), comm, overwrite)
        self.model = build(scenario, comm)
        self.out = outputs.prepare_directory(Path(out), comm, overwrite)
        if comm.rank == 0:
            (self.out / "config.resolved.yaml").write_text(resolved_yaml(scenario))
        m = self.model
        self._c = np.zeros((len(m.drugs), m.V.dofmap.index_map.size_local + m.V.dofmap.index_map.num_ghosts))
        self._ici = [i for i, s in enumerate(m.drugs)
                     if DRUG_CLASSES[scenario.drugs[s.name].drug_class].activates_immunity]
        self.pending_doses: list[tuple[float, str, float]] = []

    # ----------------------------------------------------------------------------------------
    def fixed_milestones(self) -> list[float]:
        sc = self.scenario
        end = sc.time.end
        every = sc.output.every or end / 20.0
        times = set(np.arange(every, end, every).tolist()) if every > 0 else set()
        times.update(self._snapshot_times())
        times.add(end)
        return sorted(t for t in times if 0 < t <= end)

    def _snapshot_times(self) -> list[float]:
        times = self.scenario.output.snapshots.times
        return [self.scenario.time.end] if times is None else list(times)

    def run(self) -> dict:
        sc, m, comm = self.scenario, self.model, self.comm
        start_wall = wallclock.perf_counter()
        end = sc.time.end
        tol = 1e-9 * max(1.0, end)
        fixed = self.fixed_milestones()
        outs = set(fixed)
        snaps = set(self._snapshot_times())
        dt_max = sc.time.dt
        dt_first = sc.time.dt_initial or dt_max

        events = EventLog(self.out, comm)
        protocol = Protocol(sc.treatment, sc.clones.mechanisms() if sc.clones else {})
        burden, fractions, regions = self._composition()
        if sc.treatment.lines:
            events.add(protocol.start(0.0, burden, fractions, regions))
            self._schedule(protocol.line.regimen, 0.0, protocol.index)
        series = outputs.TimeSeries(self.out / "timeseries.csv", self._columns(), comm)
        writer = outputs.FieldWriter(self.out / "fields.xdmf", m.domain.mesh)
        self._update_fields()
        writer.write(self._fields(), 0.0)
        series.add(self._row(0.0, 0.0, burden, fractions, protocol))
        nadir = (burden, 0.0)
        counters_before = COUNTERS.snapshot()
        t, steps, dt_next = 0.0, 0, dt_first
        progress = _Progress(end, self.logger, comm)
        stopped = None
        try:
            while t < end - tol and stopped is None:
                next_fixed = min((x for x in fixed if x > t + tol), default=end)
                next_event = m.plasma.next_event(t)
                next_assess = protocol.next_assessment() if sc.treatment.lines else np.inf
                t1 = min(t + dt_next, next_fixed, next_event, next_assess, end)
                dt = t1 - t
                self._step(t, t1)
                t, steps = t1, steps + 1
                self._check(t)
                burden, fractions, regions = self._composition()
                if burden < nadir[0]:
                    nadir = (burden, t)
                assessed = None
                if abs(t - next_assess) <= tol:
                    decision = protocol.assess(t, burden, self._resistant_fraction(fractions), fractions, regions)
                    events.add(decision.events)
                    assessed = decision
                    if decision.new_line is not None:
                        m.plasma.cancel_from(t)
                        self.pending_doses = [d for d in self.pending_doses if d[0] < t - tol]
                        self._schedule(decision.new_line.regimen, t, protocol.index)
                        dt_next = dt_first
                    if decision.stop:
                        stopped = decision.events[-1].reason
                # after the assessment: a switch at t cancels the old line's doses at t
                self._log_doses(t, events)
                series.add(self._row(t, dt, burden, fractions, protocol, assessed))
                if any(abs(t - x) <= tol for x in outs) or stopped:
                    self._update_fields()
                    writer.write(self._fields(), t)
                if any(abs(t - x) <= tol for x in snaps):
                    self._snapshot(t)
                if abs(t - next_event) <= tol:
                    dt_next = dt_first  # a dose starts or an infusion ends: small steps again
                elif assessed is None or assessed.new_line is None:
                    dt_next = min(dt_max, max(dt * GROWTH, sc.time.dt_min))
                progress.update(t)
            if stopped is None and sc.treatment.lines:
                events.add(protocol.end(t))
        finally:
            writer.close()
            series.close()
            events.close()
            progress.done()
        loop_counters = {k: COUNTERS.snapshot()[k] - counters_before[k] for k in counters_before}
        wall = wallclock.perf_counter() - start_wall
        summary = self._summary(t, steps, wall, series, events, nadir, protocol, loop_counters, stopped)
        outputs.write_json(self.out / "summary.json", summary, comm)
        if sc.output.plots and comm.rank == 0:
            self._plots(series.rows, events.events)
        self.logger.info(f"done: {steps} steps in {wall:.1f} s; results in {self.out}")
        return summary

    # ----------------------------------------------------------------------------------------
    def _schedule(self, regimen, t0, index):
        key = f"treatment.lines.{index}.regimen"
        self.model.plasma.add_regimen(regimen, t0, key)
        for dose in regimen:
            for k in range(dose.cycles):
                ts = t0 + dose.start + k * (dose.every or 0.0)
                if ts <= self.scenario.time.end:
                    self.pending_doses.append((ts, dose.drug, k + 1))
        self.pending_doses.sort()

    def _log_doses(self, t, events: EventLog):
        tol = 1e-9 * max(1.0, self.scenario.time.end)
        due = [d for d in self.pending_doses if d[0] <= t + tol]
        if due:
            self.pending_doses = [d for d in self.pending_doses if d[0] > t + tol]
            events.add([Event(ts, "dose", f"{drug}, cycle {k}", {"drug": drug, "cycle": k}) for ts, drug, k in due])

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

    def _step(self, t0, t1):
        m = self.model
        dt = t1 - t0
        if m.reactions is not None:
            m.reactions.advance(m.N, *self._concentrations(), 0.5 * dt, total=m.n_tot.x.array)
        n_tot = m.n_tot.x.array
        activation = None   # of the checkpoint inhibitors at t1 (drugs are stepped first)
        for s in m.species:
            source = None
            if s.kind == "immune":
                im = self.scenario.immune
                if self._ici:
                    activation = self._activation()
                boost = 1.0 + im.boost * activation if self._ici else 1.0
                source = im.recruitment * m.sv_dofs * boost
            s.solver.step(t0, t1, n_tot, nodal_source=source)
        if m.reactions is not None:
            for i, solver in enumerate(m.motility):
                solver.c.x.array[:] = m.N[i]
                solver.step(t0, t1)
                m.N[i] = np.maximum(solver.c.x.array, 0.0)
            m.reactions.advance(m.N, *self._concentrations(activation), 0.5 * dt,
                                total=m.n_tot.x.array)
        for s in m.drugs:
            c = s.solver.c.x.array
            s.auc.x.array[:] += dt * c
            s.above.x.array[:] += dt * (c >= s.ec50)

    def _composition(self):
        """Burden ∫ N_tot dx, clone fractions (whole domain) and clone amounts per region.

        One reduction per step gathers these and the amount of every species.
        """
        m = self.model
        n = m.mass.size
        parts = [np.array([float(m.mass @ s.solver.c.x.array[:n]) for s in m.species])]
        if m.N is not None:
            parts.append((m.N[:, :n] @ m.mass).ravel())
            parts += [(m.N[:, :n] @ m.region_mass[r]).ravel() for r in m.region_mass]
        flat = self.comm.allreduce(np.concatenate(parts), op=MPI.SUM)
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

    def _check(self, t):
        m = self.model
        bad = None
        arrays = [(s.name, s.solver.c.x.array) for s in m.species]
        if m.N is not None:
            arrays += [(name, m.N[i]) for i, name in enumerate(m.clone_names)]
        for name, a in arrays:
            if not np.all(np.isfinite(a)):
                i = int(np.argmax(~np.isfinite(a)))
                bad = (name, "not a number", i, a[i])
                break
            if a.size and a.min() < -1e-8 * max(1.0, float(np.abs(a).max())):
                i = int(np.argmin(a))
                bad = (name, "negative", i, a[i])
                break
        where = None
        if bad:
            x = m.V.tabulate_dof_coordinates()[bad[2]]
            where = (f"{bad[0]} is {bad[1]} ({bad[3]:.3g}) at t = {t:g} h, "
                     f"x = ({', '.join(f'{v:.1f}' for v in x[: m.domain.dim])}) µm")
        msgs = [w for w in self.comm.allgather(where) if w]
        if msgs:
            raise FloatingPointError(msgs[0] + "; the outputs written so far are complete up to the previous step")

    # ----------------------------------------------------------------------------------------
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
        if m.N is not None:
            cols += ["burden", "resistant_fraction"]
            cols += [f"clone_{c}" for c in m.clone_names]
            cols += [f"clone_{c}@{r}" for r in m.region_mass for c in m.clone_names]
        cols += [f"total_{s.name}" for s in m.species] + [f"plasma_{s.name}" for s in m.drugs]
        if self.scenario.treatment.lines:
            cols += ["assessment", "nadir", "progression"]
        return cols

    def _row(self, t, dt, burden, fractions, protocol, assessed=None) -> dict:
        m = self.model
        row = {"t": t, "dt": dt, "line": protocol.line.name if self.scenario.treatment.lines else ""}
        if m.N is not None:
            row["burden"] = burden
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
        if self.scenario.treatment.lines:
            row["assessment"] = int(assessed is not None)
            row["nadir"] = protocol.nadir if assessed is not None else ""
            row["progression"] = int(bool(assessed is not None and assessed.progression))
        return row

    def _summary(self, t, steps, wall, series, events, nadir, protocol, loop_counters, stopped) -> dict:
        m, sc = self.model, self.scenario
        rows = series.rows
        summary = {
            "scenario": sc.name,
            "end_time_hours": t,
            "stopped": stopped or "end time",
            "steps": steps,
            "ranks": self.comm.size,
            "dofs_per_field": m.V.dofmap.index_map.size_global,
            "wall_time_seconds": wall,
            "in_loop": {"matrix_assemblies": loop_counters["matrix_assemblies"],
                        "form_compilations": loop_counters["form_compilations"]},
            "final_totals": dict(self._species_totals),
        }
        if m.N is not None:
            burdens = np.array([r["burden"] for r in rows])
            rf = np.array([r["resistant_fraction"] for r in rows])
            summary.update({
                "initial_burden": float(burdens[0]),
                "final_burden": float(burdens[-1]),
                "max_burden": float(burdens.max()),
                "nadir_burden": nadir[0],
                "nadir_time_hours": nadir[1],
                "final_resistant_fraction": float(rf[-1]),
                "max_resistant_fraction": float(rf.max()),
                "final_clone_amounts": {c: float(self._amounts[i]) for i, c in enumerate(m.clone_names)},
                "final_clone_amounts_by_region": {
                    r: {c: float(a[i]) for i, c in enumerate(m.clone_names)}
                    for r, a in self._region_amounts.items()},
            })
        if sc.treatment.lines:
            prog = [e for e in events.events if e.event == "progression"]
            summary.update({
                "time_to_progression_hours": prog[0].time if prog else None,
                "progressions": len(prog),
                "lines_used": protocol.index + 1,
                "final_line": protocol.line.name,
            })
        return summary

    def _plots(self, rows, evs):
        m, sc = self.model, self.scenario
        tt = np.array([r["t"] for r in rows])
        markers = [(e.time, e.event) for e in evs if e.event in ("switch", "progression")]
        if m.N is not None:
            series = {c: np.array([r[f"clone_{c}"] for r in rows]) for c in m.clone_names}
            series["burden"] = np.array([r["burden"] for r in rows])
            outputs.plot_series(self.out / "plots" / "burden.png", tt, series,
                                "amount  ∫ N dx  [µm^%d]" % m.domain.dim,
                                f"{sc.name}: tumour burden per clone", markers=markers)
        outputs.plot_series(self.out / "plots" / "species.png", tt,
                            {s.name: np.array([r[f"total_{s.name}"] for r in rows]) for s in m.species},
                            "amount in tissue  ∫ c dx", f"{sc.name}: transported species", markers=markers)

    def _snapshot(self, t):
        self._update_fields()
        fields = self._fields()
        wanted = self.scenario.output.snapshots.fields
        chosen = [f for f in fields if f.name in wanted] or [s.solver.c for s in self.model.species]
        outputs.snapshot(self.out / "snapshots" / f"day_{t / 24:06.2f}.png", chosen, t, self.comm)


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


def run(scenario: Scenario, out: Path, comm=MPI.COMM_WORLD, overwrite: bool = False, quiet: bool = False) -> dict:
    """Run a scenario into ``out``; returns the summary (also written to summary.json)."""
    logger = log.get()
    level = logger.level
    if quiet:
        logger.setLevel(30)
    try:
        return Run(scenario, out, comm, overwrite).run()
    finally:
        logger.setLevel(level)
