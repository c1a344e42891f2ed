"""The Python face of a run: :func:`run` a scenario and get its :class:`Results`.

A run with an output directory writes its files (see README) and its results read them; a run
without one writes nothing and keeps its time series, events, summary and fields at the output
times in memory, for notebooks and sweeps. :meth:`Results.open` reads the results of a finished
run directory. The time series and events are pandas DataFrames with the columns of
``timeseries.csv`` and ``events.csv``; the summary is the dict of ``summary.json``; a field at an
output time comes as NumPy arrays with coordinates (:meth:`Results.field`) or, in memory, as a
DOLFINx function (:meth:`Results.function`).

Units: times in hours (``t``, ``time_hours``; ``time_days`` in days), coordinates in µm, the
fields and columns in those of the files (README, Outputs).
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from . import log
from .config.scenario import Scenario, load
from .config.spec import ScenarioError
from .config.units import parse_quantity
from .outputs.series import _parse

#: The columns of :attr:`Results.events` (those of ``events.csv``).
EVENT_COLUMNS = ["time_hours", "time_days", "event", "reason", "data"]


@dataclass(frozen=True)
class FieldValues:
    """One field at one output time: ``values[i]`` at ``points[i]`` [µm] (nodes of a P1 field,
    cell midpoints of a cell-wise one: ``at`` is 'node' or 'cell'); ``t`` [hour] is the output
    time. Every point appears once, sorted by coordinates, whatever the number of ranks."""

    name: str
    t: float
    points: np.ndarray
    values: np.ndarray
    at: str


def run(scenario: Scenario | str | Path, out: str | Path | None = None, comm=None, *,
        overwrite: bool = False, quiet: bool = False, max_memory: float | None = None) -> "Results":
    """Run ``scenario`` (a :class:`~tme.config.scenario.Scenario`, or the path of a scenario
    file) and return its :class:`Results`.

    ``out``: the output directory (written as ``tme run --out`` writes it; ``overwrite``
    replaces a previous run's files in it), or None to write nothing and keep the results in
    memory. ``comm``: the MPI communicator to run on (default: every rank); collective, every
    rank of ``comm`` gets the same results. ``quiet``: only warnings. ``max_memory`` [bytes]:
    see :class:`tme.problem.Problem`. A scenario that cannot run raises
    :class:`~tme.config.spec.ScenarioError` (a one-line message) before anything is written.
    """
    from mpi4py import MPI

    from .problem import Problem, logging_for

    comm = MPI.COMM_WORLD if comm is None else comm
    inputs = []
    if isinstance(scenario, (str, Path)):
        inputs.append(Path(scenario))
        scenario = load(scenario)
    if not isinstance(scenario, Scenario):
        raise ScenarioError(f"tme.run: expected a Scenario (tme.load(path), tme.Scenario(...)) or the "
                            f"path of a scenario file, got {type(scenario).__name__}")
    mesh_path = getattr(scenario.mesh, "path", None)
    if mesh_path is not None:
        inputs.append(Path(mesh_path))
    logger = log.get()
    if not logger.handlers:
        log.setup(comm.rank, comm.size)
    with logging_for(quiet):
        problem = Problem(scenario, comm, None if out is None else Path(out), overwrite=overwrite,
                          max_memory=max_memory, inputs=inputs).initialise()
        problem.run()
    return Results._of(problem)


class Results:
    """What a run produced (see the module docstring); made by :func:`run` or
    :meth:`Results.open`.

    Attributes: ``scenario`` (the :class:`~tme.config.scenario.Scenario` run), ``summary`` (the
    dict of summary.json; empty for a run directory whose run did not end), ``out`` (the run
    directory, None in memory), ``times`` (the field output times [hour]), ``field_names``.
    """

    def __init__(self, scenario: Scenario, summary: dict, columns: list[str], rows: list[dict],
                 events: list[dict], out: Path | None = None, memory=None, comm=None,
                 dim: int | None = None):
        self.scenario, self.summary, self.out = scenario, summary, out
        self._dim = dim
        self._columns, self._rows, self._events = columns, rows, events
        self._memory, self._comm = memory, comm
        self._index = None if memory is not None else _FieldIndex(out)

    @classmethod
    def _of(cls, problem) -> "Results":
        """The results of a problem that has run (every rank)."""
        events = [e.as_dict() for e in problem.events.events]
        memory = problem.fields if problem.out is None else None
        return cls(problem.scenario, dict(problem.summary or {}), list(problem.series.columns),
                   list(problem.series.rows), events, problem.out, memory, problem.comm,
                   problem.model.domain.dim)

    @classmethod
    def open(cls, out: str | Path) -> "Results":
        """The results in the run directory ``out`` (written by ``tme run`` or :func:`run`).

        Raises :class:`~tme.config.spec.ScenarioError` with one line when ``out`` is not a run
        directory. A run still going or killed is read up to its last whole row; its summary
        is then empty."""
        out = Path(out)
        if not (out / "timeseries.csv").is_file():
            raise ScenarioError(f"{out}: not the output directory of a tme run (no timeseries.csv)")
        try:
            scenario = load(out / "config.resolved.yaml")
            with open(out / "timeseries.csv", newline="") as fh:
                text = fh.read()
            # a row cut by a kill has no end of line: it is not a row
            whole = "".join(ln for ln in text.splitlines(keepends=True) if ln.endswith("\n"))
            reader = csv.DictReader(io.StringIO(whole))
            rows = [{k: v if k == "line" else _parse(v) for k, v in r.items()} for r in reader]
            columns = list(reader.fieldnames or [])
            events_file = out / "events.json"
            events = json.loads(events_file.read_text()) if events_file.exists() else []
            summary_file = out / "summary.json"
            summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        except (OSError, ValueError) as exc:
            raise ScenarioError(f"{out}: cannot read the results ({exc})") from None
        return cls(scenario, summary, columns, rows, events, out)

    def __repr__(self) -> str:
        where = f"in {self.out}" if self.out is not None else "in memory"
        return (f"<Results of {self.scenario.name!r} {where}: {len(self._rows)} rows, "
                f"{len(self._events)} events, fields at {len(self.times)} times>")

    @property
    def dim(self) -> int | None:
        """The dimension of the mesh (2 or 3; None for a run directory without fields)."""
        return self._dim if self._dim is not None else self._index.dim

    # -- tables -----------------------------------------------------------------------------
    @property
    def timeseries(self):
        """One row per step: a pandas DataFrame with the columns of ``timeseries.csv`` (``t``
        and ``dt`` in hours, amounts in µm^d, ``burden_cells`` in cells, plasma levels in µM);
        a value a row does not have is NaN."""
        import pandas as pd

        frame = pd.DataFrame(self._rows, columns=self._columns)
        for c in frame.columns:
            if c != "line":
                frame[c] = pd.to_numeric(frame[c].where(frame[c].astype(str) != "", np.nan))
        return frame

    @property
    def events(self):
        """Every dose, assessment and decision: a pandas DataFrame with the columns of
        ``events.csv`` (``time_hours``, ``time_days``, ``event``, ``reason``, ``data``: a dict)."""
        import pandas as pd

        return pd.DataFrame([{"time_hours": e["time"], "time_days": e["time"] / 24.0, "event": e["event"],
                              "reason": e["reason"], "data": e["data"]} for e in self._events],
                            columns=EVENT_COLUMNS)

    # -- fields -----------------------------------------------------------------------------
    @property
    def times(self) -> list[float]:
        """The times [hour] at which the fields were kept (or written)."""
        return list(self._memory.times) if self._memory is not None else self._index.times

    @property
    def field_names(self) -> list[str]:
        """The names of the fields (those of the scenario's ``field_names()``)."""
        if self._memory is not None:
            return [f.name for f in self._memory.functions]
        return self._index.names

    def _frame(self, name: str, t) -> tuple[int, float]:
        times = self.times
        if not times:
            raise ScenarioError(f"{self.scenario.name}: no fields were kept or written")
        if name not in self.field_names:
            raise ScenarioError(f"field {name!r}: not a field of this run; fields: {', '.join(self.field_names)}")
        if t is None:
            return len(times) - 1, times[-1]
        hours = parse_quantity(t, "hour") if isinstance(t, str) else float(t)
        k = int(np.argmin([abs(s - hours) for s in times]))
        return k, times[k]

    def field(self, name: str, t: float | str | None = None) -> FieldValues:
        """Field ``name`` at the output time nearest ``t`` (hours, or text with a unit such as
        '2 day'; default the last) as NumPy arrays with coordinates (:class:`FieldValues`).
        In memory on several ranks this is collective: every rank gets the whole field."""
        k, tk = self._frame(name, t)
        if self._memory is None:
            points, values, at = self._index.read(k, name)
        else:
            f = next(f for f in self._memory.functions if f.name == name)
            V = f.function_space
            n = V.dofmap.index_map.size_local * V.dofmap.index_map_bs
            x = V.tabulate_dof_coordinates()[:n]
            v = self._memory.frames[k][name][:n]
            if self._comm is not None and self._comm.size > 1:
                x = np.concatenate(self._comm.allgather(x))
                v = np.concatenate(self._comm.allgather(v))
            points, values = x, v
            at = "cell" if V.ufl_element().basix_element.degree == 0 else "node"
        # sorted by coordinates (to 0.1 nm: the files and the mesh round them differently)
        order = np.lexsort(np.round(points, 4).T[::-1])
        return FieldValues(name, tk, points[order], values[order], at)

    def function(self, name: str, t: float | str | None = None):
        """Field ``name`` at the output time nearest ``t`` (as for :meth:`field`) as a DOLFINx
        function on the run's mesh (this rank's part, as every DOLFINx function). Only for
        results in memory (a run without ``out``)."""
        if self._memory is None:
            raise ScenarioError(f"{self.out}: fields of a run directory come as NumPy arrays "
                                f"(results.field); DOLFINx functions only from a run in memory")
        from dolfinx import fem

        k, tk = self._frame(name, t)
        src = next(f for f in self._memory.functions if f.name == name)
        g = fem.Function(src.function_space, name=name)
        g.x.array[:] = self._memory.frames[k][name]
        return g

    # -- plots ------------------------------------------------------------------------------
    def plot(self, what: str | None = None, ax=None):
        """Plot the run and return the matplotlib Axes: ``what`` is 'burden' (the tumour
        burden and each clone in cells, log axis, with switches and progressions marked;
        the default with clones) or 'species' (the amount of each transported species in the
        tissue, one axis each; the default without clones). ``ax``: an Axes to draw into
        ('burden' only)."""
        import matplotlib.pyplot as plt

        ts = self.timeseries
        what = what or ("burden" if "burden" in ts.columns else "species")
        days = ts["t"] / 24.0
        if what == "burden":
            if "burden" not in ts.columns:
                raise ScenarioError(f"{self.scenario.name}: no clones, so no burden to plot; plot('species')")
            if ax is None:
                _, ax = plt.subplots(figsize=(7, 4))
            per_cell = ts["burden_cells"] / ts["burden"].where(ts["burden"] > 0)
            ax.plot(days, ts["burden_cells"], lw=2.0, color="k", label="burden")
            for c in [c for c in ts.columns if c.startswith("clone_") and "@" not in c]:
                ax.plot(days, ts[c] * per_cell, lw=1.2, label=c.removeprefix("clone_"))
            ax.set_yscale("log")
            ax.set_ylabel("cells")
            ev = self.events
            for kind, style in (("switch", "--"), ("progression", ":")):
                for k, d in enumerate(ev.loc[ev["event"] == kind, "time_days"]):
                    ax.axvline(d, color="0.4", ls=style, lw=1.0, label=kind if k == 0 else None)
            ax.set_title(f"{self.scenario.name}: tumour burden")
        elif what == "species":
            names = [c.removeprefix("total_") for c in ts.columns if c.startswith("total_")]
            if ax is not None:
                raise ScenarioError("plot('species'): draws one axis per species; leave out ax")
            fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.2 * len(names)), sharex=True, squeeze=False)
            dim = self.dim or "d"
            for a, name in zip(axes[:, 0], names):
                a.plot(days, ts[f"total_{name}"], lw=1.5)
                a.set_ylabel(f"{name}\n[µM·µm^{dim}]")
            ax = axes[:, 0]
            ax[0].set_title(f"{self.scenario.name}: amount in the tissue  ∫ c dx")
        else:
            raise ScenarioError(f"plot({what!r}): choose 'burden' or 'species'")
        last = ax[-1] if isinstance(ax, np.ndarray) else ax
        last.set_xlabel("time [day]")
        for a in np.atleast_1d(ax):
            a.grid(alpha=0.3)
        if not isinstance(ax, np.ndarray):
            ax.legend(fontsize=8)
        return ax


