"""Calibration benchmark: synthetic recovery, the coverage of the fit's 95 % intervals, and the
finite-difference step against the noise of the forward runs.

    scripts/env-exec python3 bench/calibration.py                 # 20 noisy data sets
    scripts/env-exec python3 bench/calibration.py --seeds 50
    scripts/env-exec mpirun -n 2 python3 bench/calibration.py     # runs on 2 groups of 1 rank

The patient scenario (configs/patient_fit/patient.yaml) shortened to 8 weeks: two weeks of
untreated growth, then continuous chemotherapy. Data are made by the solver from the truth
(sensitive growth 0.1 1/day, chemo E_max 0.02 1/hour) at 9 weekly times; the fit starts from the
scenario's values (2x the truth) and fits both (E_max on a log scale).

1. Recovery: noise-free data; the relative error of each fitted value.
2. Coverage: log-normal noise of cv 10 % (seeds 0, 1, ...); the fraction of data sets whose 95 %
   interval holds the truth, per parameter and for both, with its binomial standard error, and
   the wall time.
3. The step: the forward-difference derivative of the log-burden at day 56 with respect to the
   scaled growth coordinate for steps 1e-1..1e-7, with fixed steps and with time.tolerance
   1e-3: where the difference stops converging is the noise level the step must stay above.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "pythonpath"))

import tme  # noqa: E402
from tme import log  # noqa: E402
from tme.studies import fit as F  # noqa: E402
from tme.studies.measurements import read_measurements, parse_noise  # noqa: E402

PATIENT = ROOT / "configs" / "patient_fit" / "patient.yaml"
SHORT = ["time.end=56 day"]
DAYS = [0, 7, 14, 21, 28, 35, 42, 49, 56]
TRUTH = {"clones.clones.sensitive.growth": 0.1, "drugs.chemo.emax": 0.02}   # 1/day, 1/hour
PARAMS = {"clones.clones.sensitive.growth": "0.02 1/day..0.5 1/day",
          "drugs.chemo.emax": "0.005 1/hour..0.1 1/hour"}
LOG = ["drugs.chemo.emax"]


def truth():
    return tme.load(PATIENT, SHORT).with_changes({"clones.clones.sensitive.growth": "0.1 1/day",
                                                 "drugs.chemo.emax": "0.02 1/hour"})


def fit(text, comm):
    """tme.fit of the patient scenario to the measurements ``text`` (as a DataFrame)."""
    import io

    import pandas as pd

    frame = pd.read_csv(io.StringIO(text), comment="#", skipinitialspace=True)
    return tme.fit(PATIENT, frame, PARAMS, log=LOG, overrides=SHORT, noise="lognormal:cv=0.1",
                   comm=comm)


def main() -> int:
    from mpi4py import MPI

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--skip-step", action="store_true", help="leave out the step study")
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    log.setup(comm.rank, comm.size, level=30)

    def say(line):
        if comm.rank == 0:
            print(line, flush=True)

    say(f"calibration benchmark: {PATIENT.name} for 8 weeks, {len(DAYS)} measurements, "
        f"{comm.size} rank(s) (one run per rank)")
    t0 = time.perf_counter()
    res = fit(F.synthetic(truth(), DAYS, comm=comm), comm)
    wall = time.perf_counter() - t0
    say("1. recovery from noise-free data (start 2x off):")
    for key, value in TRUTH.items():
        got = res.parameters.loc[key, "value"]
        say(f"   {key:32s} {got:.8g} (truth {value:g}): relative error {abs(got / value - 1):.2e}")
    say(f"   {res.report['runs']} runs, {len(res.report['history'])} evaluations, {wall:.1f} s")

    inside = {k: 0 for k in TRUTH}
    both, walls, runs = 0, [], []
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        t1 = time.perf_counter()
        res = fit(F.synthetic(truth(), DAYS, cv=0.1, seed=seed, comm=comm), comm)
        walls.append(time.perf_counter() - t1)
        runs.append(res.report["runs"])
        hit = {}
        for key, value in TRUTH.items():
            row = res.parameters.loc[key]
            hit[key] = bool(row.low_95 <= value <= row.high_95)
            inside[key] += hit[key]
        both += all(hit.values())
        say(f"   seed {seed:3d}: " + ", ".join(f"{k.split('.')[-2]}.{k.split('.')[-1]} "
                                               f"{res.parameters.loc[k, 'value']:.4g} "
                                               f"[{res.parameters.loc[k, 'low_95']:.4g}, "
                                               f"{res.parameters.loc[k, 'high_95']:.4g}]"
                                               f"{'' if hit[k] else ' (misses)'}" for k in TRUTH)
            + f"; {runs[-1]} runs, {walls[-1]:.1f} s")
    total = time.perf_counter() - t0
    n = args.seeds
    say(f"2. coverage of the 95 % intervals over {n} data sets with 10 % noise:")
    for key in TRUTH:
        p = inside[key] / n
        say(f"   {key:32s} {inside[key]}/{n} = {p:.2f} (binomial se {math.sqrt(0.95 * 0.05 / n):.2f})")
    say(f"   both at once                     {both}/{n} = {both / n:.2f}")
    say(f"   wall time {total:.0f} s ({np.mean(walls):.1f} s and {np.mean(runs):.0f} runs per fit)")

    if not args.skip_step:
        say("3. forward difference of ln B(day 56) in the scaled growth coordinate z:")
        for label, changes in (("fixed steps", {}), ("time.tolerance 1e-3", {"time.tolerance": 1e-3})):
            base = tme.load(PATIENT, SHORT).with_changes(changes)
            meas = read_measurements("m", dict([parse_noise("lognormal:cv=0.1")]),
                                     text="time [day],burden [mm^3]\n56,1\n")
            params = F.parse_parameters([f"{k}={v}" for k, v in PARAMS.items()], base, LOG)
            cal = F.Calibration(base, meas, params, F.batch_evaluator(comm, meas.times), comm=comm)
            z0 = np.array([p.z(v / (24.0 if "growth" in p.key else 1.0)) for p, v in zip(params, TRUTH.values())])
            steps = [10.0 ** -k for k in range(1, 8)]
            points = [z0] + [z0 + np.array([h, 0.0]) for h in steps]
            results = cal._run(points)
            r0 = results[0][1][0]
            ds = [(rj[1][0] - r0) / h * 0.1 for rj, h in zip(results[1:], steps)]   # σ_log = 0.1 undone
            say(f"   {label:20s} (noise level {F.noise_level(base):.0e}, default step "
                f"{F.default_step(F.noise_level(base)):.1e}):")
            for h, d in zip(steps, ds):
                say(f"      h = {h:.0e}: d ln B / dz = {d:.8f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
