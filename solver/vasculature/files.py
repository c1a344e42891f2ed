"""Vessel networks in files: VTK PolyData and node/segment tables in, VTK PolyData out.

Read:
- ``.vtp`` / ``.vtk``: polylines (or line cells) with a ``radius`` point or cell array (a point
  radius gives a segment the mean of its two ends), as imaging pipelines and Microvessel Chaste
  write them; an array whose name contains "radius", or a "diameter" array, serves when there
  is no ``radius``. Optional point arrays ``boundary_pressure`` [mmHg] and ``boundary_flow``
  [nl/min, into the network], NaN where a node has none. Points shared by polylines are merged
  by position.
- ``.yaml`` / ``.yml``: a table with its units::

      units: {length: um, pressure: mmHg, flow: nl/min}     # these are the defaults
      nodes: [[x, y, z], ...]
      segments: [[node_a, node_b, radius], ...]
      pressure: {node: value}                                # optional boundary conditions
      flow: {node: value}
- ``.csv``: one segment per row, columns ``x0 y0 z0 x1 y1 z1 radius`` with units in the header
  (``x0 [um]``; µm when a column has none) and optional ``p0``/``p1`` [mmHg] at the two ends.

A VTK file carries no unit: its coordinates and radii are in ``unit`` (µm unless said, as for
mesh files); a table declares its own. Every failure is a ScenarioError naming the file. Units
inside: µm, mmHg, µm³/h.
"""

from __future__ import annotations

import base64
import csv
import re
from pathlib import Path

import numpy as np

from ..config.spec import ScenarioError
from ..config.units import parse_quantity
from .network import NL_PER_MIN, Network

SUFFIXES = (".vtp", ".vtk", ".yaml", ".yml", ".csv")


