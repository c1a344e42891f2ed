"""The domain: a distributed mesh in µm whose cells carry named regions and whose facets carry
named boundary tags (docs/model.md, Tissue).

Every mesh kind of the scenario ends in the same :class:`Domain`:

- ``rectangle`` / ``box``: DOLFINx's structured simplices; facets ``left``, ``right`` (x),
  ``bottom``, ``top`` (y) and, in 3-D, ``back`` (z min), ``front`` (z max);
- ``slice2d``: a gmsh rectangle with circular vessel holes (``vessel_wall``) and the four sides;
- ``krogh``: a gmsh annulus (2-D) or hollow cylinder along z (3-D): ``vessel_wall``, ``outer``
  (and ``ends`` in 3-D);
- ``spheroid``: a gmsh ball; its surface is ``outer``;
- ``file``: a gmsh ``.msh`` (physical group names become region and facet names) or any other
  format meshio reads (integer cell data become tags, meshio's field data their names).

Generated meshes are centred on the origin (a rectangle or box may set its own). Cells not
tagged by the mesh are
region ``tissue``; region rules (``where`` expressions of x, y, z, r at cell midpoints)
then retag cells, the first matching rule winning. Facet name ``outer``, unless the mesh names it
itself, groups every exterior facet tag except ``vessel_wall``.

gmsh runs on rank 0 only; the mesh is then partitioned over the communicator.
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from mpi4py import MPI

import basix.ufl
import dolfinx.graph
import dolfinx.io
import dolfinx.la
import ufl
from dolfinx import mesh as dmesh

from .. import compat
from ..config.scenario import BuiltinMesh, FileMesh, KroghMesh, RegionRule, SliceMesh, SpheroidMesh
from ..config.spec import ScenarioError

#: The region of cells that neither the mesh nor a rule tags.
DEFAULT_REGION = "tissue"
WALL = "vessel_wall"
OUTER = "outer"


# --------------------------------------------------------------------------------------------
# The domain


@dataclass(frozen=True)
class Domain:
    """A distributed mesh (coordinates in µm) with named cell regions and facet tags.

    ``cell_tags`` gives every local cell (owned and ghost) the tag value of its region;
    ``regions`` maps region names to those values (only regions that hold cells).
    ``facet_tags`` marks boundary facets; ``facets`` maps a facet name to the tag values it
    covers (a name may group several, e.g. ``outer``).
    """

    mesh: dmesh.Mesh
    cell_tags: dmesh.MeshTags
    facet_tags: dmesh.MeshTags
    regions: dict[str, int]
    facets: dict[str, tuple[int, ...]]

    @property
    def dim(self) -> int:
        return self.mesh.topology.dim

    def region(self, name: str, key: str) -> int:
        """Tag value of region ``name``; ScenarioError naming ``key`` when the mesh has none."""
        if name not in self.regions:
            raise ScenarioError(f"{key}: the mesh has no region '{name}'; its regions: {_listing(self.regions)}")
        return self.regions[name]

    def facet(self, name: str, key: str) -> tuple[int, ...]:
        """Facet tag values named ``name``; ScenarioError naming ``key`` when the mesh has none."""
        if name not in self.facets:
            raise ScenarioError(f"{key}: the mesh has no facets '{name}'; its facets: {_listing(self.facets)}")
        return self.facets[name]

    def cell_size(self) -> float:
        """Smallest cell diameter over all ranks [µm]."""
        n = self.mesh.topology.index_map(self.dim).size_local
        local = float(self.mesh.h(self.dim, np.arange(n, dtype=np.int32)).min()) if n else np.inf
        return self.mesh.comm.allreduce(local, op=MPI.MIN)


def _listing(names) -> str:
    return ", ".join(names) if names else "(none)"


def build(spec, comm: MPI.Comm = MPI.COMM_WORLD) -> Domain:
    """The domain of a mesh spec (any kind of :data:`tme.config.scenario.MeshSpec`), on ``comm``."""
    if isinstance(spec, BuiltinMesh):
        raw = _builtin(spec, comm)
    elif isinstance(spec, SliceMesh):
        raw = _slice(spec, comm)
    elif isinstance(spec, KroghMesh):
        raw = _from_gmsh(comm, lambda: krogh_geometry(spec.vessel_radius, spec.tissue_radius, spec.h,
                                                      spec.length if spec.dim == 3 else None))
    elif isinstance(spec, SpheroidMesh):
        raw = _from_gmsh(comm, lambda: spheroid_geometry(spec.radius, spec.h))
    elif isinstance(spec, FileMesh):
        raw = _file(spec, comm)
    else:
        raise TypeError(f"not a mesh spec: {type(spec).__name__}")
    return _finish(raw, getattr(spec, "regions", []), comm)


# --------------------------------------------------------------------------------------------
# The size of a mesh before it is built

#: Cells per unit area (2-D, times h^2) and per unit volume (3-D, times h^3) of gmsh meshes with
#: element size h: 2.31 is the equilateral triangle (area sqrt(3)/4 h^2); 4.9 was measured on gmsh
#: balls (4.85 at R/h = 10, 4.56 at R/h = 20).
CELLS_PER_H2, CELLS_PER_H3 = 2.31, 4.9

#: Memory of the set-up and run per cell [bytes], and what any run needs besides (Python,
#: DOLFINx, gmsh). Measured as the peak RSS of set-up plus two steps of the default scenario
#: (the richest shipped one: 2 drugs, factor, oxygen, 5 clones) with its mesh refined: 2.5 kB
#: per cell for the slice (89 821 cells, gmsh's own memory included), 1.6 kB for a rectangle
#: (212 800 cells), 1.5 kB for a ball (152 924 tetrahedra); 110 MB before any mesh.
BYTES_PER_CELL = 2000
BASE_BYTES = 250e6

#: A mesh file of this many bytes holds about one cell (binary .msh: 4 node numbers and a tag
#: per cell plus coordinates; ASCII files hold fewer cells per byte, so this overestimates).
FILE_BYTES_PER_CELL = 20


@dataclass(frozen=True)
class SizeEstimate:
    """What a mesh spec will cost, known before it is built."""

    cells: float
    how: str  # how the count was reached, for the message

    @property
    def memory(self) -> float:
        """Memory of the set-up and the run [bytes]."""
        return BASE_BYTES + self.cells * BYTES_PER_CELL


def estimate(spec) -> SizeEstimate:
    """The cell count and memory of the mesh a spec will build, from its sizes alone."""
    if isinstance(spec, BuiltinMesh):
        n = float(np.prod([float(c) for c in spec.cells]))
        if spec.kind == "rectangle":
            return SizeEstimate(2 * n, f"{' x '.join(map(str, spec.cells))} cells x 2 triangles")
        return SizeEstimate(6 * n, f"{' x '.join(map(str, spec.cells))} cells x 6 tetrahedra")
    if isinstance(spec, SliceMesh):
        w, hgt = (list(spec.size) + [0.0, 0.0])[:2]
        h = spec.h
        cells = CELLS_PER_H2 * w * hgt / h**2
        vh = spec.vessel_h or h / 3
        for v in spec.vessels:
            # the ring of width 2 h where the size grades from vessel_h to h
            ring = math.pi * ((v.radius + 2 * h) ** 2 - v.radius**2)
            cells += CELLS_PER_H2 * ring * max(1 / (vh * h) - 1 / h**2, 0.0)
        return SizeEstimate(cells, f"{w:g} x {hgt:g} µm at h = {h:g} µm")
    if isinstance(spec, KroghMesh):
        rv, R, h = spec.vessel_radius, spec.tissue_radius, spec.h
        # the element size of krogh_geometry: h/6 at the wall, growing linearly to h over ring
        ring = min(8 * rv, (R - rv) / 2)
        r = np.linspace(rv, R, 4001)
        size = np.where(r < rv + ring, h / 6 + (5 * h / 6) * (r - rv) / ring, h)
        if spec.dim == 2:
            cells = CELLS_PER_H2 * np.trapezoid(2 * math.pi * r / size**2, r)
            return SizeEstimate(float(cells), f"annulus {rv:g}-{R:g} µm at h = {h:g} µm")
        L = spec.length or 0.0
        cells = CELLS_PER_H3 * L * np.trapezoid(2 * math.pi * r / size**3, r)
        return SizeEstimate(float(cells), f"cylinder {rv:g}-{R:g} µm x {L:g} µm at h = {h:g} µm")
    if isinstance(spec, SpheroidMesh):
        vol = 4 / 3 * math.pi * spec.radius**3
        return SizeEstimate(CELLS_PER_H3 * vol / spec.h**3,
                            f"ball of radius {spec.radius:g} µm at h = {spec.h:g} µm")
    if isinstance(spec, FileMesh):
        try:
            size = Path(spec.path).stat().st_size
        except OSError:
            size = 0  # a missing file is reported when it is read
        return SizeEstimate(size / FILE_BYTES_PER_CELL, f"{spec.path} of {size} bytes")
    raise TypeError(f"not a mesh spec: {type(spec).__name__}")


def check_size(spec, comm, limit: float | None = None) -> SizeEstimate:
    """Refuse a mesh whose estimated memory exceeds ``limit`` [bytes] (default: the memory
    available on the machines of ``comm``), before any of it is built (collective)."""
    from ..resources import available_memory, human

    est = estimate(spec)
    budget = limit if limit is not None else available_memory(comm)
    if est.memory > budget:
        have = (f"the limit --max-memory is {human(budget)}" if limit is not None else
                f"{human(budget)} is available on {'this machine' if comm.size == 1 else 'the machines of this job'}")
        raise ScenarioError(
            f"mesh: about {est.cells:.3g} cells ({est.how}) would need about {human(est.memory)} of "
            f"memory, but {have}; coarsen the mesh (mesh.h or mesh.cells), or raise the limit "
            "with --max-memory")
    return est


# --------------------------------------------------------------------------------------------
# Expressions of position


_FUNCTIONS = {name: getattr(np, name) for name in (
    "sqrt", "exp", "log", "log10", "abs", "minimum", "maximum", "sin", "cos", "tan", "tanh",
    "arctan2", "hypot", "clip", "where", "logical_and", "logical_or", "logical_not", "pi")}
_VARIABLES = ("x", "y", "z", "r")


def evaluate(expression: str, points: np.ndarray, key: str) -> np.ndarray:
    """Evaluate a NumPy expression of x, y, z and r = |x| (µm) at ``points`` (n, 3).

    Only those variables and a few NumPy functions (sqrt, exp, abs, minimum, maximum, sin,
    cos, pi, logical_and/or, ...) are visible. Returns an array of shape (n,); a bad expression
    raises ScenarioError naming ``key``.
    """
    usable = f"usable names: {', '.join(_VARIABLES + tuple(_FUNCTIONS))}"
    # Python computes integer constants exactly, so '9**9**9' or '1 << 10**9' would never end:
    # the text and its literals are bounded, and every number becomes a float, whose arithmetic
    # overflows to an error instead
    if len(expression) > 2000:
        raise ScenarioError(f"{key}: the expression has {len(expression)} characters; at most 2000")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ScenarioError(f"{key}: {expression!r} is not a valid expression ({exc.msg})") from None
    except (RecursionError, MemoryError, ValueError):
        raise ScenarioError(f"{key}: {expression!r} is nested too deeply") from None
    unknown = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in _VARIABLES
               and n.id not in _FUNCTIONS and not n.id.startswith("_")]
    if unknown:
        raise ScenarioError(f"{key}: name {unknown[0]!r} is not defined in {expression!r}; {usable}")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Subscript, ast.Lambda, ast.comprehension, ast.NamedExpr)) or (
                isinstance(node, ast.Name) and node.id.startswith("_")):
            raise ScenarioError(f"{key}: {expression!r} may use only arithmetic, comparisons and "
                                f"functions; {usable}")
        if isinstance(node, ast.BoolOp):
            raise ScenarioError(f"{key}: {expression!r}: 'and'/'or' do not work on arrays; "
                                "write (a) & (b), (a) | (b) or logical_and(a, b)")
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float)) or isinstance(node.value, complex):
                raise ScenarioError(f"{key}: {expression!r}: {node.value!r} is not a number; an "
                                    f"expression computes with numbers only")
            if isinstance(node.value, int) and not isinstance(node.value, bool):
                if abs(node.value) > 10 ** 18:
                    raise ScenarioError(f"{key}: {expression!r}: the literal {node.value} is too large; "
                                        f"write it as a float (e.g. 1e20)")
                node.value = float(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.LShift, ast.RShift)):
            raise ScenarioError(f"{key}: {expression!r}: shifts are not arithmetic of positions; "
                                f"{usable}")
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    names = dict(_FUNCTIONS, x=pts[:, 0], y=pts[:, 1], z=pts[:, 2], r=np.linalg.norm(pts, axis=1))
    try:
        with np.errstate(all="ignore"):
            value = eval(compile(tree, key, "eval"), {"__builtins__": {}}, names)  # noqa: S307 (no builtins)
        value = np.broadcast_to(np.asarray(value), (pts.shape[0],))
    except NameError as exc:
        raise ScenarioError(f"{key}: {exc} in {expression!r}; {usable}") from None
    except OverflowError:
        raise ScenarioError(f"{key}: cannot evaluate {expression!r}: a number in it exceeds the "
                            f"floating-point range (about 1e308)") from None
    except Exception as exc:  # any failure of the user's expression is a config error
        raise ScenarioError(f"{key}: cannot evaluate {expression!r} ({type(exc).__name__}: {exc})") from None
    if value.dtype.kind not in "biuf":
        raise ScenarioError(f"{key}: {expression!r} does not give numbers (got {value.dtype})")
    return value


def together(comm: MPI.Comm, fn: Callable[[], object]):
    """Call ``fn`` on every rank; if it raises ScenarioError anywhere, raise it on every rank.

    A config error found on one rank only (e.g. a value out of range in its cells) must not
    leave the other ranks waiting in the next collective call.
    """
    try:
        result, msg = fn(), None
    except ScenarioError as exc:
        result, msg = None, str(exc)
    msgs = [m for m in comm.allgather(msg) if m is not None]
    if msgs:
        raise ScenarioError(msgs[0])
    return result


# --------------------------------------------------------------------------------------------
# Mesh kinds


@dataclass
class _Raw:
    """A mesh before region rules: its mesh tags, and the names of their values."""

    mesh: dmesh.Mesh
    cell_tags: dmesh.MeshTags | None
    facet_tags: dmesh.MeshTags
    region_names: dict[str, int]
    facet_names: dict[str, tuple[int, ...]]


def _partitioner():
    # the same ghost layer as DOLFINx's built-in meshes, so every kind behaves alike in parallel
    return compat.cell_partitioner(dmesh.GhostMode.shared_facet)


def _builtin(spec: BuiltinMesh, comm) -> _Raw:
    size = np.asarray(spec.size, dtype=float)
    lo = np.asarray(spec.origin, dtype=float) if spec.origin is not None else -size / 2
    hi = lo + size
    if spec.kind == "rectangle":
        msh = dmesh.create_rectangle(comm, [lo, hi], spec.cells, dmesh.CellType.triangle)
        sides = ["left", "right", "bottom", "top"]
    else:
        msh = dmesh.create_box(comm, [lo, hi], spec.cells, dmesh.CellType.tetrahedron)
        sides = ["left", "right", "bottom", "top", "back", "front"]
    tdim = msh.topology.dim
    tol = 1e-9 * float(size.max())
    # one pass over the boundary facets, tagged by the side their midpoint lies on (a side call
    # of locate_entities_boundary each would walk the whole boundary once per side)
    msh.topology.create_connectivity(tdim - 1, tdim)
    facets = dmesh.exterior_facet_indices(msh.topology)
    mid = dmesh.compute_midpoints(msh, tdim - 1, facets)
    values = np.zeros(facets.size, dtype=np.int32)
    for tag in range(1, len(sides) + 1):
        axis, end = divmod(tag - 1, 2)
        values[np.abs(mid[:, axis] - (lo, hi)[end][axis]) < tol] = tag
    ft = _meshtags(msh, tdim - 1, facets[values > 0], values[values > 0])
    return _Raw(msh, None, ft, {}, {name: (tag,) for tag, name in enumerate(sides, start=1)})


def _meshtags(msh, dim, indices, values) -> dmesh.MeshTags:
    order = np.argsort(indices)
    return dmesh.meshtags(msh, dim, indices[order].astype(np.int32), values[order].astype(np.int32))


def _slice(spec: SliceMesh, comm) -> _Raw:
    if len(spec.size) != 2:
        raise ScenarioError(f"mesh.size: a slice needs 2 entries (width, height), got {len(spec.size)}")
    width, height = spec.size
    vessels = []
    for i, v in enumerate(spec.vessels):
        if len(v.center) != 2:
            raise ScenarioError(f"mesh.vessels.{i}.center: needs 2 entries (x, y), got {len(v.center)}")
        cx, cy = v.center
        if abs(cx) >= width / 2 or abs(cy) >= height / 2:
            raise ScenarioError(f"mesh.vessels.{i}.center: ({cx:g}, {cy:g}) µm lies outside the slice "
                                f"[{-width / 2:g}, {width / 2:g}] x [{-height / 2:g}, {height / 2:g}] µm "
                                "(slices are centred on 0)")
        # a hole must leave tissue around it: a vessel reaching the edge (or covering the whole
        # slice) would cut the outer boundary and leave sides or the whole slice without cells
        room = min(width / 2 - abs(cx), height / 2 - abs(cy))
        if v.radius >= room:
            raise ScenarioError(f"mesh.vessels.{i}.radius: {v.radius:g} µm reaches the edge of the slice "
                                f"(the vessel at ({cx:g}, {cy:g}) µm has room for a radius below "
                                f"{room:g} µm)")
        vessels.append((cx, cy, v.radius))
    return _from_gmsh(comm, lambda: slice_geometry((width, height), spec.h, vessels, spec.vessel_h))


def _file(spec: FileMesh, comm) -> _Raw:
    path = Path(spec.path)
    if comm.rank == 0 and not path.is_file():
        msg = f"mesh.path: {path}: no such file"
    else:
        msg = None
    msg = comm.bcast(msg, root=0)
    if msg:
        raise ScenarioError(msg)
    if path.suffix.lower() == ".msh":
        raw = _from_gmsh(comm, lambda: _open_msh(path), source=path)
    else:
        raw = _from_meshio(comm, path)
    if spec.scale != 1.0:
        raw.mesh.geometry.x[:] *= spec.scale
    return raw


# --------------------------------------------------------------------------------------------
# gmsh: geometries (rank 0) and their distribution


@contextlib.contextmanager
def gmsh_session(name: str = "tme"):
    """A quiet gmsh session holding one model; finalised on exit unless it was already open."""
    import gmsh

    opened = not gmsh.isInitialized()
    if opened:
        gmsh.initialize(interruptible=False)
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.model.add(name)
    try:
        yield gmsh
    finally:
        if opened:
            gmsh.finalize()
        else:
            gmsh.model.remove()


def _grade(dim: int, entities: Sequence[int], fine: float, coarse: float, distance: float) -> None:
    """Element size ``fine`` on the given curves/surfaces, growing to ``coarse`` at ``distance``."""
    import gmsh

    field = gmsh.model.mesh.field
    d = field.add("Distance")
    field.setNumbers(d, "CurvesList" if dim == 1 else "SurfacesList", list(entities))
    field.setNumber(d, "Sampling", 200)
    t = field.add("Threshold")
    field.setNumber(t, "InField", d)
    field.setNumber(t, "SizeMin", fine)
    field.setNumber(t, "SizeMax", coarse)
    field.setNumber(t, "DistMin", 0.0)
    field.setNumber(t, "DistMax", distance)
    field.setAsBackgroundMesh(t)
    for option in ("MeshSizeExtendFromBoundary", "MeshSizeFromPoints", "MeshSizeFromCurvature"):
        gmsh.option.setNumber(f"Mesh.{option}", 0)


def _mesh(dim: int, h: float) -> None:
    import gmsh

    gmsh.option.setNumber("Mesh.MeshSizeMax", h)
    gmsh.model.mesh.generate(dim)


def slice_geometry(size: tuple[float, float], h: float, vessels: Sequence[tuple[float, float, float]] = (),
                   vessel_h: float | None = None, zones: Sequence[tuple[str, tuple[float, float], float]] = (),
                   background: str = DEFAULT_REGION, split_sides: bool = True) -> None:
    """Mesh, in the current gmsh model, a 2-D slice of ``size`` (µm) centred on 0.

    ``vessels`` are holes (cx, cy, radius) whose boundaries form the facet group ``vessel_wall``;
    elements there have size ``vessel_h`` (default h/3), growing to ``h`` over 2 h.
    ``zones`` are named disks (name, (cx, cy), radius) clipped to the slice; a piece of tissue
    belongs to the first zone that covers it, otherwise to ``background``. The outer boundary is
    tagged ``left``, ``right``, ``bottom``, ``top``, or as one group ``outer`` if not
    ``split_sides``.
    """
    import gmsh

    occ = gmsh.model.occ
    width, height = size
    x0, y0 = -width / 2, -height / 2
    base = [(2, occ.addRectangle(x0, y0, 0.0, width, height))]
    if vessels:
        holes = [(2, occ.addDisk(cx, cy, 0.0, r, r)) for cx, cy, r in vessels]
        base, _ = occ.cut(base, holes)
    pieces = [tag for _, tag in base]
    owner: dict[int, str] = {}
    if zones:
        disks = [(2, occ.addDisk(cx, cy, 0.0, r, r)) for _, (cx, cy), r in zones]
        _, children = occ.fragment(base, disks)
        pieces = sorted({tag for child in children[:len(base)] for _, tag in child})
        for (name, _, _), child in zip(zones, children[len(base):]):
            for _, tag in child:
                owner.setdefault(tag, name)
        outside = {tag for child in children for _, tag in child} - set(pieces)
        # parts of zone disks in vessels or beyond the slice are no tissue
        occ.remove([(2, tag) for tag in sorted(outside)], recursive=True)
    occ.synchronize()

    by_name: dict[str, list[int]] = {}
    for tag in pieces:
        by_name.setdefault(owner.get(tag, background), []).append(tag)
    order = [z[0] for z in zones] + [background]
    for value, name in enumerate(sorted(by_name, key=order.index), start=1):
        gmsh.model.addPhysicalGroup(2, by_name[name], value, name=name)

    boundary = gmsh.model.getBoundary([(2, t) for t in pieces], combined=True, oriented=False, recursive=False)
    tol = 1e-6 * max(width, height)
    sides = {"left": (0, x0), "right": (0, -x0), "bottom": (1, y0), "top": (1, -y0)}
    groups: dict[str, list[int]] = {}
    for _, curve in boundary:
        box = gmsh.model.getBoundingBox(1, abs(curve))
        side = next((s for s, (axis, at) in sides.items()
                     if abs(box[axis] - at) < tol and abs(box[axis + 3] - at) < tol), None)
        name = WALL if side is None else (side if split_sides else OUTER)
        groups.setdefault(name, []).append(abs(curve))
    for value, name in enumerate([n for n in (*sides, OUTER, WALL) if n in groups], start=1):
        gmsh.model.addPhysicalGroup(1, groups[name], value, name=name)

    if WALL in groups:
        _grade(1, groups[WALL], vessel_h or h / 3, h, 2 * h)
    _mesh(2, h)


def krogh_geometry(vessel_radius: float, tissue_radius: float, h: float, length: float | None = None) -> None:
    """Mesh, in the current gmsh model, the Krogh unit around a vessel on the z axis (µm).

    2-D (``length`` None): the annulus r_v < r < R with curves ``vessel_wall`` and ``outer``.
    3-D: the hollow cylinder of ``length`` centred on z = 0, with surfaces ``vessel_wall``,
    ``outer`` (lateral) and ``ends``. Elements have size h/6 at the wall, where the profile is
    steepest, growing to h within min(8 r_v, (R - r_v)/2); the grading scales with h, so a
    sequence of h is a proper refinement study (second order already from h = 8 µm for r_v = 5 µm).
    """
    import gmsh

    occ = gmsh.model.occ
    rv, R = vessel_radius, tissue_radius
    if length is None:
        dim = 2
        body, _ = occ.cut([(2, occ.addDisk(0, 0, 0, R, R))], [(2, occ.addDisk(0, 0, 0, rv, rv))])
    else:
        dim = 3
        z0 = -length / 2
        body, _ = occ.cut([(3, occ.addCylinder(0, 0, z0, 0, 0, length, R))],
                          [(3, occ.addCylinder(0, 0, z0, 0, 0, length, rv))])
    occ.synchronize()
    gmsh.model.addPhysicalGroup(dim, [t for _, t in body], 1, name=DEFAULT_REGION)
    groups: dict[str, list[int]] = {}
    for _, e in gmsh.model.getBoundary(body, combined=True, oriented=False, recursive=False):
        xmin, _, zmin, xmax, _, zmax = gmsh.model.getBoundingBox(dim - 1, abs(e))
        if dim == 3 and zmax - zmin < 1e-6 * length:
            name = "ends"
        else:
            name = WALL if max(abs(xmin), abs(xmax)) < (rv + R) / 2 else OUTER
        groups.setdefault(name, []).append(abs(e))
    for value, name in enumerate([n for n in (WALL, OUTER, "ends") if n in groups], start=1):
        gmsh.model.addPhysicalGroup(dim - 1, groups[name], value, name=name)
    _grade(dim - 1, groups[WALL], h / 6, h, min(8 * rv, (R - rv) / 2))
    _mesh(dim, h)


def spheroid_geometry(radius: float, h: float) -> None:
    """Mesh, in the current gmsh model, a ball of ``radius`` (µm) centred on 0; surface ``outer``."""
    import gmsh

    ball = gmsh.model.occ.addSphere(0, 0, 0, radius)
    gmsh.model.occ.synchronize()
    gmsh.model.addPhysicalGroup(3, [ball], 1, name=DEFAULT_REGION)
    surface = [abs(t) for _, t in gmsh.model.getBoundary([(3, ball)], oriented=False)]
    gmsh.model.addPhysicalGroup(2, surface, 1, name=OUTER)
    _mesh(3, h)


def _open_msh(path: Path) -> None:
    import gmsh

    try:
        gmsh.merge(str(path))
    except Exception as exc:  # gmsh raises a bare Exception with its last error message
        raise ScenarioError(f"mesh.path: {path}: gmsh cannot read it ({exc})") from None
    tdim = max((d for d in range(4) if len(gmsh.model.mesh.getElements(d)[0])), default=-1)
    if tdim < 2:
        raise ScenarioError(f"mesh.path: {path}: holds no 2-D or 3-D cells")
    # gmsh cells outside every physical group would be dropped by DOLFINx: they are 'tissue'
    tagged = {e for _, g in gmsh.model.getPhysicalGroups(tdim)
              for e in gmsh.model.getEntitiesForPhysicalGroup(tdim, g)}
    loose = [e for _, e in gmsh.model.getEntities(tdim) if e not in tagged]
    if loose:
        same = [g for _, g in gmsh.model.getPhysicalGroups(tdim)
                if gmsh.model.getPhysicalName(tdim, g) == DEFAULT_REGION]
        if same:
            loose += list(gmsh.model.getEntitiesForPhysicalGroup(tdim, same[0]))
            gmsh.model.removePhysicalGroups([(tdim, same[0])])
        tags = [g for _, g in gmsh.model.getPhysicalGroups(tdim)]
        gmsh.model.addPhysicalGroup(tdim, loose, same[0] if same else max(tags, default=0) + 1,
                                    name=DEFAULT_REGION)
    # DOLFINx reads cells and facets only
    low = [(d, g) for d, g in gmsh.model.getPhysicalGroups() if d < tdim - 1]
    if low:
        gmsh.model.removePhysicalGroups(low)


def _safe_name(name: str, tag: int) -> str:
    """A physical name usable as a scenario key (letters, digits, underscores)."""
    name = re.sub(r"\W", "_", name.strip())
    if not name:
        return f"tag_{tag}"
    return name if re.match(r"[A-Za-z_]", name) else f"_{name}"


def _group_names(pairs: Sequence[tuple[str, int]]) -> dict[str, tuple[int, ...]]:
    names: dict[str, tuple[int, ...]] = {}
    for name, tag in pairs:
        names[name] = names.get(name, ()) + (int(tag),)
    return names


def _from_gmsh(comm, make: Callable[[], None], source: Path | None = None) -> _Raw:
    """Run ``make`` in a gmsh model on rank 0 and distribute the mesh with its physical groups."""
    header: dict = {}
    failure = None
    if comm.rank == 0:
        with gmsh_session() as gmsh:
            try:
                make()
                if not gmsh.model.mesh.getNodes()[0].size or not gmsh.model.getPhysicalGroups():
                    raise ScenarioError("mesh: the geometry holds no tissue to mesh")
                tdim = max(d for d, _ in gmsh.model.getPhysicalGroups())
                z = gmsh.model.mesh.getNodes()[1].reshape(-1, 3)[:, 2]
                # a flat mesh in a plane z = const is 2-D; a curved surface keeps its z
                gdim = 3 if tdim == 3 or np.ptp(z) > 0 else 2
                header = dict(gdim=gdim, tdim=tdim, groups=[
                    (d, _safe_name(gmsh.model.getPhysicalName(d, g), g), g)
                    for d, g in gmsh.model.getPhysicalGroups()])
            except ScenarioError as exc:
                header = dict(error=str(exc))
            except Exception as exc:
                where = f"mesh.path: {source}" if source else "mesh"
                header = dict(error=f"{where}: gmsh failed ({exc})")
                # gmsh reports its failures as bare Exceptions; anything else is a bug, raised
                # as is on rank 0 once the other ranks know not to wait for a mesh
                failure = exc if type(exc) is not Exception else None
            comm.bcast(header, root=0)
            if failure is not None:
                raise failure
            if "error" in header:
                raise ScenarioError(header["error"])
            msh, ct, ft = compat.model_to_mesh(gmsh.model, comm, 0, gdim=header["gdim"],
                                               partitioner=_partitioner())
    else:
        header = comm.bcast(None, root=0)
        if "error" in header:
            raise ScenarioError(header["error"])
        msh, ct, ft = compat.model_to_mesh(None, comm, 0, gdim=header["gdim"], partitioner=_partitioner())
    tdim = header["tdim"]
    regions = _group_names([(n, g) for d, n, g in header["groups"] if d == tdim])
    facets = _group_names([(n, g) for d, n, g in header["groups"] if d == tdim - 1])
    return _named(msh, ct, ft, regions, facets)


def _named(msh, ct, ft, regions: dict[str, tuple[int, ...]], facets: dict[str, tuple[int, ...]]) -> _Raw:
    """Several cell groups of one name become one region (the first group's tag)."""
    if ct is not None and any(len(tags) > 1 for tags in regions.values()):
        values = ct.values.copy()
        for tags in regions.values():
            values[np.isin(ct.values, tags)] = tags[0]
        ct = dmesh.meshtags(msh, msh.topology.dim, ct.indices, values)
    return _Raw(msh, ct, ft, {n: tags[0] for n, tags in regions.items()}, facets)


# --------------------------------------------------------------------------------------------
# meshio: any other format


_MESHIO_CELLS = {"triangle": 2, "tetra": 3}
_MESHIO_FACETS = {2: "line", 3: "triangle"}
_MESHIO_KEYS = ("gmsh:physical", "medit:ref", "cell_tags", "CellEntityIds", "tags", "region", "regions")


def _read_meshio(path: Path) -> dict:
    """Rank 0: cells, facets, their integer tags and names from a file meshio reads."""
    import meshio

    chatter = io.StringIO()
    try:
        # meshio prints its own complaints and may even sys.exit() on an unreadable file
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            m = meshio.read(path)
    except (Exception, SystemExit) as exc:
        detail = str(exc) if not isinstance(exc, SystemExit) else " ".join(chatter.getvalue().split())
        raise ScenarioError(f"mesh.path: {path}: cannot read it as a mesh ({detail})") from None
    blocks = [(i, b) for i, b in enumerate(m.cells) if b.type in _MESHIO_CELLS]
    if not blocks:
        found = ", ".join(sorted({b.type for b in m.cells})) or "none"
        raise ScenarioError(f"mesh.path: {path}: no triangle or tetra cells (found: {found}); "
                            "the solver needs linear simplices")
    tdim = max(_MESHIO_CELLS[b.type] for _, b in blocks)
    cell_blocks = [(i, b) for i, b in blocks if _MESHIO_CELLS[b.type] == tdim]
    facet_blocks = [(i, b) for i, b in enumerate(m.cells) if b.type == _MESHIO_FACETS[tdim]]

    def tags(selected) -> np.ndarray | None:
        keys = [k for k in _MESHIO_KEYS if k in m.cell_data] + [
            k for k in m.cell_data if k not in _MESHIO_KEYS and all(
                np.issubdtype(np.asarray(m.cell_data[k][i]).dtype, np.integer) for i, _ in selected)]
        if not keys or not selected:
            return None
        return np.concatenate([np.asarray(m.cell_data[keys[0]][i]).reshape(-1) for i, _ in selected]).astype(np.int32)

    x = np.asarray(m.points, dtype=np.float64)
    gdim = 3 if tdim == 3 or (x.shape[1] == 3 and np.ptp(x[:, 2]) > 0) else 2
    names = [(_safe_name(n, int(v[0])), int(v[0]), int(v[1])) for n, v in m.field_data.items()
             if np.asarray(v).size >= 2]
    return dict(tdim=tdim, gdim=gdim, x=x[:, :gdim],
                cells=np.concatenate([b.data for _, b in cell_blocks]).astype(np.int64),
                cell_values=tags(cell_blocks),
                facets=np.concatenate([b.data for _, b in facet_blocks]).astype(np.int64) if facet_blocks else None,
                facet_values=tags(facet_blocks),
                names=names)


def _from_meshio(comm, path: Path) -> _Raw:
    data, header = None, None
    if comm.rank == 0:
        try:
            data = _read_meshio(path)
            header = {k: (data[k] is not None) if k in ("cell_values", "facets", "facet_values") else data[k]
                      for k in ("tdim", "gdim", "names", "cell_values", "facets", "facet_values")}
        except ScenarioError as exc:
            header = dict(error=str(exc))
    header = comm.bcast(header, root=0)
    if "error" in header:
        raise ScenarioError(header["error"])
    tdim, gdim = header["tdim"], header["gdim"]
    if comm.rank != 0:
        data = dict(x=np.empty((0, gdim)), cells=np.empty((0, tdim + 1), dtype=np.int64),
                    cell_values=np.empty(0, np.int32), facets=np.empty((0, tdim), dtype=np.int64),
                    facet_values=np.empty(0, np.int32))
    cell = "triangle" if tdim == 2 else "tetrahedron"
    element = ufl.Mesh(basix.ufl.element("Lagrange", cell, 1, shape=(gdim,)))
    msh = compat.create_mesh(comm, data["cells"], data["x"], element, _partitioner())
    msh.topology.create_connectivity(tdim, 0)
    ct = None
    if header["cell_values"]:
        ct = _distributed_tags(msh, tdim, data["cells"], data["cell_values"])
    if header["facets"] and header["facet_values"]:
        msh.topology.create_connectivity(tdim - 1, tdim)
        ft = _distributed_tags(msh, tdim - 1, data["facets"], data["facet_values"])
    else:
        ft = dmesh.meshtags(msh, tdim - 1, np.empty(0, np.int32), np.empty(0, np.int32))
    present = _present_values(comm, ct), _present_values(comm, ft)
    names = {d: {v: n for n, v, dd in header["names"] if dd == d} for d in (tdim, tdim - 1)}
    regions = _group_names([(names[tdim].get(v, f"tag_{v}"), v) for v in present[0]])
    facets = _group_names([(names[tdim - 1].get(v, f"tag_{v}"), v) for v in present[1]])
    return _named(msh, ct, ft, regions, facets)


def _distributed_tags(msh, dim, entities, values) -> dmesh.MeshTags:
    local, vals = dolfinx.io.distribute_entity_data(msh, dim, entities, values)
    # the adjacency list of the running release (a wrapper of the C++ one from 0.10 on)
    adj = dolfinx.graph.adjacencylist(np.asarray(local, dtype=np.int32))
    return dmesh.meshtags_from_entities(msh, dim, adj, np.asarray(vals, dtype=np.int32))


def _present_values(comm, tags: dmesh.MeshTags | None) -> list[int]:
    local = set() if tags is None else set(np.unique(tags.values).tolist())
    return sorted(set().union(*comm.allgather(local)))


# --------------------------------------------------------------------------------------------
# Region rules and the final tags


def _finish(raw: _Raw, rules: Sequence[RegionRule], comm) -> Domain:
    msh = raw.mesh
    tdim = msh.topology.dim
    cmap = msh.topology.index_map(tdim)
    n_owned = cmap.size_local
    values = np.full(n_owned + cmap.num_ghosts, -1, dtype=np.int64)
    if raw.cell_tags is not None:
        values[raw.cell_tags.indices] = raw.cell_tags.values
    values = values[:n_owned]

    names = dict(raw.region_names)

    def value_of(name: str) -> int:
        if name not in names:
            names[name] = max(names.values(), default=0) + 1
        return names[name]

    if comm.allreduce(int(np.any(values < 0)), op=MPI.MAX):
        values[values < 0] = value_of(DEFAULT_REGION)

    counts = []  # per rule: cells it matches, cells it takes
    if rules:
        mid = dmesh.compute_midpoints(msh, tdim, np.arange(n_owned, dtype=np.int32))
        free = np.ones(n_owned, dtype=bool)

        def apply():
            for i, rule in enumerate(rules):
                where = evaluate(rule.where, mid, f"mesh.regions.{i}.where")
                if where.dtype.kind != "b":
                    raise ScenarioError(f"mesh.regions.{i}.where: {rule.where!r} is not a condition "
                                        "(write a comparison such as 'r < 300')")
                hit = free & where
                values[hit] = value_of(rule.name)
                free[hit] = False
                counts.append((int(where.sum()), int(hit.sum())))

        together(comm, apply)
        totals = comm.allreduce(np.array(counts, dtype=np.int64).reshape(-1, 2), op=MPI.SUM)
        for i, (rule, (matched, taken)) in enumerate(zip(rules, totals)):
            if taken == 0:
                why = (f"no cell midpoint satisfies {rule.where!r}" if matched == 0 else
                       f"earlier rules already take every cell where {rule.where!r}")
                raise ScenarioError(f"mesh.regions.{i}: region '{rule.name}' is empty ({why})")

    # ghost cells take their owner's region
    vec = dolfinx.la.vector(cmap, 1, dtype=np.float64)
    vec.array[:n_owned] = values
    vec.scatter_forward()
    all_values = np.rint(vec.array).astype(np.int32)
    ct = dmesh.meshtags(msh, tdim, np.arange(all_values.size, dtype=np.int32), all_values)
    ct.name = "regions"

    present = set().union(*comm.allgather(set(np.unique(values).tolist())))
    regions = {n: v for n, v in sorted(names.items(), key=lambda kv: kv[1]) if v in present}

    ft = raw.facet_tags
    ft.name = "facets"
    facets = dict(raw.facet_names)
    if OUTER not in facets:
        msh.topology.create_connectivity(tdim - 1, tdim)
        exterior = dmesh.exterior_facet_indices(msh.topology)
        local = set(np.unique(ft.values[np.isin(ft.indices, exterior)]).tolist())
        on_boundary = set().union(*comm.allgather(local))
        wall = set(facets.get(WALL, ()))
        outer = tuple(sorted(v for v in on_boundary if v not in wall))
        if outer:
            facets[OUTER] = outer
    return Domain(msh, ct, ft, regions, facets)
