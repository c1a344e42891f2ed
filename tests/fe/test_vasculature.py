"""Vessel networks: flow, transit and the line source against closed forms; generator; files."""

import math
from pathlib import Path

import numpy as np
import pytest

from tme import compat
from tme.config.spec import ScenarioError
from tme.vasculature import files, flow
from tme.vasculature.generator import GeneratorParams, generate
from tme.vasculature.network import NL_PER_MIN, Network
from tme.vasculature.transit import Transit
from tme.vasculature import verification


# --------------------------------------------------------------------------------------------
# blood flow (pure)


def test_pries_viscosity_limits():
    D = np.array([5.0, 10.0, 40.0, 1000.0])
    # plasma alone: only the endothelial-layer factor (D/(D − 1.1))² remains
    assert np.allclose(flow.relative_viscosity(D, 0.0), (D / (D - 1.1)) ** 2)
    # wide vessels at H_D 0.45: bulk blood, 3.2 × plasma
    assert flow.relative_viscosity(1e4, 0.45) == pytest.approx(3.2, rel=1e-3)
    mu = flow.relative_viscosity(D, 0.45)
    assert np.all(mu > 1) and mu[1] > mu[2]  # narrow vessels resist more (in vivo)
    assert np.all(flow.relative_viscosity(10.0, [0.2, 0.45, 0.6])[1:] > flow.relative_viscosity(10.0, [0.2, 0.45, 0.6])[:-1])


@pytest.mark.mpi
def test_flow_on_bifurcation_with_loop_matches_closed_form():
    e = verification.flow_errors()
    assert e["pressure"] < 1e-10 and e["flow"] < 1e-10 and e["flow_driven"] < 1e-10
    assert e["junctions"] < 1e-12 and e["junctions_flow_driven"] < 1e-12


def test_dead_ends_and_detached_parts_carry_no_flow():
    nodes = [[0, 0, 0], [100, 0, 0], [200, 0, 0], [100, 80, 0], [500, 0, 0], [600, 0, 0]]
    segs = [[0, 1], [1, 2], [1, 3], [4, 5]]  # 1-3 a dead end, 4-5 detached
    net = Network(nodes, segs, [5.0, 5.0, 4.0, 4.0], pressure=[40, np.nan, 10, np.nan, np.nan, np.nan])
    f = flow.solve(net)
    assert f.perfused.tolist() == [True, True, False, False]
    assert f.flow[3] == 0.0 and np.isnan(f.pressure[4])
    assert f.perfused_fraction(net) == pytest.approx(200 / net.lengths.sum())
    # a detached part driven by a flow with no pressure anywhere is refused
    with pytest.raises(ScenarioError, match="node 4 has a boundary flow"):
        flow.solve(Network(nodes, segs, [5.0, 5.0, 4.0, 4.0], pressure=[40, np.nan, 10, np.nan, np.nan, np.nan],
                           inflow=[np.nan, np.nan, np.nan, np.nan, NL_PER_MIN, np.nan]))


def test_network_refuses_bad_segments():
    with pytest.raises(ScenarioError, match="radius 0.2 µm"):
        Network([[0, 0, 0], [1, 0, 0]], [[0, 1]], [0.2])
    with pytest.raises(ScenarioError, match="does not exist"):
        Network([[0, 0, 0], [1, 0, 0]], [[0, 2]], [3.0])
    with pytest.raises(ScenarioError, match="zero length"):
        Network([[0, 0, 0], [0, 0, 0]], [[0, 1]], [3.0])


# --------------------------------------------------------------------------------------------
# transit (pure)


def test_transit_exponential_extraction_chain_and_mixing():
    e = verification.transit_errors()
    assert e["outlet"] < 1e-13 and e["mean"] < 1e-13
    assert e["chain"] < 1e-12 and e["chain_mass"] < 1e-12
    assert e["confluence"] < 1e-14


