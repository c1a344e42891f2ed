"""Every mesh kind builds with the expected tags, measures and regions (solver/mesh/build.py).

Lengths, areas and volumes are assembled over the tags and compared with closed forms, so a
wrong tag or a lost cell shows up as a wrong number. Tests marked ``mpi`` also run on 2 ranks.
"""

import math
from pathlib import Path

import numpy as np
import pytest

ufl = pytest.importorskip("ufl")
from dolfinx import fem  # noqa: E402
from mpi4py import MPI  # noqa: E402

from tme.mesh import build as meshes  # noqa: E402
from tme.config import scenario as sc  # noqa: E402
from tme.config.scenario import (BuiltinMesh, FileMesh, KroghMesh, RegionRule, SliceMesh,  # noqa: E402
                             SpheroidMesh, Vessel)
from tme.config.spec import ScenarioError  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[2] / "meshes" / "tissue_slice.msh"


def cells_measure(domain, *tags) -> float:
    """Area/volume of the cells with the given tag values (all cells when none)."""
    dx = ufl.Measure("dx", domain=domain.mesh, subdomain_data=domain.cell_tags)
    one = fem.Constant(domain.mesh, 1.0)
    integrand = sum((one * dx(t) for t in tags[1:]), one * dx(tags[0])) if tags else one * dx
    return domain.mesh.comm.allreduce(fem.assemble_scalar(fem.form(integrand)), op=MPI.SUM)


def facets_measure(domain, name: str) -> float:
    ds = ufl.Measure("ds", domain=domain.mesh, subdomain_data=domain.facet_tags)
    tags = domain.facet(name, "test")
    form = fem.form(sum((1.0 * ds(t) for t in tags[1:]), 1.0 * ds(tags[0])))
    return domain.mesh.comm.allreduce(fem.assemble_scalar(form), op=MPI.SUM)


def facet_centroid(domain, name: str) -> np.ndarray:
    ds = ufl.Measure("ds", domain=domain.mesh, subdomain_data=domain.facet_tags)
    x = ufl.SpatialCoordinate(domain.mesh)
    (tag,) = domain.facet(name, "test")
    c = [domain.mesh.comm.allreduce(fem.assemble_scalar(fem.form(x[i] * ds(tag))), op=MPI.SUM)
         for i in range(domain.dim)]
    return np.array(c) / facets_measure(domain, name)


def shared_dir(comm, tmp_path) -> Path:
    """One directory for every rank (each rank's pytest has its own tmp_path)."""
    return Path(comm.bcast(str(tmp_path), root=0))


# --------------------------------------------------------------------------------------------
# built-in rectangle and box


@pytest.mark.mpi
def test_rectangle_is_centred_with_four_sides_and_outer(comm):
    d = meshes.build(BuiltinMesh(kind="rectangle", size=[400.0, 200.0], cells=[40, 20]), comm)
    assert d.dim == 2 and d.regions == {"tissue": 1}
    assert set(d.facets) == {"left", "right", "bottom", "top", "outer"}
    assert facets_measure(d, "left") == pytest.approx(200.0)
    assert facets_measure(d, "top") == pytest.approx(400.0)
    assert facets_measure(d, "outer") == pytest.approx(1200.0)
    assert facet_centroid(d, "left") == pytest.approx([-200.0, 0.0], abs=1e-9)
    assert facet_centroid(d, "top") == pytest.approx([0.0, 100.0], abs=1e-9)
    assert cells_measure(d) == pytest.approx(80000.0)
    assert d.cell_size() == pytest.approx(10.0 * math.sqrt(2))