def read(path: str | Path, unit: str = "um", key: str = "vasculature.file") -> Network:
    """The network in ``path`` (µm, mmHg, µm³/h); ``unit``: the length unit of a VTK file."""
    path = Path(path)
    where = f"{key}: {path}"
    if not path.is_file():
        raise ScenarioError(f"{where}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ScenarioError(f"{where}: unknown network format '{suffix}'; use one of {', '.join(SUFFIXES)}")
    scale = parse_quantity(f"1 {unit}", "um", "um")
    if suffix not in (".vtp", ".vtk") and scale != 1.0:
        raise ScenarioError(f"{key.rsplit('.', 1)[0]}.unit: {path.name} is a table, which declares its own "
                            f"units (units: {{length: ...}} or column headers such as 'x0 [mm]'); unit is "
                            f"for VTK files")
    try:
        if suffix in (".vtp", ".vtk"):
            nodes, segs, radius, pressure, inflow = _read_vtk(path, where)
        elif suffix == ".csv":
            nodes, segs, radius, pressure, inflow = _read_csv(path, where)
        else:
            nodes, segs, radius, pressure, inflow = _read_yaml(path, where)
    except ScenarioError:
        raise
    except Exception as exc:  # a reader's own failure on a damaged file: one line, no traceback
        raise ScenarioError(f"{where}: cannot read ({exc.__class__.__name__}: {exc})") from None
    return Network(np.asarray(nodes, float) * scale, segs, np.asarray(radius, float) * scale,
                   pressure=pressure, inflow=inflow, source=where)


# --------------------------------------------------------------------------------------------
def _merge(points: np.ndarray, segs: np.ndarray):
    """Merge coincident points (within 1e-9 of the network's size); drop repeated segments."""
    span = float(np.ptp(points, axis=0).max()) if len(points) else 1.0
    key = np.round(points / max(span * 1e-9, 1e-12)).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return points[first], inverse.reshape(-1)[segs], first, inverse.reshape(-1)


def _pick_radius(arrays: dict, where: str):
    """(name, values, is_diameter) of the radius array among ``arrays``."""
    if "radius" in arrays:
        return "radius", arrays["radius"], False
    named = [n for n in arrays if "radius" in n.lower()]
    if len(named) == 1:
        return named[0], arrays[named[0]], False
    if len(named) > 1:
        raise ScenarioError(f"{where}: several radius arrays ({', '.join(named)}); name one 'radius'")
    diam = [n for n in arrays if "diameter" in n.lower()]
    if len(diam) == 1:
        return diam[0], arrays[diam[0]], True
    return None, None, False


def _read_vtk(path: Path, where: str):
    import pyvista

    data = pyvista.read(str(path))
    pts = np.asarray(data.points, dtype=float)
    lines = []  # per cell: its point ids
    if isinstance(data, pyvista.PolyData):
        flat = np.asarray(data.lines)
        i = 0
        while i < flat.size:
            k = int(flat[i])
            lines.append(flat[i + 1:i + 1 + k])
            i += k + 1
        if data.n_cells != len(lines):
            raise ScenarioError(f"{where}: holds cells other than lines (vertices or polygons); "
                                f"a network is polylines only")
    else:
        for ctype, conn in getattr(data, "cells_dict", {}).items():
            if int(ctype) not in (3, 4):  # VTK_LINE, VTK_POLY_LINE
                raise ScenarioError(f"{where}: holds cells other than lines (VTK type {int(ctype)})")
            lines += [row for row in np.asarray(conn)]
    if not lines:
        raise ScenarioError(f"{where}: holds no lines (a network is polylines with a radius)")
    segs, cell_of = [], []
    for c, ids in enumerate(lines):
        ids = np.asarray(ids, dtype=np.int64)
        segs.append(np.stack([ids[:-1], ids[1:]], 1))
        cell_of.append(np.full(len(ids) - 1, c))
    segs, cell_of = np.concatenate(segs), np.concatenate(cell_of)
    pd = {n: np.asarray(data.point_data[n]) for n in data.point_data.keys()}
    cd = {n: np.asarray(data.cell_data[n]) for n in data.cell_data.keys()}
    name, values, diameter = _pick_radius(pd, where)
    if name is not None:
        radius = 0.5 * (values[segs[:, 0]] + values[segs[:, 1]])
    else:
        name, values, diameter = _pick_radius(cd, where)
        if name is None:
            raise ScenarioError(f"{where}: no 'radius' point or cell array (arrays: "
                                f"{', '.join(list(pd) + list(cd)) or 'none'})")
        radius = values[cell_of]
    radius = np.asarray(radius, float).reshape(-1) * (0.5 if diameter else 1.0)
    nodes, segs, first, _ = _merge(pts, segs)
    pressure = pd.get("boundary_pressure")
    inflow = pd.get("boundary_flow")
    pressure = None if pressure is None else np.asarray(pressure, float)[first]
    inflow = None if inflow is None else np.asarray(inflow, float)[first] * NL_PER_MIN
    return nodes, segs, radius, pressure, inflow


def _factor(text, base: str, default: str, where: str, what: str) -> float:
    try:
        return parse_quantity(f"1 {text}" if text else 1.0, base, default)
    except ValueError as exc:
        raise ScenarioError(f"{where}: units.{what}: {exc}") from None


def _read_yaml(path: Path, where: str):
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or "nodes" not in doc or "segments" not in doc:
        raise ScenarioError(f"{where}: a network table needs 'nodes' and 'segments' "
                            f"(and optionally 'units', 'pressure', 'flow')")
    unknown = set(doc) - {"units", "nodes", "segments", "pressure", "flow", "note"}
    if unknown:
        raise ScenarioError(f"{where}: unknown key '{sorted(unknown)[0]}'; keys: units, nodes, segments, pressure, flow, note")
    units = doc.get("units") or {}
    L = _factor(units.get("length", "um"), "um", "um", where, "length")
    Pf = _factor(units.get("pressure", "mmHg"), "mmHg", "mmHg", where, "pressure")
    Ff = _factor(units.get("flow", "nl/min"), "um**3/hour", "nl/min", where, "flow")
    nodes = np.asarray(doc["nodes"], dtype=float)
    if nodes.ndim != 2 or nodes.shape[1] != 3:
        raise ScenarioError(f"{where}: nodes: each node is [x, y, z]")
    segs = np.asarray(doc["segments"], dtype=float)
    if segs.ndim != 2 or segs.shape[1] != 3:
        raise ScenarioError(f"{where}: segments: each segment is [node_a, node_b, radius]")
    if np.any(segs[:, :2] != np.round(segs[:, :2])):
        raise ScenarioError(f"{where}: segments: node numbers must be integers")
    n = len(nodes)
    bc = {}
    for name, f in (("pressure", Pf), ("flow", Ff)):
        arr = np.full(n, np.nan)
        for node, value in (doc.get(name) or {}).items():
            if not isinstance(node, int) or not 0 <= node < n:
                raise ScenarioError(f"{where}: {name}: node {node!r} does not exist (nodes 0..{n - 1})")
            arr[node] = float(value) * f
        bc[name] = arr
    return nodes * L, segs[:, :2].astype(np.int64), segs[:, 2] * L, bc["pressure"], bc["flow"]


_HEADER = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(?:\[(.*)\])?\s*$")


def _read_csv(path: Path, where: str):
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and not r[0].lstrip().startswith("#")]
    if len(rows) < 2:
        raise ScenarioError(f"{where}: needs a header and at least one segment row")
    cols, factors = [], []
    for text in rows[0]:
        m = _HEADER.match(text)
        if not m:
            raise ScenarioError(f"{where}: cannot read column header {text!r}; write e.g. 'x0 [um]'")
        name, unit = m.group(1), m.group(2)
        cols.append(name)
        if name in ("p0", "p1"):
            factors.append(_factor(unit, "mmHg", "mmHg", where, name))
        else:
            factors.append(_factor(unit, "um", "um", where, name))
    need = ["x0", "y0", "z0", "x1", "y1", "z1", "radius"]
    missing = [c for c in need if c not in cols]
    if missing:
        raise ScenarioError(f"{where}: missing column '{missing[0]}'; columns: {', '.join(need)} (+ p0, p1)")
    table = {}
    for j, c in enumerate(cols):
        try:
            table[c] = np.array([float(r[j]) if j < len(r) and r[j].strip() else np.nan for r in rows[1:]]) * factors[j]
        except ValueError:
            raise ScenarioError(f"{where}: column '{c}' holds a value that is not a number") from None
    m = len(rows) - 1
    pts = np.concatenate([np.c_[table["x0"], table["y0"], table["z0"]], np.c_[table["x1"], table["y1"], table["z1"]]])
    segs = np.c_[np.arange(m), m + np.arange(m)]
    nodes, segs, first, inverse = _merge(pts, segs)
    pressure = np.full(len(nodes), np.nan)
    for end, col in ((0, "p0"), (1, "p1")):
        if col in table:
            given = np.isfinite(table[col])
            pressure[inverse[end * m + np.flatnonzero(given)]] = table[col][given]
    return nodes, segs, table["radius"], pressure, None


