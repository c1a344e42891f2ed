"""The compiled clone step (tme.cells.kernel) against the NumPy reference path, and its building.

The NumPy path is the one verified against closed forms and solve_ivp (test_reactions.py runs
those checks on the compiled path as well); here the two are held together, to rounding, over
every mechanism and every combination of the fields present, and the building is checked:
cache reuse, concurrent builds, a missing or failing compiler.
"""

import itertools
import logging
import os

import numpy as np
import pytest

from tme.cells import kernel
from tme.cells import reactions
from reactions import example_specs  # bench/reactions.py
from tme.cells.reactions import TINY, CloneReactions

N_DOFS = 2 * kernel.CHUNK + 37      # three chunks, the last one short


def population(n, **kwargs):
    """Every term of the kill model (bench/reactions.py example_specs(every_mechanism=True))."""
    clones, drugs = example_specs(every_mechanism=True)
    return CloneReactions.from_specs(clones, drugs, n, factor_half=0.01, oxygen_half=5.0, **kwargs)


def states(rng, n, K=4):
    """Densities with the awkward cases: full tissue, empty, tiny, slightly over capacity."""
    N = rng.uniform(0, 0.3, (K, n)) * rng.choice([0.0, 1e-140, 1e-6, 1.0], (K, n))
    N[:, :3] = [[1.0, 0.0, 0.6]] + [[0.0, 0.0, 0.41]] * (K - 1)    # full, empty, N_tot > 1
    return N


def fields(rng, n, J=6):
    c = rng.uniform(0, 2.0, (J, n)) * rng.choice([0.0, 1e-3, 1.0], (J, n))
    c[:, 5:9] = -1e-12                                               # solver round-off below 0
    s, o, e = rng.uniform(0, 0.05, n), rng.uniform(0.0, 50, n), rng.uniform(0, 1, n)
    o[::7] = 0.3                                                     # necrotic dofs
    return c, s, o, e


def close(a, b):
    """Equal to rounding; densities below 1e-100 (no cell in any dof) count as equal."""
    return np.allclose(a, b, rtol=1e-11, atol=1e-100)


@pytest.mark.parametrize("present", list(itertools.product([True, False], repeat=4)),
                         ids=lambda p: "".join("csoe"[i] if on else "-" for i, on in enumerate(p)))
def test_compiled_step_equals_the_numpy_step(present):
    rng = np.random.default_rng(sum(b << i for i, b in enumerate(present)))
    n = N_DOFS
    given = [f if on else None for f, on in zip(fields(rng, n), present)]
    N0 = states(rng, n)
    compiled, numpy = population(n, kernel="compiled"), population(n, kernel="numpy")
    for dt in (1.0, 30.0):                  # one substep; eight
        a, b = N0.copy(), N0.copy()
        ta, tb = np.empty(n), np.empty(n)
        compiled.advance(a, *given, dt, total=ta)
        numpy.advance(b, *given, dt, total=tb)
        assert close(a, b), np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-100))
        assert close(ta, tb) and np.allclose(ta, a.sum(axis=0), rtol=1e-14, atol=0)
        assert a.min() >= 0 and np.all((a == 0) | (a >= TINY)) and a.sum(axis=0).max() <= 1 + 1e-12
        # and the step did something: kill, growth or necrosis changed most dofs
        assert np.mean(a != N0) > 0.5


def test_compiled_step_propagates_nan_to_the_dof_alone():
    rng = np.random.default_rng(2)
    n = N_DOFS
    c, s, o, e = fields(rng, n)
    c[0, 600] = np.nan
    for kind in ("compiled", "numpy"):
        N = states(rng, n)
        population(n, kernel=kind).advance(N, c, s, o, e, 1.0)
        bad = np.flatnonzero(~np.isfinite(N).all(axis=0))
        assert list(bad) == [600], kind      # the NaN stop of a run names this dof


