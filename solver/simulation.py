"""Running a scenario into a directory: :func:`solver.problem.run` (kept here for callers of
``solver.simulation.run``; the problem, its state and its outputs live in :mod:`solver.problem`)."""

from .problem import run

__all__ = ["run"]