# --------------------------------------------------------------------------------------------
def write_vtp(path: str | Path, net: Network, cell_data: dict | None = None,
              point_data: dict | None = None, comment: str = "") -> Path:
    """The network as VTK XML PolyData (one line cell per segment; µm).

    Always written: cell array ``radius`` [µm], point arrays ``boundary_pressure`` [mmHg] and
    ``boundary_flow`` [nl/min] (NaN where none), so :func:`read` gets the same network back.
    ``comment``: a line written into the file as an XML comment (where the network comes from).
    """
    path = Path(path)
    cells = {"radius": net.radius, **(cell_data or {})}
    points = {"boundary_pressure": net.pressure, "boundary_flow": net.inflow / NL_PER_MIN, **(point_data or {})}

    def array(name, values, comps=1):
        # inline binary (base64 of a UInt64 byte count and the raw data): exact, and NaN
        # (no boundary condition) survives, which VTK's ASCII parser does not read
        v = np.asarray(values)
        kind, dtype = {"i": ("Int64", "<i8"), "u": ("Int64", "<i8"), "b": ("UInt8", "u1")}.get(v.dtype.kind,
                                                                                         ("Float64", "<f8"))
        raw = np.ascontiguousarray(v, dtype=dtype).tobytes()
        text = base64.b64encode(np.uint64(len(raw)).tobytes() + raw).decode()
        return (f'<DataArray type="{kind}" Name="{name}" NumberOfComponents="{comps}" format="binary">'
                f"{text}</DataArray>")

    n, m = net.num_nodes, net.num_segments
    parts = ['<?xml version="1.0"?>'] + ([f"<!-- {comment.replace('--', '-')} -->"] if comment else []) + [
             '<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64">',
             "<PolyData>", f'<Piece NumberOfPoints="{n}" NumberOfVerts="0" NumberOfLines="{m}" '
             'NumberOfStrips="0" NumberOfPolys="0">',
             "<Points>", array("Points", net.nodes, 3), "</Points>",
             "<Lines>", array("connectivity", net.segments.astype(np.int64)),
             array("offsets", 2 * np.arange(1, m + 1, dtype=np.int64)), "</Lines>",
             "<PointData>", *[array(k, v) for k, v in points.items()], "</PointData>",
             "<CellData>", *[array(k, v) for k, v in cells.items()], "</CellData>",
             "</Piece>", "</PolyData>", "</VTKFile>"]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts) + "\n")
    tmp.replace(path)  # a reader never sees half a file
    return path


