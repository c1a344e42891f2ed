"""Shared test fixtures. Tests marked ``mpi`` also run on 2 ranks under ``make test-mpi``."""

import sys
from pathlib import Path

import pytest

# the benchmarks' example population serves the reaction tests too (bench/reactions.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.fixture
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD
