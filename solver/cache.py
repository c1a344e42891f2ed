"""Where tme keeps what it builds once and reuses: compiled reaction kernels, pint's parsed unit
definitions, the results of unit conversions (:class:`Memo`). ``$TME_CACHE_DIR``, else
``$XDG_CACHE_HOME/tme``, else ``~/.cache/tme``."""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable


def directory() -> Path:
    """The cache directory (not created here)."""
    if os.environ.get("TME_CACHE_DIR"):
        return Path(os.environ["TME_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tme"


class Memo:
    """Results of pure functions of JSON values (text, numbers), kept on disk between processes.

    ``identity()`` names everything the results depend on besides the arguments (the code that
    computes them, the versions of the libraries it calls); the table lives in
    ``directory()/<name>/<digest of identity>.json``, so another identity starts an empty
    table. A function decorated with :meth:`remember` is called only for arguments it has not
    been called with before, in this process or an earlier one; what it raises is never kept
    (it is raised again, computed anew, at every call). The table is read once, at the first
    call, and written back at exit when this process added to it: merged with what other
    processes wrote meanwhile, through a file of this process renamed over the table (atomic:
    concurrent writers, such as MPI ranks, lose at most each other's additions). A file that
    cannot be read, was damaged (its digest is checked) or cannot be written costs the
    computation again, never a wrong result. At most ``limit`` results are kept: beyond, the
    table keeps those this process used.
    """

    def __init__(self, name: str, identity: Callable[[], str], limit: int = 2048):
        self.name, self.identity, self.limit = name, identity, limit
        self._table: dict[str, Any] | None = None
        self._used: dict[str, Any] = {}
        self._added = False
        self._path: Path | None = None

    def remember(self, fn: Callable) -> Callable:
        """Decorate ``fn``, whose arguments and result are JSON values (a list, not a tuple)."""
        prefix = f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def remembered(*args):
            try:
                key = json.dumps([prefix, *args], ensure_ascii=False, allow_nan=True)
            except (TypeError, ValueError):   # not JSON (e.g. a circular list): not kept
                return fn(*args)
            table = self._load()
            if key in table:
                value = self._used[key] = table[key]
                return value
            value = fn(*args)
            if len(self._used) < self.limit:
                table[key] = self._used[key] = value
                if not self._added:
                    self._added = True
                    atexit.register(self.save)
            return value

        return remembered

    def _load(self) -> dict[str, Any]:
        if self._table is None:
            self._table = {}
            try:
                digest = hashlib.sha256(self.identity().encode()).hexdigest()[:32]
                self._path = directory() / self.name / f"{digest}.json"
                self._table = self._read(self._path)
            except Exception:  # noqa: BLE001 - a table that cannot be read: computed anew
                pass
        return self._table

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        try:
            data = path.read_bytes()
        except OSError:
            return {}
        check, _, payload = data.partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != check:
            return {}                      # truncated, or changed by hand: not trusted
        table = json.loads(payload)
        return table if isinstance(table, dict) else {}

    def _prune(self, days: float = 30.0) -> None:
        """Remove the tables of other identities not written for ``days`` (an upgraded library,
        changed code), and files of writers that stopped before renaming theirs."""
        import time

        for p in self._path.parent.iterdir():
            try:
                if p != self._path and p.suffix in (".json", ".tmp") and \
                        time.time() - p.stat().st_mtime > (days if p.suffix == ".json" else 1.0) * 86400:
                    p.unlink()
            except OSError:
                pass

    def save(self) -> None:
        """Write the table back, if this process added to it (run at exit)."""
        if not self._added or self._path is None:
            return
        self._added = False
        tmp = None
        try:
            try:
                merged = {**self._read(self._path), **self._used}
            except ValueError:
                merged = dict(self._used)
            if len(merged) > self.limit:
                merged = dict(list(self._used.items())[-self.limit:])
            payload = json.dumps(merged, ensure_ascii=False, allow_nan=True).encode()
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # a file of this process's own (the umask applies), renamed over the table
            name = self._path.with_name(f".{self._path.stem}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            tmp = name
            with os.fdopen(fd, "wb") as f:
                f.write(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            os.replace(tmp, self._path)
            tmp = None
            self._prune()
        except Exception:  # noqa: BLE001 - an unwritable cache: computed again next time
            pass
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
