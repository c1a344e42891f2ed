"""The shipped spheroid (configs/spheroid.yaml): a drug entering only through a surface that
follows its plasma (medium) level reaches the rim first, on 1 and 2 ranks."""

import csv
from pathlib import Path

import pytest

from tme.config import scenario as sc
from tme.problem import run

ROOT = Path(__file__).resolve().parents[2]
COARSE = ["mesh.h=50 um", "time.end=2 day", "output.every=1 day", "output.snapshots.times=[]",
          "output.plots=false", "numerics.reaction_kernel=numpy"]


@pytest.mark.mpi
def test_spheroid_in_medium_kills_the_rim_first(comm, tmp_path):
    out = tmp_path / "sph"
    if comm.size > 1:
        out = Path(comm.bcast(str(out), root=0))
    summary = run(sc.load(ROOT / "configs" / "spheroid.yaml", COARSE), out, comm=comm)
    rows = list(csv.DictReader(open(out / "timeseries.csv")))
    first, last = rows[0], rows[-1]
    # the medium level is the PK of a 0.3 uM bolus with a 1-day half-life
    day1 = next(r for r in rows if abs(float(r["t"]) - 24.0) < 1e-6)
    assert float(day1["plasma_doxorubicin"]) == pytest.approx(0.15)
    # the surface lets it in (no vessels, S_V = 0): the amount in the spheroid rises from 0
    assert float(first["total_doxorubicin"]) == 0 and float(day1["total_doxorubicin"]) > 0
    kept = {reg: float(last[f"clone_sensitive@{reg}"]) / float(first[f"clone_sensitive@{reg}"])
            for reg in ("core", "rim")}
    assert kept["rim"] < 0.8 * kept["core"] < 0.8
    # a boundary level that moves with the plasma adds no assembly to the time loop
    assert summary["in_loop"] == {"matrix_assemblies": 0, "form_compilations": 0}