@pytest.mark.mpi
def test_box_has_six_faces_front_at_z_max(comm):
    d = meshes.build(BuiltinMesh(kind="box", size=[100.0, 60.0, 40.0], cells=[4, 3, 2],
                                 origin=[0.0, 0.0, 0.0]), comm)
    assert d.dim == 3
    areas = {n: facets_measure(d, n) for n in ("left", "right", "bottom", "top", "back", "front")}
    assert areas == pytest.approx({"left": 2400.0, "right": 2400.0, "bottom": 4000.0, "top": 4000.0,
                                   "back": 6000.0, "front": 6000.0})
    assert facets_measure(d, "outer") == pytest.approx(2 * (2400 + 4000 + 6000))
    assert facet_centroid(d, "front")[2] == pytest.approx(40.0)
    assert facet_centroid(d, "back")[2] == pytest.approx(0.0, abs=1e-9)
    assert cells_measure(d) == pytest.approx(240000.0)


# --------------------------------------------------------------------------------------------
# region rules


@pytest.mark.mpi
def test_first_matching_rule_wins_and_disk_areas_match(comm):
    rules = [RegionRule(name="core", where="r < 50"), RegionRule(name="tumour", where="r < 100"),
             RegionRule(name="stroma", where="logical_and(x > 150, abs(y) < 1e9)")]
    d = meshes.build(BuiltinMesh(kind="rectangle", size=[400.0, 400.0], cells=[80, 80], regions=rules), comm)
    assert set(d.regions) == {"tissue", "core", "tumour", "stroma"}
    assert len(set(d.regions.values())) == 4
    core, tumour = cells_measure(d, d.regions["core"]), cells_measure(d, d.regions["tumour"])
    assert core == pytest.approx(math.pi * 50**2, rel=0.03)
    assert tumour == pytest.approx(math.pi * (100**2 - 50**2), rel=0.03)
    assert cells_measure(d, d.regions["stroma"]) == pytest.approx(50.0 * 400.0)
    assert sum(cells_measure(d, v) for v in d.regions.values()) == pytest.approx(160000.0)
    # every local cell, ghosts included, carries a region
    n = d.mesh.topology.index_map(2).size_local + d.mesh.topology.index_map(2).num_ghosts
    assert np.array_equal(d.cell_tags.indices, np.arange(n))
    assert set(np.unique(d.cell_tags.values)) <= set(d.regions.values())


@pytest.mark.mpi
def test_rules_override_the_mesh_tags(comm):
    rules = [RegionRule(name="edge", where="x > 400"), RegionRule(name="tumour", where="r < 20")]
    d = meshes.build(FileMesh(kind="file", path=SHIPPED, regions=rules), comm)
    plain = meshes.build(FileMesh(kind="file", path=SHIPPED), comm)
    assert d.regions["tumour"] == plain.regions["tumour"]  # a rule of an existing name reuses its tag
    assert d.regions["edge"] not in plain.regions.values()
    assert cells_measure(d, d.regions["edge"]) == pytest.approx(100.0 * 600.0, rel=0.02)
    assert cells_measure(d, d.regions["stroma"]) == pytest.approx(
        cells_measure(plain, plain.regions["stroma"]) - cells_measure(d, d.regions["edge"]) - (
            cells_measure(d, d.regions["tumour"]) - cells_measure(plain, plain.regions["tumour"])), rel=1e-12)


@pytest.mark.mpi
@pytest.mark.parametrize("where, problem", [
    ("r <", "not a valid expression"),
    ("q < 3", "name 'q' is not defined"),
    ("r", "not a condition"),
    ("x > 0 and y > 0", "logical_and"),
    ("().__class__", "only arithmetic"),
    ("__import__('os')", "only arithmetic"),
    ("open('f')", "name 'open' is not defined"),
])
def test_bad_rule_names_its_key(comm, where, problem):
    spec = BuiltinMesh(kind="rectangle", size=[10.0, 10.0], cells=[2, 2],
                       regions=[RegionRule(name="ok", where="x > 0"), RegionRule(name="bad", where=where)])
    with pytest.raises(ScenarioError, match=r"^mesh\.regions\.1\.where: ") as err:
        meshes.build(spec, comm)
    assert problem in str(err.value)