class _FieldIndex:
    """The fields of a run directory: ``fields.xdmf`` and the HDF5 files it lists."""

    def __init__(self, out: Path | None):
        self.out = out
        self._grids = None

    def _load(self) -> list:
        if self._grids is None:
            index = None if self.out is None else self.out / "fields.xdmf"
            if index is None or not index.exists():
                self._grids = []
            else:
                self._grids = ET.parse(index).getroot().findall("./Domain/Grid/Grid")
        return self._grids

    @property
    def times(self) -> list[float]:
        """The output times [hour]: each frame's exact ``time_hours`` (the index's own times
        are in days, for ParaView)."""
        return [float(g.find("Information[@Name='time_hours']").get("Value")) for g in self._load()]

    @property
    def dim(self) -> int | None:
        grids = self._load()
        return len(grids[0].find("Geometry").get("GeometryType", "XYZ")) if grids else None

    @property
    def names(self) -> list[str]:
        grids = self._load()
        # the fields at the nodes and cells (the Grid-centred attributes name the region tags)
        return [a.get("Name") for a in grids[0].findall("Attribute") if a.get("Center") != "Grid"] if grids else []

    def _dataset(self, item) -> np.ndarray:
        import h5py

        path, inside = item.text.strip().split(":", 1)
        with h5py.File(self.out / path, "r") as fh:
            return np.asarray(fh[inside])

    def read(self, k: int, name: str) -> tuple[np.ndarray, np.ndarray, str]:
        grid = self._load()[k]
        x = self._dataset(grid.find("Geometry/DataItem"))
        x = np.hstack([x, np.zeros((x.shape[0], 3 - x.shape[1]))]) if x.shape[1] < 3 else x
        attr = next(a for a in grid.findall("Attribute") if a.get("Name") == name)
        values = self._dataset(attr.find("DataItem")).reshape(-1)
        if attr.get("Center") == "Cell":
            cells = self._dataset(grid.find("Topology/DataItem")).astype(np.int64)
            return x[cells].mean(axis=1), values, "cell"
        return x, values, "node"

