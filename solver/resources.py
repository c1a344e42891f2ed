"""The machine a run needs: memory for the mesh and its fields, disk space for the outputs.

Both are checked before they are used, so that a mesh too fine for the machine or a disk too
small for the fields is refused with one line (the estimate and what is available) instead of a
``MemoryError`` deep in the set-up or a full disk hours into a run.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
from pathlib import Path

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'40 GB', '512MiB', '2e9' (bytes) -> bytes; ValueError with a one-line message otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"{text!r} is not an amount of memory; write e.g. '16 GB' or '512 MiB'")
    value = float(m.group(1)) * _UNITS[unit]
    if not 0 < value < 2**63:
        raise ValueError(f"{text!r}: must be positive (e.g. '16 GB')")
    return int(value)


def human(nbytes: float) -> str:
    """Bytes in the largest decimal unit that keeps the number >= 1 (1.2 GB, 300 kB)."""
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{int(nbytes)} B"


def available_memory(comm) -> int:
    """Memory available now on the machines of ``comm`` [bytes] (collective).

    Ranks on one machine share its memory, so each machine counts once.
    """
    mine = (socket.gethostname(), _available())
    return sum(dict(comm.allgather(mine)).values())


def _available() -> int:
    """This machine's available memory [bytes]: Linux's own estimate (MemAvailable in
    /proc/meminfo, what psutil reports there too, without importing it in every run), else
    psutil's."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (where a directory would be created)."""
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def free_space(path: Path) -> int | None:
    """Bytes free for this user on the filesystem that holds (or would hold) ``path``."""
    try:
        return shutil.disk_usage(existing_ancestor(path)).free
    except OSError:
        return None


def describe_failure(exc: BaseException, out: Path | None = None) -> str:
    """One line for an OSError or MemoryError a user can meet (full disk, unwritable path)."""
    if isinstance(exc, MemoryError):
        import psutil

        return (f"out of memory ({human(psutil.virtual_memory().available)} available now on this "
                "machine); use a coarser mesh, or more machines")
    path = exc.filename or out
    where = f"{path}: " if path else ""
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        free = getattr(exc, "free", None)
        if free is None and path:
            free = free_space(Path(path))
        room = f"{human(free)} free on its filesystem" if free is not None else "free space unknown"
        return (f"{where}no space left on the device ({room}); the files written so far are "
                "readable up to the last completed step")
    return f"{where}{exc.strerror or exc}"
