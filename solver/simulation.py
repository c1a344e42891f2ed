"""The time loop: a validated scenario in, results on disk out.

    scenario -> domain (mesh, tags) -> tissue fields -> species (drugs, factor, oxygen) -> loop

Each step lands exactly on the next milestone (dose start, infusion end, output time, end); the
step grows geometrically from ``time.dt_initial`` after each dose event up to ``time.dt``, so
steps are short while plasma levels change fast and long in drug-free intervals.
"""

from __future__ import annotations

import math
import time as wallclock
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dolfinx import fem
from mpi4py import MPI

from . import log, meshes, outputs, tissue
from .pk import PlasmaSet
from .scenario import Scenario, resolved_yaml
from .transport import COUNTERS, SpeciesModel, SpeciesSolver

GROWTH = 1.5  # step growth factor after a dose event


@dataclass
class Species:
    """A transported species and how it is reported."""

    name: str
    solver: SpeciesSolver
    kind: str  # 'drug', 'factor', 'oxygen'
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
    region_volumes: dict[str, float] = field(default_factory=dict)


def diffusivity(D0: float, radius: float, tf: tissue.TissueFields, fibre_radius: float, name: str):
    """D(x) = D0 exp(−√φ (1 + r/r_f)) as a DG0 function (Ogston hindrance)."""
    D = fem.Function(tf.ecm_fraction.function_space, name=f"D_{name}")
    D.x.array[:] = D0 * tissue.hindrance(tf.ecm_fraction.x.array, radius, fibre_radius)
    return D


def build(scenario: Scenario, comm) -> Model:
    logger = log.get()
    t0 = wallclock.perf_counter()
    domain = meshes.build(scenario.mesh, comm)
    tf = tissue.build(scenario.tissue, domain)
    V = fem.functionspace(domain.mesh, ("Lagrange", 1))
    ndofs = V.dofmap.index_map.size_global
    logger.info(f"mesh: {domain.dim}-D, {domain.mesh.topology.index_map(domain.dim).size_global} cells, "
                f"{ndofs} dofs per field, regions: {', '.join(domain.regions)}; "
                f"{comm.size} rank(s); built in {wallclock.perf_counter() - t0:.1f} s")
    plasma = PlasmaSet(scenario.drugs)
    model = Model(scenario, domain, tf, V, plasma)
    num = scenario.numerics
    h = domain.cell_size()
    wall = domain.facets.get("vessel_wall", ())

    # cells fill the tissue (N_tot = 1) until clones say otherwise
    model.n_tot = fem.Function(V, name="total")
    model.n_tot.x.array[:] = 1.0

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

    # region tags as a DG0 field, for ParaView
    W = tf.ecm_fraction.function_space
    model.region = fem.Function(W, name="region")
    ct = domain.cell_tags
    nloc = domain.mesh.topology.index_map(domain.dim).size_local
    model.region.x.array[ct.indices[ct.indices < nloc]] = ct.values[ct.indices < nloc]
    model.region.x.scatter_forward()
    return model


def _mean_of(plasma: PlasmaSet, name: str):
    return lambda t0, t1: plasma.means(t0, t1)[name]


