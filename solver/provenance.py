"""Where a result came from: the program, its versions, the command and the scenario.

A run records this in ``summary.json`` (``provenance``) and as a header comment of
``config.resolved.yaml``, so that its results can be traced to the code and input that made
them. The scenario hash is the SHA-256 of the resolved
scenario (``config.resolved.yaml`` without its header): two runs with equal hashes ran the same
scenario, whatever the file they were read from.
"""

from __future__ import annotations

import hashlib
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from . import __version__

#: The checkout this package lives in, when it is one (a git work tree above solver/).
SOURCE = Path(__file__).resolve().parents[1]


def scenario_hash(resolved: str) -> str:
    """SHA-256 of a resolved scenario's text (``scenario.resolved_yaml``)."""
    return hashlib.sha256(resolved.encode()).hexdigest()


def git_state(where: Path = SOURCE) -> dict:
    """``{commit, modified}`` of the git checkout holding ``where``; both None when there is none
    (an installed package, git missing, not a repository)."""

    def git(*args):
        # no optional locks: 'git status' would otherwise refresh the index under
        # .git/index.lock, which a run killed at that moment leaves behind in the user's checkout
        return subprocess.run(["git", "--no-optional-locks", "-C", str(where), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != where.resolve():
            return {"commit": None, "modified": None}  # solver/ inside someone else's repository
        commit = git("rev-parse", "HEAD")
        modified = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": None}
    return {"commit": commit, "modified": modified}


def _versions() -> dict:
    out = {"python": platform.python_version()}
    try:
        import dolfinx

        out["dolfinx"] = dolfinx.__version__
    except ImportError:
        out["dolfinx"] = None
    try:
        from petsc4py import PETSc

        out["petsc"] = "{}.{}.{}".format(*PETSc.Sys.getVersion())
    except ImportError:
        out["petsc"] = None
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def collect(resolved: str, comm, argv: list[str] | None = None, started: str | None = None) -> dict:
    """The provenance of a run of the scenario whose resolved text is ``resolved`` (collective:
    the host names of every rank are gathered)."""
    hosts = sorted(set(comm.allgather(socket.gethostname())))
    record = None
    if comm.rank == 0:
        record = {
            "tme_version": __version__,
            **git_state(),
            **_versions(),
            "command": shlex.join(sys.argv if argv is None else argv),
            "ranks": comm.size,
            "hosts": hosts,
            "start": started or now(),
            "end": None,
            "scenario_sha256": scenario_hash(resolved),
        }
    return comm.bcast(record, root=0)


def finished(record: dict) -> dict:
    """``record`` with its end time set to now."""
    return {**record, "end": now()}


def header(record: dict) -> str:
    """The provenance as YAML comment lines (the header of ``config.resolved.yaml``)."""
    commit = record["commit"] or "not a git checkout"
    if record["modified"]:
        commit += " (with uncommitted changes)"
    lines = [
        f"tme {record['tme_version']}, commit {commit}",
        f"DOLFINx {record['dolfinx']}, PETSc {record['petsc']}, Python {record['python']}",
        f"command: {record['command']}",
        f"{record['ranks']} rank(s) on {', '.join(record['hosts'])}; started {record['start']}",
        f"scenario sha256 {record['scenario_sha256']} (of the text below this header)",
    ]
    return "".join(f"# {ln}\n" for ln in lines)