def write_table(path: str | Path, net: Network, note: str = "") -> Path:
    """The network as a YAML node/segment table (µm, mmHg, nl/min) that :func:`read` reads."""
    import yaml

    doc = {}
    if note:
        doc["note"] = note
    doc["units"] = {"length": "um", "pressure": "mmHg", "flow": "nl/min"}
    doc["nodes"] = [[round(float(v), 6) for v in p] for p in net.nodes]
    doc["segments"] = [[int(a), int(b), round(float(r), 6)] for (a, b), r in zip(net.segments, net.radius)]
    doc["pressure"] = {int(i): float(net.pressure[i]) for i in np.flatnonzero(np.isfinite(net.pressure))}
    doc["flow"] = {int(i): float(net.inflow[i] / NL_PER_MIN) for i in np.flatnonzero(np.isfinite(net.inflow))}
    path = Path(path)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100))
    return path


class NetworkSeries:
    """The network at every output time: ``<stem>_NNNN.vtp`` files in ``directory`` and a
    collection ``index`` (default ``directory/<stem>.pvd``) that ParaView opens as one time
    series beside the tissue fields.

    Each file holds the point array ``pressure`` [mmHg] and the given cell arrays (radius [µm],
    flow [nl/min], perfused, plasma levels [µM], ...). A frame is complete before the collection
    (replaced atomically) lists it. Write from one rank only.
    """

    def __init__(self, directory: str | Path, net: Network, stem: str = "network", index: str | Path | None = None):
        self.dir, self.net, self.stem = Path(directory), net, stem
        self.index = Path(index) if index is not None else self.dir / f"{stem}.pvd"
        self.entries: list[tuple[float, str]] = []

    def write(self, t: float, pressure: np.ndarray, cell_data: dict) -> Path:
        """Add the state at time ``t``, in the unit of the collection's times (a run's
        ``network.pvd``: days, like its fields)."""
        import os

        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{self.stem}_{len(self.entries):04d}.vtp"
        write_vtp(path, self.net, cell_data=cell_data, point_data={"pressure": pressure})
        self.entries.append((t, os.path.relpath(path, self.index.parent)))
        rows = "\n".join(f'<DataSet timestep="{tt!r}" group="" part="0" file="{n}"/>' for tt, n in self.entries)
        tmp = self.index.with_name(self.index.name + ".tmp")
        tmp.write_text('<?xml version="1.0"?>\n<VTKFile type="Collection" version="0.1">\n<Collection>\n'
                       f"{rows}\n</Collection>\n</VTKFile>\n")
        tmp.replace(self.index)
        return self.index
