"""Transport benchmark: cost per step in MatMult-equivalents, assemblies in the loop, scaling.

    scripts/env-exec python3 bench/transport.py                 # 1 rank
    scripts/env-exec mpirun -n 2 python3 bench/transport.py     # 2 ranks (prints the 2/1 ratio
                                                                # when the 1-rank figures exist)

A 3-D P1 box (default 80^3 cells: 531 441 dofs), three species (a small drug, an antibody in
dense ECM, oxygen-like), each with vessel exchange, decay and uptake by a cell density that
changes every step (so the matrix diagonal is rewritten every step, as in a coupled run), 20
steps, in two regimes: mass-dominated (D dt/h^2 ~ 1, CG + Jacobi) and diffusion-dominated
(D dt/h^2 >= 10, CG + tuned BoomerAMG). "MM" is the time of one MatMult on the same matrix.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "pythonpath"))

from dolfinx import fem, mesh  # noqa: E402
from mpi4py import MPI  # noqa: E402

from tme.transport import COUNTERS, SpeciesModel, SpeciesSolver  # noqa: E402


def matmult_time(A, reps=30) -> float:
    """Seconds of one MatMult with ``A`` (every rank takes part; a warm-up product first)."""
    x, y = A.createVecs()
    x.set(1.0)
    A.mult(x, y)
    MPI.COMM_WORLD.barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        A.mult(x, y)
    MPI.COMM_WORLD.barrier()
    return (time.perf_counter() - t0) / reps


def run(n: int, steps: int, ratio: float, solver: str, comm) -> dict:
    L = 800.0
    h = L / n
    t_mesh = time.perf_counter()
    msh = mesh.create_box(comm, [[0, 0, 0], [L, L, L]], [n, n, n], cell_type=mesh.CellType.tetrahedron)
    t_mesh = time.perf_counter() - t_mesh
    V = fem.functionspace(msh, ("Lagrange", 1))
    W = fem.functionspace(msh, ("DG", 0))
    sv = fem.Function(W)
    sv.interpolate(lambda x: 0.002 + 0.01 * (x[0] < L / 3))
    ft = mesh.meshtags(msh, 2, np.empty(0, np.int32), np.empty(0, np.int32))
    D = 57600.0  # µm²/h (16 µm²/s)
    dt = ratio * h * h / D
    species = [("small_drug", D, 0.1, 1.0, 3.6e3), ("antibody", 0.2 * D, 0.01, 0.05, 36.0),
               ("oxygen_like", 5 * D, 0.0, 30.0, 1.0e4)]
    solvers = []
    for name, Dj, lam, k, P in species:
        model = SpeciesModel(name, fem.Constant(msh, Dj), decay=lam, uptake=k, permeability=P,
                             vascular_density=sv, plasma=lambda t0, t1: 5.0 * math.exp(-0.2 * t0))
        solvers.append(SpeciesSolver(model, V, ft, solver=solver, rtol=1e-6, cell_size=h))
    n_tot = fem.Function(V)
    n_tot.interpolate(lambda x: 0.5 + 0.3 * np.sin(x[1] / 100.0))
    mm = matmult_time(solvers[0].A)
    # the first step sets up the preconditioners; the loop is measured after it
    for s in solvers:
        s.step(0.0, dt, n_tot.x.array)
    before = COUNTERS.snapshot()
    its = []
    comm.barrier()
    t0 = time.perf_counter()
    t = dt
    for i in range(steps):
        n_tot.x.array[:] *= 1.0 + 1e-3  # cells grow: the diagonal changes every step
        for s in solvers:
            its.append(s.step(t, t + dt, n_tot.x.array))
        t += dt
    comm.barrier()
    per_step = (time.perf_counter() - t0) / steps
    after = COUNTERS.snapshot()
    ndofs = V.dofmap.index_map.size_global
    rss = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, op=MPI.SUM)  # MB
    return {
        "ranks": comm.size, "dofs": ndofs, "species": len(solvers), "steps": steps,
        "D_dt_over_h2": ratio, "preconditioner": solvers[0].pc_kind,
        "mesh_seconds": t_mesh, "matmult_seconds": mm, "step_seconds": per_step,
        "step_over_species_matmult": per_step / (len(solvers) * mm),
        "mean_iterations": float(np.mean(its)),
        "matrix_assemblies_in_loop": after["matrix_assemblies"] - before["matrix_assemblies"],
        "form_compilations_in_loop": after["form_compilations"] - before["form_compilations"],
        "vector_assemblies_in_loop": after["vector_assemblies"] - before["vector_assemblies"],
        "peak_memory_MB_per_million_dofs": rss / (ndofs / 1e6),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=80, help="cells per edge of the box (80 -> 531k dofs)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    results = []
    for ratio, solver in ((1.0, "jacobi"), (10.0, "amg"), (30.0, "amg")):
        r = run(args.n, args.steps, ratio, solver, comm)
        results.append(r)
        if comm.rank == 0:
            target = 40 if solver == "jacobi" else 150
            print(f"{r['dofs']} dofs, {r['ranks']} rank(s), D dt/h^2 = {ratio:g}, {r['preconditioner']}: "
                  f"step {r['step_seconds'] * 1e3:.1f} ms = {r['step_over_species_matmult']:.1f} MM per species "
                  f"(target <= {target}), {r['mean_iterations']:.1f} CG its, MatMult {r['matmult_seconds'] * 1e3:.2f} ms; "
                  f"in loop: {r['matrix_assemblies_in_loop']} matrix assemblies, "
                  f"{r['form_compilations_in_loop']} form compilations; "
                  f"peak memory {r['peak_memory_MB_per_million_dofs']:.0f} MB per million dofs", flush=True)
    if comm.rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"transport-np{comm.size}.json"
        path.write_text(json.dumps(results, indent=2))
        other = args.out / "transport-np1.json"
        if comm.size == 2 and other.exists():
            one = json.loads(other.read_text())
            for r1, r2 in zip(one, results):
                if r1["dofs"] == r2["dofs"]:
                    print(f"D dt/h^2 = {r2['D_dt_over_h2']:g}: wall time per step, 2 ranks / 1 rank = "
                          f"{r2['step_seconds'] / r1['step_seconds']:.2f} (target <= 0.6)")


if __name__ == "__main__":
    main()
