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


def check_directory(out: Path, comm, overwrite: bool, inputs=(), owned=None) -> None:
    """Refuse an ``out`` a run cannot write into, before its (possibly long) set-up.

    Refused: a file (the scenario itself, or anything else); a path below a file; a directory
    on a read-only filesystem or without write permission, or that cannot be created there; a
    non-empty directory without ``overwrite``; with ``overwrite``, a directory in which the run
    would replace one of its own ``inputs`` (the scenario or mesh file). ``owned``: the files
    and folders the command writes there (default those of a run, RUN_FILES). Writes nothing.
    """
    err = None
    if comm.rank == 0:
        try:
            err = _directory_problem(Path(out), overwrite, [Path(p) for p in inputs],
                                     RUN_FILES if owned is None else tuple(owned))
        except OSError as exc:  # a name too long, a loop of links, ...
            err = f"--out {out}: {exc.strerror or exc}"
    err = comm.bcast(err, root=0)
    if err:
        raise ScenarioError(err)


def _directory_problem(out: Path, overwrite: bool, inputs: list[Path], owned=None) -> str | None:
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
        for name in RUN_FILES if owned is None else owned:
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


def prepare_directory(out: Path, comm, overwrite: bool, inputs=(), owned=None) -> Path:
    """Create ``out``; a non-empty directory is refused unless ``overwrite``.

    With ``overwrite`` only the files a run writes (``owned``: default RUN_FILES) are removed,
    never anything else a user keeps there.
    """
    out = Path(out)
    check_directory(out, comm, overwrite, inputs, owned)
    if comm.rank == 0:
        if out.is_dir() and overwrite:
            for name in RUN_FILES if owned is None else owned:
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
def hdf5_writes(comm, path: Path, size: int = 0):
    """Around collective HDF5 writes of ``path``: HDF5 prints no error stack of its own, and a
    write that failed on a full disk is an OSError(ENOSPC) naming ``path`` on every rank (HDF5
    itself only says that it could not create or close something).

    ``size`` [bytes]: what the writes are expected to take. When the filesystem has less than
    that (plus FULL_DISK_MARGIN) free on any rank, the writes are not started: an HDF5 library
    built with assertions aborts the process, rather than failing, when it cannot create a
    file on a full disk.
    """
    from ..resources import free_space

    free = free_space(path)
    full = free is not None and free < size + FULL_DISK_MARGIN
    agree(comm, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) if full else None)
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


def field_unit(name: str, scenario) -> str:
    """The unit of field ``name`` of ``scenario`` (see Scenario.field_names), as a plot shows it."""
    drugs = set(scenario.drugs)
    if name in drugs or name in ("factor", "oxygen"):
        return "µM"
    if name == "immune":
        return "effector density"
    if name.startswith("auc_") and name[4:] in drugs:
        return "µM·h"
    if name.startswith("time_above_ec50_") and name[16:] in drugs:
        return "h"
    if name == "resistant_fraction":
        return "fraction of cells"
    if name == "region":
        return "tag"
    return "volume fraction"   # the clones and 'total'


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: How each kind of protocol event is drawn: (colour, line style, label in the legend).
_EVENT_STYLE = {"progression": ("tab:red", "--", "progression"),
                "switch": ("tab:purple", "-", "switch of line"),
                "cure": ("tab:green", "-.", "cure (not detectable)"),
                "stop": ("0.3", ":", "treatment stopped")}


def _mark_events(ax, events, label_lines: bool = True, legend: bool = True) -> None:
    """Doses as ticks along the top edge (one row per drug), assessments as open circles along
    the bottom, progression, switches, cures and stops as vertical lines, each labelled beside
    the line (``label_lines``; events at one time are labelled one above the other) and in the
    legend (``legend``; doses always)."""
    events = list(events)
    drugs = list(dict.fromkeys(e.data.get("drug") for e in events if e.event == "dose"))
    top = ax.get_xaxis_transform()   # x in data (days), y in axes fraction
    for k, drug in enumerate(drugs):
        t = [e.time / 24.0 for e in events if e.event == "dose" and e.data.get("drug") == drug]
        ax.plot(t, [0.985 - 0.035 * k] * len(t), transform=top, ls="none", marker="v", ms=5,
                color=f"C{(k + 5) % 10}", label=f"dose: {drug}", clip_on=False, zorder=5)
    t = [e.time / 24.0 for e in events if e.event == "assessment"]
    if t:
        ax.plot(t, [0.02] * len(t), transform=top, ls="none", marker="o", ms=4, mfc="none",
                color="0.35", label="assessment" if legend else None, clip_on=False, zorder=5)
    shown, at_time = set(), {}
    order = {"switch": 0, "cure": 1, "stop": 2, "progression": 3}   # progression drawn on top
    marked = sorted((e for e in events if e.event in _EVENT_STYLE
                     and not (e.event == "stop" and e.reason == "end time")),
                    key=lambda e: (e.time, order[e.event]))
    for e in marked:
        colour, ls, label = _EVENT_STYLE[e.event]
        ax.axvline(e.time / 24.0, color=colour, ls=ls, lw=1.3, zorder=4 + order[e.event] / 10,
                   label=label if legend and e.event not in shown else None)
        shown.add(e.event)
        if label_lines:
            k = at_time.get(e.time, 0)
            at_time[e.time] = k + 1
            text = {"switch": f"switch → {e.data.get('name', '')}"}.get(e.event, label)
            ax.text(e.time / 24.0, 0.93 - 0.3 * k, f"{text} ", transform=top, rotation=90, va="top",
                    ha="right", fontsize=7.5, color=colour)


