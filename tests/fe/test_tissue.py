"""Tissue properties per region: numbers, quantities, expressions, random fields (solver/tissue.py)."""

import math

import numpy as np
import pytest

ufl = pytest.importorskip("ufl")
from dolfinx import fem  # noqa: E402
from dolfinx import mesh as dmesh  # noqa: E402
from mpi4py import MPI  # noqa: E402

from tme.mesh import build as meshes  # noqa: E402
from tme import tissue  # noqa: E402
from tme.config import scenario as sc  # noqa: E402
from tme.config.scenario import BuiltinMesh, RegionRule, TissueSpec  # noqa: E402
from tme.config.spec import ScenarioError  # noqa: E402


def domain(comm, size=(200.0, 100.0), cells=(40, 20)):
    return meshes.build(BuiltinMesh(kind="rectangle", size=list(size), cells=list(cells),
                                    regions=[RegionRule(name="tumour", where="x < 0")]), comm)


def integral(d, f, region=None) -> float:
    dx = ufl.Measure("dx", domain=d.mesh, subdomain_data=d.cell_tags)
    form = fem.form(f * (dx(region) if region is not None else dx))
    return d.mesh.comm.allreduce(fem.assemble_scalar(form), op=MPI.SUM)


def owned_values(f) -> np.ndarray:
    n = f.function_space.dofmap.index_map.size_local
    return f.x.array[:n]


def global_max(f) -> float:
    return f.function_space.mesh.comm.allreduce(float(owned_values(f).max()), op=MPI.MAX)


def spec(**regions) -> TissueSpec:
    return TissueSpec.model_validate({"regions": regions})


@pytest.mark.mpi
def test_numbers_and_quantities_per_region(comm):
    d = domain(comm)
    tf = tissue.build(spec(tumour={"vascular_density": "20 1/mm", "ecm_fraction": "30 %", "caf_density": 0.5},
                           tissue={"vascular_density": "0.01 1/um"}), d)
    area = 100.0 * 100.0
    t, rest = d.regions["tumour"], d.regions["tissue"]
    assert integral(d, tf.vascular_density, t) == pytest.approx(0.02 * area)
    assert integral(d, tf.vascular_density, rest) == pytest.approx(0.01 * area)
    assert integral(d, tf.ecm_fraction, t) == pytest.approx(0.3 * area)
    assert integral(d, tf.ecm_fraction, rest) == pytest.approx(0.0, abs=1e-12)  # not listed: 0
    assert integral(d, tf.caf_density) == pytest.approx(0.5 * area)
    for f in (tf.vascular_density, tf.ecm_fraction, tf.caf_density):
        assert f.function_space.element.basix_element.degree == 0
    assert tf.ecm_fraction.name == "ecm_fraction"


@pytest.mark.mpi
def test_expression_in_its_unit(comm):
    d = domain(comm)
    tf = tissue.build(spec(tumour={"vascular_density": {"expression": "x + 100", "unit": "1/mm"}},
                           tissue={"ecm_fraction": {"expression": "0.2 * exp(-r / 50)", "unit": "dimensionless"},
                                   "caf_density": {"expression": "50", "unit": "%"}}), d)
    W = tf.ecm_fraction.function_space
    n = W.dofmap.index_map.size_local
    cells = np.arange(n, dtype=np.int32)
    mid = dmesh.compute_midpoints(d.mesh, 2, cells)
    dofs = W.dofmap.list[cells, 0]
    in_tumour = d.cell_tags.values[cells] == d.regions["tumour"]
    sv, phi, caf = (f.x.array[dofs] for f in (tf.vascular_density, tf.ecm_fraction, tf.caf_density))
    assert sv[in_tumour] == pytest.approx((mid[in_tumour, 0] + 100.0) * 1e-3)
    assert np.all(sv[~in_tumour] == 0.0)
    r = np.linalg.norm(mid[~in_tumour], axis=1)
    assert phi[~in_tumour] == pytest.approx(0.2 * np.exp(-r / 50.0))
    assert caf[~in_tumour] == pytest.approx(0.5)


