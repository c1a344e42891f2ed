"""Every case of the bad-input corpus (tests/bad_inputs/) is refused with one line, on 1 and 2 ranks.

Refused means: non-zero exit within the case's timeout, exactly one line on stderr from tme,
no traceback, and the output directory byte-for-byte as before (or still absent).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bad_inputs import Case, all_cases
from runs import finish, tme

ROOT = Path(__file__).resolve().parents[2]
CASES = all_cases()


def _without_launcher(lines: list[str]) -> list[str]:
    """Drop what OpenMPI's launcher prints when a job exits non-zero: a block between lines of
    dashes (not tme's output)."""
    out, inside = [], False
    for ln in lines:
        if re.match(r"^-{10,}$", ln.strip()):
            inside = not inside
        elif re.match(r"^\[[^\]]*\] PMIX ERROR", ln.strip()):
            continue  # the launcher's own teardown race when a rank exits non-zero (PMIX_ERR_UNREACH)
        elif not inside:
            out.append(ln)
    return out


def _digest(path: Path) -> dict | None:
    if not path.exists():
        return None
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _run(case: Case, tmp: Path, ranks: int) -> None:
    d, out = tmp / "case", tmp / "out"
    d.mkdir()
    for rel, content in case.files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    if case.out_exists:
        out.mkdir()
        (out / "notes.txt").write_text("the user's own file\n")
    if case.setup is not None:
        case.setup(d, out)
    before = _digest(out)
    argv = [a.replace("{dir}", str(d)).replace("{out}", str(out)) for a in case.argv]
    proc = tme(*argv, ranks=ranks, cwd=d, env=case.env)
    try:
        _, err = finish(proc, case.timeout)
    finally:
        # a setup may have made things read-only: give them back so that tmp can be removed
        for p in (d, out):
            if p.exists():
                subprocess.run(["chmod", "-R", "u+w", str(p)], check=False)
    assert "Traceback" not in err, f"{case.id}: traceback on stderr:\n{err}"
    assert proc.returncode != 0, f"{case.id}: exit status 0; stderr:\n{err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if ranks > 1:
        lines = _without_launcher(lines)
    ours = [ln for ln in lines if ln.startswith("tme")]
    others = [ln for ln in lines if not ln.startswith("tme")]
    assert len(ours) == 1 and not others, f"{case.id}: expected one line from tme on stderr, got:\n{err}"
    assert case.expect.lower() in ours[0].lower(), f"{case.id}: {ours[0]!r} does not mention {case.expect!r}"
    assert _digest(out) == before, f"{case.id}: the output directory changed"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_on_one_rank(case, tmp_path):
    _run(case, tmp_path, 1)


MPI_CASES = [c for c in CASES if c.mpi]


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun")
@pytest.mark.parametrize("case", MPI_CASES, ids=[c.id for c in MPI_CASES])
def test_refused_on_two_ranks(case, tmp_path):
    _run(case, tmp_path, 2)
