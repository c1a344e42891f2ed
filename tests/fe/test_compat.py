"""The DOLFINx releases tme runs on, and the calls whose form differs between them (tme.compat).

Each call is checked against what it must build (sizes, tags, coordinates, matrix entries), so
that it fails on a release whose form of the call the layer gets wrong.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from mpi4py import MPI

import dolfinx
from tme import compat

from runs import ROOT

def test_the_installed_release_is_supported():
    assert compat.VERSION == compat.release(dolfinx.__version__)
    assert compat.SUPPORTED[0] <= compat.VERSION <= compat.SUPPORTED[1]


@pytest.mark.parametrize("version", ["0.9.0", "0.10.0.post0", "0.11.0", "0.11.2"])
def test_supported_releases_pass(version):
    assert compat.check_version(version) == compat.release(version)


@pytest.mark.parametrize("version", ["0.8.0", "0.12.0", "1.0.0", "main"])
def test_other_releases_are_refused_in_one_line(version):
    with pytest.raises(compat.UnsupportedDolfinx) as err:
        compat.check_version(version, "/opt/dolfinx")
    msg = str(err.value)
    assert "\n" not in msg and version in msg and "0.9 to 0.11" in msg
    if version != "main":
        assert "/opt/dolfinx" in msg
    assert isinstance(err.value, ImportError) and err.value.name == "dolfinx"


def test_cli_names_an_unsupported_release_in_one_line():
    code = ("import sys, dolfinx; dolfinx.__version__ = '0.12.0'\n"
            "from tme.cli import main\n"
            "sys.exit(main(['validate', 'configs/default.yaml']))")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts" / "pythonpath"))
    env.pop("OMPI_COMM_WORLD_RANK", None)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("tme: error: DOLFINx 0.12.0") and "0.9 to 0.11" in lines[0]


@pytest.mark.mpi
def test_model_to_mesh_gives_mesh_and_tags(comm):
    from tme.mesh.build import gmsh_session

    if comm.rank == 0:
        with gmsh_session("compat") as gmsh:
            sq = gmsh.model.occ.addRectangle(0, 0, 0, 2.0, 1.0)
            gmsh.model.occ.synchronize()
            gmsh.model.addPhysicalGroup(2, [sq], 7, name="tissue")
            edges = [abs(t) for _, t in gmsh.model.getBoundary([(2, sq)], oriented=False)]
            gmsh.model.addPhysicalGroup(1, edges, 3, name="outer")
            gmsh.option.setNumber("Mesh.MeshSizeMax", 0.25)
            gmsh.model.mesh.generate(2)
            msh, ct, ft = compat.model_to_mesh(gmsh.model, comm, 0, gdim=2)
    else:
        msh, ct, ft = compat.model_to_mesh(None, comm, 0, gdim=2)
    assert isinstance(msh, dolfinx.mesh.Mesh) and msh.geometry.dim == 2
    tdim = msh.topology.dim
    n_cells = msh.topology.index_map(tdim).size_local
    owned = ct.indices < n_cells
    assert comm.allreduce(int(owned.sum()), op=MPI.SUM) == msh.topology.index_map(tdim).size_global
    assert set(ct.values) <= {7} and ft.dim == tdim - 1 and set(ft.values) <= {3}
    # the cells tagged 7 fill the 2 x 1 rectangle, the facets tagged 3 are its perimeter
    import ufl
    from dolfinx import fem

    dx = ufl.Measure("dx", domain=msh, subdomain_data=ct)
    ds = ufl.Measure("ds", domain=msh, subdomain_data=ft)
    area = comm.allreduce(fem.assemble_scalar(fem.form(1.0 * dx(7))), op=MPI.SUM)
    perimeter = comm.allreduce(fem.assemble_scalar(fem.form(1.0 * ds(3))), op=MPI.SUM)
    assert area == pytest.approx(2.0) and perimeter == pytest.approx(6.0)


@pytest.mark.mpi
def test_create_mesh_keeps_cells_and_coordinates(comm):
    import basix.ufl
    import ufl

    # two triangles of the unit square, given on rank 0 only
    if comm.rank == 0:
        x = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
        cells = np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int64)
    else:
        x, cells = np.empty((0, 2)), np.empty((0, 3), dtype=np.int64)
    element = ufl.Mesh(basix.ufl.element("Lagrange", "triangle", 1, shape=(2,)))
    msh = compat.create_mesh(comm, cells, x, element,
                             compat.cell_partitioner(dolfinx.mesh.GhostMode.none))
    assert msh.topology.index_map(2).size_global == 2
    assert msh.geometry.x.shape[1] == 3
    pts = comm.allgather(msh.geometry.x[:, :2])
    got = {tuple(p) for part in pts for p in np.round(part, 12)}
    assert got == {(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)}
    area = dolfinx.fem.assemble_scalar(dolfinx.fem.form(1.0 * ufl.dx(domain=msh)))
    assert comm.allreduce(area, op=MPI.SUM) == pytest.approx(1.0)


@pytest.mark.mpi
def test_assemble_matrix_puts_the_diagonal_on_constrained_rows(comm):
    import ufl
    from dolfinx import fem, mesh

    msh = mesh.create_unit_interval(comm, 8)
    V = fem.functionspace(msh, ("Lagrange", 1))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    dofs = fem.locate_dofs_geometrical(V, lambda X: np.isclose(X[0], 0.0))
    bc = fem.dirichletbc(0.0, dofs, V)
    mass = fem.form(u * v * ufl.dx)
    for diagonal in (0.0, 2.5):
        A = compat.assemble_matrix(mass, bcs=[bc], diagonal=diagonal)
        A.assemble()
        lo, hi = A.getOwnershipRange()
        d = A.getDiagonal().array
        n = V.dofmap.index_map.size_local
        for dof in dofs[dofs < n]:
            g = V.dofmap.index_map.local_range[0] + dof
            assert lo <= g < hi and d[g - lo] == pytest.approx(diagonal)
        # an unconstrained interior row keeps the mass matrix: 2h/3 with h = 1/8
        interior = [i for i in range(n) if i not in dofs and 0 < V.tabulate_dof_coordinates()[i, 0] < 1]
        for i in interior:
            assert d[V.dofmap.index_map.local_range[0] + i - lo] == pytest.approx(2 / 24)
        A.destroy()
