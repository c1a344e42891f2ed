"""Rows and events: ``timeseries.csv``, ``events.csv`` and ``events.json`` (rank 0 writes).

Each row is appended with one write(2) of a whole line, so a run killed at any moment leaves
only whole rows; ``events.json`` is replaced atomically. A resumed run first cuts each file back
to what the checkpoint had counted (:meth:`TimeSeries.keep`, :meth:`EventLog.keep`), then
appends: no row or event appears twice.

Units: the columns carry theirs in their names where they have one (t, dt in hours; amounts in
µm^d; plasma levels in µM); event times in hours.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from . import append_line

from . import replace_text
from ..protocol import Event


def _fmt(v):
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return v


def _parse(v: str):
    """A CSV cell back to the value written: float, int or text (exact: floats are repr)."""
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


class TimeSeries:
    """``timeseries.csv``: one row per step (every step is due), with the rows kept in memory
    for the summary and the plots; with ``path`` None the rows are only kept."""

    milestones: tuple[float, ...] = ()

    def __init__(self, path: Path, columns: list[str], comm, row=None):
        self.path, self.columns, self.comm = None if path is None else Path(path), columns, comm
        self.rank0 = comm.rank == 0
        self.rows: list[dict] = []
        self.row = row   # callable () -> the row of the step just taken
        self._fd = None

    def open(self) -> None:
        if self.rank0:
            replace_text(self.path, self._line(dict(zip(self.columns, self.columns))))
            self._fd = _open_append(self.path)

    def keep(self, n: int) -> None:
        """Continue after the first ``n`` rows of an existing file (a resumed run); every rank
        gets the rows (the summary is made from them)."""
        self.rows = _kept(self.comm, self.rank0, self._keep, n, lambda: self.rows)

    def _keep(self, n: int) -> None:
        with open(self.path, newline="") as fh:
            text = fh.read()
        # a line cut by a kill has no end of line: never part of a row
        lines = text.splitlines(keepends=True)
        whole = [ln for ln in lines if ln.endswith("\n")]
        reader = csv.DictReader(io.StringIO("".join(whole)))
        if reader.fieldnames != self.columns:
            raise ValueError(f"{self.path}: its columns are not those of this scenario")
        rows = [{k: v if k == "line" else _parse(v) for k, v in r.items()} for r in reader]
        if len(rows) < n:
            raise ValueError(f"{self.path}: holds {len(rows)} rows, the checkpoint {n}")
        self.rows = rows[:n]
        replace_text(self.path, "".join(whole[:n + 1]))
        self._fd = _open_append(self.path)

    def _line(self, row: dict) -> str:
        buf = io.StringIO()
        csv.writer(buf).writerow([_fmt(row.get(k, "")) for k in self.columns])
        return buf.getvalue().replace("\r\n", "\n")

    def due(self, state) -> bool:
        return True

    def write(self, state, t: float) -> None:
        self.add(self.row())
        state.written["rows"] = state.written.get("rows", 0) + 1

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.rank0 and self._fd is not None:
            append_line(self._fd, self._line(row))

    def column(self, name: str) -> list:
        return [r[name] for r in self.rows]

    def close(self, state) -> None:
        if self.rank0 and self._fd is not None:
            os.close(self._fd)
            self._fd = None


class EventLog:
    """``events.csv`` and ``events.json``: every dose, assessment and decision.

    Due whenever the step brought events: ``pending`` (a callable) hands them over. With
    ``out`` None the events are only kept."""

    milestones: tuple[float, ...] = ()

    def __init__(self, out: Path, comm, pending=None):
        self.out, self.comm, self.rank0 = None if out is None else Path(out), comm, comm.rank == 0
        self.events: list[Event] = []
        self.pending = pending
        self._fd = None

    def open(self) -> None:
        if self.rank0:
            replace_text(self.out / "events.csv", "time_hours,time_days,event,reason,data\n")
            self._fd = _open_append(self.out / "events.csv")

    def keep(self, n: int) -> None:
        """Continue after the first ``n`` events (a resumed run); every rank gets them."""
        self.events = _kept(self.comm, self.rank0, self._keep, n, lambda: self.events)

    def _keep(self, n: int) -> None:
        saved = json.loads((self.out / "events.json").read_text()) if n else []
        if len(saved) < n:
            raise ValueError(f"{self.out / 'events.json'}: holds {len(saved)} events, the checkpoint {n}")
        self.events = [Event(e["time"], e["event"], e["reason"], e["data"]) for e in saved[:n]]
        text = "time_hours,time_days,event,reason,data\n" + "".join(self._line(e) for e in self.events)
        replace_text(self.out / "events.csv", text)
        replace_text(self.out / "events.json", self._json())
        self._fd = _open_append(self.out / "events.csv")

    @staticmethod
    def _line(e: Event) -> str:
        data = json.dumps(e.data, default=float).replace('"', '""')
        reason = e.reason.replace('"', '""')
        return f'{e.time!r},{e.time / 24:.6g},{e.event},"{reason}","{data}"\n'

    def _json(self) -> str:
        return json.dumps([e.as_dict() for e in self.events], indent=1, default=float) + "\n"

    def due(self, state) -> bool:
        return True

    def write(self, state, t: float) -> None:
        self.add(self.pending())
        state.written["events"] = len(self.events)

    def add(self, events) -> None:
        events = list(events)
        if not events:
            return
        self.events += events
        if self.rank0 and self._fd is not None:
            append_line(self._fd, "".join(self._line(e) for e in events))
            replace_text(self.out / "events.json", self._json())

    def close(self, state) -> None:
        if self.rank0 and self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _kept(comm, rank0: bool, keep, n: int, kept):
    """Rank 0 cuts a file back to its first ``n`` records (``keep(n)``); every rank gets the
    records (``kept()`` on rank 0) or the same error."""
    err = None
    try:
        if rank0:
            keep(n)
    except (OSError, ValueError) as exc:
        err = str(exc)
    err, records = comm.bcast((err, kept()), root=0)
    if err:
        raise ValueError(err)
    return records
