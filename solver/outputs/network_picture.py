"""A picture of a 3-D run with a vessel network: a slice of a tissue field and the network
coloured by its blood flow (``snapshots/network_<day>.png``, off-screen with pyvista).

Drawn like the other snapshots (:mod:`tme.outputs.pictures`): by rank 0 when the run ends,
from the files the run has closed, the field's frame in ``fields.xdmf`` and the network's at the
same time in ``network.pvd``. The slice is the plane z = mid-height of the mesh, coloured by the
field [its unit] and slightly transparent (vessels below it show through); the vessels are
drawn as lines coloured by |flow| [nl/min] on a logarithmic scale, those without flow (dead
ends, parts cut off, collapsed vessels) in grey.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from . import _start_xvfb
from .fields import read_frame, read_index

#: Size of the picture [pixels].
WINDOW = (1000, 760)


def network_pictures(out: Path, times, name: str, unit: str) -> list[Path]:
    """``out/snapshots/network_<ddd.dd>.png`` at the output times ``times`` [hour] that both
    ``fields.xdmf`` and ``network.pvd`` list: field ``name`` [``unit``] and the network; returns
    their paths (rank 0 only)."""
    out = Path(out)
    index = out / "network.pvd"
    if not index.exists():
        return []
    wanted = set(times)
    networks = {float(ds.get("timestep")): out / ds.get("file")
                for ds in ET.parse(index).getroot().iter("DataSet")}
    written = []
    for frame in read_index(out):
        day = frame["t"] / 24.0
        vtp = next((f for d, f in networks.items() if abs(d - day) <= 1e-12 * max(1.0, day)), None)
        if frame["t"] not in wanted or vtp is None or name not in frame["fields"]:
            continue
        path = out / "snapshots" / f"network_{day:06.2f}.png"
        picture(path, *read_frame(out, frame, [name]), name, unit, vtp, frame["t"])
        written.append(path)
    return written


def picture(path: Path, cells, kind: str, points, data: dict, name: str, unit: str, vtp: Path,
            t: float) -> None:
    """Write the picture at time ``t`` [hour] to ``path``: the field ``name`` [``unit``] of one
    frame (``cells``, ``kind``, ``points``, ``data`` as :func:`tme.outputs.fields.read_frame`
    gives them) and the network of the file ``vtp`` (its cell arrays ``flow`` [nl/min],
    ``perfused`` and ``collapsed``)."""
    import pyvista

    from .pictures import grid_of

    _start_xvfb()
    pyvista.OFF_SCREEN = True
    values, centre = data[name]
    grid = grid_of(cells, kind, points)
    (grid.point_data if centre == "Node" else grid.cell_data)["field"] = values
    label = f"{name} [{unit}]"
    lo, hi = np.asarray(grid.bounds[0::2]), np.asarray(grid.bounds[1::2])
    centre = 0.5 * (lo + hi)
    cut = grid.slice(normal="z", origin=centre)

    vessels = pyvista.read(str(vtp))
    q = np.abs(np.asarray(vessels.cell_data["flow"], dtype=float))
    vessels.cell_data["flow"] = q
    on = np.asarray(vessels.cell_data["perfused"]).astype(bool)
    pl = pyvista.Plotter(off_screen=True, window_size=WINDOW)
    pl.set_background("white")
    pl.add_mesh(grid.outline(), color="black")
    values = cut.point_data["field"] if cut.n_points else np.zeros(1)
    pl.add_mesh(cut if cut.n_points else grid.outline(), scalars="field" if cut.n_points else None,
                cmap="viridis", opacity=0.85, clim=(float(values.min()), float(max(values.max(), values.min() + 1e-30))),
                scalar_bar_args={"title": label, "vertical": True, "position_x": 0.88, "position_y": 0.1,
                                 "height": 0.35, "width": 0.06, "fmt": "%.2g", "color": "black",
                                 "title_font_size": 14, "label_font_size": 12, "n_labels": 4})
    if on.any():
        perfused = vessels.extract_cells(np.flatnonzero(on))
        lo_q, hi_q = float(q[on].min()), float(q[on].max())
        pl.add_mesh(perfused, scalars="flow", cmap="inferno", log_scale=True, line_width=3,
                    render_lines_as_tubes=True, clim=(lo_q, max(hi_q, 1.0001 * lo_q)),
                    scalar_bar_args={"title": "blood flow |Q| [nl/min]", "vertical": True,
                                     "position_x": 0.88, "position_y": 0.55, "height": 0.35, "width": 0.06,
                                     "fmt": "%.1e", "color": "black", "title_font_size": 14,
                                     "label_font_size": 12, "n_labels": 3})
    if (~on).any():
        pl.add_mesh(vessels.extract_cells(np.flatnonzero(~on)), color="grey", line_width=2,
                    render_lines_as_tubes=True)
    closed = int(np.asarray(vessels.cell_data["collapsed"]).astype(bool).sum())
    z = float(np.round(centre[2], 3)) + 0.0   # no "-1e-14"
    pl.add_text(f"{label} on z = {z:g} µm and the vessels coloured by flow (grey: no flow"
                f"{f', {closed} collapsed' if closed else ''}); t = {t / 24:.2f} day", font_size=9,
                color="black")
    pl.view_isometric()
    pl.camera.zoom(1.1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.screenshot(str(path))
    pl.close()
