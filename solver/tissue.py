"""Tissue properties per cell (docs/model.md, Tissue): vascular surface density, ECM fraction, CAF density.

Each region of the mesh sets each property as a number, a quantity with its unit, a NumPy
expression of position, or a seeded log-normal random field; regions the scenario does not list
get 0. The properties are piecewise constant (DG0), evaluated at cell midpoints, so a smooth
field is resolved at the mesh size.

The random field is a function of position only (random Fourier features drawn from the seed),
so it is the same on any number of ranks and any partition of the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dolfinx import fem
from dolfinx import mesh as dmesh

from .mesh.build import Domain, evaluate, together
from .config.scenario import PROPERTIES, ExpressionField, RandomField, TissueSpec
from .config.spec import ScenarioError
from .config.units import parse_quantity

#: Random Fourier features per random field: the spatial variance of the Gaussian field is
#: then 1 to within ~1/sqrt(features) of its target on any domain much larger than the
#: correlation length.
FEATURES = 512


@dataclass(frozen=True)
class TissueFields:
    """Tissue properties as DG0 functions on the domain.

    vascular_density: S_V, vessel wall area per tissue volume [1/µm];
    ecm_fraction: ECM fibre volume fraction φ [-], in [0, 1);
    caf_density: activated CAF density ρ_CAF [-].
    """

    vascular_density: fem.Function
    ecm_fraction: fem.Function
    caf_density: fem.Function


def hindrance(ecm_fraction, radius: float, fibre_radius: float):
    """Ogston factor D/D0 = exp(−√φ (1 + r/r_f)) for a solute of ``radius`` among fibres of
    ``fibre_radius`` (same length unit) at ECM fibre fraction φ [-]."""
    return np.exp(-np.sqrt(ecm_fraction) * (1.0 + radius / fibre_radius))


def gaussian_field(points: np.ndarray, correlation_length: float, seed: int) -> np.ndarray:
    """A standard Gaussian random field at ``points`` (n, 3) [µm]: mean 0, variance 1,
    covariance exp(−d²/(2 ℓ²)) for ℓ = ``correlation_length`` [µm].

    Random Fourier features: Y(x) = √(2/M) Σ cos(ω_m·x + b_m), ω_m ~ N(0, I/ℓ²), b_m ~ U(0, 2π),
    drawn from ``numpy.random.default_rng(seed)``; three components are always drawn so that a
    seed gives the same field in a 2-D slice (z = 0) as in the plane z = 0 of a 3-D block.
    """
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((FEATURES, 3)) / correlation_length
    phase = rng.uniform(0.0, 2.0 * np.pi, FEATURES)
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    total = np.zeros(pts.shape[0])
    # feature by feature, element-wise: a point's value never depends on which other points
    # share its array (a matrix product could round differently with the block shape)
    for w, b in zip(omega, phase):
        total += np.cos(w[0] * x + w[1] * y + w[2] * z + b)
    return np.sqrt(2.0 / FEATURES) * total


def lognormal_field(points: np.ndarray, mean: float, cv: float, correlation_length: float,
                    seed: int) -> np.ndarray:
    """A log-normal random field at ``points`` (n, 3) [µm] with the given mean (any unit),
    coefficient of variation and correlation length [µm] of its logarithm."""
    sigma2 = np.log1p(cv * cv)
    return mean * np.exp(np.sqrt(sigma2) * gaussian_field(points, correlation_length, seed) - sigma2 / 2)


def build(spec: TissueSpec, domain: Domain) -> TissueFields:
    """The tissue fields of ``spec`` on ``domain``: DG0, in base units (see :class:`TissueFields`)."""
    for name in spec.regions:
        domain.region(name, f"tissue.regions.{name}")
    msh, tdim = domain.mesh, domain.dim
    comm = msh.comm
    cmap = msh.topology.index_map(tdim)
    n_all = cmap.size_local + cmap.num_ghosts
    cells = np.arange(n_all, dtype=np.int32)
    tags = np.full(n_all, -1, dtype=np.int64)
    tags[domain.cell_tags.indices] = domain.cell_tags.values
    midpoints = dmesh.compute_midpoints(msh, tdim, cells)

    W = fem.functionspace(msh, ("DG", 0))
    dofs = W.dofmap.list[cells, 0]
    out = {}
    for prop, (base, default, low, high) in PROPERTIES.items():
        values = np.zeros(n_all)
        for name, region in spec.regions.items():
            key = f"tissue.regions.{name}.{prop}"
            inside = tags == domain.regions[name]
            value = getattr(region, prop)
            values[inside] = together(comm, lambda: _evaluate(value, midpoints[inside], base, default, key))
            _check_range(comm, values[inside], low, high, key, value)
        f = fem.Function(W, name=prop)
        f.x.array[dofs] = values
        out[prop] = f
    return TissueFields(**out)


def _evaluate(value, points: np.ndarray, base: str, default: str, key: str) -> np.ndarray | float:
    if isinstance(value, ExpressionField):
        try:
            factor = parse_quantity(f"1 {value.unit}", base, default)
        except ValueError:
            raise ScenarioError(f"{key}.unit: {value.unit!r} is not a unit of this property "
                                f"(expected e.g. '{default}')") from None
        return factor * evaluate(value.expression, points, f"{key}.expression").astype(float)
    if isinstance(value, RandomField):
        mean = _quantity(value.mean, base, default, f"{key}.mean")
        return lognormal_field(points, mean, value.cv, value.correlation_length, value.seed)
    return _quantity(value, base, default, key)


def _quantity(value, base: str, default: str, key: str) -> float:
    try:
        return parse_quantity(value, base, default)
    except ValueError as exc:
        raise ScenarioError(f"{key}: {exc}") from None


def _check_range(comm, values: np.ndarray, low: float, high: float | None, key: str, value) -> None:
    from mpi4py import MPI

    if comm.allreduce(int(not np.all(np.isfinite(values))), op=MPI.MAX):
        raise ScenarioError(f"{key}: gives values that are not finite numbers (NaN or inf)")
    lo = comm.allreduce(float(values.min()) if values.size else np.inf, op=MPI.MIN)
    hi = comm.allreduce(float(values.max()) if values.size else -np.inf, op=MPI.MAX)
    valid = f"lie in [{low:g}, {high:g})" if high is not None else f"be >= {low:g}"
    if lo < low or (high is not None and hi >= high):
        hint = " (lower the mean or cv of the random field)" if isinstance(value, RandomField) else ""
        shown = f"{lo:.4g}" if lo == hi else f"{lo:.4g} to {hi:.4g}"
        raise ScenarioError(f"{key}: must {valid}; got {shown}{hint}")
