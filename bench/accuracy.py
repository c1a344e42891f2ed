"""Time to accuracy of the coupled model: fixed-step backward Euler against error-controlled
TR-BDF2 (``time.tolerance``), both against a converged reference.

The scenario is the default one's population and treatment (five clones, doxorubicin and an
EGFR inhibitor with PK, the CAF survival factor, oxygen) on a 3-D block whose vessels are a
vascular density field, over a stretch of a treatment run: the first bolus (with the start of
the inhibitor's infusion) and the quiet time after it (``--days``, default 2, outputs every
``--every`` hours). The reference is TR-BDF2 at a tight ``time.tolerance`` (``--ref-tol``) with
tight solves, checked against the tightest tolerance of the sweep (Richardson: the global error
falls as tol^(2/3), so the reference's own error is their difference over k^(2/3) − 1 for a
tolerance k times looser). Measured for each run: the burden curve (max relative error over the
output times), the final resistant-fraction map and the AUC maps (relative L2, the larger over
the two drugs), wall time (set-up included; fields kept in memory, nothing written) and steps.
The same runs give the figures of the first ``--early`` hours after the bolus (the case least
favourable to an adaptive scheme): errors at the output times up to it, wall time until it.

Backward Euler's step for an accuracy (1 %, 0.1 %) it does not reach in the sweep is
extrapolated from its measured order (the last two step sizes), and then run, so that its cost
is measured (``--no-measure-be``: the cost extrapolated too, from its cost per step and set-up
over the sweep; the printout says how far, the ratio of the finest step run to the step
needed). The targets
(printed, not asserted): 1 % in all three with at most 1/5 of the wall time backward Euler
needs for 1 %, 0.1 % with at most 1/10, observed order >= 1.8, achieved error within 3x of the
tolerance.

    scripts/env-exec nice -n 5 python3 bench/accuracy.py [--cells 76 50 26] [--days 2] [--every 3]

Start-up (at the end of the sweep, or alone with ``--startup``): a tiny ``tme run`` against
``python3 -c 'import dolfinx'`` through scripts/env-exec, 1 rank, interleaved; both are run
once first, which warms every cache (pint's registry, the form JIT, the reaction kernel) on a
fresh machine too (target: at most 1.5x). The load average is printed at the start and end.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "pythonpath"))

# The sweep needs the environment (numpy, DOLFINx, ...); the start-up comparison (``--startup``)
# needs the standard library only, so that it can run outside it, as a user calls env-exec.
try:
    import numpy as np
    import yaml
    from mpi4py import MPI

    from tme.config import scenario as sc
    from tme.problem import Problem
except ImportError:
    np = None


def block_scenario(cells, days: float, every: float) -> dict:
    """The default scenario's population and treatment on a 3-D block with continuum vessels,
    ``days`` from the first bolus, outputs every ``every`` hours."""
    cfg = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    cfg["name"] = "accuracy_block"
    cfg["mesh"] = {"kind": "box", "size": ["600 um", "400 um", "200 um"], "cells": list(cells),
                   "regions": [{"name": "tumour", "where": "x**2/200**2 + y**2/150**2 + z**2/90**2 < 1"},
                               {"name": "dense_ecm", "where": "x**2/240**2 + y**2/180**2 + z**2/100**2 < 1"},
                               {"name": "stroma", "where": "x == x"}]}
    vd = {"tumour": "0.002 1/um", "dense_ecm": "0.004 1/um", "stroma": "0.01 1/um"}
    for region, value in vd.items():
        cfg["tissue"]["regions"][region]["vascular_density"] = value
    cfg["time"] = {"end": f"{days} day", "dt": "12 hour", "dt_min": "1 s"}
    cfg["output"] = {"every": f"{every:g} hour", "plots": False, "snapshots": {"times": []}}
    cfg["treatment"]["lines"][0]["regimen"][0]["cycles"] = max(1, int(math.ceil(days / 7)))
    return cfg


class _Marks:
    """An output that notes the wall clock at each output time (after the fields are kept)."""

    milestones: tuple[float, ...] = ()

    def __init__(self, times):
        self.times, self.at = set(times), {}

    def due(self, state) -> bool:
        return state.t in self.times

    def write(self, state, t: float) -> None:
        self.at[t] = (time.perf_counter(), time.process_time())

    def close(self, state) -> None:
        pass


def run_case(cfg: dict, comm, label: str) -> dict:
    """One run, fields kept in memory at the output times: the burden curve, the resistant
    fraction and AUC maps at every output time, wall time to each output time (from the start
    of the set-up) and the step counts."""
    scen = sc.validate(cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    p = Problem(scen, comm, None).initialise()
    marks = _Marks(p.field_times)
    p.outputs.append(marks)
    summary = p.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = p.model
    n = m.mass.size
    times = [t for t in p.fields.times if t > 0]
    frames = dict(zip(p.fields.times, p.fields.frames))
    rows = {r["t"]: r for r in p.series.rows}
    steps_to = np.array([r["t"] for r in p.series.rows[1:]])
    out = {"label": label, "wall": wall, "steps": summary["steps"],
            "rejected": summary.get("rejected_steps", 0), "t": np.array(times),
            "burden": np.array([rows[t]["burden"] for t in times]),
            "resistant": {t: frames[t]["resistant_fraction"][:n].copy() for t in times},
            "auc": {t: {s.name: frames[t][f"auc_{s.name}"][:n].copy() for s in m.drugs} for t in times},
            "wall_to": {t: marks.at[t][0] - t0 for t in times},
            "cpu": cpu, "cpu_to": {t: marks.at[t][1] - c0 for t in times},
            "steps_to": {t: int(np.sum(steps_to <= t + 1e-9)) for t in times},
            "rejected_to": {t: sum(int(r.get("rejected") or 0) for r in p.series.rows[1:] if r["t"] <= t + 1e-9)
                            for t in times},
            "mass": m.mass.copy()}
    p.fields.frames.clear()   # the next run's memory: the frames of every field at every output
    del p, m, frames
    gc.collect()
    return out


def rel_l2(a, b, mass, comm) -> float:
    num = comm.allreduce(float(mass @ (a - b) ** 2), op=MPI.SUM)
    den = comm.allreduce(float(mass @ b ** 2), op=MPI.SUM)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def errors(run: dict, ref: dict, comm, until: float) -> tuple[float, float, float]:
    """(burden curve max relative over the output times <= until, resistant-fraction map rel L2
    at the last of them, AUC maps rel L2 there, the larger over the drugs)."""
    sel = ref["t"] <= until + 1e-9
    t = float(ref["t"][sel][-1])
    burden = float(np.max(np.abs(run["burden"][sel] - ref["burden"][sel]) / np.abs(ref["burden"][sel])))
    resistant = rel_l2(run["resistant"][t], ref["resistant"][t], ref["mass"], comm)
    auc = max(rel_l2(run["auc"][t][k], ref["auc"][t][k], ref["mass"], comm) for k in ref["auc"][t])
    return burden, resistant, auc


def variant(cfg, **time_and_numerics) -> dict:
    c = copy.deepcopy(cfg)
    for key, value in time_and_numerics.items():
        section, name = key.split("__")
        c.setdefault(section, {})[name] = value
    return c


def be_cost(be: list, target: float, until: float, clock: str = "wall") -> tuple[float, float, float] | None:
    """Backward Euler's wall time [s] for ``target`` over [0, until]: measured when a run of the
    sweep reaches it, else extrapolated from the measured order of the two finest steps and the
    cost model wall = set-up + steps × per-step (least squares over the sweep). Returns (wall,
    the step needed [hour], how far the step is extrapolated: finest run / needed, 1 if
    measured), or None without two runs."""
    ok = [(run[f"{clock}_to"][until], run["dt"]) for run, e in be if e <= target]
    if ok:
        w, dt = min(ok)
        return w, dt, 1.0
    if len(be) < 2:
        return None
    (r1, e1), (r2, e2) = sorted(be, key=lambda x: -x[0]["dt"])[-2:]
    order = math.log(e1 / e2) / math.log(r1["dt"] / r2["dt"])
    dt = r2["dt"] * (target / e2) ** (1.0 / order)
    n = np.array([r["steps_to"][until] for r, _ in be], float)
    w = np.array([r[f"{clock}_to"][until] for r, _ in be])
    per, setup = np.polyfit(n, w, 1)
    return setup + per * math.ceil(until / dt - 1e-9), dt, r2["dt"] / dt


def table(rows, ref, comm, until: float, say) -> None:
    """The sweep's table and the targets over [0, until] hours."""
    errs = [(run, errors(run, ref, comm, until)) for run in rows]
    say(f"\n| method | steps | rejected | wall [s] | CPU [s] | burden max rel | resistant map rel L2 | AUC maps rel L2 |")
    say("|---|---|---|---|---|---|---|---|")
    for run, (b, r, a) in errs:
        rej = run["rejected_to"][until] if run["label"].startswith("TR") else "–"
        steps = run["steps_to"][until]
        say(f"| {run['label']} | {steps} | {rej} | {run['wall_to'][until]:.1f} | {run['cpu_to'][until]:.1f} | "
            f"{b:.2e} | {r:.2e} | {a:.2e} |")
    be = [(run, max(e)) for run, e in errs if run["label"].startswith("BE")]
    ad = [(run, max(e), run["tol"]) for run, e in errs if run["label"].startswith("TR")]
    be_sorted = sorted(be, key=lambda x: -x[0]["dt"])
    orders = [math.log(e0 / e1) / math.log(r0["dt"] / r1["dt"])
              for (r0, e0), (r1, e1) in zip(be_sorted, be_sorted[1:]) if e1 > 0]
    say(f"\nbackward Euler observed order (worst of the three errors): {', '.join(f'{o:.2f}' for o in orders)}")
    n = np.array([r["steps_to"][until] for r, _ in be], float)
    for clock in ("wall", "cpu"):
        w = np.array([r[f"{clock}_to"][until] for r, _ in be])
        if len(n) >= 2:
            per, setup = np.polyfit(n, w, 1)
            say(f"backward Euler cost ({clock}): {setup:.1f} s set-up + {per:.2f} s per step (least squares over the sweep)")
    ad_steps = [(r["steps_to"][until], e) for r, e, _ in ad]
    ad_orders = [math.log(e0 / e1) / math.log(n1 / n0)
                 for (n0, e0), (n1, e1) in zip(ad_steps, ad_steps[1:]) if e1 > 0 and n1 > n0]
    fit = ""
    if len(ad_steps) >= 3:
        slope = np.polyfit(np.log([n for n, _ in ad_steps]), np.log([e for _, e in ad_steps]), 1)[0]
        fit = f"; over the whole sweep (least squares) {-slope:.2f}"
    say(f"adaptive TR-BDF2 observed order (error against steps, successive tolerances; target >= 1.8): "
        f"{', '.join(f'{o:.2f}' for o in ad_orders)}{fit}")
    for clock in ("wall", "cpu"):
        for target, share in ((1e-2, 5), (1e-3, 10)):
            cost = be_cost(be, target, until, clock)
            ad_ok = [r[f"{clock}_to"][until] for r, e, _ in ad if e <= target]
            if cost is None or not ad_ok:
                say(f"{target:g} ({clock}): reached by the adaptive runs: {bool(ad_ok)}; backward Euler: {cost}")
                continue
            w, dt, far = cost
            how = "measured" if far == 1.0 else f"extrapolated {far:.1f}x below the finest step run"
            say(f"{target:g} ({clock}): backward Euler needs dt = {dt:.3g} h, {w:.0f} s ({how}); fastest "
                f"adaptive {min(ad_ok):.1f} s; ratio {min(ad_ok) / w:.3f} (target <= 1/{share} = {1 / share:.2f})")
    for r, e, tol in ad:
        say(f"tol {tol:g}: achieved {e:.2e} = {e / tol:.2f} x tol (target within 3x)")


