"""Snapshots: pictures of chosen fields at chosen times, ``snapshots/day_<ddd.dd>.png``.

Drawn by rank 0 when the run ends, from the field files the run has closed (``fields.xdmf``,
see :mod:`tme.outputs.fields`), so that each field can keep one colour range over every output
time. Units: lengths in µm (the scale bar), times in days (the headings), each field in its own
unit (:func:`tme.outputs.field_unit`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _start_xvfb as start_xvfb
from .fields import read_frame, read_index


def snapshots(out: Path, times, names: list[str], units: dict[str, str], scale: str = "fixed") -> list[Path]:
    """Pictures of the fields ``names`` at the output times ``times`` [hour], one panel per
    field, as ``out/snapshots/day_<ddd.dd>.png``; returns their paths (rank 0 only).

    Drawn from the field files of ``out`` (``fields.xdmf``), which the run has closed, so each
    field can have ONE colour range over every output time (``scale`` 'fixed': day 1 and day 42
    compare at a glance) or its own in each picture ('auto'). Each panel: the field's name and
    ``units`` above its colour bar (round ticks), the time in days, a scale bar in µm; region tags are labelled
    with their names (``regions.csv``).
    """
    frames = read_index(out)
    wanted = sorted(set(times))
    chosen = [f for f in frames if f["t"] in wanted]
    if not chosen:
        return []
    ranges: dict[str, list[float]] = {}
    for f in (frames if scale == "fixed" else []):
        for name, (values, _) in read_frame(out, f, names)[3].items():
            lo, hi = ranges.get(name, (np.inf, -np.inf))
            ranges[name] = [min(lo, float(np.nanmin(values))), max(hi, float(np.nanmax(values)))]
    regions = _region_names(out)
    import pyvista

    start_xvfb()
    pyvista.OFF_SCREEN = True
    written = []
    for f in chosen:
        cells, kind, points, data = read_frame(out, f, names)
        path = Path(out) / "snapshots" / f"day_{f['t'] / 24:06.2f}.png"
        _render(path, cells, kind, points, data, f["t"], units, ranges, regions)
        written.append(path)
    return written


#: VTK cell types of the XDMF topologies DOLFINx writes.
_VTK_CELLS = {"Triangle": 5, "Tetrahedron": 10, "Quadrilateral": 9, "Hexahedron": 12}


def grid_of(cells, kind: str, points):
    """The pyvista grid of a frame's ``cells`` (n, nodes), XDMF cell type ``kind``, ``points``."""
    import pyvista

    ncell, nodes = cells.shape
    vtk_cells = np.hstack([np.full((ncell, 1), nodes, dtype=np.int64), cells.astype(np.int64)]).ravel()
    return pyvista.UnstructuredGrid(vtk_cells, np.full(ncell, _VTK_CELLS[kind], dtype=np.uint8), points)


def _region_names(out: Path) -> dict[int, str]:
    path = Path(out) / "regions.csv"
    if not path.exists():
        return {}
    rows = [ln.split(",", 1) for ln in path.read_text().splitlines()[1:] if ln]
    return {int(tag): name for tag, name in rows}


def _ticks(lo: float, hi: float) -> tuple[list[float], str]:
    """Round tick values within ``lo``..``hi`` and a printf format that tells them apart."""
    from matplotlib.ticker import MaxNLocator

    ticks = [v for v in MaxNLocator(5).tick_values(lo, hi) if lo - 1e-9 * (hi - lo) <= v <= hi + 1e-9 * (hi - lo)]
    if len(ticks) < 2:
        ticks = [lo, hi]
    step, size = min(np.diff(ticks)), max(abs(lo), abs(hi))
    digits = 3 if step <= 0 or size == 0 else int(np.clip(np.ceil(np.log10(size / step)) + 1, 1, 7))
    return ticks, f"%.{digits}g"


