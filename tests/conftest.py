"""Shared test fixtures. Tests marked ``mpi`` also run on 2 ranks under ``make test-mpi``."""

import pytest


@pytest.fixture
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD
