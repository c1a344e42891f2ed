"""What a run writes: fields for ParaView, time series, events, summary, plots, snapshots and
checkpoints, each an :class:`Output` with its own cadence.

Every writer is collective where it must be (field files, checkpoints, snapshots gather to rank
0) and writes files from rank 0 otherwise. Whatever a run has written stays readable when it is
killed at any moment: rows are appended whole, field frames and checkpoints are closed files
that their index or name lists only once complete (see :mod:`tme.outputs.fields` and
:mod:`tme.outputs.checkpoint`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Protocol

import numpy as np

from ..config.spec import ScenarioError


class Output(Protocol):
    """What the problem writes through: an output decides itself when it is due.

    ``milestones`` are the times [hour] its cadence needs the steps to land on; ``due(state)``
    says whether the step just taken (``state.t``) is one of its times; ``write(state, t)``
    writes at time t [hour]; ``close(state)`` finishes its files (at the end or at a stop).
    """

    milestones: tuple[float, ...]

    def due(self, state) -> bool: ...

    def write(self, state, t: float) -> None: ...

    def close(self, state) -> None: ...


def check_directory(out: Path, comm, overwrite: bool, inputs=()) -> None:
    """Refuse an ``out`` a run cannot write into, before its (possibly long) set-up.

    Refused: a file (the scenario itself, or anything else); a path below a file; a directory
    on a read-only filesystem or without write permission, or that cannot be created there; a
    non-empty directory without ``overwrite``; with ``overwrite``, a directory in which the run
    would replace one of its own ``inputs`` (the scenario or mesh file). Writes nothing.
    """
    err = None
    if comm.rank == 0:
        try:
            err = _directory_problem(Path(out), overwrite, [Path(p) for p in inputs])
        except OSError as exc:  # a name too long, a loop of links, ...
            err = f"--out {out}: {exc.strerror or exc}"
    err = comm.bcast(err, root=0)
    if err:
        raise ScenarioError(err)


def _directory_problem(out: Path, overwrite: bool, inputs: list[Path]) -> str | None:
    from ..resources import existing_ancestor

    if out.exists() and not out.is_dir():
        if any(p.exists() and out.samefile(p) for p in inputs):
            return f"--out {out}: is the scenario's own input file; give a directory for the results"
        return f"--out {out}: exists and is not a directory"
    base = existing_ancestor(out)
    if base.is_symlink() and not base.exists():
        return f"--out {out}: {base} is a broken link or a loop of links"
    if not base.is_dir():
        return f"--out {out}: {base} is a file, so no directory can be made below it"
    if os.statvfs(base).f_flag & os.ST_RDONLY:
        return f"--out {out}: {base} is on a read-only filesystem"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"--out {out}: {base} is not writable (permission denied)"
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            return (f"--out {out}: directory is not empty; choose another --out or pass --overwrite "
                    "to replace the results in it")
        for name in RUN_FILES:
            if any(p.exists() and (out / name).exists() and _within(p, out / name) for p in inputs):
                return (f"--out {out}: --overwrite would replace {out / name}, which this run "
                        "reads; choose another --out")
    return None


def _within(path: Path, target: Path) -> bool:
    """``path`` is ``target`` or lies inside the directory ``target``."""
    path, target = path.resolve(), target.resolve()
    return path == target or target in path.parents


def check_space(out: Path, comm, nbytes: float, what: str) -> None:
    """Refuse a run whose outputs (about ``nbytes``: ``what``) do not fit on the disk of ``out``."""
    from ..resources import free_space, human

    err = None
    if comm.rank == 0:
        free = free_space(Path(out))
        if free is not None and free < nbytes:
            err = (f"--out {out}: the run will write about {human(nbytes)} ({what}) but its "
                   f"filesystem has {human(free)} free; free some space or choose another --out")
    err = comm.bcast(err, root=0)
    if err:
        raise ScenarioError(err)


def prepare_directory(out: Path, comm, overwrite: bool, inputs=()) -> Path:
    """Create ``out``; a non-empty directory is refused unless ``overwrite``.

    With ``overwrite`` only the files a run writes are removed, never anything else a user keeps
    there.
    """
    out = Path(out)
    check_directory(out, comm, overwrite, inputs)
    if comm.rank == 0:
        if out.is_dir() and overwrite:
            for name in RUN_FILES:
                p = out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        out.mkdir(parents=True, exist_ok=True)
    comm.barrier()
    return out


#: Files and folders a run owns in its output directory (removed by --overwrite).
RUN_FILES = ("config.resolved.yaml", "fields.xdmf", "fields", "fields.h5", "regions.csv",
             "timeseries.csv", "summary.json",
             "events.csv", "events.json", "plots", "snapshots", "checkpoint", "network.pvd", "network")


def agree(comm, failure: OSError | None) -> None:
    """Raise a write failure of any rank on every rank (collective).

    Files are written by rank 0 alone or by every rank together; if one rank went on after a
    failure it would wait forever in the next collective call while the other closes its files.
    """
    from ..resources import free_space

    failures = [f for f in comm.allgather(failure) if f is not None]
    if failures:
        exc = failures[0]
        exc.agreed = True  # raised on every rank: reported once, by rank 0, without an abort
        if exc.filename:
            exc.free = free_space(Path(exc.filename))  # now, before the run's claimed space is freed
        raise exc


@contextlib.contextmanager
def hdf5_writes(comm, path: Path):
    """Around collective HDF5 writes of ``path``: HDF5 prints no error stack of its own, and a
    write that failed on a full disk is an OSError(ENOSPC) naming ``path`` on every rank (HDF5
    itself only says that it could not create or close something)."""
    from ..resources import free_space

    _quiet_hdf5()
    failure = None
    try:
        yield
    except RuntimeError:
        free = free_space(path)
        # HDF5 does not pass on errno; a filesystem with (almost) nothing left is the cause
        if free is None or free >= FULL_DISK_MARGIN:
            raise
        failure = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    agree(comm, failure)


#: Free space [bytes] below which a failed HDF5 write is taken to be a full disk.
FULL_DISK_MARGIN = 1 << 20


def _quiet_hdf5():
    """Switch off HDF5's automatic error printing in the library DOLFINx writes with: a failed
    write is raised as an exception (and reported in one line), not as a page of HDF5 stack."""
    global _HDF5_QUIET
    if _HDF5_QUIET:
        return
    _HDF5_QUIET = True
    import ctypes

    try:
        with open("/proc/self/maps") as fh:
            libs = {ln.split()[-1] for ln in fh if "libhdf5" in ln and ".so" in ln and "_hl" not in ln}
    except OSError:
        return
    for lib in libs:
        try:
            h5 = ctypes.CDLL(lib)
            h5.H5Eset_auto2.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
            h5.H5Eset_auto2(0, None, None)  # 0: H5E_DEFAULT, the error stack of this thread
        except (OSError, AttributeError):
            pass


_HDF5_QUIET = False


def write_json(path: Path, data, comm):
    """Write ``data`` as JSON (rank 0), atomically: the file is always a whole one."""
    if comm.rank == 0:
        replace_text(Path(path), json.dumps(data, indent=2, default=float) + "\n")


def replace_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (a temporary file renamed over it): a reader, or a
    run killed meanwhile, sees the old file or the new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def append_line(fd: int, line: str) -> None:
    """Append one whole line with a single write(2): a kill leaves it written or not at all.

    A disk that fills in the middle of the line gets the file cut back to its last whole line
    before the error goes on."""
    data = line.encode()
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        os.ftruncate(fd, start)
        raise


def plot_series(path: Path, t_hours: np.ndarray | None, series: dict, ylabel: str, title: str,
                markers: list[tuple[float, str]] = (), logy: bool = False, size=(7, 4)):
    """A line plot of several series against time in days (rank 0 only).

    ``series`` maps a label to its values at ``t_hours`` [hour], or to a pair (times [hour],
    values) when the series have times of their own (``t_hours`` None).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=120)
    for name, y in series.items():
        t, y = y if t_hours is None else (t_hours, y)
        ax.plot(np.asarray(t) / 24.0, y, label=name, lw=1.8 if name in ("total", "burden") else 1.2)
    for t, label in markers:
        ax.axvline(t / 24.0, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("time [day]")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _start_xvfb():
    """Give this process a virtual X server of its own (Debian's VTK renders off-screen only
    through X). Xvfb picks a free display itself (-displayfd), so a stale lock or another
    process's server never gets in the way; it is stopped when the process exits."""
    import atexit
    import select
    import subprocess

    if os.environ.get("DISPLAY"):
        return
    read, write = os.pipe()
    try:
        proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1920x1080x24",
                                 "-nolisten", "tcp"], pass_fds=(write,),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        raise RuntimeError("snapshots need Xvfb (Debian package xvfb) or a DISPLAY") from None
    finally:
        os.close(write)
    number = b""
    while not number.endswith(b"\n"):
        ready, _, _ = select.select([read], [], [], 30.0)
        chunk = os.read(read, 16) if ready else b""
        if not chunk:
            proc.kill()
            raise RuntimeError("Xvfb did not start; snapshots need a virtual X server")
        number += chunk
    os.close(read)
    os.environ["DISPLAY"] = f":{int(number)}"
    atexit.register(proc.terminate)