class Run:
    """One simulation of a scenario, writing into ``out``."""

    def __init__(self, scenario: Scenario, out: Path, comm=MPI.COMM_WORLD, overwrite: bool = False):
        self.scenario, self.comm = scenario, comm
        self.logger = log.get()
        self.out = outputs.prepare_directory(Path(out), comm, overwrite)
        if comm.rank == 0:
            (self.out / "config.resolved.yaml").write_text(resolved_yaml(scenario))
        self.model = build(scenario, comm)

    # ----------------------------------------------------------------------------------------
    def milestones(self) -> list[float]:
        sc = self.scenario
        end = sc.time.end
        every = sc.output.every or end / 20.0
        times = set(np.arange(every, end, every).tolist()) if every > 0 else set()
        times.update(sc.output.snapshots.times or [end])
        times.add(end)
        return sorted(t for t in times if 0 < t <= end)

    def run(self) -> dict:
        sc, m, comm = self.scenario, self.model, self.comm
        start_wall = wallclock.perf_counter()
        end = sc.time.end
        for i, line in enumerate(sc.treatment.lines[:1]):
            m.plasma.add_regimen(line.regimen, 0.0, f"treatment.lines.{i}.regimen")
        fixed = self.milestones()
        outs = set(fixed)
        snaps = set(sc.output.snapshots.times or [end])
        dt_max = sc.time.dt
        dt_next = sc.time.dt_initial or dt_max
        names = [s.name for s in m.species]
        columns = ["t", "dt", *[f"total_{n}" for n in names], *[f"plasma_{s.name}" for s in m.species if s.kind == "drug"]]
        series = outputs.TimeSeries(self.out / "timeseries.csv", columns, comm)
        static = [m.region] + [s.auc for s in m.species if s.auc] + [s.above for s in m.species if s.above]
        writer = outputs.FieldWriter(self.out / "fields.xdmf", m.domain.mesh, static=[])
        fields = [s.solver.c for s in m.species]
        exposures = [f for f in static if f is not m.region]
        writer.write(fields + [m.region] + exposures, 0.0)
        series.add(self._row(0.0, 0.0))
        counters_before = COUNTERS.snapshot()
        t, steps = 0.0, 0
        progress = _Progress(end, self.logger, comm)
        try:
            while t < end - 1e-12 * max(end, 1.0):
                next_fixed = min((x for x in fixed if x > t + 1e-12), default=end)
                next_event = m.plasma.next_event(t)
                t1 = min(t + dt_next, next_fixed, next_event, end)
                dt = t1 - t
                self._transport_step(t, t1)
                self._accumulate(dt)
                t, steps = t1, steps + 1
                self._check(t)
                series.add(self._row(t, dt))
                if any(abs(t - x) <= 1e-9 * max(1.0, end) for x in outs):
                    writer.write(fields + [m.region] + exposures, t)
                if any(abs(t - x) <= 1e-9 * max(1.0, end) for x in snaps):
                    self._snapshot(t)
                # shrink after a dose event, then grow back towards dt
                if abs(t - next_event) <= 1e-12 * max(1.0, end):
                    dt_next = sc.time.dt_initial or min(dt_max, sc.time.dt_min * 10)
                else:
                    dt_next = min(dt_max, max(dt * GROWTH, sc.time.dt_min))
                progress.update(t)
        finally:
            writer.close()
            series.close()
        progress.done()
        loop_counters = {k: COUNTERS.snapshot()[k] - counters_before[k] for k in counters_before}
        wall = wallclock.perf_counter() - start_wall
        summary = {
            "scenario": sc.name,
            "end_time_hours": t,
            "steps": steps,
            "ranks": comm.size,
            "dofs_per_field": m.V.dofmap.index_map.size_global,
            "wall_time_seconds": wall,
            "in_loop": {"matrix_assemblies": loop_counters["matrix_assemblies"],
                        "form_compilations": loop_counters["form_compilations"]},
            "final_totals": {s.name: s.solver.total() for s in m.species},
        }
        outputs.write_json(self.out / "summary.json", summary, comm)
        if sc.output.plots and comm.rank == 0:
            rows = series.rows
            tt = np.array([r["t"] for r in rows])
            outputs.plot_series(self.out / "plots" / "species.png", tt,
                                {n: np.array([r[f"total_{n}"] for r in rows]) for n in names},
                                "amount in tissue [µM·µm^d]", f"{sc.name}: transported species")
        self.logger.info(f"done: {steps} steps in {wall:.1f} s; results in {self.out}")
        return summary

    # ----------------------------------------------------------------------------------------
    def _transport_step(self, t0, t1):
        n_tot = self.model.n_tot.x.array
        for s in self.model.species:
            s.solver.step(t0, t1, n_tot)

    def _accumulate(self, dt):
        for s in self.model.species:
            if s.auc is not None:
                c = s.solver.c.x.array
                s.auc.x.array[:] += dt * c
                s.above.x.array[:] += dt * (c >= s.ec50)

    def _check(self, t):
        bad = None
        for s in self.model.species:
            a = s.solver.c.x.array
            if not np.all(np.isfinite(a)):
                i = int(np.argmax(~np.isfinite(a)))
                bad = (s.name, "NaN", i, a[i])
                break
            if a.size and a.min() < -1e-8 * max(1.0, np.abs(a).max()):
                i = int(np.argmin(a))
                bad = (s.name, "negative", i, a[i])
                break
        where = None
        if bad:
            x = self.model.V.tabulate_dof_coordinates()[bad[2]]
            where = f"{bad[0]} is {bad[1]} ({bad[3]:.3g}) at t = {t:g} h, x = ({', '.join(f'{v:.1f}' for v in x[: self.model.domain.dim])}) µm"
        msgs = [w for w in self.comm.allgather(where) if w]
        if msgs:
            raise FloatingPointError(msgs[0] + "; outputs up to the previous step are complete")

    def _row(self, t, dt) -> dict:
        row = {"t": t, "dt": dt}
        for s in self.model.species:
            row[f"total_{s.name}"] = s.solver.total()
            if s.kind == "drug":
                row[f"plasma_{s.name}"] = self.model.plasma.levels(t)[s.name]
        return row

    def _snapshot(self, t):
        fields = [s.solver.c for s in self.model.species]
        wanted = self.scenario.output.snapshots.fields
        chosen = [f for f in fields if f.name in wanted] or fields
        outputs.snapshot(self.out / "snapshots" / f"day_{t / 24:06.2f}.png", chosen, t, self.comm)


class _Progress:
    """A progress bar on a terminal, periodic log lines otherwise (rank 0 only)."""

    def __init__(self, end, logger, comm):
        import sys

        self.end, self.logger = end, logger
        self.on = comm.rank == 0
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


def run(scenario: Scenario, out: Path, comm=MPI.COMM_WORLD, overwrite: bool = False) -> dict:
    return Run(scenario, out, comm, overwrite).run()
