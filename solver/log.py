"""Logging that only rank 0 speaks, unless every rank is asked to (``--log-all-ranks``).

A record logged with ``extra={"any_rank": True}`` is printed by whichever rank logs it: the
rank 0 of a group of ranks that speaks for its group (a failed run of a study).
"""

from __future__ import annotations

import logging
import sys
import time

LOGGER_NAME = "tme"

#: How long a rank other than 0 waits before it reports an error of its own: rank 0 speaks for
#: the job, and if it meets the same error it ends the job first [s].
GRACE = 2.0


class _RankFilter(logging.Filter):
    def __init__(self, rank: int, all_ranks: bool):
        super().__init__()
        self.rank, self.all_ranks = rank, all_ranks

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return self.all_ranks or self.rank == 0 or getattr(record, "any_rank", False)


class _Stderr(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is when a message is logged: a program (pytest,
    a notebook, a caller redirecting output) may replace and close the stream that was
    ``sys.stderr`` when the logger was set up, and a handler holding that stream would fail on
    every later message ("I/O operation on closed file")."""

    def __init__(self):
        logging.Handler.__init__(self)   # StreamHandler's would bind the stream of the moment

    @property
    def stream(self):
        return sys.stderr


def setup(rank: int = 0, size: int = 1, all_ranks: bool = False, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``tme`` logger for this rank; returns it."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    handler = _Stderr()
    prefix = "[%(rank)d] " if (all_ranks and size > 1) else ""
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    handler.addFilter(_RankFilter(rank, all_ranks))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def get() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def fatal(line: str, status: int) -> int:
    """Report an error that may have struck this rank only, then end the whole job.

    The other ranks may be waiting in a collective call, so in parallel the job is aborted
    (every rank of ``MPI_COMM_WORLD``). Rank 0 reports at once; another rank waits a little
    first, so that when rank 0 meets the same error the job is ended by rank 0 and the line is
    printed once. Returns ``status`` (on one rank).
    """
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if world.size > 1 and world.rank != 0:
        time.sleep(GRACE)
    print(line, file=sys.stderr, flush=True)
    if world.size > 1:
        world.Abort(status)
    return status
