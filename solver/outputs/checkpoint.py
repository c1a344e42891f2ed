"""Checkpoints: the whole state of a run, for ``tme run --resume DIR``.

A checkpoint is a directory ``DIR/checkpoint/step_<n>/`` holding

- ``state.json``: the :class:`tme.state.State` (clock, counters, protocol, plasma schedules,
  pending doses, how much each output had written);
- ``scenario.yaml``: the resolved scenario it was computed with;
- ``fields.bp``: every field (concentrations, clone densities, N_tot, exposure maps and the
  cell density each AMG preconditioner was last built at) as one ADIOS2 array (node, field) in
  the *input* ordering of the mesh's nodes. The mesh is rebuilt from the scenario on resume
  (deterministically: the same input mesh whatever the number of ranks), so a run checkpointed
  on N ranks resumes on M;
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

import numpy as np

from . import replace_text
from ..state import State


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
        _write_input_order(partial / "fields.bp", list(self.functions.values()))
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
    """Fill ``functions`` (name -> DOLFINx function, all on one P1 space) from checkpoint
    ``path``, on any number of ranks (collective)."""
    names = json.loads((Path(path) / "meta.json").read_text())["fields"]
    missing = [n for n in functions if n not in names]
    if missing:
        raise ValueError(f"{path}: holds no field {missing[0]!r}")
    V = next(iter(functions.values())).function_space
    values = _read_input_order(Path(path) / "fields.bp", V, len(names))
    n = V.dofmap.index_map.size_local
    for j, name in enumerate(names):
        if name in functions:
            f = functions[name]
            f.x.array[:n] = values[:, j]
            f.x.scatter_forward()


# The fields are one array (input node, field) in the input ordering of the mesh's nodes, which
# a mesh rebuilt from the scenario shares on any number of ranks; each rank writes and reads a
# contiguous range of it and MPI moves the values between that range and the rank's own dofs.
# (adios4dolfinx's write_function_on_input_mesh stores a dofmap and cell permutations with each
# function: 223 MB against 12 MB of values for 17 fields at 69k dofs, and 2.0 s against 0.1 s.)


def _input_index(V) -> np.ndarray:
    """The input index of each owned dof of the P1 space V (its mesh node's)."""
    from .. import compat

    msh = V.mesh
    gdofs = compat.geometry_dofmap(msh)
    if gdofs.shape != V.dofmap.list.shape:
        raise ValueError("checkpoints need a mesh of degree 1 (its nodes are the P1 dofs)")
    imap = V.dofmap.index_map
    node = np.empty(imap.size_local + imap.num_ghosts, dtype=np.int64)
    node[V.dofmap.list.ravel()] = gdofs.ravel()
    return np.asarray(msh.geometry.input_global_indices, dtype=np.int64)[node[: imap.size_local]]


def _exchange(comm, owner: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Send row i of ``data`` to rank owner[i]; returns (rows received, the counts sent)."""
    from mpi4py import MPI

    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=comm.size).astype(np.int64)
    rcounts = np.empty_like(counts)
    comm.Alltoall(counts, rcounts)
    width = int(np.prod(data.shape[1:])) if data.ndim > 1 else 1
    send = np.ascontiguousarray(data[order]).reshape(-1)
    recv = np.empty((int(rcounts.sum()),) + data.shape[1:], dtype=data.dtype)
    typ = MPI.INT64_T if data.dtype == np.int64 else MPI.DOUBLE

    def displ(c):
        return np.concatenate([[0], np.cumsum(c)[:-1]]) * width

    comm.Alltoallv([send, counts * width, displ(counts), typ],
                   [recv.reshape(-1), rcounts * width, displ(rcounts), typ])
    return recv, order


def _write_input_order(path: Path, functions: list) -> None:
    from adios4dolfinx.adios2_helpers import adios2
    from adios4dolfinx.utils import compute_local_range, index_owner

    V = functions[0].function_space
    comm = V.mesh.comm
    N = V.dofmap.index_map.size_global
    n = V.dofmap.index_map.size_local
    g = _input_index(V)
    values = np.column_stack([f.x.array[:n] for f in functions]) if n else np.empty((0, len(functions)))
    owner = index_owner(comm, g, N)
    rg, order = _exchange(comm, owner, g)
    rv, _ = _exchange(comm, owner, values)
    lo, hi = compute_local_range(comm, N)
    block = np.empty((hi - lo, len(functions)))
    block[rg - lo] = rv
    adios = adios2.ADIOS(comm)
    io = adios.DeclareIO("tme-checkpoint-write")
    io.SetEngine("BP4")
    var = io.DefineVariable("fields", block, [N, len(functions)], [lo, 0], [hi - lo, len(functions)],
                            adios2.ConstantDims)
    engine = io.Open(str(path), adios2.Mode.Write)
    engine.BeginStep()
    engine.Put(var, block, adios2.Mode.Sync)
    engine.EndStep()
    engine.Close()
    adios.RemoveIO("tme-checkpoint-write")


def _read_input_order(path: Path, V, k: int) -> np.ndarray:
    from adios4dolfinx.adios2_helpers import adios2
    from adios4dolfinx.utils import compute_local_range, index_owner

    comm = V.mesh.comm
    N = V.dofmap.index_map.size_global
    lo, hi = compute_local_range(comm, N)
    adios = adios2.ADIOS(comm)
    io = adios.DeclareIO("tme-checkpoint-read")
    io.SetEngine("BP4")
    engine = io.Open(str(path), adios2.Mode.Read)
    engine.BeginStep()
    var = io.InquireVariable("fields")
    shape = [int(x) for x in var.Shape()] if var is not None else None
    ok = shape == [N, k]
    if ok:
        var.SetSelection([[lo, 0], [hi - lo, k]])
        block = np.empty((hi - lo, k))
        engine.Get(var, block, adios2.Mode.Sync)
    engine.EndStep()
    engine.Close()
    adios.RemoveIO("tme-checkpoint-read")
    if not ok:
        raise ValueError(f"{path}: holds fields of shape {shape}, this mesh has {N} nodes and "
                         f"the checkpoint {k} fields (a different mesh?)")
    # ask the owner of each of my dofs' input indices for its values
    g = _input_index(V)
    owner = index_owner(comm, g, N)
    asked, order = _exchange(comm, owner, g)
    answer = block[asked - lo]
    # send the answers back: to each asking rank, in the order it asked
    from mpi4py import MPI

    counts = np.bincount(owner, minlength=comm.size).astype(np.int64)
    rcounts = np.empty_like(counts)
    comm.Alltoall(counts, rcounts)     # rcounts[r]: how many rank r asked me
    got = np.empty((g.size, k))

    def displ(c):
        return np.concatenate([[0], np.cumsum(c)[:-1]]) * k

    comm.Alltoallv([np.ascontiguousarray(answer).reshape(-1), rcounts * k, displ(rcounts), MPI.DOUBLE],
                   [got.reshape(-1), counts * k, displ(counts), MPI.DOUBLE])
    out = np.empty((g.size, k))
    out[order] = got
    return out
