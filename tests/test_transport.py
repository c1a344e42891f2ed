"""Transport verified against closed forms (solver/verify.py), on 1 and 2 ranks."""

import pytest

from solver import verify


def _check(result):
    assert result.passed, verify.table([result])


@pytest.mark.mpi
def test_slab_cosh_profile(comm):
    r = verify.slab(comm)
    _check(r)
    assert r.errors[1] < 0.01
    assert min(r.orders) > 1.8


@pytest.mark.mpi
@pytest.mark.parametrize("wall", ["dirichlet", "robin"])
def test_krogh_annulus_bessel_profile(comm, wall):
    r = verify.krogh(comm, wall)
    _check(r)
    assert r.errors[-1] < 0.01 and min(r.orders) >= 1.9


def test_spheroid_sinh_profile(comm):
    r = verify.spheroid(comm)
    _check(r)
    assert r.errors[0] < 0.02


@pytest.mark.mpi
def test_manufactured_transient_second_order(comm):
    r = verify.manufactured(comm)
    _check(r)
    assert min(r.orders) >= 1.9


@pytest.mark.mpi
def test_mass_balance_per_step(comm):
    r = verify.mass_balance(comm)
    _check(r)
    assert r.errors[0] < 1e-8


@pytest.mark.mpi
def test_same_fields_on_any_number_of_ranks(comm):
    r = verify.partition_independence(comm)
    _check(r)


def test_antibody_penetrates_dense_ecm_less_than_small_drug(comm):
    r = verify.ecm_hindrance(comm)
    _check(r)


def test_verify_cli_runs_a_case():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "solver", "verify", "--case", "slab"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "1 passed, 0 failed" in p.stdout
    p = subprocess.run([sys.executable, "-m", "solver", "verify", "--case", "nope"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "unknown; cases: slab" in p.stderr


# ------------------------------------------------------------------------------------------
# Outer boundaries that follow the plasma level


@pytest.mark.mpi
def test_spheroid_plasma_surface_second_order_in_space(comm):
    r = verify.spheroid_plasma_space(comm)
    _check(r)
    assert r.errors[-1] < 0.015 and min(r.orders) >= 1.8


@pytest.mark.mpi
def test_spheroid_plasma_surface_first_order_in_time(comm):
    r = verify.spheroid_plasma_time(comm)
    _check(r)
    assert r.errors[-1] < 0.015 and min(r.orders) >= 0.9


@pytest.mark.mpi
def test_spheroid_plasma_surface_consistent_mass(comm):
    # lumped_mass: false lifts the moving boundary value through the mass columns too
    r = verify.spheroid_plasma_space(comm, h_list=(24.0, 16.0), lumped=False)
    _check(r)


@pytest.mark.mpi
def test_spheroid_robin_surface_to_a_fraction_of_the_plasma(comm):
    r = verify.spheroid_plasma_robin(comm)
    _check(r)


def test_ball_closed_forms_agree():
    """The series of the backward-Euler ball tends to Duhamel's solution as dt -> 0, at first
    order; at t -> infinity Duhamel's solution is the separable e^{-at} sinh profile."""
    import math

    import numpy as np

    R, D, k, a, T = 100.0, 3600.0, 2.0, 0.7, 0.4
    r = np.linspace(0.0, R, 41)
    exact = verify.ball_decaying_surface(r, T, R, D, k, 1.0, a)
    errs = []
    for n in (50, 100):
        dt = T / n
        g = [(math.exp(-a * i * dt) - math.exp(-a * (i + 1) * dt)) / (a * dt) for i in range(n)]
        errs.append(np.max(np.abs(verify.ball_backward_euler(r, R, D, k, g, dt) - exact)))
    assert errs[1] < 4e-3 and 1.9 < errs[0] / errs[1] < 2.1
    late = verify.ball_decaying_surface(r, 20.0, R, D, k, 1.0, a)
    assert np.allclose(late, math.exp(-a * 20.0) * verify._ball_profile(r, R, (k - a) / D), rtol=1e-10)
    assert verify.ball_decaying_surface(np.array([R]), T, R, D, k, 1.0, a)[0] == pytest.approx(math.exp(-a * T))


@pytest.mark.mpi
def test_plasma_boundary_steps_assemble_nothing(comm):
    """A moving boundary level changes vectors only: no assembly or compilation inside steps."""
    from dolfinx import fem

    from solver import meshes
    from solver.scenario import BuiltinMesh
    from solver.spec import BoundaryValue
    from solver.transport import COUNTERS, SpeciesModel, SpeciesSolver

    dom = meshes.build(BuiltinMesh(kind="rectangle", size=[100.0, 50.0], cells=[10, 5]), comm)
    level = lambda t0, t1: 1.0 + t0  # noqa: E731
    for lumped in (True, False):
        model = SpeciesModel("c", fem.Constant(dom.mesh, 500.0), decay=0.1, plasma=level,
                             boundary={"left": BoundaryValue(plasma=True, plasma_fraction=0.5),
                                       "right": BoundaryValue(plasma=True, robin="1 um/s")},
                             boundary_facets={"left": dom.facet("left", "t"), "right": dom.facet("right", "t")})
        s = SpeciesSolver(model, fem.functionspace(dom.mesh, ("Lagrange", 1)), dom.facet_tags,
                          lumped=lumped, solver="direct", cell_size=10.0)
        before = COUNTERS.snapshot()
        for i in range(4):
            s.step(float(i), float(i + 1))
            # the Dirichlet dofs carry the step's mean level times the fraction
            assert s.c.x.array[s.bc_rows] == pytest.approx(0.5 * (1.0 + i))
        after = COUNTERS.snapshot()
        for key in ("form_compilations", "matrix_assemblies", "vector_assemblies"):
            assert after[key] == before[key], key


def test_boundary_value_keys():
    from pydantic import ValidationError

    from solver.spec import BoundaryValue

    assert BoundaryValue(plasma=True).plasma_fraction == 1.0
    assert BoundaryValue(plasma=True, robin="0.5 um/s").robin == pytest.approx(1800.0)
    for bad, text in [({"plasma": True, "value": "1 uM"}, "either value or plasma"),
                      ({"plasma_fraction": 0.5}, "needs plasma: true"),
                      ({"plasma": True, "plasma_fraction": 0.0}, "greater than 0"),
                      ({"plasma": True, "plasma_fraction": 2.0}, "less than or equal to 1")]:
        with pytest.raises(ValidationError, match=text):
            BoundaryValue(**bad)