@pytest.mark.mpi
def test_empty_region_is_an_error(comm):
    spec = BuiltinMesh(kind="rectangle", size=[10.0, 10.0], cells=[2, 2],
                       regions=[RegionRule(name="far", where="r > 1e6")])
    with pytest.raises(ScenarioError, match=r"^mesh\.regions\.0: region 'far' is empty \(no cell midpoint"):
        meshes.build(spec, comm)
    spec = spec.model_copy(update={"regions": [RegionRule(name="all", where="x > -1e9"),
                                               RegionRule(name="late", where="x > 0")]})
    with pytest.raises(ScenarioError, match=r"^mesh\.regions\.1: region 'late' is empty \(earlier rules"):
        meshes.build(spec, comm)


def test_missing_region_and_facet_name_the_key(comm):
    d = meshes.build(BuiltinMesh(kind="rectangle", size=[10.0, 10.0], cells=[2, 2],
                                 regions=[RegionRule(name="tumour", where="x < 0")]), comm)
    with pytest.raises(ScenarioError) as err:
        d.region("necrotic", "tissue.regions.necrotic")
    assert str(err.value) == "tissue.regions.necrotic: the mesh has no region 'necrotic'; its regions: tissue, tumour"
    with pytest.raises(ScenarioError, match=r"^drugs\.a\.boundary\.wall: the mesh has no facets 'wall'; "
                                            r"its facets: left, right, bottom, top, outer$"):
        d.facet("wall", "drugs.a.boundary.wall")
    assert d.region("tumour", "k") == d.regions["tumour"] and d.facet("outer", "k") == (1, 2, 3, 4)


def test_expressions_see_position_and_numpy_functions():
    pts = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    assert meshes.evaluate("r", pts, "k") == pytest.approx([5.0, 2.0])
    assert meshes.evaluate("sqrt(x**2 + y**2) * exp(0) + pi * 0", pts, "k") == pytest.approx([5.0, 0.0])
    assert meshes.evaluate("maximum(z, 1)", pts, "k") == pytest.approx([1.0, 2.0])
    assert meshes.evaluate("2", pts, "k") == pytest.approx([2.0, 2.0])


# --------------------------------------------------------------------------------------------
# gmsh kinds


@pytest.mark.mpi
def test_slice_with_vessel_holes(comm):
    vessels = [Vessel(center=[0.0, 0.0], radius=20.0), Vessel(center=[200.0, 100.0], radius=10.0)]
    spec = SliceMesh(kind="slice2d", size=[800.0, 400.0], h=40.0, vessels=vessels, vessel_h=4.0,
                     regions=[RegionRule(name="tumour", where="r < 150")])
    d = meshes.build(spec, comm)
    assert set(d.facets) == {"left", "right", "bottom", "top", "vessel_wall", "outer"}
    assert set(d.facets["outer"]) == {d.facets[s][0] for s in ("left", "right", "bottom", "top")}
    assert facets_measure(d, "vessel_wall") == pytest.approx(2 * math.pi * 30.0, rel=0.01)
    assert facets_measure(d, "outer") == pytest.approx(2400.0)
    assert facet_centroid(d, "right") == pytest.approx([400.0, 0.0], abs=1e-6)
    holes = math.pi * (20.0**2 + 10.0**2)
    assert cells_measure(d) == pytest.approx(320000.0 - holes, rel=1e-3)
    assert cells_measure(d, d.regions["tumour"]) == pytest.approx(math.pi * (150**2 - 20**2), rel=0.03)
    assert d.cell_size() < 8.0
    # the default vessel_h is h/3
    coarse = meshes.build(spec.model_copy(update={"vessel_h": None, "regions": []}), comm)
    assert 40.0 / 3 * 0.5 < coarse.cell_size() < 40.0 / 2


