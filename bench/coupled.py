"""Coupled-step benchmark: the default scenario scaled to a 3-D block, and the reaction kernel.

    scripts/env-exec python3 bench/coupled.py                  # 1 rank
    scripts/env-exec mpirun -n 2 python3 bench/coupled.py      # 2 ranks

1. The reaction half steps alone: 4 clones x 3 drugs on 1 million dofs (tme.cells.reactions), in
   MatMult-equivalents per clone per step (target <= 1), the MatMult measured on a 3-D P1
   matrix of the same size.
2. A whole coupled step of configs/default.yaml (same drugs, clones, factor, oxygen, protocol)
   on a 3-D box of >= 500k dofs per field, with a continuum vascular density instead of the
   slice's explicit vessels: wall seconds and MatMult-equivalents per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "pythonpath"))

from dolfinx import fem, mesh  # noqa: E402
from dolfinx.fem import petsc as fem_petsc  # noqa: E402
from mpi4py import MPI  # noqa: E402
import ufl  # noqa: E402

from tme.config import scenario as sc  # noqa: E402
from tme.problem import Problem  # noqa: E402
from reactions import time_half_steps  # noqa: E402  (bench/reactions.py)
from transport import matmult_time  # noqa: E402  (bench/transport.py)


def matmult_seconds(n_cells: int, comm, reps: int = 20) -> tuple[float, int]:
    """Time of one MatMult on a 3-D P1 stiffness matrix with n_cells per edge."""
    msh = mesh.create_unit_cube(comm, n_cells, n_cells, n_cells)
    V = fem.functionspace(msh, ("Lagrange", 1))
    u, v = ufl.TrialFunction(V), ufl.TestFunction(V)
    A = fem_petsc.assemble_matrix(fem.form(ufl.inner(ufl.grad(u), ufl.grad(v)) * ufl.dx + u * v * ufl.dx))
    A.assemble()
    return matmult_time(A, reps), V.dofmap.index_map.size_global


def reaction_kernel(comm, n_cells=99) -> dict:
    mm, ndofs = matmult_seconds(n_cells, comm)
    scen = sc.load(ROOT / "configs" / "default.yaml")
    data = scen.clones.model_dump()
    del data["clones"]["met_bypass"]  # four clones
    data["mutation"]["sensitive"].pop("met_bypass")
    clones = type(scen.clones).model_validate(data)
    drugs = dict(scen.drugs)
    drugs["extra"] = drugs["doxorubicin"].model_copy(update={"pgp_substrate": False})
    halves = time_half_steps(clones, drugs, ndofs // comm.size, ("compiled", "numpy"), barrier=comm.barrier)
    out = {"dofs": ndofs, "ranks": comm.size, "matmult_seconds": mm}
    for kind, r in halves.items():
        out[kind] = dict(r, mm_per_clone_per_step=2 * r["half_step_seconds"] / (len(clones.clones) * mm))
    return out


def coupled_step(comm, n_cells=80, steps=10) -> dict:
    raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    L = 1200.0
    raw["mesh"] = {"kind": "box", "size": [L, L, L], "cells": [n_cells] * 3,
                   "regions": [{"name": "tumour", "where": "x**2/400**2 + y**2/300**2 + z**2/300**2 < 1"},
                               {"name": "dense_ecm", "where": "x**2/480**2 + y**2/360**2 + z**2/360**2 < 1"},
                               {"name": "stroma", "where": "x == x"}]}
    for region, sv in (("tumour", "0.002 1/um"), ("dense_ecm", "0.001 1/um"), ("stroma", "0.004 1/um")):
        raw["tissue"]["regions"][region]["vascular_density"] = sv
    raw["time"] = {"end": f"{steps} hour", "dt": "1 hour", "dt_initial": "1 hour"}
    raw["output"] = {"every": f"{steps} hour", "plots": False, "snapshots": {"times": []}}
    scen = sc.validate(raw)
    out = ROOT / "results" / "bench" / f"coupled-np{comm.size}"
    t0 = time.perf_counter()
    r = Problem(scen, comm, out, overwrite=True).initialise()
    setup = time.perf_counter() - t0
    mm = matmult_time(r.model.species[0].solver.A)
    summary = r.run()
    per_step = summary["wall_time_seconds"] / summary["steps"]
    return {"dofs": summary["dofs_per_field"], "ranks": comm.size, "setup_seconds": setup,
            "steps": summary["steps"], "step_seconds": per_step, "matmult_seconds": mm,
            "step_in_matmults": per_step / mm, "species": len(r.model.species),
            "clones": len(r.model.clone_names), "in_loop": summary["in_loop"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=80, help="cells per edge of the coupled box (80 -> 531k dofs)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--skip-kernel", action="store_true", help="skip the reaction benchmark")
    p.add_argument("--skip-coupled", action="store_true", help="skip the coupled step")
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    results = {}
    if not args.skip_kernel:
        k = reaction_kernel(comm)
        results["reaction_kernel"] = k
        if comm.rank == 0:
            for kernel in ("compiled", "numpy"):
                r = k[kernel]
                print(f"reactions ({kernel}), 4 clones x 3 drugs, {k['dofs']} dofs, {k['ranks']} rank(s): "
                      f"half step {r['half_step_seconds'] * 1e3:.1f} ms ({r['substeps']} substep(s)); "
                      f"MatMult {k['matmult_seconds'] * 1e3:.1f} ms; both half steps = "
                      f"{r['mm_per_clone_per_step']:.2f} MatMult per clone per step (target <= 1)", flush=True)
    if args.skip_coupled:
        return
    c = coupled_step(comm, args.n, args.steps)
    results["coupled_step"] = c
    if comm.rank == 0:
        print(f"coupled step of default.yaml in 3-D: {c['dofs']} dofs per field, {c['species']} species, "
              f"{c['clones']} clones, {c['ranks']} rank(s): {c['step_seconds']:.2f} s per step = "
              f"{c['step_in_matmults']:.0f} MatMults (setup {c['setup_seconds']:.1f} s); in loop: "
              f"{c['in_loop']}", flush=True)
        out = ROOT / "results" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"coupled-np{comm.size}.json").write_text(json.dumps(results, indent=2))
        one = out / "coupled-np1.json"
        r1 = json.loads(one.read_text()).get("coupled_step") if comm.size > 1 and one.exists() else None
        if r1 and r1["dofs"] == c["dofs"] and r1["steps"] == c["steps"]:   # the same problem
            print(f"coupled step, {comm.size} ranks / 1 rank: {c['step_seconds'] / r1['step_seconds']:.2f}")


if __name__ == "__main__":
    main()
