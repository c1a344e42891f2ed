"""The package logger: only rank 0 speaks, and it speaks to the standard error of the moment."""

import io
import sys

import pytest

from tme import log


@pytest.fixture
def logger():
    """The ``tme`` logger, its handlers and level restored afterwards."""
    lg = log.get()
    saved = lg.handlers[:], lg.level, lg.propagate
    yield lg
    lg.handlers[:], lg.level, lg.propagate = saved[0], saved[1], saved[2]


def test_a_replaced_and_closed_stderr_is_not_written_to(logger, monkeypatch):
    # pytest (and any program that redirects its output) replaces sys.stderr and closes the old
    # stream: a message logged afterwards must reach the new stream, not fail on the old one
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    log.setup()
    log.get().info("one")
    assert first.getvalue() == "one\n"
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    log.get().info("two")
    assert second.getvalue() == "two\n"      # not '--- Logging error --- ... closed file'


def test_only_rank_0_speaks_unless_every_rank_is_asked(logger, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    log.setup(rank=1, size=2).info("hidden")
    assert err.getvalue() == ""
    log.setup(rank=1, size=2, all_ranks=True).info("shown")
    log.setup(rank=0, size=2).warning("zero")
    assert err.getvalue() == "[1] shown\nzero\n"
