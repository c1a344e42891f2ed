"""Field output for ParaView that survives a crash: ``fields.xdmf`` + ``fields/``.

ParaView opens ``fields.xdmf`` (File → Open, *Xdmf3 Reader S*): one time series in which every
output time is ONE grid holding all fields, so a single block carries them all and
``Calculator('doxorubicin*total')`` works on it.

Why this shape: an HDF5 file that is open when the process dies is unreadable, and DOLFINx's
XDMFFile keeps one open for the whole run. Here each output time is written (collectively,
through DOLFINx's parallel HDF5) into a file of its own, ``fields/frame_<k>.h5``, which is
closed before the index ``fields.xdmf`` is rewritten to list it; the index is replaced
atomically (rename). A run killed at any moment therefore leaves an index that lists only
closed, complete files. The mesh is written once per segment of the run (``fields/mesh_<s>.h5``:
a run resumed on another number of ranks writes its partition anew), each frame pointing to the
mesh it was written on.

Times are in days (the index says so in an Information element, ``time_unit``); each frame
also carries its exact time in hours (the model's unit) as an Information element
``time_hours``, which a resumed run reads back. Regions: the integer tags of the ``region``
field are named in ``regions.csv`` (``tag,name``) beside the index, and in ParaView as field
data of every frame, one array ``region=<name>`` holding its tag (Information panel, or
``GetFieldData()`` in a script), written inline in the index.

Units: fields as in the model (see :func:`tme.outputs.field_unit`: µM, volume fractions,
µM·hour, hour).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from . import hdf5_writes

from . import replace_text

_HEAD = ('<?xml version="1.0"?>\n<!DOCTYPE Xdmf SYSTEM "Xdmf.dtd" []>\n'
         '<Xdmf Version="3.0">\n  <Domain>\n'
         '    <Information Name="time_unit" Value="day" />\n'
         '    <Grid Name="fields" GridType="Collection" CollectionType="Temporal">\n')
_TAIL = "    </Grid>\n  </Domain>\n</Xdmf>\n"
_ESCAPED = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;",
                          "\r": "&#13;", "\t": "&#9;"})


def _quoted(value: str) -> str:
    """``value`` as a quoted XML attribute value (xml.sax.saxutils.quoteattr would import urllib,
    0.01 s of each run)."""
    return '"' + value.translate(_ESCAPED) + '"'


class FieldOutput:
    """All fields at the output times: ``fields.xdmf`` (the index) and ``fields/*.h5``.

    ``functions`` are the DOLFINx functions written at each time (each under its own name);
    ``times`` [hour] the output times (besides t = 0, a stop and the end, which the problem asks
    for explicitly); ``before_write`` refreshes derived fields before a frame is written.
    """

    def __init__(self, out: Path, mesh, functions: list, times, before_write=None, segment: int = 1,
                 info: dict | None = None, regions: dict[str, int] | None = None):
        self.out, self.mesh, self.functions = Path(out), mesh, functions
        self.comm = mesh.comm
        self.milestones = tuple(times)
        self._times = set(self.milestones)
        self.before_write = before_write
        self.dir = self.out / "fields"
        self.segment = segment
        self.frames: list[str] = []   # one <Grid> per output time, as XML text (rank 0)
        self.times: list[float] = []
        self._mesh_xml: tuple[str, str] | None = None
        self.regions = dict(sorted((regions or {}).items(), key=lambda kv: kv[1]))
        self._regions_xml: str | None = None
        # the run's provenance, as an XDMF Information element of the index (readers skip it)
        self._head = _HEAD if not info else _HEAD.replace(
            "  <Domain>\n", "  <Domain>\n    <Information Name=\"provenance\" Value="
            + _quoted(json.dumps(info, default=str)) + " />\n", 1)

    # -- resuming -----------------------------------------------------------------------------
    def keep(self, n: int) -> None:
        """Continue after the first ``n`` frames of the index (a resumed run): later frames,
        written after the checkpoint, are dropped from the index."""
        err = None
        try:
            if self.comm.rank == 0:
                self._keep(n)
        except (OSError, ValueError, ET.ParseError) as exc:
            err = f"{self.out / 'fields.xdmf'}: {exc}"
        err, self.times = self.comm.bcast((err, self.times), root=0)
        if err:
            raise ValueError(err)

    def _keep(self, n: int) -> None:
        index = self.out / "fields.xdmf"
        grids = []
        if index.exists():
            root = ET.parse(index).getroot()
            grids = root.findall("./Domain/Grid/Grid")
        if len(grids) < n:
            raise ValueError(f"{index}: lists {len(grids)} output times, the checkpoint {n}")
        for g in grids[:n]:
            ET.indent(g, space="  ", level=3)
            self.frames.append("      " + ET.tostring(g, encoding="unicode").rstrip() + "\n")
            hours = g.find("Information[@Name='time_hours']")
            if hours is None:
                raise ValueError(f"{index}: an output time without its time_hours")
            self.times.append(float(hours.get("Value")))
        replace_text(index, self._head + "".join(self.frames) + _TAIL)
        for f in self.dir.glob("frame_*.h5"):   # written after the checkpoint
            if int(f.stem.split("_")[1]) > n:
                f.unlink()

    # -- the Output interface -----------------------------------------------------------------
    def due(self, state) -> bool:
        # the clock lands on milestones exactly: membership, no tolerance
        return state.t in self._times

    def write(self, state, t: float) -> None:
        from dolfinx import io, log as dlog

        if self.before_write is not None:
            self.before_write()
        if self.comm.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.comm.barrier()
        k = int(state.written.get("frames", 0)) + 1
        name = f"frame_{k:06d}"
        # a full disk: one OSError naming the file, on every rank (the index still lists the
        # frames before this one, each a closed file)
        with hdf5_writes(self.comm, self.dir / f"{name}.h5", self._frame_bytes()):
            if self._mesh_xml is None:
                self._mesh_xml = self._write_mesh()

            level = dlog.get_log_level()
            # the frame's own file lists no mesh (the index points to the mesh file), which
            # DOLFINx would warn about on every rank
            dlog.set_log_level(dlog.LogLevel.ERROR)
            try:
                with io.XDMFFile(self.comm, str(self.dir / f"{name}.xdmf"), "w") as f:
                    for fn in self.functions:
                        f.write_function(fn, t)
            finally:
                dlog.set_log_level(level)
        # the .h5 is closed now: list it in the index
        if self.comm.rank == 0:
            frame = self.dir / f"{name}.xdmf"
            attrs = ET.parse(frame).getroot().findall(".//Attribute")
            frame.unlink()
            topo, geo = self._mesh_xml
            if self._regions_xml is None:
                self._regions_xml = self._write_regions()
            parts = [f'      <Grid Name="fields" GridType="Uniform">\n{topo}{geo}'
                     f'        <Time Value="{t / 24.0!r}" />\n'
                     f'        <Information Name="time_hours" Value="{t!r}" />\n' + self._regions_xml]
            for a in attrs:
                item = a.find("DataItem")
                item.text = f"fields/{item.text.strip()}"
                ET.indent(a, space="  ", level=4)
                parts.append("        " + ET.tostring(a, encoding="unicode").rstrip() + "\n")
            parts.append("      </Grid>\n")
            self.frames.append("".join(parts))
            replace_text(self.out / "fields.xdmf", self._head + "".join(self.frames) + _TAIL)
        self.times.append(t)
        state.written["frames"] = k
        self.comm.barrier()

    def close(self, state) -> None:
        pass

    # -----------------------------------------------------------------------------------------
    def _frame_bytes(self) -> int:
        """What the next frame will take on disk [bytes]: :func:`frame_bytes`, and before the
        first frame the mesh's (:func:`mesh_bytes`)."""
        return int(frame_bytes(self.functions) + (mesh_bytes(self.mesh) if self._mesh_xml is None else 0))

    def _write_regions(self) -> str:
        """``regions.csv`` (once a segment, rank 0); the XML of the region names as field data
        for every frame: one Grid-centred attribute per region holding its tag, inline (an
        HDF5 file for a few integers cost h5py's import, 0.1 s, in every run)."""
        if not self.regions:
            return ""
        replace_text(self.out / "regions.csv",
                     "tag,name\n" + "".join(f"{tag},{name}\n" for name, tag in self.regions.items()))
        return "".join(
            f'        <Attribute Name={_quoted("region=" + name)} AttributeType="Scalar" Center="Grid">\n'
            f'          <DataItem Dimensions="1" NumberType="Int" Format="XML">{int(tag)}</DataItem>\n'
            f'        </Attribute>\n' for name, tag in self.regions.items())

    def _write_mesh(self) -> tuple[str, str]:
        """Write this segment's mesh; its Topology and Geometry XML for the index (rank 0)."""
        from dolfinx import io

        name = f"mesh_{self.segment}"
        with io.XDMFFile(self.comm, str(self.dir / f"{name}.xdmf"), "w") as f:
            f.write_mesh(self.mesh)
        out = ("", "")
        if self.comm.rank == 0:
            path = self.dir / f"{name}.xdmf"
            grid = ET.parse(path).getroot().find("./Domain/Grid")
            path.unlink()
            texts = []
            for tag in ("Topology", "Geometry"):
                el = grid.find(tag)
                for item in el.iter("DataItem"):
                    item.text = f"fields/{item.text.strip()}"
                ET.indent(el, space="  ", level=4)
                texts.append("        " + ET.tostring(el, encoding="unicode").rstrip() + "\n")
            out = tuple(texts)
        return out


# -- sizes on disk (the free-space checks before a run and before each frame) ----------------
def frame_bytes(functions) -> float:
    """About the bytes one frame of ``functions`` takes: 8 a value, with a tenth more, and per
    field HDF5's records of a dataset and its index entry."""
    values = sum(f.x.index_map.size_global * f.x.block_size for f in functions)
    return 1.1 * 8.0 * values + 8192.0 * len(functions)


def mesh_bytes(mesh) -> float:
    """About the bytes of ``mesh``'s file: its node coordinates and its cells' nodes, 8 a value."""
    from ..compat import geometry_dofmap

    cells = mesh.topology.index_map(mesh.topology.dim).size_global
    nodes = mesh.geometry.index_map().size_global
    return 8.0 * (3 * nodes + cells * geometry_dofmap(mesh).shape[1])


# -- reading (rank 0; the pictures are drawn from these files) ---------------------------------
def read_index(out: Path) -> list[dict]:
    """The frames ``out/fields.xdmf`` lists, in order: per frame its time ``t`` [hour], its mesh
    (``topology``, ``geometry``: (file, dataset) pairs, ``cell`` the XDMF topology type) and
    ``fields``: name -> (file, dataset, centre 'Node' or 'Cell')."""
    frames = []
    for g in ET.parse(Path(out) / "fields.xdmf").getroot().findall("./Domain/Grid/Grid"):
        item = lambda el: tuple(el.find("DataItem").text.strip().split(":", 1))  # noqa: E731
        fields = {}
        for a in g.findall("Attribute"):
            if a.get("Center") in ("Node", "Cell"):
                fields[a.get("Name")] = item(a) + (a.get("Center"),)
        frames.append({"t": float(g.find("Information[@Name='time_hours']").get("Value")),
                       "topology": item(g.find("Topology")), "geometry": item(g.find("Geometry")),
                       "cell": g.find("Topology").get("TopologyType"), "fields": fields})
    return frames


def read_frame(out: Path, frame: dict, names) -> tuple:
    """(cells, XDMF cell type, points (n, 3) [µm], {name: (values, centre)}) of one frame of
    :func:`read_index`, for the fields ``names`` it holds."""
    import h5py
    import numpy as np

    def read(ref):
        with h5py.File(Path(out) / ref[0], "r") as h5:
            return h5[ref[1]][...]

    cells, x = read(frame["topology"]), read(frame["geometry"])
    points = np.zeros((x.shape[0], 3))
    points[:, : x.shape[1]] = x
    data = {n: (read(frame["fields"][n]).ravel(), frame["fields"][n][2]) for n in names
            if n in frame["fields"]}
    return cells, frame["cell"], points, data