@pytest.mark.mpi
@pytest.mark.parametrize("regions, message", [
    ({"necrotic": {"caf_density": 1}},
     "tissue.regions.necrotic: the mesh has no region 'necrotic'; its regions: tissue, tumour"),
    ({"tumour": {"ecm_fraction": 1.0}}, "tissue.regions.tumour.ecm_fraction: must lie in [0, 1); got 1"),
    ({"tumour": {"caf_density": -0.1}}, "tissue.regions.tumour.caf_density: must be >= 0; got -0.1"),
    ({"tissue": {"vascular_density": "-1 1/mm"}}, "tissue.regions.tissue.vascular_density: must be >= 0; got -0.001"),
    ({"tumour": {"vascular_density": "5 um"}}, "tissue.regions.tumour.vascular_density: '5 um' has dimension"),
    ({"tumour": {"vascular_density": {"expression": "x", "unit": "um"}}},
     "tissue.regions.tumour.vascular_density.unit: 'um' is not a unit of this property"),
    ({"tumour": {"ecm_fraction": {"expression": "x +", "unit": "1"}}},
     "tissue.regions.tumour.ecm_fraction.expression: 'x +' is not a valid expression"),
    ({"tumour": {"ecm_fraction": {"expression": "x / 100", "unit": "1"}}},
     "tissue.regions.tumour.ecm_fraction: must lie in [0, 1); got -0.9833 to -0.01667"),
    ({"tumour": {"caf_density": {"expression": "log(x)", "unit": "1"}}},
     "tissue.regions.tumour.caf_density: gives values that are not finite"),
    ({"tumour": {"ecm_fraction": {"mean": 0.6, "cv": 1.0, "correlation_length": "20 um"}}},
     "(lower the mean or cv of the random field)"),
    ({"tumour": {"ecm_fraction": {"mean": "2 1/um", "correlation_length": "20 um"}}},
     "tissue.regions.tumour.ecm_fraction.mean: '2 1/um' has dimension"),
])
def test_errors_name_the_key(comm, regions, message):
    # what can be read without the mesh is refused at validation, the rest when it is built
    scenario = {"name": "t", "mesh": {"kind": "rectangle", "size": [200, 100], "cells": [4, 2]},
                "time": {"end": "1 hour"}, "tissue": {"regions": regions}}
    try:
        sc.validate(scenario, source="s")
    except ScenarioError as exc:
        err = str(exc).removeprefix("s: ")
    else:
        with pytest.raises(ScenarioError) as exc:
            tissue.build(spec(**regions), domain(comm))
        err = str(exc.value)
    assert message in err
    assert err.startswith("tissue.regions.")


# --------------------------------------------------------------------------------------------
# random fields


RANDOM = {"mean": "0.02 1/um", "cv": 0.5, "correlation_length": "30 um", "seed": 7}


def _functionals(comm):
    d = domain(comm, size=(300.0, 200.0), cells=(60, 40))
    tf = tissue.build(spec(tumour={"vascular_density": RANDOM},
                           tissue={"vascular_density": dict(RANDOM, mean="0.01 1/um")}), d)
    f = tf.vascular_density
    return [integral(d, f), integral(d, f * f), global_max(f),
            -comm.allreduce(float(-owned_values(f).min()), op=MPI.MAX)]


@pytest.mark.mpi
def test_random_field_is_the_same_on_any_number_of_ranks(comm):
    here = _functionals(comm)
    alone = _functionals(MPI.COMM_SELF)
    assert here == pytest.approx(alone, rel=1e-12)
    assert here[3] > 0 and here[2] > 0.03  # a log-normal with cv 0.5 spreads well above its mean


def test_random_field_mean_and_cv_on_a_large_domain(comm):
    if comm.size > 1:
        pytest.skip("statistics of one realisation; serial")
    length, mean, cv = 20.0, 0.3, 0.4
    d = meshes.build(BuiltinMesh(kind="rectangle", size=[100 * length] * 2, cells=[100, 100]), comm)
    tf = tissue.build(spec(tissue={"caf_density": {"mean": mean, "cv": cv, "correlation_length": f"{length} um",
                                                   "seed": 3}}), d)
    v = owned_values(tf.caf_density)  # equal cell areas: a plain sample over the domain
    assert v.mean() == pytest.approx(mean, rel=0.05)
    assert v.std() / v.mean() == pytest.approx(cv, rel=0.1)


def test_gaussian_field_covariance_is_gaussian_in_distance():
    length = 10.0
    s = np.arange(0.0, 2000 * length, length / 4)
    pts = np.column_stack([s, 0.3 * s, np.zeros_like(s)]) / math.hypot(1.0, 0.3)
    y = tissue.gaussian_field(pts, length, seed=11)
    assert y.mean() == pytest.approx(0.0, abs=0.1) and y.var() == pytest.approx(1.0, abs=0.15)
    for lag, expected in ((2, math.exp(-1 / 8)), (4, math.exp(-1 / 2)), (8, math.exp(-2)), (16, 0.0)):
        corr = np.mean(y[:-lag] * y[lag:]) / y.var()
        assert corr == pytest.approx(expected, abs=0.08), lag


def test_random_field_is_a_function_of_position_and_seed():
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-500, 500, (50, 2)), np.zeros(50)])
    a = tissue.lognormal_field(pts, 1.0, 0.5, 40.0, seed=1)
    assert np.array_equal(a[10:20], tissue.lognormal_field(pts[10:20], 1.0, 0.5, 40.0, seed=1))
    assert not np.allclose(a, tissue.lognormal_field(pts, 1.0, 0.5, 40.0, seed=2))
    assert np.all(a > 0)
    assert tissue.lognormal_field(pts, 2.0, 0.0, 40.0, seed=1) == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------
# Ogston hindrance


def test_hindrance_closed_form():
    assert tissue.hindrance(0.0, 5e-3, 1.5e-3) == 1.0
    assert tissue.hindrance(0.25, 1.5e-3, 1.5e-3) == pytest.approx(math.exp(-1.0))
    phi = np.array([0.0, 0.09, 0.36])
    assert tissue.hindrance(phi, 0.5e-3, 1.0e-3) == pytest.approx(np.exp(-np.sqrt(phi) * 1.5))
    # an antibody (5 nm) is hindered far more than a small drug (0.5 nm) in the same matrix
    small, antibody = tissue.hindrance(0.3, 0.5e-3, 1.5e-3), tissue.hindrance(0.3, 5e-3, 1.5e-3)
    assert antibody < small ** 3