def _inside_environment() -> bool:
    """Does this python import DOLFINx (so scripts/env-exec would only run the command, after
    its own check that imports DOLFINx once more)?"""
    return subprocess.run([sys.executable, "-c", "import dolfinx"], capture_output=True).returncode == 0


def startup(repeats: int) -> None:
    """A tiny ``tme run`` against ``python3 -c 'import dolfinx'``, interleaved, each run once
    first (every cache warmed). Outside the environment both go through scripts/env-exec, as a
    user calls them. Inside it (the sweep runs there) env-exec would add its check, one more
    import of DOLFINx, to both and pull the ratio toward 1: both are then run directly."""
    inside = _inside_environment()
    env = [] if inside else [str(ROOT / "scripts" / "env-exec")]
    tiny = {"name": "tiny", "mesh": {"kind": "rectangle", "size": ["100 um", "100 um"], "cells": [4, 4]},
            "drugs": {"d": {"class": "dna_damaging", "diffusivity": "10 um^2/s", "initial": "1 uM"}},
            "time": {"end": "2 hour", "dt": "1 hour"},
            "output": {"every": "2 hour", "plots": False, "snapshots": {"times": []}}}
    tme = [sys.executable, "-m", "tme"] if inside else ["tme"]
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp) / "tiny.yaml"
        path.write_text(json.dumps(tiny))   # JSON is YAML
        cmds = {"import dolfinx": env + ["python3", "-c", "import dolfinx"],
                "tme run (tiny)": env + tme + ["run", str(path), "--out", str(Path(tmp) / "out"),
                                               "--overwrite", "--quiet"]}
        run_env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts" / "pythonpath"))
        for cmd in cmds.values():   # warm every cache once
            subprocess.run(cmd, check=True, capture_output=True, env=run_env)
        times = {k: [] for k in cmds}
        for _ in range(repeats):     # interleaved: the machine's load hits both alike
            for k, cmd in cmds.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, env=run_env)
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    how = "directly, inside the environment" if inside else "through scripts/env-exec"
    bytecode = "off (PYTHONDONTWRITEBYTECODE: every module compiled at each start)" \
        if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
    print(f"start-up, {how}; bytecode cache {bytecode}; load average {os.getloadavg()[0]:.2f}")
    for k, v in times.items():
        print(f"{k:<18} median {med[k]:.2f} s  (min {min(v):.2f}, max {max(v):.2f}, {repeats} runs)")
    print(f"ratio: {med['tme run (tiny)'] / med['import dolfinx']:.2f} (target <= 1.5)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs=3, default=[76, 50, 26],
                    help="cells of the block (default: 106k dofs per field)")
    ap.add_argument("--days", type=float, default=2.0, help="simulated days from the first bolus")
    ap.add_argument("--every", type=float, default=3.0, help="output interval [hour]")
    ap.add_argument("--early", type=float, default=6.0,
                    help="the window right after the bolus also reported [hour]; an output time")
    ap.add_argument("--ref-tol", type=float, default=3e-5, help="tolerance of the reference")
    ap.add_argument("--be", type=float, nargs="*", default=[1.0, 0.5, 0.25], help="backward-Euler steps [hour]")
    ap.add_argument("--tol", type=float, nargs="*", default=[2e-2, 1e-2, 3e-3, 1e-3, 6e-4, 3e-4],
                    help="tolerances; the tightest also checks the reference (Richardson)")
    ap.add_argument("--startup", action="store_true", help="only the start-up comparison")
    ap.add_argument("--reference", type=Path, default=None,
                    help="a file for the reference: read when it holds this block, days, outputs and "
                         "tolerance (so a second sweep need not recompute it), else written")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-measure-be", dest="measure_be", action="store_false",
                    help="extrapolate backward Euler's cost for 1 %% and 0.1 %% instead of running "
                         "it at the steps extrapolated for them (about 2300 steps for 0.1 %%)")
    ap.add_argument("--no-startup", action="store_true",
                    help="skip the start-up comparison after the sweep (run it alone with --startup)")
    args = ap.parse_args()
    if args.startup:
        startup(args.repeats)
        return
    if np is None:
        raise SystemExit("the sweep runs in the environment: scripts/env-exec python3 bench/accuracy.py")
    comm = MPI.COMM_WORLD
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    begun = time.perf_counter()
    say(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores)")
    cfg = block_scenario(args.cells, args.days, args.every)
    tight = {"numerics__rtol": 1e-9}
    say(f"block {args.cells} cells, {args.days:g} days from the first bolus, outputs every "
        f"{args.every:g} h, {comm.size} rank(s)", flush=True)
    key = {"cells": list(args.cells), "days": args.days, "every": args.every, "ref_tol": args.ref_tol,
           "ranks": comm.size}
    path = None if args.reference is None else (
        args.reference if comm.size == 1 else args.reference.with_suffix(f".rank{comm.rank}"))
    ref = None
    if path is not None and path.exists():
        saved = pickle.loads(path.read_bytes())
        if saved.get("key") == key:
            ref = saved["ref"]
            say(f"reference read from {args.reference}")
    if ref is None:
        ref = run_case(variant(cfg, time__tolerance=args.ref_tol, **tight), comm, "reference")
        if path is not None:
            path.write_bytes(pickle.dumps({"key": key, "ref": ref}))
    if not any(abs(t - args.early) < 1e-9 for t in ref["t"]):
        raise SystemExit(f"--early {args.early:g} h is not an output time (every {args.every:g} h)")
    dofs = comm.allreduce(ref["mass"].size, op=MPI.SUM)
    say(f"dofs per field: {dofs}; reference: TR-BDF2 with time.tolerance = {args.ref_tol:g}, "
        f"rtol 1e-9 ({ref['steps']} steps, {ref['rejected']} redone, {ref['wall']:.0f} s)", flush=True)
    rows = []
    for dt in args.be:
        run = run_case(variant(cfg, time__dt=f"{dt} hour", time__dt_initial=f"{dt} hour",
                               numerics__time_scheme="backward_euler"), comm, f"BE dt={dt:g} h")
        run["dt"] = dt
        rows.append(run)
        say(f"  {run['label']}: {run['steps']} steps, {run['wall']:.0f} s", flush=True)
    if args.measure_be:
        # the steps backward Euler needs for 1 % and 0.1 % (extrapolated from the sweep) run
        end = float(ref["t"][-1])
        be = [(run, max(errors(run, ref, comm, end))) for run in rows]
        needed = [(target, cost[1]) for target in (1e-2, 1e-3)
                  if (cost := be_cost(be, target, end)) is not None and cost[2] != 1.0]
        for target, dt in needed:
            dt = float(f"{dt:.3g}")
            run = run_case(variant(cfg, time__dt=f"{dt} hour", time__dt_initial=f"{dt} hour",
                                   numerics__time_scheme="backward_euler"), comm, f"BE dt={dt:g} h")
            run["dt"] = dt
            rows.append(run)
            say(f"  {run['label']} (the step extrapolated for {target:g}): {run['steps']} steps, "
                f"{run['wall']:.0f} s", flush=True)
    for tol in args.tol:
        run = run_case(variant(cfg, time__tolerance=tol), comm, f"TR-BDF2 tol={tol:g}")
        run["tol"] = tol
        rows.append(run)
        say(f"  {run['label']}: {run['steps']} steps, {run['wall']:.0f} s", flush=True)
    end = float(ref["t"][-1])
    # Richardson check of the reference: the global error of error-per-step control falls as
    # tol^(2/3) (docs/model.md), so against the next tolerance (k x looser) the reference's own
    # error is about their difference / (k^(2/3) - 1)
    b, r, a = errors(rows[-1], ref, comm, end)
    k = args.tol[-1] / args.ref_tol
    own = max(b, r, a) / (k ** (2.0 / 3.0) - 1.0)
    say(f"reference check: tolerance {args.tol[-1]:g} differs from it by burden {b:.2e}, resistant "
        f"{r:.2e}, AUC {a:.2e}; the reference's own error is then about {own:.1e}")
    say(f"\n## The whole run: {args.days:g} days")
    table(rows, ref, comm, end, say)
    say(f"\n## The first {args.early:g} h after the bolus (the same runs, up to that output time)")
    table(rows, ref, comm, args.early, say)
    say(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"sweep {time.perf_counter() - begun:.0f} s", flush=True)
    if comm.rank == 0 and not args.no_startup:
        startup(args.repeats)


if __name__ == "__main__":
    main()
