"""A picture of a 3-D run with a vessel network: a slice of a tissue field and the network
coloured by its blood flow (``network_<day>.png``, off-screen with pyvista).

The slice is the plane z = mid-height of the mesh, coloured by the field [its unit] and slightly
transparent (vessels below it show through); the vessels
are drawn as lines coloured by |flow| [nl/min] on a logarithmic scale, those without flow
(dead ends, parts cut off, collapsed vessels) in grey. Each rank sends its owned part of the
mesh to rank 0, which renders (collective).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _start_xvfb

#: Size of the picture [pixels].
WINDOW = (1000, 760)


def _gather_field(f, comm):
    """Per rank (cells, cell types, points, values) of the P1 function ``f``: on rank 0, None
    elsewhere."""
    from dolfinx import plot

    cells, types, x = plot.vtk_mesh(f.function_space)
    return comm.gather((cells, types, x, f.x.array.real[: x.shape[0]].copy()), root=0)


def picture(path: Path, field, label: str, coupling, t: float, comm) -> None:
    """Write the picture of ``field`` (a P1 Function; ``label`` its name with the unit, e.g.
    'doxorubicin [µM]') and the network of ``coupling`` (a VascularCoupling) at time ``t``
    [hour] to ``path`` (collective; rank 0 writes)."""
    pieces = _gather_field(field, comm)
    if comm.rank != 0:
        return
    import pyvista

    from ..vasculature.network import NL_PER_MIN

    _start_xvfb()
    pyvista.OFF_SCREEN = True
    grids = [pyvista.UnstructuredGrid(c, ty, x) for c, ty, x, _ in pieces]
    for g, (_, _, _, v) in zip(grids, pieces):
        g.point_data["field"] = v
    grid = grids[0] if len(grids) == 1 else pyvista.merge(grids)
    lo, hi = np.asarray(grid.bounds[0::2]), np.asarray(grid.bounds[1::2])
    centre = 0.5 * (lo + hi)
    cut = grid.slice(normal="z", origin=centre)

    net, flow = coupling.net, coupling.flow
    lines = np.column_stack([np.full(net.num_segments, 2), net.segments]).ravel()
    vessels = pyvista.PolyData(net.nodes, lines=lines)
    q = np.abs(flow.flow) / NL_PER_MIN
    vessels.cell_data["flow"] = q
    on = flow.perfused
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
    closed = int(coupling.closed.sum())
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