def test_transit_matches_the_ode_of_a_varying_tissue_level():
    """Q dC/ds = −T (C − c(s)) with c varying along a vessel of many pieces: the piecewise
    exponential converges to the ODE's solution (scipy solve_ivp) at second order."""
    from scipy.integrate import solve_ivp

    L, r, P, Cp = 300.0, 4.0, 7200.0, 1.0
    T = 2 * np.pi * r * P
    c_of = lambda s: 0.2 + 0.3 * np.sin(np.pi * s / L)  # noqa: E731
    errs = []
    for k in (8, 16, 32):
        s = np.linspace(0, L, k + 1)
        net = Network(np.c_[s, np.zeros((k + 1, 2))], np.c_[np.arange(k), np.arange(1, k + 1)], np.full(k, r),
                      pressure=np.r_[30.0, np.full(k - 1, np.nan), 10.0])
        f = flow.solve(net)
        Q = f.flow[0]
        lv = Transit(net, f, np.full(k, T * L / k)).levels(c_of(0.5 * (s[1:] + s[:-1])), Cp)
        ref = solve_ivp(lambda x, C: -T * (C - c_of(x)) / Q, (0, L), [Cp], rtol=1e-12, atol=1e-14).y[0, -1]
        errs.append(abs(lv.outlet[-1] - ref))
    assert math.log(errs[0] / errs[1], 2) > 1.8 and math.log(errs[1] / errs[2], 2) > 1.8


def test_unperfused_segments_exchange_nothing():
    net = Network([[0, 0, 0], [100, 0, 0], [200, 0, 0], [100, 80, 0]], [[0, 1], [1, 2], [1, 3]],
                  [5.0, 5.0, 4.0], pressure=[40, np.nan, 10, np.nan])
    f = flow.solve(net)
    t = Transit(net, f, np.full(3, 1e6))
    lv = t.levels(np.array([0.1, 0.2, 0.7]), 1.0)
    assert lv.mean[2] == 0.7 and t.delivered(lv)[2] == 0.0


# --------------------------------------------------------------------------------------------
# generator (pure)

BLOCK = dict(lower=(0.0, 0.0, 0.0), upper=(1000.0, 1000.0, 600.0))


def _tumour(X):
    return np.linalg.norm(X[:, :2] - 500.0, axis=1) < 300.0


def test_generator_is_deterministic_for_a_seed():
    a = generate(GeneratorParams(**BLOCK, seed=7, tumour=_tumour))
    b = generate(GeneratorParams(**BLOCK, seed=7, tumour=_tumour))
    c = generate(GeneratorParams(**BLOCK, seed=8, tumour=_tumour))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_generated_network_is_normal_outside_and_abnormal_in_the_tumour():
    net = generate(GeneratorParams(**BLOCK, seed=2, tumour=_tumour))
    f = flow.solve(net)
    assert flow.junction_imbalance(net, f) < 1e-11
    L, mid = net.lengths, 0.5 * (net.nodes[net.segments[:, 0]] + net.nodes[net.segments[:, 1]])
    normal = ~net.tumour & (net.radius < 6.0)  # capillaries, not the feeding vessels
    # inter-capillary distance: vessel length per volume L_V gives d ≈ 1/√L_V (~100 µm)
    vol_n = 1000.0 * 1000.0 * 600.0 - math.pi * 300 ** 2 * 600.0
    d_normal = 1.0 / math.sqrt(L[normal & ~_tumour(mid)].sum() / vol_n)
    d_tumour = 1.0 / math.sqrt(L[net.tumour].sum() / (math.pi * 300 ** 2 * 600.0))
    assert 60.0 < d_normal < 130.0
    assert 2.0 <= d_tumour / d_normal <= 4.0
    assert np.median(net.radius[net.tumour]) > 1.4 * np.median(net.radius[normal])  # dilated
    deg = net.degree
    blind = (deg == 1) & ~np.isfinite(net.pressure)
    ends_in_tumour = _tumour(net.nodes[blind])
    assert blind.sum() > 0 and ends_in_tumour.mean() > 0.8  # dead ends, in the tumour
    assert f.perfused[net.tumour].mean() < f.perfused[normal].mean()
    assert f.perfused[normal].mean() > 0.95


