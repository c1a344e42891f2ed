"""Checkpoints: the whole state of a run, for ``tme run --resume DIR``.

A checkpoint is a directory ``DIR/checkpoint/step_<n>/`` holding

- ``state.json``: the :class:`solver.state.State` (clock, counters, protocol, plasma schedules,
  pending doses, how much each output had written);
- ``scenario.yaml``: the resolved scenario it was computed with;
- ``fields.bp``: every field (concentrations, clone densities, N_tot, exposure maps and the
  cell density each AMG preconditioner was last built at), written with adios4dolfinx in the
  mesh's *input* ordering. The mesh is rebuilt from the scenario on resume (deterministic: the
  same input mesh whatever the number of ranks), so a run checkpointed on N ranks resumes on M;
- ``meta.json``: ranks, dofs, time.

It is written into ``step_<n>.partial/`` and renamed when complete: a directory named
``step_<n>`` is always whole, and the older one is removed only after. A run killed while
writing leaves the previous checkpoint intact (and a ``.partial`` directory that the next
checkpoint or resume removes).

Units: times in hours, wall time in seconds.
"""

from __future__ import annotations

import json
import shutil
import time as wallclock
from pathlib import Path

from . import replace_text
from ..state import State


def _adios_mode(kind: str):
    from adios4dolfinx.adios2_helpers import adios2

    return getattr(adios2.Mode, kind)


def complete(out: Path) -> list[Path]:
    """The complete checkpoints in run directory ``out``, oldest first."""
    root = Path(out) / "checkpoint"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")
             and not p.name.endswith(".partial") and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


class Checkpoint:
    """Writes checkpoints at simulated-time milestones (``every`` [hour]), when ``wall`` [s]
    of wall time have passed since the last one, and when the run is stopped by a signal.

    ``functions`` maps a checkpoint name to a DOLFINx function; ``before_write`` copies the
    arrays the problem keeps outside functions into them; ``scenario_yaml`` is the resolved
    scenario.
    """

    def __init__(self, out: Path, comm, functions, times, wall: float | None, scenario_yaml: str,
                 before_write=None, meta=None):
        self.out, self.comm = Path(out), comm
        self.functions = functions
        self.milestones = tuple(times)
        self._times = set(self.milestones)
        self.wall = wall
        self.scenario_yaml = scenario_yaml
        self.before_write = before_write
        self.meta = meta or {}
        self.last_wall = wallclock.monotonic()
        self.wall_due = False     # agreed across ranks by the problem once per step
        self.requested = False    # a signal stop asks for one
        self.seconds: list[float] = []
        self.path: Path | None = None
        self._step = -1

    def wall_elapsed(self) -> bool:
        """Has the wall interval passed (this rank's clock; the problem agrees on rank 0's)?"""
        return self.wall is not None and wallclock.monotonic() - self.last_wall >= self.wall

    def due(self, state) -> bool:
        return self.requested or self.wall_due or state.t in self._times

    def write(self, state, t: float) -> Path:
        import adios4dolfinx

        if getattr(self, "path", None) is not None and self._step == state.steps:
            return self.path   # a stop right after a checkpoint: that one is this state
        t0 = wallclock.perf_counter()
        if self.before_write is not None:
            self.before_write()
        state.written["checkpoints"] = state.written.get("checkpoints", 0) + 1
        root = self.out / "checkpoint"
        final = root / f"step_{state.steps:09d}"
        partial = root / f"step_{state.steps:09d}.partial"
        if self.comm.rank == 0:
            for p in root.glob("*.partial") if root.is_dir() else ():
                shutil.rmtree(p)
            partial.mkdir(parents=True)
        self.comm.barrier()
        mode = _adios_mode("Write")
        for name, f in self.functions.items():
            adios4dolfinx.write_function_on_input_mesh(partial / "fields.bp", f, engine="BP4",
                                                       mode=mode, time=0.0, name=name)
            mode = _adios_mode("Append")
        self.comm.barrier()
        if self.comm.rank == 0:
            (partial / "scenario.yaml").write_text(self.scenario_yaml)
            meta = {**self.meta, "t_hours": t, "steps": state.steps, "ranks": self.comm.size,
                    "fields": list(self.functions)}
            (partial / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            replace_text(partial / "state.json", state.to_json() + "\n")
            if final.exists():   # left by a resumed run killed before its next checkpoint
                shutil.rmtree(final)
            partial.rename(final)
            for old in complete(self.out):
                if old != final:
                    shutil.rmtree(old)
        self.comm.barrier()
        self.last_wall = wallclock.monotonic()
        self.requested = self.wall_due = False
        self.seconds.append(wallclock.perf_counter() - t0)
        self.path, self._step = final, state.steps
        return final

    def close(self, state) -> None:
        pass


def read_state(path: Path) -> State:
    return State.from_json((Path(path) / "state.json").read_text())


def read_fields(path: Path, functions) -> None:
    """Fill ``functions`` (name -> DOLFINx function) from checkpoint ``path`` (collective)."""
    import adios4dolfinx

    for name, f in functions.items():
        adios4dolfinx.read_function(Path(path) / "fields.bp", f, engine="BP4", time=0.0, name=name)
        f.x.scatter_forward()
