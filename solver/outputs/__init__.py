"""What a run writes: fields for ParaView, time series, events, summary, plots, snapshots and
checkpoints, each an :class:`Output` with its own cadence.

Every writer is collective where it must be (field files, checkpoints, snapshots gather to rank
0) and writes files from rank 0 otherwise. Whatever a run has written stays readable when it is
killed at any moment: rows are appended whole, field frames and checkpoints are closed files
that their index or name lists only once complete (see :mod:`solver.outputs.fields` and
:mod:`solver.outputs.checkpoint`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Protocol

import numpy as np

from ..spec import ScenarioError


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


def check_directory(out: Path, comm, overwrite: bool) -> None:
    """Refuse ``out`` when it is a file, or a non-empty directory without ``overwrite``.

    Writes nothing: a run checks this before its (possibly long) set-up.
    """
    out = Path(out)
    err = None
    if comm.rank == 0:
        if out.exists() and not out.is_dir():
            err = f"--out {out}: exists and is not a directory"
        elif out.is_dir() and any(out.iterdir()) and not overwrite:
            err = (f"--out {out}: directory is not empty; choose another --out or pass --overwrite "
                   f"to replace the results in it")
    err = comm.bcast(err, root=0)
    if err:
        raise ScenarioError(err)


def prepare_directory(out: Path, comm, overwrite: bool) -> Path:
    """Create ``out``; a non-empty directory is refused unless ``overwrite``.

    With ``overwrite`` only the files a run writes are removed, never anything else a user keeps
    there.
    """
    out = Path(out)
    check_directory(out, comm, overwrite)
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
RUN_FILES = ("config.resolved.yaml", "fields.xdmf", "fields", "fields.h5", "timeseries.csv", "summary.json",
             "events.csv", "events.json", "plots", "snapshots", "checkpoint")


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
    """Append one whole line with a single write(2): a kill leaves it written or not at all."""
    data = line.encode()
    while data:
        data = data[os.write(fd, data):]


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
