"""Shared test set-up.

The tests are sorted by what they need: ``tests/pure`` (the scenario, pharmacology, PK, the
protocol, clone dynamics, the step clock: no DOLFINx), ``tests/fe`` (meshes, tissue, transport,
vessel networks on DOLFINx) and ``tests/scenario`` (whole runs, the CLI, restart, the bad-input
corpus). Tests under ``fe`` and ``scenario`` carry the marker ``dolfinx``; where DOLFINx cannot
be imported they are not collected, and ``--without-dolfinx`` runs the suite as if it were
missing (an import of DOLFINx by a pure test then fails). Tests marked ``mpi`` also run on 2
ranks under ``make test-mpi``.
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# tests/runs.py, tests/minimal.py and the bad-input corpus (tests/bad_inputs/) serve the tests of
# every folder;
# the benchmarks' example population serves the reaction tests (bench/reactions.py)
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent / "bench"))

from minimal import MINIMAL  # noqa: E402

#: what the finite-element layers import
FE = ("dolfinx", "ufl", "basix", "ffcx", "petsc4py")
NEED_DOLFINX = ("fe", "scenario")


class _NoFiniteElements(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FE:
            raise ImportError(f"{name} is blocked (--without-dolfinx): a pure test must not need it")
        return None


def pytest_addoption(parser):
    parser.addoption("--without-dolfinx", action="store_true",
                     help="run as if DOLFINx were not installed: only tests/pure is collected, "
                          "and importing DOLFINx fails")


def _without(config) -> bool:
    return config.getoption("--without-dolfinx") or importlib.util.find_spec("dolfinx") is None


def pytest_configure(config):
    if config.getoption("--without-dolfinx"):
        sys.meta_path.insert(0, _NoFiniteElements())


def pytest_ignore_collect(collection_path, config):
    if _without(config):
        rel = Path(collection_path).resolve().relative_to(TESTS) if TESTS in Path(collection_path).resolve().parents else None
        if rel is not None and rel.parts and rel.parts[0] in NEED_DOLFINX:
            return True
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        rel = Path(item.fspath).resolve().relative_to(TESTS)
        if rel.parts[0] in NEED_DOLFINX:
            item.add_marker(pytest.mark.dolfinx)


@pytest.fixture
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.fixture
def minimal(tmp_path):
    """The smallest scenario tme accepts (tests/minimal.py), as the file ``tmp_path/s.yaml``."""
    p = tmp_path / "s.yaml"
    p.write_text(MINIMAL)
    return p