def test_generator_refuses_bad_parameters():
    with pytest.raises(ScenarioError, match="face 'w-' unknown"):
        generate(GeneratorParams(**BLOCK, inlet_faces=("w-",)))
    with pytest.raises(ScenarioError, match="lower < upper"):
        generate(GeneratorParams(lower=(0, 0, 0), upper=(100, -1, 100)))


@pytest.mark.mpi
def test_the_same_network_on_every_rank(comm):
    from tme.vasculature.network import shared

    net = shared(comm, lambda: generate(GeneratorParams(**BLOCK, seed=5, tumour=_tumour)))
    prints = comm.allgather(net.fingerprint())
    assert len(set(prints)) == 1
    assert prints[0] == generate(GeneratorParams(**BLOCK, seed=5, tumour=_tumour)).fingerprint()


# --------------------------------------------------------------------------------------------
# files (pure)


@pytest.fixture
def small_net():
    return generate(GeneratorParams(lower=(0, 0, 0), upper=(400.0, 300.0, 200.0), seed=1, spacing=80.0,
                                    feeder_spacing=150.0))


def _same(a: Network, b: Network, tol=1e-9):
    assert a.num_segments == b.num_segments and a.num_nodes == b.num_nodes
    # node order may differ after merging: compare by position
    ka = np.lexsort(a.nodes.T[::-1])
    kb = np.lexsort(b.nodes.T[::-1])
    assert np.allclose(a.nodes[ka], b.nodes[kb], atol=tol)
    assert np.allclose(np.nan_to_num(a.pressure[ka], nan=-1), np.nan_to_num(b.pressure[kb], nan=-1))
    mapa, mapb = np.empty_like(ka), np.empty_like(kb)
    mapa[ka], mapb[kb] = np.arange(len(ka)), np.arange(len(kb))
    sa = np.sort(mapa[a.segments], axis=1)
    sb = np.sort(mapb[b.segments], axis=1)
    ia, ib = np.lexsort(sa.T[::-1]), np.lexsort(sb.T[::-1])
    assert np.array_equal(sa[ia], sb[ib])
    assert np.allclose(a.radius[ia], b.radius[ib], rtol=1e-6)


@pytest.mark.parametrize("suffix", [".vtp", ".yaml"])
def test_network_files_round_trip(tmp_path, small_net, suffix):
    path = tmp_path / f"net{suffix}"
    (files.write_vtp if suffix == ".vtp" else files.write_table)(path, small_net)
    _same(small_net, files.read(path))


def test_vtk_lengths_in_the_declared_unit_and_the_old_scale_key_refused(tmp_path, small_net):
    from pydantic import ValidationError

    from tme.config.spec import located
    from tme.config.vasculature import VasculatureSpec

    # a VTK file written in mm
    import pyvista

    segs = small_net.segments
    poly = pyvista.PolyData(small_net.nodes / 1000.0, lines=np.column_stack([np.full(len(segs), 2), segs]).ravel())
    poly.cell_data["radius"] = small_net.radius / 1000.0
    poly.save(tmp_path / "mm.vtp")
    back = files.read(tmp_path / "mm.vtp", "mm")
    assert np.allclose(np.sort(back.radius), np.sort(small_net.radius), rtol=1e-12)
    assert np.allclose(np.sort(back.nodes, axis=0), np.sort(small_net.nodes, axis=0), rtol=1e-12)
    files.write_table(tmp_path / "t.yaml", small_net)
    with pytest.raises(ScenarioError, match=r"vasculature.file.unit: t.yaml is a table, which declares its own"):
        files.read(tmp_path / "t.yaml", "mm", key="vasculature.file.path")
    assert VasculatureSpec.model_validate({"file": {"path": "a.vtp", "unit": "mm"}}).file.unit == "mm"
    with pytest.raises(ValidationError) as exc:
        VasculatureSpec.model_validate({"file": {"path": "a.vtp", "scale": 1000}})
    assert located(exc.value.errors()[0]["msg"]).startswith("vasculature.file.scale: is now 'unit'")
    with pytest.raises(ValidationError, match="not a length unit"):
        VasculatureSpec.model_validate({"file": {"path": "a.vtp", "unit": "mmHg"}})


