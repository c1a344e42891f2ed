"""Error-controlled steps where the error is hardest to judge: a drug appearing from zero, and a
stiff species knocked off its quasi-steady state.

- The embedded TR-BDF2 estimate of a stiff transient (a uniform field whose sink jumps so that
  λ dt runs from 0.1 to 3000) stays within 2x of the step's true error against the closed form;
  filtered once it would overstate a stiff step's error up to 300x (oxygen's steps then follow
  a transient whose error is long gone).
- After an infusion of a new drug starts, the steps grow again at once: no step is accepted
  beyond the tolerance (forced at dt_min) and the first hour takes a bounded number of steps.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dolfinx")
from mpi4py import MPI  # noqa: E402

from tme.config import scenario as sc  # noqa: E402
from tme.problem import run  # noqa: E402
from tme.studies import verify  # noqa: E402


@pytest.mark.mpi
def test_estimate_of_a_stiff_transient_follows_its_true_error(comm):
    p = verify._BOLUS
    a = p["P"] * p["SV"]
    alpha = math.log(2.0) / p["half_life"]
    t0 = 0.3
    ratios = []
    for dt, jump in ((0.2, 5.0), (0.2, 50.0), (0.2, 500.0), (0.2, 5000.0), (0.05, 5.0)):
        s, n_tot = verify.bolus_uniform_solver(comm, "tr_bdf2", estimate=True)
        n_tot[:] *= jump                  # the cells' uptake jumps ...
        c0 = 0.1 * verify.bolus_uniform_exact(t0)   # ... and c starts far from its balance
        s.c.x.array[:] = c0
        beta = a + 0.5 * p["k"] + p["k"] * float(n_tot[0])
        s.step(t0, t0 + dt, n_tot)
        cp0 = p["c0"] * math.exp(-alpha * t0)
        exact = (c0 * math.exp(-beta * dt)
                 + a * cp0 * (math.exp(-alpha * dt) - math.exp(-beta * dt)) / (beta - alpha))
        assert s.clipped == 0.0           # (an undershoot set to 0 would hide the error)
        true = s.c.x.array[: s.m.size] - exact
        est = s.error
        if true.size:
            ratios.append((beta * dt, float(np.max(est / true)), float(np.min(est / true))))
    for z, hi, lo in (r for rs in comm.allgather(ratios) for r in rs):
        assert 0.5 < lo <= hi < 2.0, (z, lo, hi)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


#: A drug whose infusion starts at 12 h into tissue that has never seen it, beside oxygen and
#: two clones.
NEW_DRUG = {
    "name": "new_drug",
    "mesh": {"kind": "rectangle", "size": ["200 um", "200 um"], "cells": [6, 6],
             "regions": [{"name": "tumour", "where": "x == x"}]},
    "tissue": {"regions": {"tumour": {"vascular_density": "0.004 1/um"}}},
    "drugs": {"inhib": {"class": "dna_damaging", "diffusivity": "10 um^2/s", "permeability": "1 um/s",
                        "pk": {"half_life": "12 hour"}, "emax": "0.1 1/hour", "ec50": "0.2 uM"}},
    "oxygen": {"enabled": True, "diffusivity": "1700 um^2/s", "permeability": "30 um/s",
               "consumption": "1 1/min", "hypoxia": "5 uM"},
    "clones": {"clones": {"sensitive": {"growth": "0.6 1/day", "initial": {"tumour": 0.6}},
                          "repairer": {"growth": "0.5 1/day", "repair": 0.9, "initial": {"tumour": 0.02}}}},
    "treatment": {"lines": [{"name": "only", "regimen": [
        {"drug": "inhib", "amount": "4 uM", "infusion": "12 hour", "start": "12 hour"}]}]},
    "time": {"end": "14 hour", "dt": "2 hour", "tolerance": 1e-3},
    "output": {"every": "14 hour", "plots": False, "snapshots": {"times": []}},
}


@pytest.mark.mpi
def test_steps_after_a_new_drug_starts_stay_within_the_tolerance_and_few(comm, tmp_path):
    out = Path(comm.bcast(str(tmp_path), root=0)) / "run"
    run(sc.validate(NEW_DRUG), out, comm=comm, overwrite=True, quiet=True)
    rows = _rows(out / "timeseries.csv")[1:]
    # no step kept beyond the tolerance (a step forced at dt_min would be)
    assert max(float(r["error"]) for r in rows) <= 1.0
    after = [r for r in rows if 12.0 < float(r["t"]) <= 13.0 + 1e-9]
    assert len(after) <= 20, len(after)
    # and the steps before it were not held back by oxygen's stiff transients
    before = [r for r in rows if float(r["t"]) <= 12.0]
    assert len(before) <= 20, len(before)
