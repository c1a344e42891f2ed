"""The DOLFINx releases tme runs on, and the calls whose form differs between them.

tme runs on DOLFINx 0.9, 0.10 and 0.11 (:data:`SUPPORTED`). Importing this module checks the
installed release once and raises :class:`UnsupportedDolfinx` (an ``ImportError`` with a one-line
message) for any other; every module of tme that uses DOLFINx imports it first. The calls whose
signature or place changed between those releases are made here, and only here:

- ``dolfinx.io.gmshio`` became ``dolfinx.io.gmsh`` in 0.10, and its ``model_to_mesh`` returns a
  ``MeshData`` (named fields, ``None`` for a dimension without physical groups) instead of a
  ``(mesh, cell_tags, facet_tags)`` tuple: :func:`model_to_mesh`;
- ``dolfinx.mesh.create_mesh(comm, cells, x, element)`` became ``(comm, cells, element, x)`` in
  0.10: :func:`create_mesh`;
- ``dolfinx.fem.petsc.assemble_matrix``'s ``diagonal=`` became ``diag=`` in 0.10:
  :func:`assemble_matrix`;
- ``dolfinx.mesh.create_cell_partitioner`` takes the bound on cells per facet from 0.10 on:
  :func:`cell_partitioner`;
- ``FiniteElement.interpolation_points`` is a property from 0.10 on: :func:`interpolation_points`;
- 0.11 deprecates ``Geometry.dofmap`` for ``Geometry.dofmaps[0]``: :func:`geometry_dofmap`.

Everything else tme calls is the same in the three releases.
"""

from __future__ import annotations

import dolfinx

#: the releases (major, minor) tme is tested on, oldest and newest
SUPPORTED = ((0, 9), (0, 11))


class UnsupportedDolfinx(ImportError):
    """The installed DOLFINx is outside :data:`SUPPORTED` (``name`` is ``"dolfinx"``, as for a
    DOLFINx that is missing)."""

    def __init__(self, message: str):
        lo, hi = SUPPORTED
        super().__init__(f"{message}: tme runs on DOLFINx {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}",
                         name="dolfinx")


def release(version: str) -> tuple[int, int]:
    """``"0.10.0.post0"`` -> ``(0, 10)``."""
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        raise UnsupportedDolfinx(f"DOLFINx reports the version {version!r}, which is not a release") from None
    return major, minor


def check_version(version: str, where: str = "") -> tuple[int, int]:
    """The release of ``version``; :class:`UnsupportedDolfinx` if tme does not run on it."""
    got = release(version)
    if not SUPPORTED[0] <= got <= SUPPORTED[1]:
        at = f" (in {where})" if where else ""
        raise UnsupportedDolfinx(f"DOLFINx {version}{at} is not supported")
    return got


#: the installed release, checked once at import
VERSION = check_version(dolfinx.__version__, getattr(dolfinx, "__path__", [""])[0])
NEW_API = VERSION >= (0, 10)


def model_to_mesh(model, comm, rank: int, gdim: int, partitioner=None):
    """A gmsh model (on ``rank``; ``None`` elsewhere) -> ``(mesh, cell_tags, facet_tags)``."""
    if NEW_API:
        from dolfinx.io import gmsh as gmshio

        data = gmshio.model_to_mesh(model, comm, rank, gdim=gdim, partitioner=partitioner)
        # a model without groups of that dimension gives None (0.9: empty tags)
        msh, tdim = data.mesh, data.mesh.topology.dim
        return msh, _tags_or_empty(msh, tdim, data.cell_tags), _tags_or_empty(msh, tdim - 1, data.facet_tags)
    from dolfinx.io import gmshio

    return gmshio.model_to_mesh(model, comm, rank, gdim=gdim, partitioner=partitioner)


def _tags_or_empty(msh, dim: int, tags):
    import numpy as np
    from dolfinx import mesh

    if tags is not None:
        return tags
    return mesh.meshtags(msh, dim, np.empty(0, np.int32), np.empty(0, np.int32))


def create_mesh(comm, cells, x, element, partitioner=None):
    """A mesh from cells (node indices) and node coordinates ``x`` of a coordinate element."""
    from dolfinx import mesh

    if NEW_API:
        return mesh.create_mesh(comm, cells, element, x, partitioner)
    return mesh.create_mesh(comm, cells, x, element, partitioner)


def assemble_matrix(form, bcs=(), diagonal: float = 1.0):
    """The PETSc matrix of a bilinear form; rows of ``bcs`` get ``diagonal`` on the diagonal."""
    from dolfinx.fem import petsc

    if NEW_API:
        return petsc.assemble_matrix(form, bcs=list(bcs), diag=diagonal)
    return petsc.assemble_matrix(form, bcs=list(bcs), diagonal=diagonal)


def cell_partitioner(mode):
    """The default cell partitioner with ghost mode ``mode`` (0.10 added the bound on cells per
    facet: 2, as for any mesh tme builds)."""
    from dolfinx import mesh

    if NEW_API:
        return mesh.create_cell_partitioner(mode, 2)
    return mesh.create_cell_partitioner(mode)


def geometry_dofmap(msh):
    """The cell -> geometry node array of a single-cell-type mesh (0.11 deprecates
    ``geometry.dofmap`` for ``geometry.dofmaps[0]``)."""
    if VERSION >= (0, 11):
        return msh.geometry.dofmaps[0]
    return msh.geometry.dofmap


def coordinate_element(msh):
    """The coordinate element of a single-cell-type mesh (0.11 deprecates ``geometry.cmap``
    for ``geometry.cmaps[0]``)."""
    if VERSION >= (0, 11):
        return msh.geometry.cmaps[0]
    return msh.geometry.cmap


def interpolation_points(V):
    """The reference points at which an expression is evaluated to interpolate into ``V`` (a
    method of the element up to 0.9, a property from 0.10 on)."""
    points = V.element.interpolation_points
    return points if NEW_API else points()
