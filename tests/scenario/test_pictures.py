"""The pictures a run and a comparison write: every PNG opens, has the size its figure asks
for, and is not blank; snapshots share one colour range per field over the whole run."""

import json
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from tme import outputs
from tme.outputs import pictures
from tme.config import scenario as sc
from tme.outputs.fields import read_frame, read_index
from tme.studies.compare import compare

ROOT = Path(__file__).resolve().parents[2]
#: second_line until just after its switch (progression at the day-42 assessment): doses of
#: both lines, assessments, a progression and a switch in the plots
QUICK = ["mesh.h=60 um", "time.end=45 day", "time.dt=6 hour", "time.dt_initial=1 hour",
         "output.every=15 day", "output.snapshots.times=[3 day, 45 day]",
         "output.snapshots.fields=[paclitaxel, total, region]"]


def _png(path: Path) -> np.ndarray:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return matplotlib.image.imread(path)


def _not_blank(image: np.ndarray, path: Path, picture: bool) -> None:
    """Something was drawn, in many colours: in a plot, curves in colour (axes, ticks and text
    alone are black on white); in a snapshot, fields covering much of the white background."""
    rgb = image[..., :3].reshape(-1, 3)
    colours = len(np.unique((rgb * 255).astype(np.uint8), axis=0))
    assert colours > 50, f"{path}: only {colours} colours"
    if picture:
        drawn = (rgb.min(axis=1) < 0.9).mean()
        assert drawn > 0.3, f"{path}: only {drawn:.0%} of it drawn on"
    else:
        coloured = (rgb.max(axis=1) - rgb.min(axis=1) > 0.25).mean()
        assert coloured > 0.003, f"{path}: only {coloured:.2%} of it in colour"


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    comm = MPI.COMM_WORLD
    out = Path(comm.bcast(str(tmp_path_factory.mktemp("pictures") / "cmp"), root=0))
    compare([ROOT / "configs" / "second_line.yaml"], out, comm,
            sweeps=["drugs.doxorubicin.emax=0.05 1/hour,0.1 1/hour"], overrides=QUICK, overwrite=True)
    return out


@pytest.mark.slow
@pytest.mark.mpi
def test_every_picture_opens_with_its_size_and_is_not_blank(compared):
    out = compared
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    # the full key=value of the swept key names each run
    assert [p.name for p in runs] == ["second_line__drugs.doxorubicin.emax=0.05_1_per_hour",
                                      "second_line__drugs.doxorubicin.emax=0.1_1_per_hour"]
    species = len(sc.load(ROOT / "configs" / "second_line.yaml").species_names())
    # the comparison, and one panel per run with its treatment holidays (figure 8 x (1.9 n + 0.6) in at 110 dpi)
    sizes = {"comparison.png": (600, 1200), "burden_holidays.png": (int((1.9 * 2 + 0.6) * 110), 8 * 110)}
    for run in runs:
        rel = run.relative_to(out)
        sizes[f"{rel}/plots/burden.png"] = (600, 1080)
        sizes[f"{rel}/plots/species.png"] = (int(round((1.9 + 1.6 * species) * 120)), 1080)
        for day in ("003.00", "045.00"):
            sizes[f"{rel}/snapshots/day_{day}.png"] = (460, 3 * 480)   # 3 fields: one row of 3
    found = {str(p.relative_to(out)) for p in out.rglob("*.png")}
    assert found == set(sizes)
    for name, (height, width) in sizes.items():
        image = _png(out / name)
        assert image.shape[:2] == (height, width), name
        _not_blank(image, out / name, "snapshots" in name)


@pytest.mark.slow
def test_the_plots_show_the_events_of_the_run(compared):
    run = next(p for p in compared.iterdir() if p.is_dir())
    kinds = {e["event"] for e in json.loads((run / "events.json").read_text())}
    # what the burden plot marks happened in this run
    assert {"dose", "assessment", "progression", "switch"} <= kinds


@pytest.mark.slow
@pytest.mark.mpi
def test_snapshots_share_one_colour_range_per_field(compared, monkeypatch):
    if MPI.COMM_WORLD.rank != 0:
        return
    run = next(p for p in compared.iterdir() if p.is_dir())
    frames = read_index(run)
    names = ["paclitaxel", "total"]
    drawn = []
    monkeypatch.setattr(pictures, "_render", lambda path, *a: drawn.append((path.name, a)))
    units = {n: outputs.field_unit(n, sc.load(ROOT / "configs" / "second_line.yaml")) for n in names}
    assert units == {"paclitaxel": "µM", "total": "volume fraction"}
    pictures.snapshots(run, [72.0, 1080.0], names, units, "fixed")
    assert [d[0] for d in drawn] == ["day_003.00.png", "day_045.00.png"]
    expected = {}
    for f in frames:
        for n, (values, _) in read_frame(run, f, names)[3].items():
            lo, hi = expected.get(n, (np.inf, -np.inf))
            expected[n] = (min(lo, values.min()), max(hi, values.max()))
    for _, args in drawn:
        ranges = args[6]
        assert {n: tuple(r) for n, r in ranges.items()} == expected
    # paclitaxel is given only from the switch on: day 3 holds none, yet its range is the run's
    assert expected["paclitaxel"][1] > 0
    day3 = read_frame(run, next(f for f in frames if f["t"] == 72.0), names)[3]
    assert day3["paclitaxel"][0].max() < 1e-6 * expected["paclitaxel"][1]
    drawn.clear()
    pictures.snapshots(run, [72.0], names, units, "auto")
    assert drawn[0][1][6] == {}   # each picture its own range


def test_ticks_are_round_and_distinct():
    for lo, hi in ((0.0, 0.29), (5.30, 5.34), (21.6, 50.0), (1e-9, 3e-7)):
        ticks, fmt = pictures._ticks(lo, hi)
        labels = [fmt % v for v in ticks]
        assert len(ticks) >= 3 and len(set(labels)) == len(labels), (lo, hi, labels)
        assert all(lo - 1e-9 * (hi - lo) <= v <= hi + 1e-9 * (hi - lo) for v in ticks)
    assert pictures._scale_bar(1000.0) == (200.0, "200 µm")
    assert pictures._scale_bar(498.9) == (100.0, "100 µm")
    assert pictures._scale_bar(4000.0) == (1000.0, "1 mm")