def test_compiled_step_takes_views_and_longer_field_arrays():
    """A run passes its ghost-inclusive arrays; non-contiguous inputs are copied, not misread."""
    rng = np.random.default_rng(4)
    n = 300
    c, s, o, e = fields(rng, n + 10)
    c_view = np.asfortranarray(c[:, :n])              # right shape, not C-contiguous
    N0 = states(rng, n)
    a, b = N0.copy(), N0.copy()
    population(n, kernel="compiled").advance(a, c_view, s, o[::1], e, 2.0)
    population(n, kernel="numpy").advance(b, np.ascontiguousarray(c[:, :n]), s[:n], o[:n], e[:n], 2.0)
    assert close(a, b)
    with pytest.raises(ValueError, match=r"s has shape \(5,\), expected \(300,\)"):
        population(n, kernel="compiled").advance(a, c_view, s[:5], o, e, 1.0)


def test_a_built_kernel_is_reused_and_a_new_population_gets_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("TME_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernel, "_LOADED", {})
    rng = np.random.default_rng(5)
    c, s, o, e = fields(rng, 50)
    population(50, kernel="compiled").advance(states(rng, 50), c, s, o, e, 1.0)
    built = sorted((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(kernel, "_LOADED", {})        # as a new process would
    population(50, kernel="compiled").advance(states(rng, 50), c, s, o, e, 1.0)
    assert sorted((tmp_path / "kernels").iterdir()) == built and built[0].stat().st_mtime_ns == stamp
    population(50, kernel="compiled").advance(states(rng, 50), c, None, o, e, 1.0)   # no factor
    assert len(list((tmp_path / "kernels").iterdir())) == 2     # and no temporary left behind


@pytest.mark.mpi
def test_ranks_building_the_same_kernel_at_once(tmp_path, comm, monkeypatch):
    """Every rank compiles into the same fresh cache at the same moment: one library results,
    and each rank's step equals the NumPy step."""
    folder = comm.bcast(str(tmp_path) if comm.rank == 0 else None)
    monkeypatch.setenv("TME_CACHE_DIR", folder)
    monkeypatch.setattr(kernel, "_LOADED", {})
    rng = np.random.default_rng(6)
    n = 200
    c, s, o, e = fields(rng, n)
    N0 = states(rng, n)
    a, b = N0.copy(), N0.copy()
    comm.barrier()
    population(n, kernel="compiled").advance(a, c, s, o, e, 3.0)
    population(n, kernel="numpy").advance(b, c, s, o, e, 3.0)
    assert close(a, b)
    comm.barrier()
    assert len([p for p in os.listdir(os.path.join(folder, "kernels")) if p.endswith(".so")]) == 1


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("cc, message", [
    ("/bin/false", "/bin/false failed on the clone kernel"),
    ("no-such-cc", "no C compiler 'no-such-cc' on PATH"),
])
def test_without_a_working_compiler(cc, message, tmp_path, monkeypatch):
    monkeypatch.setenv("TME_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", cc)
    rng = np.random.default_rng(8)
    n = 40
    c, s, o, e = fields(rng, n)
    N0 = states(rng, n)
    with pytest.raises(kernel.KernelError, match=message):
        population(n, kernel="compiled").advance(N0.copy(), c, s, o, e, 1.0)
    monkeypatch.setattr(reactions, "_WARNED", set())
    logger = logging.getLogger("tme")
    monkeypatch.setattr(logger, "level", logging.INFO)
    records = _Records()
    logger.addHandler(records)
    try:
        a, b = N0.copy(), N0.copy()
        population(n, kernel="auto").advance(a, c, s, o, e, 1.0)
    finally:
        logger.removeHandler(records)
    population(n, kernel="numpy").advance(b, c, s, o, e, 1.0)
    assert np.array_equal(a, b)                        # auto fell back on the NumPy path
    assert [m for m in records.messages if "clone reactions use the NumPy path" in m and message in m]


@pytest.mark.parametrize("x", [0.1, 1 / 3, 1e-300, 5e-324, 1.7976931348623157e308, -2.5, 0.0, 3.0])
def test_literals_read_back_exactly(x):
    assert float(kernel._lit(x)) == x


@pytest.mark.parametrize("x", [float("inf"), float("nan")])
def test_non_finite_constants_are_refused(x):
    with pytest.raises(ValueError, match="non-finite constant"):
        kernel._lit(x)


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel must be one of auto, compiled, numpy, not 'fast'"):
        population(3, kernel="fast")