def test_vtk_polylines_with_point_radius_and_csv_table(tmp_path):
    import pyvista

    pts = np.array([[0, 0, 0], [50, 0, 0], [100, 0, 0], [100, 0, 0], [100, 60, 0]], float)
    poly = pyvista.PolyData(pts, lines=np.array([3, 0, 1, 2, 2, 3, 4]))
    poly.point_data["radius"] = np.array([4.0, 6.0, 8.0, 8.0, 2.0])
    poly.save(tmp_path / "two.vtk")
    net = files.read(tmp_path / "two.vtk")
    assert net.num_nodes == 4 and net.num_segments == 3  # the shared point is merged
    assert sorted(net.radius.tolist()) == [5.0, 5.0, 7.0]
    (tmp_path / "t.csv").write_text("x0 [mm],y0 [mm],z0 [mm],x1 [mm],y1 [mm],z1 [mm],radius [um],p0 [mmHg],p1 [mmHg]\n"
                                    "0,0,0,0.1,0,0,5,40,\n0.1,0,0,0.2,0,0,4,,10\n")
    t = files.read(tmp_path / "t.csv")
    assert t.num_nodes == 3 and np.allclose(t.lengths, 100.0)
    assert np.nansum(t.pressure) == 50.0


def test_bad_network_files_get_one_line(tmp_path):
    import pyvista

    with pytest.raises(ScenarioError, match="no such file"):
        files.read(tmp_path / "nope.vtp")
    poly = pyvista.PolyData(np.array([[0, 0, 0], [1, 0, 0.0]]), lines=np.array([2, 0, 1]))
    poly.point_data["thickness"] = np.array([1.0, 1.0])
    poly.save(tmp_path / "norad.vtp")
    with pytest.raises(ScenarioError, match=r"norad.vtp: no 'radius' point or cell array \(arrays: thickness\)"):
        files.read(tmp_path / "norad.vtp")
    (tmp_path / "x.yaml").write_text("nodes: [[0,0,0]]\n")
    with pytest.raises(ScenarioError, match="needs 'nodes' and 'segments'"):
        files.read(tmp_path / "x.yaml")
    (tmp_path / "bad.vtp").write_text("<VTKFile garbage")
    with pytest.raises(ScenarioError, match="bad.vtp"):
        files.read(tmp_path / "bad.vtp")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ScenarioError, match="unknown network format '.txt'"):
        files.read(tmp_path / "x.txt")


# --------------------------------------------------------------------------------------------
# the line source on P1 tetrahedra (DOLFINx), 1 and 2 ranks


def _box(comm, n=8, size=200.0):
    from tme.mesh import build as meshes
    from tme.config.scenario import BuiltinMesh

    return meshes.build(BuiltinMesh(kind="box", size=[size] * 3, cells=[n] * 3, origin=[0.0] * 3), comm)


