"""The bad-input corpus: each case is a `tme` command a user could type that must be refused.

A case is run by ``tests/scenario/test_bad_inputs.py`` as a subprocess (and under ``mpirun -n 2`` unless
``mpi=False``), in a fresh directory holding ``files``. It must exit non-zero, within the timeout,
with exactly one line on stderr from tme (``tme: error: ...`` or ``tme: ...``) containing
``expect``, no traceback, and nothing created or changed in the output directory.

Cases live in the modules of this package by class of input (``config``, ``cli``, ``mesh``,
``filesystem``...), each exporting ``CASES: list[Case]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Case:
    """One refused command.

    ``argv``: tme's arguments; ``{dir}`` is replaced by the case's directory (holding ``files``),
    ``{out}`` by its output directory (which may or may not exist; see ``out_exists``).
    ``files``: relative path -> text or bytes, written into ``{dir}`` before the run.
    ``expect``: a substring (case-insensitive) of the one error line.
    ``setup``: called with (dir, out) after the files are written (e.g. make ``out`` read-only).
    ``out_exists``: create ``{out}`` beforehand, holding a file of the user's, so that the check
    "nothing changed" has something to guard.
    ``env``: extra environment variables for the command.
    """

    id: str
    argv: list[str]
    expect: str
    files: dict[str, str | bytes] = field(default_factory=dict)
    mpi: bool = True
    out_exists: bool = False
    setup: Callable[[Path, Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 120.0


def all_cases() -> list[Case]:
    import importlib
    import pkgutil

    cases: list[Case] = []
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        cases += importlib.import_module(f"{__name__}.{mod}").CASES
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids: {sorted(dup)}"
    return cases