def test_slice_vessel_outside_names_its_key(comm):
    spec = SliceMesh(kind="slice2d", size=[100.0, 100.0], h=20.0,
                     vessels=[Vessel(center=[0.0, 0.0], radius=5.0), Vessel(center=[80.0, 0.0], radius=5.0)])
    with pytest.raises(ScenarioError, match=r"^mesh\.vessels\.1\.center: \(80, 0\) µm lies outside"):
        meshes.build(spec, comm)


@pytest.mark.mpi
def test_krogh_annulus(comm):
    rv, R = 5.0, 100.0
    d = meshes.build(KroghMesh(kind="krogh", vessel_radius=rv, tissue_radius=R, h=8.0,
                               regions=[RegionRule(name="rim", where="r > 80")]), comm)
    assert d.dim == 2 and d.regions == {"tissue": 1, "rim": 2}
    assert cells_measure(d, 2) == pytest.approx(math.pi * (R**2 - 80**2), rel=0.03)
    assert set(d.facets) == {"vessel_wall", "outer"}
    assert cells_measure(d) == pytest.approx(math.pi * (R**2 - rv**2), rel=2e-3)
    # the wall is a polygon of about 2 pi r_v / (h/6) = 24 sides: 0.3 % short of the circle
    assert facets_measure(d, "vessel_wall") == pytest.approx(2 * math.pi * rv, rel=0.01)
    assert facets_measure(d, "outer") == pytest.approx(2 * math.pi * R, rel=1e-3)


def test_krogh_cylinder(comm):
    rv, R, L = 10.0, 40.0, 60.0
    d = meshes.build(KroghMesh(kind="krogh", dim=3, vessel_radius=rv, tissue_radius=R, length=L, h=12.0), comm)
    assert d.dim == 3 and set(d.facets) == {"vessel_wall", "outer", "ends"}
    assert cells_measure(d) == pytest.approx(math.pi * (R**2 - rv**2) * L, rel=0.02)
    assert facets_measure(d, "ends") == pytest.approx(2 * math.pi * (R**2 - rv**2), rel=0.02)
    assert facets_measure(d, "vessel_wall") == pytest.approx(2 * math.pi * rv * L, rel=0.02)
    assert facets_measure(d, "outer") == pytest.approx(2 * math.pi * R * L, rel=0.02)
    x = d.mesh.geometry.x
    assert comm.allreduce(x[:, 2].min(), op=MPI.MIN) == pytest.approx(-L / 2)


def test_krogh_schema_checks_radii_and_length():
    base = {"name": "k", "time": {"end": "1 hour"}}
    with pytest.raises(ScenarioError, match=r"mesh\.tissue_radius: must exceed vessel_radius"):
        sc.validate(dict(base, mesh={"kind": "krogh", "vessel_radius": 50, "tissue_radius": 40, "h": 5}))
    with pytest.raises(ScenarioError, match=r"mesh\.length: required for a 3-D Krogh cylinder"):
        sc.validate(dict(base, mesh={"kind": "krogh", "dim": 3, "vessel_radius": 5, "tissue_radius": 40, "h": 5}))


@pytest.mark.mpi
def test_spheroid(comm):
    R = 100.0
    d = meshes.build(SpheroidMesh(kind="spheroid", radius=R, h=25.0,
                                  regions=[RegionRule(name="necrotic_core", where="r < 40")]), comm)
    assert d.dim == 3 and set(d.regions) == {"tissue", "necrotic_core"} and set(d.facets) == {"outer"}
    assert cells_measure(d) == pytest.approx(4 / 3 * math.pi * R**3, rel=0.03)
    assert facets_measure(d, "outer") == pytest.approx(4 * math.pi * R**2, rel=0.03)


# --------------------------------------------------------------------------------------------
# files