@pytest.mark.mpi
def test_quadrature_points_counted_once_with_p1_basis_values(comm):
    import basix
    from dolfinx import fem
    from mpi4py import MPI

    from tme.vasculature.exchange import LineSource, locate

    dom = _box(comm)
    V = fem.functionspace(dom.mesh, ("Lagrange", 1))
    # segments along mesh facets and edges (x = y = 100 lies on cell faces) and diagonally
    net = Network([[100, 100, 0], [100, 100, 200], [5, 5, 5], [195, 190, 180]], [[0, 1], [2, 3]], [4.0, 3.0])
    quad = locate(net, V, spacing=7.0)
    total = comm.allreduce(float(quad.weight.sum()), op=MPI.SUM)
    assert total == pytest.approx(net.lengths.sum(), rel=1e-12)
    assert np.allclose(quad.basis.sum(axis=1), 1.0) and quad.basis.min() > -1e-10
    # the barycentric values are the P1 basis of basix at the pulled-back points
    msh = dom.mesh
    for q in range(0, len(quad.points), max(len(quad.points) // 5, 1)):
        cell = quad.cells[q]
        X = compat.coordinate_element(msh).pull_back(quad.points[q:q + 1], msh.geometry.x[compat.geometry_dofmap(msh)[cell]])
        phi = V.element.basix_element.tabulate(0, X)[0, 0, :, 0]
        assert np.allclose(phi, quad.basis[q], atol=1e-12)
        assert np.array_equal(V.dofmap.cell_dofs(cell), quad.dofs[q])
    # mass: Σ_dofs B = ∫T ds per segment; the uncorrected T is 2π r P exactly
    src = LineSource(quad, 100.0, 1000.0, alpha=None)
    assert np.allclose(src.conductance, 2 * np.pi * net.radius * 100.0 * net.lengths, rtol=1e-12)
    d, b = src.nodal(np.array([1.0, 2.0]))
    assert comm.allreduce(float(b.sum()), op=MPI.SUM) == pytest.approx(float(src.conductance @ [1.0, 2.0]))


@pytest.mark.mpi
def test_segment_outside_the_mesh_is_refused_on_every_rank(comm):
    from dolfinx import fem

    from tme.vasculature.exchange import locate

    V = fem.functionspace(_box(comm, n=4).mesh, ("Lagrange", 1))
    net = Network([[10, 10, 10], [10, 10, 150], [10, 10, 260]], [[0, 1], [1, 2]], [4.0, 4.0])
    with pytest.raises(ScenarioError, match=r"segment 1 \(nodes 1-2.*leaves the mesh"):
        locate(net, V)


@pytest.mark.mpi
def test_krogh_line_source_with_and_without_the_well_model(comm):
    """Out of the calibration's sample: another vessel radius and mesh sizes 2 r_v and 10 r_v."""
    from tme.vasculature.exchange import ALPHA

    r = verification.krogh_line(comm, h_list=(8.0, 40.0), rv=4.0, R=200.0, lam=150.0)
    well, plain = r[ALPHA], r[None]
    assert max(well["l2"]) < 0.02 and max(well["total"]) < 0.02
    assert plain["total"][-1] > 5 * well["total"][-1] and plain["total"][-1] > 0.1


@pytest.mark.mpi
def test_mass_balance_per_step_with_a_network(comm):
    r = verification.network_mass_balance(comm)
    assert r["mismatch"] < 1e-8
    assert min(r["delivered"]) > 0 and 0.5 < r["perfused_fraction"] <= 1.0


# --------------------------------------------------------------------------------------------
# the scenario section, the network of a run and its output


def test_vasculature_section_units_and_one_source():
    from pydantic import ValidationError

    from tme.config.vasculature import VasculatureSpec

    v = VasculatureSpec.model_validate({"generate": {"spacing": "0.1 mm", "inlet_pressure": "5.333 kPa",
                                                     "tumour": "r < 300"},
                                        "blood": {"plasma_viscosity": "1.2 mPa*s"},
                                        "immune_recruitment": "2 um^2/hour"})
    assert v.generate.spacing == pytest.approx(100.0)
    assert v.generate.inlet_pressure == pytest.approx(40.0, rel=1e-3)  # mmHg
    assert v.blood.plasma_viscosity == pytest.approx(flow.PLASMA_VISCOSITY, rel=1e-5)  # flow.MMHG is 133.322 Pa
    with pytest.raises(ValidationError, match="exactly one of 'file' and 'generate'"):
        VasculatureSpec.model_validate({})
    with pytest.raises(ValidationError, match="dimension"):
        VasculatureSpec.model_validate({"generate": {"inlet_pressure": "40 um"}})
    with pytest.raises(ValidationError, match="exactly one of pressure and flow"):
        VasculatureSpec.model_validate({"file": {"path": "x.vtp", "boundary": [{"where": "x < 1"}]}})


@pytest.mark.mpi
def test_network_of_a_run_generated_for_the_mesh_and_coupled(comm, tmp_path_factory):
    from dolfinx import fem

    from tme.config.scenario import RegionRule
    from tme.vasculature.coupling import VascularCoupling, build
    from tme.config.vasculature import VasculatureSpec

    dom = _box(comm, n=10, size=400.0)
    spec = VasculatureSpec.model_validate({"generate": {"seed": 4, "spacing": "80 um", "feeder_spacing": "150 um",
                                                        "tumour": "core"}})
    rules = [RegionRule(name="core", where="x > 250")]
    net = build(spec, dom.mesh, rules)
    assert net.nodes.min() >= 0.0 and net.nodes.max() <= 400.0 and net.tumour.any()
    assert len(set(comm.allgather(net.fingerprint()))) == 1
    V = fem.functionspace(dom.mesh, ("Lagrange", 1))
    vc = VascularCoupling(net, spec, V)
    vc.add("drug", 3600.0, 57600.0, lambda t0, t1: 2.0)
    c = np.zeros(V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts)
    d, b = vc.exchange("drug", c, 0.0, 1.0)
    s = vc.species["drug"]
    # into empty tissue the tissue gains exactly what the plasma loses along the network
    from mpi4py import MPI

    gained = comm.allreduce(float(b.sum() - d @ c[: d.size]), op=MPI.SUM)
    lost = float(s.transit.delivered(s.levels).sum())
    assert gained == pytest.approx(lost, rel=1e-10)
    assert comm.allreduce(float(vc.line_density().sum()), op=MPI.SUM) == pytest.approx(vc.perfused_length())
    data = vc.segment_data()
    assert set(data) >= {"radius", "flow", "perfused", "plasma_drug"}
    if comm.rank == 0:
        from tme.vasculature.files import NetworkSeries

        out = tmp_path_factory.mktemp("series")
        series = NetworkSeries(out, net)
        series.write(0.0, vc.flow.pressure, data)
        series.write(2.5, vc.flow.pressure, data)
        assert (out / "network.pvd").read_text().count("<DataSet") == 2
        back = files.read(out / "network_0001.vtp")
        assert back.num_segments == net.num_segments


def test_file_network_end_conditions_and_outside_nodes(tmp_path, comm):
    from tme.vasculature.coupling import build, check_inside
    from tme.config.vasculature import VasculatureSpec

    (tmp_path / "n.yaml").write_text("nodes: [[10, 50, 50], [100, 50, 50], [190, 50, 50], [100, 150, 50]]\n"
                                     "segments: [[0, 1, 5], [1, 2, 5], [1, 3, 4]]\n")
    spec = VasculatureSpec.model_validate({"file": {"path": str(tmp_path / "n.yaml"), "boundary": [
        {"where": "x < 50", "pressure": "40 mmHg"}, {"where": "x > 150", "pressure": "10 mmHg"}]}})
    dom = _box(comm, n=4)
    net = build(spec, dom.mesh)
    assert net.pressure[0] == 40.0 and net.pressure[2] == 10.0 and np.isnan(net.pressure[3])
    check_inside(net, dom.mesh)
    far = Network(net.nodes + [0, 0, 500.0], net.segments, net.radius)
    with pytest.raises(ScenarioError, match="node 0 at .* lies outside the mesh"):
        check_inside(far, dom.mesh)


@pytest.mark.slow
def test_network_series_opens_in_paraview(tmp_path):
    import json
    import shutil
    import subprocess

    from tme.vasculature.files import NetworkSeries

    pvbatch = shutil.which("pvbatch")
    if pvbatch is None:
        pytest.skip("ParaView's pvbatch is not installed")
    net = generate(GeneratorParams(lower=(0, 0, 0), upper=(400.0, 300.0, 200.0), seed=1, spacing=80.0,
                                   feeder_spacing=150.0))
    f = flow.solve(net)
    series = NetworkSeries(tmp_path, net)
    for t in (0.0, 24.0):
        series.write(t, f.pressure, {"radius": net.radius, "flow": f.flow / NL_PER_MIN,
                                     "perfused": f.perfused.astype(np.uint8),
                                     "plasma_doxorubicin": np.full(net.num_segments, t)})
    script = tmp_path / "read.py"
    script.write_text(
        "import json, sys\n"
        "from paraview.simple import OpenDataFile\n"
        "r = OpenDataFile(sys.argv[1])\n"
        "r.UpdatePipelineInformation()\n"
        "times = list(r.TimestepValues)\n"
        "r.UpdatePipeline(times[-1])\n"
        "d = r.GetDataInformation()\n"
        "pd, cd = r.PointData, r.CellData\n"
        "print(json.dumps({'times': times, 'cells': d.GetNumberOfCells(),\n"
        "  'point': [pd.GetArray(i).GetName() for i in range(pd.GetNumberOfArrays())],\n"
        "  'cell': [cd.GetArray(i).GetName() for i in range(cd.GetNumberOfArrays())],\n"
        "  'plasma': cd.GetArray('plasma_doxorubicin').GetRange()}))\n")
    p = subprocess.run([pvbatch, str(script), str(tmp_path / "network.pvd")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["times"] == [0.0, 24.0] and info["cells"] == net.num_segments
    assert {"radius", "flow", "perfused", "plasma_doxorubicin"} <= set(info["cell"])
    assert "pressure" in info["point"] and info["plasma"] == [24.0, 24.0]


# --------------------------------------------------------------------------------------------
# vessels that collapse under compression


@pytest.mark.mpi
def test_segments_through_a_dense_region_collapse_and_the_flow_follows_a_hand_solve(comm):
    """Two parallel branches between a feeder and a drain; the upper one runs into a region
    packed with cells (density 1 where y > 130 µm, 0.5 elsewhere) and collapses at threshold
    0.9: its flow is exactly zero, the rest carries Δp over the series resistance of feeder,
    lower branch and drain; the diagonal and the right-hand side lose the closed segments."""
    from dolfinx import fem
    from mpi4py import MPI

    from tme.config.vasculature import VasculatureSpec
    from tme.vasculature.coupling import VascularCoupling

    dom = _box(comm, n=8, size=200.0)
    V = fem.functionspace(dom.mesh, ("Lagrange", 1))
    nodes = [[10, 100, 100], [50, 100, 100], [150, 100, 100], [190, 100, 100], [100, 160, 100], [100, 40, 100]]
    segs = [[0, 1], [1, 4], [4, 2], [1, 5], [5, 2], [2, 3]]
    radius = [6.0, 4.0, 4.0, 4.0, 4.0, 6.0]
    p_in, p_out = 40.0, 15.0
    pressure = [p_in, np.nan, np.nan, p_out, np.nan, np.nan]
    net = Network(nodes, segs, radius, pressure=pressure)
    spec = VasculatureSpec.model_validate({"file": {"path": "unused.yaml"}, "collapse": {"threshold": 0.9}})
    vc = VascularCoupling(net, spec, V)
    vc.add("drug", 3600.0, 57600.0, lambda t0, t1: 2.0)
    G = flow.conductance(net, spec.blood.haematocrit, spec.blood.plasma_viscosity)
    series = lambda *g: 1.0 / sum(1.0 / x for x in g)  # noqa: E731
    # open: the two branches in parallel
    up, low = series(G[1], G[2]), series(G[3], G[4])
    Q = (p_in - p_out) * series(G[0], up + low, G[5])
    expected = np.array([Q, Q * up / (up + low), Q * up / (up + low), Q * low / (up + low), Q * low / (up + low), Q])
    assert np.allclose(vc.flow.flow, expected, rtol=1e-10, atol=0)
    d_open = vc.diagonal("drug").copy()
    B = vc.species["drug"].source.B

    n_tot = fem.Function(V)
    n_tot.interpolate(lambda x: np.where(x[1] > 130.0, 1.0, 0.5))
    along = vc.density_along(n_tot.x.array)
    assert np.allclose(along, [0.5, 1.0, 1.0, 0.5, 0.5, 0.5])
    closed = vc.compress(n_tot.x.array, spec.collapse.threshold)
    assert closed.tolist() == [1, 2] and vc.closed.tolist() == [False, True, True, False, False, False]
    Q = (p_in - p_out) * series(G[0], G[3], G[4], G[5])
    assert vc.flow.flow[1] == 0.0 and vc.flow.flow[2] == 0.0
    assert np.allclose(vc.flow.flow[[0, 3, 4, 5]], Q, rtol=1e-10, atol=0)
    assert vc.flow.perfused.tolist() == [True, False, False, True, True, True]
    assert flow.junction_imbalance(net, vc.flow) < 1e-12
    assert vc.perfused_fraction() == pytest.approx(1.0 - net.lengths[1:3].sum() / net.lengths.sum(), rel=1e-12)
    # the diagonal lost exactly the closed segments' columns; what the tissue gains is what the
    # open segments' plasma loses, the closed ones add nothing
    assert np.allclose(vc.diagonal("drug"), d_open - np.asarray(B[:, [1, 2]].sum(axis=1)).ravel(), rtol=1e-12,
                       atol=1e-12 * max(1.0, comm.allreduce(float(np.abs(d_open).max(initial=0)), op=MPI.MAX)))
    c = np.zeros(V.dofmap.index_map.size_local + V.dofmap.index_map.num_ghosts)
    d, b = vc.exchange("drug", c, 0.0, 1.0)
    s = vc.species["drug"]
    delivered = s.transit.delivered(s.levels)
    assert delivered[1] == 0.0 and delivered[2] == 0.0 and delivered[0] > 0
    assert comm.allreduce(float(b.sum()), op=MPI.SUM) == pytest.approx(float(delivered.sum()), rel=1e-10)
    assert vc.segment_data()["collapsed"].tolist() == [0, 1, 1, 0, 0, 0]
    # closing is for good, and a second look finds nothing new
    assert vc.compress(n_tot.x.array, spec.collapse.threshold).size == 0
    n_tot.x.array[:] = 0.0
    assert vc.compress(n_tot.x.array, spec.collapse.threshold).size == 0 and vc.closed.sum() == 2


@pytest.mark.mpi
def test_network_picture_has_its_size_and_is_not_blank(comm, tmp_path_factory):
    """Drawn at the end of a run from its closed files (fields.xdmf and network.pvd), as the other
    snapshots are: a slice of the drug with the network coloured by flow."""
    import tme
    from tme.config import scenario as sc
    from tme.outputs.network_picture import WINDOW

    scen = sc.validate({
        "name": "picture",
        "mesh": {"kind": "box", "size": ["400 um", "400 um", "160 um"], "cells": [8, 8, 3]},
        "vasculature": {"generate": {"seed": 3, "spacing": "100 um", "feeder_spacing": "150 um"}},
        "drugs": {"drug": {"class": "dna_damaging", "diffusivity": "16 um^2/s", "permeability": "0.5 um/s",
                           "uptake": "1 1/hour", "pk": {"half_life": "6 hour"}}},
        "treatment": {"lines": [{"name": "once", "regimen": [{"drug": "drug", "amount": "5 uM"}]}]},
        "time": {"end": "12 hour", "dt": "3 hour"},
        "output": {"every": "6 hour", "plots": False, "snapshots": {"times": ["6 hour", "12 hour"]}}})
    out = comm.bcast(str(tmp_path_factory.mktemp("picture")) if comm.rank == 0 else None, root=0)
    tme.run(scen, out=Path(out) / "run", comm=comm, quiet=True)
    if comm.rank == 0:
        from PIL import Image

        pictures = sorted((Path(out) / "run" / "snapshots").glob("network_*.png"))
        assert [p.name for p in pictures] == ["network_000.25.png", "network_000.50.png"]
        img = np.asarray(Image.open(pictures[0]).convert("RGB")).astype(float)
        assert img.shape == (WINDOW[1], WINDOW[0], 3)
        # not blank: many colours (the field's and the flow's colour maps) and a real spread
        colours = np.unique(img.reshape(-1, 3), axis=0)
        assert len(colours) > 200 and img.std() > 20.0
        white = np.all(img > 250, axis=2).mean()
        assert 0.2 < white < 0.95       # a white background around the block
