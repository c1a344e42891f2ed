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
