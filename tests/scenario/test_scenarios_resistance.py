"""The resistance scenarios of configs/ reproduce their papers' qualitative results.

Each test runs a scenario coarsened (the ``--set`` overrides of :data:`COARSE`: a coarser mesh,
longer steps, no pictures) into pytest's tmp_path, and checks the claims of the config's header
from that run's own outputs (summary.json, timeseries.csv, events.csv), never against figures
copied from an earlier run:

- sanctuary.yaml (Fu, Nowak & Bonhoeffer 2015): resistance rises first in the poorly perfused
  zone, where the drug is sublethal; a higher motility slows the rise of resistance;
- caf_shield.yaml (Straussman et al. 2012): cells near CAFs survive a targeted drug; adding a
  factor blocker (anti-MET) restores the response;
- mdr_pgp.yaml: chemotherapy selects the P-gp clone; a P-gp inhibitor restores the kill;
- jackson_byrne.yaml (Jackson & Byrne 2000): shrinkage, then regrowth led by the resistant
  clone; a poorly vascularised centre lowers efficacy.

Burdens are ∫ N dx [µm²]; fractions are of the amounts of the clones in a region.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SCENARIOS = ("sanctuary", "caf_shield", "mdr_pgp", "jackson_byrne")

#: What every test run leaves out: plots, and all snapshot panels but one.
QUICK = ["output.plots=false", "output.snapshots.fields=[total]", "output.snapshots.times=[]"]

#: The coarsening of each scenario in the tests: about half its mesh resolution, longer steps.
COARSE = {
    "sanctuary": ["mesh.cells=[40, 6]", "time.dt=12 hour", "time.dt_initial=2 hour"],
    "caf_shield": ["mesh.cells=[60, 6]", "time.dt=12 hour", "time.dt_initial=2 hour"],
    "mdr_pgp": ["mesh.cells=[20, 10]", "time.dt=12 hour", "time.dt_initial=30 min"],
    "jackson_byrne": ["mesh.cells=[40, 40]", "time.dt=12 hour", "time.dt_initial=30 min"],
}

#: The combination arms of the headers: the same line with the second drug added.
MET_ARM = ("treatment.lines.0.regimen=[{drug: braf_inhibitor, amount: 60 uM, infusion: 28 day}, "
           "{drug: met_inhibitor, amount: 15 uM, infusion: 28 day}]")
PGP_ARM = ("treatment.lines.0.regimen=[{drug: doxorubicin, amount: 5 uM, every: 7 day, cycles: 6}, "
           "{drug: tariquidar, amount: 2 uM, every: 7 day, cycles: 6}]")


@dataclass
class Run:
    """The outputs of one run: summary.json, timeseries.csv (numbers as floats), events.csv,
    and which clones are resistant."""

    summary: dict
    rows: list[dict]
    events: list[dict]
    resistant: list[str]
    end: float

    def column(self, name: str) -> list[float]:
        return [row[name] for row in self.rows]

    def amounts(self, region: str, row: dict) -> dict[str, float]:
        """Amount of each clone in ``region`` at a row of the time series."""
        prefix, suffix = "clone_", f"@{region}"
        return {k[len(prefix):-len(suffix)]: v for k, v in row.items()
                if k.startswith(prefix) and k.endswith(suffix)}

    def region_resistant_fraction(self, region: str) -> list[float]:
        """The resistant fraction of ``region`` at every row."""
        out = []
        for row in self.rows:
            a = self.amounts(region, row)
            total = sum(a.values())
            out.append(sum(a[c] for c in self.resistant) / total if total > 0 else math.nan)
        return out

    def final_region_resistant_fraction(self, region: str) -> float:
        """From summary.json: the resistant fraction of ``region`` at the end."""
        a = self.summary["final_clone_amounts_by_region"][region]
        return sum(a[c] for c in self.resistant) / sum(a.values())

    def surviving_fraction(self, region: str) -> float:
        """Final over initial amount of cells in ``region``."""
        initial = sum(self.amounts(region, self.rows[0]).values())
        final = sum(self.summary["final_clone_amounts_by_region"][region].values())
        return final / initial

    def first_time_above(self, values: list[float], level: float) -> float:
        """The time [hour] ``values`` (one per row) first reach ``level``, interpolated
        linearly between rows; inf if never."""
        t = self.column("t")
        for k, v in enumerate(values):
            if v >= level:
                if k == 0:
                    return t[0]
                v0 = values[k - 1]
                return t[k - 1] + (t[k] - t[k - 1]) * (level - v0) / (v - v0)
        return math.inf


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def simulate(name: str, out: Path, comm, *overrides: str) -> Run:
    """Run configs/<name>.yaml coarsened (plus ``overrides``) into ``out``; read its outputs."""
    from tme.config import scenario
    from tme import problem

    sc = scenario.load(CONFIGS / f"{name}.yaml", [*QUICK, *COARSE[name], *overrides])
    problem.run(sc, out, comm=comm, overwrite=True, quiet=True)
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "timeseries.csv", newline="") as f:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    with open(out / "events.csv", newline="") as f:
        events = list(csv.DictReader(f))
    resistant = [c for c, m in sc.clones.mechanisms().items() if m is not None]
    return Run(summary, rows, events, resistant, sc.time.end)


# --------------------------------------------------------------------------------------------
# Every scenario is valid and says where it comes from


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_validates_and_its_header_cites_its_sources(name):
    from tme.config import scenario

    path = CONFIGS / f"{name}.yaml"
    sc = scenario.load(path)
    assert sc.name == name
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert len(header) >= 10, "the config starts with a header comment"
    assert "What it shows" in text and "Where the numbers come from" in text
    # each coarsening and arm of the tests is a valid override of the config
    scenario.load(path, [*QUICK, *COARSE[name]])


@pytest.mark.parametrize("name, arm", [("caf_shield", MET_ARM), ("mdr_pgp", PGP_ARM)])
def test_combination_arms_are_valid_overrides(name, arm):
    from tme.config import scenario

    sc = scenario.load(CONFIGS / f"{name}.yaml", [arm])
    assert len(sc.treatment.lines[0].regimen) == 2


# --------------------------------------------------------------------------------------------
# Fu, Nowak & Bonhoeffer 2015: drug sanctuaries


def test_sanctuary_resistance_rises_first_where_the_drug_is_sublethal(tmp_path, comm):
    run = simulate("sanctuary", tmp_path / "sanctuary", comm)
    s = run.summary

    # at the end the sanctuary is more resistant than the perfused zone, which still holds cells
    assert sum(s["final_clone_amounts_by_region"]["perfused"].values()) > 0
    sanctuary = run.final_region_resistant_fraction("sanctuary")
    perfused = run.final_region_resistant_fraction("perfused")
    assert sanctuary > perfused
    assert sanctuary > 0.9

    # resistance rises there first: its resistant fraction passes 1/2 before the perfused zone's
    t_sanctuary = run.first_time_above(run.region_resistant_fraction("sanctuary"), 0.5)
    t_perfused = run.first_time_above(run.region_resistant_fraction("perfused"), 0.5)
    assert t_sanctuary < run.end
    assert t_sanctuary < t_perfused
    # and while it does, the perfused zone is still mostly sensitive
    k = next(i for i, t in enumerate(run.column("t")) if t >= t_sanctuary)
    assert run.region_resistant_fraction("perfused")[k] < 0.1

    # the burden falls, then regrows from the sanctuary: progression is called
    assert 0 < s["nadir_time_hours"] < run.end
    assert s["nadir_burden"] < s["initial_burden"]
    assert s["final_burden"] > 1.2 * s["nadir_burden"]
    assert s["time_to_progression_hours"] is not None


def test_sanctuary_low_motility_speeds_resistance(tmp_path, comm):
    slow = simulate("sanctuary", tmp_path / "slow", comm)
    fast = simulate("sanctuary", tmp_path / "fast", comm, "clones.motility=0.2 um^2/s")
    t_slow = slow.first_time_above(slow.column("resistant_fraction"), 0.5)
    t_fast = fast.first_time_above(fast.column("resistant_fraction"), 0.5)
    assert t_slow < t_fast < slow.end
    # motility carries resistant cells from the sanctuary into the perfused zone
    assert fast.final_region_resistant_fraction("perfused") > slow.final_region_resistant_fraction("perfused")


# --------------------------------------------------------------------------------------------
# Straussman et al. 2012: the CAF shield and its factor blocker


def test_caf_shield_protects_cells_near_cafs_and_a_factor_blocker_restores_the_response(tmp_path, comm):
    alone = simulate("caf_shield", tmp_path / "alone", comm)
    both = simulate("caf_shield", tmp_path / "met", comm, MET_ARM)

    # under the targeted drug alone, cells near CAFs survive, cells far from them do not
    rich, poor = alone.surviving_fraction("caf_rich"), alone.surviving_fraction("caf_poor")
    assert rich > poor
    assert rich > 10 * poor

    # adding the MET inhibitor ends with a lower burden, and lifts the shield near the CAFs
    assert both.summary["final_burden"] < alone.summary["final_burden"]
    assert both.surviving_fraction("caf_rich") < rich
    # the arms differ only in the MET inhibitor, given in the combination arm alone
    assert max(alone.column("plasma_met_inhibitor")) == 0
    assert max(both.column("plasma_met_inhibitor")) > 0


# --------------------------------------------------------------------------------------------
# P-gp efflux (MDR) and its inhibitor


def test_chemotherapy_selects_the_pgp_clone_and_an_inhibitor_restores_the_kill(tmp_path, comm):
    chemo = simulate("mdr_pgp", tmp_path / "chemo", comm)
    both = simulate("mdr_pgp", tmp_path / "inhibitor", comm, PGP_ARM)

    def pgp_fraction(row: dict) -> float:
        return row["clone_mdr"] / row["burden"]

    # under chemotherapy alone the P-gp clone's fraction rises well above its initial one
    initial = pgp_fraction(chemo.rows[0])
    final = chemo.summary["final_clone_amounts"]["mdr"] / chemo.summary["final_burden"]
    assert final > 10 * initial
    assert final > 0.5
    assert chemo.summary["final_resistant_fraction"] > 0.5

    # with the inhibitor the P-gp clone is killed too: it stays a minority, the burden ends lower
    assert both.summary["final_burden"] < chemo.summary["final_burden"]
    assert pgp_fraction(both.rows[-1]) < 0.5
    assert pgp_fraction(both.rows[-1]) < final


# --------------------------------------------------------------------------------------------
# Jackson & Byrne 2000: regrowth led by resistant cells; the role of the vasculature


def test_jackson_byrne_shrinkage_regrowth_and_poor_central_vascularisation(tmp_path, comm):
    well = simulate("jackson_byrne", tmp_path / "well", comm)
    poor = simulate("jackson_byrne", tmp_path / "poor", comm,
                    "tissue.regions.core.vascular_density=1e-4 1/um")
    s = well.summary

    # shrinkage, then regrowth
    assert s["nadir_burden"] < s["initial_burden"]
    assert 0 < s["nadir_time_hours"] < well.end
    assert s["final_burden"] > 1.2 * s["nadir_burden"]
    # led by the resistant clone
    initial_rf = well.rows[0]["resistant_fraction"]
    assert s["final_resistant_fraction"] > 0.5
    assert s["final_resistant_fraction"] > initial_rf
    burden = well.column("burden")
    k = burden.index(min(burden))
    regrowth = well.rows[-1]["clone_resistant"] - well.rows[k]["clone_resistant"]
    assert regrowth > 0.5 * (well.rows[-1]["burden"] - well.rows[k]["burden"])

    # a poorly vascularised centre lowers efficacy: a higher burden at the end, and sensitive
    # cells left in the core
    assert poor.summary["final_burden"] > s["final_burden"]
    assert (poor.final_region_resistant_fraction("core")
            < well.final_region_resistant_fraction("core"))
