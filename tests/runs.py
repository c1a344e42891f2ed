"""Runs of `tme` in subprocesses that never outlive their test.

mpirun puts each rank in a process group of its own, so killing mpirun's group would leave the
ranks running; :func:`finish` kills mpirun and its ranks when a run does not answer in time.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SESSIONS: list[str] = []


def mpirun(ranks: int) -> tuple[list[str], dict]:
    """(command prefix, environment) for ``mpirun -n ranks`` with a session directory of its
    own: mpirun names its session directory after its PID, and one left behind by a killed
    mpirun makes a later mpirun with the same PID refuse to start ("prte_session_dir failed")."""
    if not _SESSIONS:
        _SESSIONS.append(tempfile.mkdtemp(prefix="tme-mpirun-"))
        atexit.register(shutil.rmtree, _SESSIONS[0], True)
    return ["mpirun", "-n", str(ranks)], {"TMPDIR": tempfile.mkdtemp(dir=_SESSIONS[0])}


def tme(*args, ranks=1, cwd=ROOT, env: dict | None = None, **kw):
    """``tme ARGS`` (under ``mpirun -n ranks`` when ranks > 1) as a running process; ``env``:
    extra environment variables."""
    cmd = [sys.executable, "-m", "tme", *map(str, args)]
    full = dict(os.environ, PYTHONPATH=str(ROOT / "scripts" / "pythonpath"))
    if ranks > 1:
        prefix, session = mpirun(ranks)
        cmd = prefix + cmd
        full.update(session)
    full.update(env or {})
    full.pop("OMPI_COMM_WORLD_RANK", None)
    return subprocess.Popen(cmd, cwd=cwd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", start_new_session=True, **kw)


def finish(p, timeout: float):
    """(stdout, stderr) of a run started by tme; on a timeout the ranks and mpirun are killed
    (mpirun puts each rank in a process group of its own) and the test fails."""
    try:
        return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(p)
        _, err = p.communicate()
        pytest.fail(f"no answer within {timeout:g} s (a hang); stderr:\n{err}")


def kill(p) -> None:
    """SIGKILL the ranks mpirun started for ``p`` and ``p`` itself (mpirun puts each rank in a
    process group of its own); a process that has exited in between is passed over."""
    for pid in children(p.pid) + [p.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the ranks mpirun started)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return sorted(out)


#: (ranks, signal, whom): on 2 ranks SIGTERM to one rank only, SIGINT to both ranks (as Slurm
#: signals every task of a step), SIGUSR1 to mpirun, which forwards it to the ranks