def _finish(fig, ax, path: Path, legend_cols: int = 1) -> None:
    ax.grid(alpha=0.3, which="major")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  ncols=legend_cols, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    fig.clf()
    _pyplot().close(fig)


def _log_floor(values) -> float | None:
    """The bottom of a log axis that shows every positive value (down to 1e-40 of the top)."""
    pos = np.concatenate([np.asarray(v, float)[np.asarray(v, float) > 0] for v in values] or [[]])
    if not pos.size:
        return None
    return max(pos.min(), pos.max() * 1e-40) / 3.0


def plot_series(path: Path, t_hours: np.ndarray | None, series: dict, ylabel: str, title: str,
                events=(), logy: bool = False, size=(8, 4.5), detection: float | None = None,
                detection_label: str = "detection limit"):
    """A line plot of several series against time in days (rank 0 only).

    ``series`` maps a label to its values at ``t_hours`` [hour], or to a pair (times [hour],
    values) when the series have times of their own (``t_hours`` None); ``events`` (protocol
    events) are marked and labelled; ``detection`` draws a dashed horizontal line at that value
    (in the unit of ``ylabel``). On a log axis every positive value is shown, however small.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size, dpi=120)
    plotted = []
    for name, y in series.items():
        t, y = y if t_hours is None else (t_hours, y)
        y = np.asarray(y, float)
        plotted.append(y)
        ax.plot(np.asarray(t) / 24.0, y, label=name, lw=1.5, zorder=3)
    if detection is not None:
        ax.axhline(detection, color="k", ls="--", lw=1.0, label=detection_label, zorder=2)
        plotted.append(np.array([detection]))
    if logy:
        ax.set_yscale("log")
        floor = _log_floor(plotted)
        if floor is not None:
            ax.set_ylim(bottom=floor)
    _mark_events(ax, events)
    ax.set_xlabel("time [day]")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _finish(fig, ax, path)


def burden_plot(path: Path, t_hours, clones: dict, total, unit: str, title: str, events=(),
                detection: float | None = None):
    """Tumour burden (``total``) and each clone's amount against time in days, on a log axis so
    that an eradication and every minor clone stay visible; ``detection`` (same ``unit``) as a
    dashed line; protocol ``events`` marked (rank 0 only). A clone that is zero throughout is
    named in the legend, not drawn."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    days = np.asarray(t_hours, float) / 24.0
    values = [np.asarray(total, float)]
    for k, (name, y) in enumerate(clones.items()):
        y = np.asarray(y, float)
        if not np.any(y > 0):
            ax.plot([], [], color=f"C{k}", lw=1.3, label=f"{name} (0 throughout)")
            continue
        values.append(y)
        ax.plot(days, np.where(y > 0, y, np.nan), color=f"C{k}", lw=1.3, label=name, zorder=3)
    ax.plot(days, np.where(values[0] > 0, values[0], np.nan), color="k", lw=2.4,
            label="total burden", zorder=4)
    if detection is not None and detection > 0:
        ax.axhline(detection, color="k", ls="--", lw=1.0, zorder=2,
                   label=f"detection limit ({detection:.3g} {'cell' if unit == 'cells' and detection == 1 else unit})")
        values.append(np.array([detection]))
    ax.set_yscale("log")
    floor = _log_floor(values)
    if floor is not None:
        ax.set_ylim(bottom=floor, top=max(v.max() for v in values if v.size) * 4.0)
    _mark_events(ax, events)
    ax.set_xlim(days[0], days[-1] if days[-1] > days[0] else days[0] + 1.0)
    ax.set_xlabel("time [day]")
    ax.set_ylabel(f"tumour burden [{unit}]")
    ax.set_title(title)
    _finish(fig, ax, path)


def species_plot(path: Path, t_hours, panels: list, title: str, events=()):
    """One panel per transported species, each on its own axis with its unit: ``panels`` lists
    (name, unit, mean level in the tissue, plasma level or None) against ``t_hours`` [hour];
    doses and the other protocol ``events`` marked on every panel (rank 0 only)."""
    plt = _pyplot()
    n = max(len(panels), 1)
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.9 + 1.6 * n), dpi=120, sharex=True, squeeze=False)
    days = np.asarray(t_hours, float) / 24.0
    for ax, (name, unit, tissue, plasma) in zip(axes[:, 0], panels):
        ax.plot(days, tissue, color="C0", lw=1.5, label="tissue mean", zorder=3)
        if plasma is not None:
            ax.plot(days, plasma, color="C1", lw=1.1, label="plasma", zorder=3)
        first = ax is axes[0, 0]
        _mark_events(ax, [e for e in events if e.event != "dose" or e.data.get("drug") == name],
                     label_lines=False, legend=first)
        ax.set_xlim(days[0], days[-1] if days[-1] > days[0] else days[0] + 1.0)
        ax.set_ylabel(f"{name}\n[{unit}]", fontsize=9)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axes[-1, 0].set_xlabel("time [day]")
    axes[0, 0].set_title(title)
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