def _generator():
    """meshes/generate.py as a module: the geometry the shipped mesh was made from."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tme_mesh_generate", SHIPPED.parent / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.mpi
def test_shipped_slice_has_named_regions_and_facets(comm):
    g = _generator()
    d = meshes.build(FileMesh(kind="file", path=SHIPPED), comm)
    assert set(d.regions) == {"tumour", "dense_ecm", "stroma"}
    assert set(d.facets) == {"vessel_wall", "outer"}
    (cx, cy), r = g.TUMOUR
    width, height = g.SIZE
    in_tumour = sum(math.pi * rv**2 for x, y, rv in g.VESSELS if math.hypot(x - cx, y - cy) < r)
    holes = sum(math.pi * rv**2 for _, _, rv in g.VESSELS)
    assert cells_measure(d, d.regions["tumour"]) == pytest.approx(math.pi * r**2 - in_tumour, rel=0.01)
    assert cells_measure(d, d.regions["dense_ecm"]) == pytest.approx(
        math.pi * ((r + g.CAPSULE) ** 2 - r**2), rel=0.01)
    assert cells_measure(d) == pytest.approx(width * height - holes, rel=1e-3)
    assert facets_measure(d, "vessel_wall") == pytest.approx(2 * math.pi * sum(v[2] for v in g.VESSELS), rel=0.01)
    assert facets_measure(d, "outer") == pytest.approx(2 * (width + height))
    n = d.mesh.topology.index_map(2).size_global
    assert 500 < n < 5000 and SHIPPED.stat().st_size < 1_000_000


@pytest.mark.mpi
def test_meshio_file_with_integer_cell_data_and_scale(comm, tmp_path):
    meshio = pytest.importorskip("meshio")
    folder = shared_dir(comm, tmp_path)
    if comm.rank == 0:
        m = meshio.read(SHIPPED)
        # coordinates in mm, tags as a plain integer array, no names
        keep = [i for i, b in enumerate(m.cells) if b.type in ("triangle", "line")]
        cells = [m.cells[i] for i in keep]
        data = [m.cell_data["gmsh:physical"][i] for i in keep]
        meshio.write(folder / "slice.vtu", meshio.Mesh(m.points / 1000.0, cells, cell_data={"zone": data}))
        meshio.write(folder / "plain.vtu", meshio.Mesh(m.points, [b for b in m.cells if b.type == "triangle"]))
    comm.barrier()
    d = meshes.build(FileMesh(kind="file", path=folder / "slice.vtu", unit="mm"), comm)
    ref = meshes.build(FileMesh(kind="file", path=SHIPPED), comm)
    assert d.regions == {f"tag_{v}": v for v in ref.regions.values()}
    for name, v in ref.regions.items():
        assert cells_measure(d, v) == pytest.approx(cells_measure(ref, v), rel=1e-12)
    wall = ref.facets["vessel_wall"][0]
    assert f"tag_{wall}" in d.facets and facets_measure(d, f"tag_{wall}") == pytest.approx(
        facets_measure(ref, "vessel_wall"), rel=1e-12)
    plain = meshes.build(FileMesh(kind="file", path=folder / "plain.vtu"), comm)
    assert plain.regions == {"tissue": 1} and plain.facets == {}
    assert cells_measure(plain) == pytest.approx(cells_measure(ref), rel=1e-12)


def test_msh_without_physical_groups_is_tissue(comm, tmp_path):
    if comm.size > 1:
        pytest.skip("serial")
    with meshes.gmsh_session() as gmsh:
        gmsh.model.occ.addRectangle(0, 0, 0, 100, 50)
        gmsh.model.occ.synchronize()
        gmsh.option.setNumber("Mesh.MeshSizeMax", 20)
        gmsh.model.mesh.generate(2)
        gmsh.write(str(tmp_path / "bare.msh"))
    d = meshes.build(FileMesh(kind="file", path=tmp_path / "bare.msh"), comm)
    assert d.regions == {"tissue": 1} and cells_measure(d) == pytest.approx(5000.0)


@pytest.mark.mpi
@pytest.mark.parametrize("name, text, problem", [
    ("missing.msh", None, "no such file"),
    ("broken.msh", "$MeshFormat\nnot a mesh\n", "gmsh"),
    ("broken.vtu", "<VTKFile>garbage", "cannot read it as a mesh"),
    ("unknown.xyz", "1 2 3\n", "cannot read it as a mesh"),
])
def test_bad_file_names_the_file(comm, tmp_path, name, text, problem):
    folder = shared_dir(comm, tmp_path)
    path = folder / name
    if comm.rank == 0 and text is not None:
        path.write_text(text)
    comm.barrier()
    with pytest.raises(ScenarioError) as err:
        meshes.build(FileMesh(kind="file", path=path), comm)
    msg = str(err.value)
    assert msg.startswith(f"mesh.path: {path}") and problem in msg


# --------------------------------------------------------------------------------------------
# the size of a mesh, known before it is built


@pytest.mark.mpi
@pytest.mark.parametrize("spec, low, high", [
    (BuiltinMesh(kind="rectangle", size=["100 um", "50 um"], cells=[10, 5]), 1.0, 1.0),
    (BuiltinMesh(kind="box", size=["100 um"] * 3, cells=[4, 3, 2]), 1.0, 1.0),
    (SliceMesh(kind="slice2d", size=["400 um", "300 um"], h="20 um",
               vessels=[Vessel(center=["0 um", "0 um"], radius="10 um"),
                        Vessel(center=["100 um", "50 um"], radius="6 um")]), 0.85, 1.15),
    (KroghMesh(kind="krogh", vessel_radius="10 um", tissue_radius="100 um", h="10 um"), 0.8, 1.2),
    (KroghMesh(kind="krogh", dim=3, vessel_radius="10 um", tissue_radius="200 um", length="400 um",
               h="20 um"), 0.8, 1.2),
    (SpheroidMesh(kind="spheroid", radius="100 um", h="20 um"), 0.85, 1.15),
    # a file is counted by its size: an overestimate (ASCII holds fewer cells per byte)
    (FileMesh(kind="file", path=SHIPPED), 1.0, 3.0),
], ids=["rectangle", "box", "slice2d", "krogh", "krogh-3d", "spheroid", "file"])
def test_cell_count_is_estimated_before_building(comm, spec, low, high):
    est = meshes.estimate(spec)
    d = meshes.build(spec, comm)
    built = d.mesh.topology.index_map(d.dim).size_global
    assert low <= est.cells / built <= high, (est.cells, built)


def test_a_mesh_beyond_the_memory_limit_is_refused_before_building(comm):
    spec = BuiltinMesh(kind="rectangle", size=["1200 um", "800 um"], cells=[1200000, 200000])
    with pytest.raises(ScenarioError, match=r"mesh: about 4.8e\+11 cells .* available on") as err:
        meshes.check_size(spec, MPI.COMM_SELF)
    assert "--max-memory" in str(err.value)
    small = BuiltinMesh(kind="rectangle", size=["100 um", "100 um"], cells=[100, 100])
    assert meshes.check_size(small, MPI.COMM_SELF).cells == 20000
    with pytest.raises(ScenarioError, match="the limit --max-memory is 1 MB"):
        meshes.check_size(small, MPI.COMM_SELF, limit=1e6)


@pytest.mark.mpi
@pytest.mark.parametrize("center, radius", [(["0 um", "0 um"], "80 um"), (["40 um", "0 um"], "15 um")])
def test_a_vessel_leaving_no_tissue_or_cutting_the_edge_names_its_key(comm, center, radius):
    spec = SliceMesh(kind="slice2d", size=["100 um", "100 um"], h="20 um",
                     vessels=[Vessel(center=center, radius=radius)])
    with pytest.raises(ScenarioError, match="mesh.vessels.0.radius: .* reaches the edge of the slice"):
        meshes.build(spec, comm)