def _scale_bar(width: float) -> tuple[float, str]:
    """The largest round length [µm] (1, 2 or 5 times a power of ten) within a quarter of
    ``width`` [µm], and its label."""
    target = width / 4.0 * (1 + 1e-9)
    base = 10.0 ** np.floor(np.log10(target))
    length = max(m * base for m in (1.0, 2.0, 5.0) if m * base <= target)
    return length, (f"{length / 1000:g} mm" if length >= 1000 else f"{length:g} µm")


def _render(path: Path, cells, kind: str, points, data: dict, t: float, units: dict, ranges: dict,
            regions: dict[int, str]) -> None:
    import pyvista

    n = len(data)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    pl = pyvista.Plotter(off_screen=True, shape=(rows, cols), window_size=(480 * cols, 460 * rows),
                         border=False)
    pl.set_background("white")
    grid = grid_of(cells, kind, points)
    flat = np.allclose(points[:, 2], 0.0)
    lo, hi = points.min(axis=0), points.max(axis=0)
    # a 3-D domain is shown by its mid-plane z = const (the inside is what a picture must show)
    mid = 0.5 * (lo[2] + hi[2])
    where = "" if flat else f"   mid-plane z = {mid:.4g} µm"
    length, label = _scale_bar(hi[0] - lo[0])
    for i, (name, (values, center)) in enumerate(data.items()):
        pl.subplot(i // cols, i % cols)
        g = grid.copy(deep=False)
        (g.point_data if center == "Node" else g.cell_data)[name] = values
        if not flat:
            g = g.slice(normal="z", origin=(0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]), mid))
        clim = ranges.get(name) or [float(np.nanmin(values)), float(np.nanmax(values))]
        if clim[1] <= clim[0]:
            clim = [clim[0], clim[0] + (abs(clim[0]) * 0.01 or 1.0)]
        ticks, fmt = _ticks(*clim)
        bar = {"title": f"{name} [{units.get(name, '')}]", "vertical": False, "title_font_size": 15,
               "label_font_size": 13, "n_labels": len(ticks), "fmt": fmt, "color": "black",
               "position_x": 0.12, "position_y": 0.05, "width": 0.76, "height": 0.1}
        kw = {}
        if name == "region" and regions:
            tags = sorted(regions)
            kw = {"annotations": {float(k): regions[k] for k in tags}, "categories": len(tags),
                  "cmap": "Set2"}
            clim = [tags[0] - 0.5, tags[-1] + 0.5] if len(tags) > 1 else [tags[0] - 0.5, tags[0] + 0.5]
            bar.update(n_labels=0)
        pl.add_mesh(g, scalars=name, cmap=kw.pop("cmap", "viridis"), clim=clim, show_edges=False,
                    scalar_bar_args=bar, **kw)
        sb = pl.scalar_bars[bar["title"]]
        sb.SetTitle("")   # the panel's heading names the field (VTK sets labels over a title)
        if name != "region" or not regions:
            from vtkmodules.vtkCommonCore import vtkDoubleArray

            labels = vtkDoubleArray()
            for v in ticks:
                labels.InsertNextValue(float(v))
            sb.SetUseCustomLabels(True)
            sb.SetCustomLabels(labels)
            sb.SetDrawTickLabels(True)
        heading = name if name == "region" and regions else f"{name} [{units.get(name, '')}]"
        pl.add_text(f"{heading}   day {t / 24:.4g}{where}", position="upper_left",
                    font_size=11, color="black")
        # the scale bar, just above the tissue's top-left corner
        y = hi[1] + 0.04 * (hi[1] - lo[1])
        z = mid
        pl.add_mesh(pyvista.Line((lo[0], y, z), (lo[0] + length, y, z)), color="black", line_width=4)
        pl.add_point_labels([(lo[0] + length / 2, y + 0.05 * (hi[1] - lo[1]), z)], [label],
                            show_points=False, shape=None, font_size=13, text_color="black",
                            always_visible=True, justification_horizontal="center")
        pl.view_xy()
        pl.camera.zoom(1.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.screenshot(str(path))
    pl.close()
