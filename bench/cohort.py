"""Cohort benchmark: a 200-patient virtual cohort of a 2-D scenario through tme cohort.

    scripts/env-exec python3 bench/cohort.py                   # 1 rank
    scripts/env-exec mpirun -n 2 python3 bench/cohort.py       # 2 ranks: two runs at once

The scenario is configs/default.yaml (a 2-D slice with five vessels, doxorubicin + an EGFR
inhibitor, five clones, CAF factor, oxygen) at mesh.h = 60 µm (533 dofs per field) with fixed
12-hour steps (84 steps over its 42 days); each patient draws its sensitive clone's growth rate
and doxorubicin's E_max from log-normal laws. Prints the patients, the runs, the wall time and
the runs per second (the cohort runs in memory; --out writes it, resumable, as tme cohort does).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "pythonpath"))

from mpi4py import MPI  # noqa: E402

from tme import log  # noqa: E402
from tme.studies import cohort  # noqa: E402

COARSE = ["mesh.h=60 um", "time.tolerance=null", "time.dt=12 hour", "output.plots=false",
          "output.snapshots.times=[]"]
SAMPLES = ["clones.clones.sensitive.growth=lognormal(0.5 1/day, 0.3)",
           "drugs.doxorubicin.emax=lognormal(0.15 1/hour, 0.5)"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=200)
    p.add_argument("--ranks-per-run", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the cohort there (default: in memory)")
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    log.setup(comm.rank, comm.size, level=30)      # the figures below, not the progress lines
    comm.barrier()
    t0 = time.perf_counter()
    res = cohort.study(ROOT / "configs" / "default.yaml", comm, samples=SAMPLES, n=args.patients, seed=1,
                       overrides=COARSE, out=args.out, overwrite=True, ranks_per_run=args.ranks_per_run)
    wall = time.perf_counter() - t0
    runs = len(res.runs)
    if comm.rank == 0:
        s = res.summary.iloc[0]
        print(f"cohort of configs/default.yaml (mesh.h 60 um, dt 12 hour): {args.patients} patients, "
              f"{runs} runs on {comm.size} rank(s) ({comm.size // args.ranks_per_run} at once)")
        print(f"  wall time {wall:.1f} s, {runs / wall:.3f} runs/s, "
              f"{res.runs['wall_time_seconds'].astype(float).mean():.2f} s per run")
        print(f"  response rate {s['response_rate']:.2f}, median TTP {s['median_ttp_days']:.3g} day, "
              f"failed {int(s['failed'])}")


if __name__ == "__main__":
    main()
