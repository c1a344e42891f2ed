"""Vessel-network benchmark: set-up of ~10⁴ segments on a 10⁶-dof mesh, and the cost per step.

    scripts/env-exec python3 bench/vasculature.py                 # 1 rank
    scripts/env-exec mpirun -n 2 python3 bench/vasculature.py     # 2 ranks

1. Set-up (targets: <= 10 s on 1 rank, and it parallelises): generation of a network in a
   1.9 mm cube with a rarefied tumour (rank 0, broadcast), the flow solve, the quadrature (point
   location in the owned cells) and the dof distribution of the line source for each species,
   and the transit factorisation; the mesh itself (99³ cells, 10⁶ dofs) is not counted.
2. Cost per step (target <= 5 % of a coupled step): per species, the tissue level per segment
   (one reduction), the plasma levels along the network and the nodal exchange vector, against
   that species' own transport step with the exchange (CG + Jacobi, as a drug at D dt/h² ~ 1).
   A coupled step holds one transport step per species plus the reactions, so the fraction of
   the species' step bounds the fraction of the coupled step from above.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "pythonpath"))

from dolfinx import fem, mesh  # noqa: E402
from mpi4py import MPI  # noqa: E402

from tme.transport import SpeciesModel, SpeciesSolver  # noqa: E402
from tme.vasculature import flow as blood  # noqa: E402
from tme.vasculature.exchange import LineSource, locate  # noqa: E402
from tme.vasculature.generator import GeneratorParams, generate  # noqa: E402
from tme.vasculature.network import shared  # noqa: E402
from tme.vasculature.transit import Transit  # noqa: E402

#: (name, D [µm²/h], wall permeability [µm/h], decay [1/h]): two drugs and an oxygen-like species
SPECIES = [("doxorubicin", 16.0 * 3600, 3600.0, 0.1), ("inhibitor", 30.0 * 3600, 7200.0, 0.05),
           ("oxygen", 1.7e3 * 3600, 3.6e5, 0.0)]


def _timed(comm, fn):
    comm.barrier()
    t0 = time.perf_counter()
    out = fn()
    comm.barrier()
    return out, time.perf_counter() - t0


def run(comm, n: int, size: float, steps: int) -> dict:
    t_mesh = time.perf_counter()
    msh = mesh.create_box(comm, [[0, 0, 0], [size] * 3], [n] * 3, cell_type=mesh.CellType.tetrahedron)
    t_mesh = time.perf_counter() - t_mesh
    V = fem.functionspace(msh, ("Lagrange", 1))
    centre = np.full(3, size / 2)
    params = GeneratorParams(lower=(0, 0, 0), upper=(size,) * 3, seed=1,
                             tumour=lambda X: np.linalg.norm(X - centre, axis=1) < 0.3 * size)
    r = {"ranks": comm.size, "dofs": V.dofmap.index_map.size_global, "mesh_seconds": t_mesh}
    net, r["generate_seconds"] = _timed(comm, lambda: shared(comm, lambda: generate(params)))
    fl, r["flow_seconds"] = _timed(comm, lambda: blood.solve(net))
    quad, r["quadrature_seconds"] = _timed(comm, lambda: locate(net, V))
    r["segments"], r["quadrature_points"] = net.num_segments, comm.allreduce(len(quad.weight), op=MPI.SUM)
    sources, r["distribution_seconds"] = _timed(comm, lambda: [LineSource(quad, P, D) for _, D, P, _ in SPECIES])
    transits, r["transit_seconds"] = _timed(comm, lambda: [Transit(net, fl, s.conductance) for s in sources])
    r["setup_seconds"] = sum(r[k] for k in ("generate_seconds", "flow_seconds", "quadrature_seconds",
                                            "distribution_seconds", "transit_seconds"))
    r["perfused_fraction"] = fl.perfused_fraction(net)

    # per step: the network's work and the species' transport step, per species
    ft = mesh.meshtags(msh, 2, np.empty(0, np.int32), np.empty(0, np.int32))
    h = size / n
    net_time, step_time = 0.0, 0.0
    for (name, D, P, lam), src, tr in zip(SPECIES, sources, transits):
        model = SpeciesModel(name, fem.Constant(msh, D), decay=lam, uptake=0.5)
        s = SpeciesSolver(model, V, ft, solver="jacobi", rtol=1e-6, cell_size=h)
        n_tot = np.full(s.c.x.array.size, 0.6)
        dt = h * h / D  # D dt/h² = 1

        def network_part(t):
            lv = tr.levels(src.tissue_level(s.c.x.array), 5.0 * math.exp(-0.2 * t))
            return src.nodal(lv.mean, fl.perfused)

        s.step(0.0, dt, n_tot, nodal_exchange=network_part(0.0))  # warm-up: preconditioner set-up
        t = dt
        for _ in range(steps):
            exch, dn = _timed(comm, lambda: network_part(t))
            _, ds = _timed(comm, lambda: s.step(t, t + dt, n_tot, nodal_exchange=exch))
            net_time += dn
            step_time += ds
            t += dt
    r["network_seconds_per_step"] = net_time / steps
    r["species_steps_seconds"] = step_time / steps
    r["network_fraction"] = net_time / step_time
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=99, help="cells per edge of the box (99 -> 10⁶ dofs)")
    p.add_argument("--size", type=float, default=1900.0, help="edge of the block [µm]")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    r = run(comm, args.n, args.size, args.steps)
    if comm.rank == 0:
        print(f"{r['segments']} segments ({r['quadrature_points']} quadrature points, perfused "
              f"{100 * r['perfused_fraction']:.0f} % of the length) on {r['dofs']} dofs, {r['ranks']} rank(s); "
              f"mesh {r['mesh_seconds']:.1f} s (not counted)")
        print(f"set-up {r['setup_seconds']:.2f} s (target <= 10 s on 1 rank): generation {r['generate_seconds']:.2f} s, "
              f"flow {r['flow_seconds']:.3f} s, quadrature {r['quadrature_seconds']:.2f} s, "
              f"dof distribution ({len(SPECIES)} species) {r['distribution_seconds']:.2f} s, "
              f"transit {r['transit_seconds']:.3f} s")
        print(f"per step, {len(SPECIES)} species: network {1e3 * r['network_seconds_per_step']:.1f} ms, "
              f"their transport steps {1e3 * r['species_steps_seconds']:.0f} ms: "
              f"{100 * r['network_fraction']:.2f} % (target <= 5 % of a coupled step)")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"vasculature-np{comm.size}.json").write_text(json.dumps(r, indent=2))
        one = args.out / "vasculature-np1.json"
        if comm.size == 2 and one.exists():
            r1 = json.loads(one.read_text())
            if r1["dofs"] == r["dofs"]:
                print(f"set-up, 2 ranks / 1 rank = {r['setup_seconds'] / r1['setup_seconds']:.2f}; "
                      f"quadrature {r['quadrature_seconds'] / r1['quadrature_seconds']:.2f}, "
                      f"distribution {r['distribution_seconds'] / r1['distribution_seconds']:.2f}")


if __name__ == "__main__":
    main()