def snapshot(path: Path, functions: list, t: float, comm):
    """Off-screen pictures of P1 fields at time t, one panel per field (collective).

    Each rank sends its owned part of the mesh and values to rank 0, which renders.
    """
    from dolfinx import plot

    pieces = []
    for f in functions:
        V = f.function_space
        cells, types, x = plot.vtk_mesh(V)
        pieces.append((cells, types, x, f.x.array.real.copy(), f.name))
    gathered = comm.gather(pieces, root=0)
    if comm.rank != 0:
        return
    import pyvista

    _start_xvfb()
    pyvista.OFF_SCREEN = True
    n = len(functions)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    pl = pyvista.Plotter(off_screen=True, shape=(rows, cols), window_size=(420 * cols, 380 * rows))
    for i in range(n):
        grids = []
        for rank_pieces in gathered:
            cells, types, x, values, name = rank_pieces[i]
            g = pyvista.UnstructuredGrid(cells, types, x)
            g.point_data[name] = values[: x.shape[0]]
            grids.append(g)
        grid = grids[0] if len(grids) == 1 else pyvista.merge(grids)
        name = gathered[0][i][4]
        pl.subplot(i // cols, i % cols)
        pl.add_mesh(grid, scalars=name, cmap="viridis", show_edges=False,
                    scalar_bar_args={"title": name, "vertical": False, "title_font_size": 12,
                                     "label_font_size": 11, "n_labels": 3, "fmt": "%.2g"})
        pl.add_text(f"{name}  t = {t / 24:.2f} d", font_size=9)
        if np.allclose(grid.points[:, 2], 0.0):
            pl.view_xy()
        else:
            pl.view_isometric()
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.screenshot(str(path))
    pl.close()
