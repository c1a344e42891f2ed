"""The clone reaction step against one sparse matrix-vector product (MatMult), compiled and NumPy.

    python3 bench/reactions.py [--dofs N]

Also home of the example population that the reaction tests and the coupled benchmark share.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "pythonpath"))

from tme.config.clones import ClonesSpec  # noqa: E402
from tme.config.drugs import DrugSpec  # noqa: E402
from tme.cells.reactions import CloneReactions  # noqa: E402


def example_specs(every_mechanism: bool = False) -> tuple[ClonesSpec, dict[str, DrugSpec]]:
    """A clone population and drugs that exercise the kill model: 4 clones (sensitive, target
    mutation, P-gp, DNA repair with reduced factor sensitivity), mutation, necrosis, immune kill,
    and 3 drugs (a DNA-damaging and an antimitotic P-gp substrate, a targeted drug), two of them
    shielded by the survival factor. ``every_mechanism`` adds a P-gp inhibitor, a factor blocker
    and a P-gp substrate with a non-integer Hill exponent, for every term of the kill model.
    Used by :func:`benchmark` and the tests."""
    clones = ClonesSpec.model_validate({
        "clones": {
            "sensitive": {"growth": "0.6 1/day", "initial": 0.5, "immune_kill": "0.02 1/hour"},
            "t790m": {"growth": "0.5 1/day", "ec50_shift": {"erlotinib": 50}, "initial": 0.01},
            "mdr": {"growth": "0.45 1/day", "pgp_vmax": "400 uM/hour", "initial": 0.01},
            "repair": {"growth": "0.5 1/day", "repair": 0.6, "factor_sensitivity": 0.5},
        },
        "mutation": {"sensitive": {"t790m": 1e-4, "mdr": 1e-4, "repair": 1e-4}},
        "necrosis": {"rate": "0.05 1/hour", "threshold": "1.0 uM"},
    })
    base = {"diffusivity": "16 um**2/s"}
    specs = {
        "doxorubicin": {"class": "dna_damaging", "emax": "0.1 1/hour", "ec50": "0.5 uM", "pgp_substrate": True,
                        "factor_protection": 0.5},
        "paclitaxel": {"class": "antimitotic", "emax": "0.08 1/hour", "ec50": "0.05 uM", "hill": 2.0,
                       "pgp_substrate": True, "cycle_dependent": True},
        "erlotinib": {"class": "targeted", "emax": "0.06 1/hour", "ec50": "0.2 uM", "target": "EGFR",
                      "factor_protection": 0.8},
    }
    if every_mechanism:
        specs.update({
            "tariquidar": {"class": "pgp_inhibitor", "ec50": "0.1 uM", "pgp_inhibition": 0.9},
            "anti_met": {"class": "factor_blocker", "ec50": "0.05 uM", "hill": 1.5},
            "vinca": {"class": "antimitotic", "emax": "0.05 1/hour", "ec50": "0.02 uM", "hill": 1.3,
                      "pgp_substrate": True, "cycle_dependent": True},
        })
    return clones, {name: DrugSpec.model_validate({**base, **spec}) for name, spec in specs.items()}


def time_half_steps(clones: ClonesSpec, drugs: dict[str, DrugSpec], n: int,
                    kernels: Sequence[str] = ("compiled", "numpy"), *, repeat: int = 7,
                    seed: int = 0, barrier=None) -> dict[str, dict]:
    """Median wall time of one reaction half step (:meth:`CloneReactions.advance` over 0.5 h,
    half of a 1-hour Strang step) on ``n`` dofs of random densities and fields, with each of
    ``kernels``: ``{kernel: {"half_step_seconds", "substeps"}}``. The first call of each (which
    builds a compiled kernel) is not timed; ``barrier`` (e.g. ``comm.barrier``) brackets every
    timed call when several ranks run it."""
    sync = barrier or (lambda: None)
    K, J = len(clones.clones), len(drugs)
    rng = np.random.default_rng(seed)
    N0 = rng.uniform(0.0, 0.2, (K, n))
    c = rng.uniform(0.0, 2.0, (J, n))
    s, o, e = rng.uniform(0, 0.05, n), rng.uniform(0.5, 50, n), rng.uniform(0, 1, n)
    total = np.empty(n)
    out = {}
    for kind in kernels:
        rx = CloneReactions.from_specs(clones, drugs, n, factor_half=0.01, oxygen_half=5.0, kernel=kind)
        N = N0.copy()
        rx.advance(N, c, s, o, e, 0.5, total=total)
        times = []
        for _ in range(repeat):
            sync()
            t0 = time.perf_counter()
            rx.advance(N, c, s, o, e, 0.5, total=total)
            sync()
            times.append(time.perf_counter() - t0)
        out[kind] = {"half_step_seconds": float(np.median(times)), "substeps": rx.substeps(0.5)}
    return out


def benchmark(n: int = 10**6, repeat: int = 5, seed: int = 0,
              kernels: Sequence[str] = ("compiled", "numpy")) -> dict:
    """:func:`time_half_steps` of the example population (4 clones, 3 drugs, mutation, P-gp,
    factor, oxygen, immune kill) on ``n`` dofs, against one sparse matrix-vector product with a
    3-D P1 stencil (15 nonzeros per row), the MatMult-equivalent (MM). A Strang step makes two
    half steps, so ``step_per_mm_per_clone_<kernel>`` = 2 half step / MM / 4."""
    import scipy.sparse as sp

    m = round(n ** (1 / 3))
    offsets = [0, 1, m, m * m, 1 + m, 1 + m * m, m + m * m, 1 + m + m * m]
    offsets = offsets + [-k for k in offsets[1:]]
    A = sp.diags([np.ones(n - abs(k)) for k in offsets], offsets, shape=(n, n), format="csr")
    x = np.random.default_rng(seed).uniform(size=n)
    A @ x
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        A @ x
        times.append(time.perf_counter() - t0)
    t_mm = float(np.median(times))
    clones, drugs = example_specs()
    out = {"dofs": n, "clones": len(clones.clones), "drugs": len(drugs),
           "nonzeros_per_row": A.nnz / n, "matmult_s": t_mm}
    for kind, r in time_half_steps(clones, drugs, n, kernels, repeat=repeat, seed=seed).items():
        half = r["half_step_seconds"]
        out["substeps"] = r["substeps"]
        out[f"advance_{kind}_s"] = half
        out[f"advance_{kind}_per_mm"] = half / t_mm
        out[f"step_per_mm_per_clone_{kind}"] = 2 * half / t_mm / out["clones"]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dofs", type=int, default=10**6)
    for key, value in benchmark(ap.parse_args().dofs).items():
        print(f"{key:>32}: {value:.4g}" if isinstance(value, float) else f"{key:>32}: {value}")
