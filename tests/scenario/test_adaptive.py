"""Adaptive therapy: holidays and dose modulation reach the plasma, survive a restart, and the
scenarios of configs/adaptive.yaml and configs/adaptive_spatial.yaml show their headers' claims.

- A run stopped (SIGTERM) during a treatment holiday and resumed equals the run made in one go:
  the same rows, events, summary and fields (a holiday on one drug, modulation of the other
  under a peak limit).
- The clinical metrics of summary.json agree with the run's own event log and time series.
- adaptive.yaml, coarsened, through ``tme compare`` (three arms × two resistant growth rates):
  adaptive therapy has a longer time to progression and a lower cumulative dose than continuous
  dosing, and the time it gains shrinks without the resistant clone's fitness cost.
- adaptive_spatial.yaml, coarsened: the strategy that wins for the compact and for the invasive
  tumour, as its header says.
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest

pytest.importorskip("dolfinx")

from tme.config import scenario as sc  # noqa: E402
from tme.studies.compare import COLUMNS, compare  # noqa: E402

from test_restart import SCENARIO, _rows, _shared, assert_same_run, run_with_stops  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
DAY = 24.0

#: The arms of the headers: continuous dosing, the 50 %/100 % holiday rule, dose modulation.
ARMS = ("treatment.lines.0.adapt=null,"
        "{every: 1 week, holiday: {pause_below: 0.5, resume_above: 1.0}},"
        "{every: 1 week, modulation: {min_level: 0.125, skip_below: 0.25}}")
#: What the tests leave out or coarsen.
QUICK = {"adaptive": ["time.dt=2 day"],
         "adaptive_spatial": ["mesh.cells=[16, 16]", "time.dt=2 day"]}


def arm(row: dict) -> str:
    o = row["overrides"]
    return "continuous" if "adapt=null" in o else "holiday" if "holiday" in o else "modulation"


def adaptive_scenario():
    data = json.loads(json.dumps(SCENARIO))
    data["treatment"] = {
        "lines": [{"name": "adaptive",
                   "regimen": [{"drug": "chemo", "amount": "5 uM", "every": "12 hour", "cycles": 8},
                               {"drug": "inhib", "amount": "3 uM", "infusion": "6 hour",
                                "every": "12 hour", "cycles": 8}],
                   "adapt": {"every": "1 day",
                             "holiday": {"pause_below": 0.9, "resume_above": 0.95, "drugs": ["chemo"]},
                             "modulation": {"drugs": ["inhib"]}}}],
        "progression": {"reference": "baseline", "increase": 0.5},
        "limits": {"inhib": {"max_peak": "3.2 uM"}, "chemo": {"max_cumulative": "12 uM"}},
        "report_times": ["1 day", "2 day"],
    }
    return sc.validate(data)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    base = _shared(comm, tmp_path_factory.mktemp("adaptive_straight"))
    run_with_stops(adaptive_scenario(), base / "np", comm)
    return base / "np"


@pytest.mark.mpi
def test_holiday_modulation_and_limits_reach_the_plasma(straight):
    events = json.loads((straight / "events.json").read_text())
    kinds = [(e["time"], e["event"]) for e in events]
    assert (24.0, "pause") in kinds
    # chemo's doses are not given on holiday; inhib's go on, scaled by the modulation
    skipped = [e for e in events if e["event"] == "skip"]
    assert skipped and all(e["data"]["drug"] == "chemo" and e["time"] >= 24.0 for e in skipped)
    mod = [e for e in events if e["event"] == "modulation"]
    assert mod and mod[0]["time"] == 24.0
    level = mod[0]["data"]["to"]
    inhib = [e for e in events if e["event"] == "dose" and e["data"]["drug"] == "inhib" and e["time"] == 24.0]
    assert inhib and inhib[0]["data"]["given_uM"] == pytest.approx(3.0 * level, rel=1e-12)
    rows = _rows(straight / "timeseries.csv")
    paused = [float(r["t"]) for r in rows if r["holiday"] == "1"]
    assert paused and min(paused) == 24.0
    # no chemo given on holiday: its cumulative dose stays flat
    flat = {r["cumulative_dose_chemo"] for r in rows if r["holiday"] == "1"}
    assert len(flat) == 1
    # the peak limit holds on the plasma curve written
    assert max(float(r["plasma_inhib"]) for r in rows) <= 3.2 * (1 + 1e-12)
    assert any(e["event"] == "limit" and e["data"]["drug"] == "inhib" for e in events)


@pytest.mark.mpi
def test_metrics_agree_with_the_event_log_and_the_time_series(straight):
    s = json.loads((straight / "summary.json").read_text())
    events = json.loads((straight / "events.json").read_text())
    rows = _rows(straight / "timeseries.csv")
    given = {d: sum(e["data"]["given_uM"] for e in events if e["event"] == "dose" and e["data"]["drug"] == d)
             for d in ("chemo", "inhib")}
    planned = {d: sum(e["data"]["planned_uM"] for e in events if e["event"] in ("dose", "skip", "limit")
                      and e["data"]["drug"] == d and not (e["event"] == "limit" and e["data"]["given_uM"] > 0))
               for d in ("chemo", "inhib")}
    for d in given:
        assert s["cumulative_dose_uM"][d] == pytest.approx(given[d], rel=1e-12)
        assert s["relative_dose"][d] == pytest.approx(given[d] / planned[d], rel=1e-12)
    assert s["cumulative_dose_uM"]["chemo"] <= 12.0 * (1 + 1e-12)
    pauses = [e["time"] for e in events if e["event"] == "pause"]
    resumes = [e["time"] for e in events if e["event"] == "resume"]
    assert s["holidays"] == len(pauses) >= 1
    off = sum((resumes[k] if k < len(resumes) else s["end_time_hours"]) - p for k, p in enumerate(pauses))
    assert s["off_drug_fraction"] == pytest.approx(off / s["end_time_hours"], rel=1e-12)
    assert [r["time_hours"] for r in s["reports"]] == [24.0, 48.0]
    by_t = {float(r["t"]): r for r in rows}
    for rep in s["reports"]:
        assert rep["burden"] == pytest.approx(float(by_t[rep["time_hours"]]["burden"]), rel=1e-12)
    assert s["controlled"] == (s["final_burden"] <= s["baseline_burden"])
    assert s["baseline_burden"] == pytest.approx(float(rows[0]["burden"]), rel=1e-12)


@pytest.mark.mpi
def test_stopped_on_holiday_and_resumed_equals_the_straight_run(comm, tmp_path, straight):
    out = _shared(comm, tmp_path) / "stopped"
    # the holiday of chemo starts at 24 h: stop once before it and once during it
    summaries = run_with_stops(adaptive_scenario(), out, comm, stops=(14.0, 38.0))
    assert [s.get("signal") for s in summaries] == [signal.SIGTERM, signal.SIGTERM, None]
    assert 24.0 < summaries[1]["end_time_hours"] < 48.0
    assert_same_run(out, straight, rel=1e-12)
    a = json.loads((out / "summary.json").read_text())
    b = json.loads((straight / "summary.json").read_text())
    for key in ("cumulative_dose_uM", "relative_dose", "holidays", "holiday_intervals_hours",
                "off_drug_fraction", "reports", "time_to_treatment_failure_hours"):
        assert a[key] == b[key], key


# --------------------------------------------------------------------------------------------
# The scenarios


@pytest.mark.parametrize("name", ["adaptive", "adaptive_spatial"])
def test_scenario_validates_and_its_header_cites_its_sources(name):
    path = CONFIGS / f"{name}.yaml"
    assert sc.load(path).name == name
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert len(header) >= 10 and "What it shows" in text and "Where the numbers come from" in text
    for values in ARMS.split("=", 1)[1].replace("},{", "}|{").replace("null,", "null|").split("|"):
        sc.load(path, [*QUICK[name], f"treatment.lines.0.adapt={values}"])


def _compare(name, out, comm, sweeps):
    rows = compare([CONFIGS / f"{name}.yaml"], out, comm, sweeps=[ARMS, *sweeps],
                   overrides=QUICK[name], overwrite=True)
    comm.Barrier()
    return rows


def _ttp(row) -> float:
    return float(row["time_to_progression_days"]) if row["time_to_progression_days"] != "" else float("inf")


@pytest.mark.mpi
def test_adaptive_outlasts_continuous_with_less_drug_and_the_fitness_cost_matters(comm, tmp_path):
    out = _shared(comm, tmp_path) / "compare"
    base = sc.load(CONFIGS / "adaptive.yaml")
    cost = base.clones.clones["resistant"].growth * 24.0
    free = base.clones.clones["sensitive"].growth * 24.0
    assert cost < free                                     # the config's resistant clone pays a cost
    rows = _compare("adaptive", out, comm, [f"clones.clones.resistant.growth={cost} 1/day,{free} 1/day"])
    with open(out / "comparison.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0])[:len(COLUMNS)] == COLUMNS
    assert (out / "burden_holidays.png").stat().st_size > 0
    assert len(table) == len(rows) == 6
    runs = {(arm(r), f"{cost} 1/day" in r["overrides"]): r for r in table}
    gains = {}
    for with_cost in (True, False):
        cont, hol = runs[("continuous", with_cost)], runs[("holiday", with_cost)]
        # each row is its run's own summary
        s = json.loads((out / hol["run"] / "summary.json").read_text())
        assert _ttp(hol) == pytest.approx(s["time_to_progression_hours"] / DAY)
        assert int(hol["holidays"]) >= 2 and float(hol["off_drug_fraction"]) > 0.2
        assert _ttp(hol) > _ttp(cont)
        assert float(hol["cumulative_dose_uM"]) < float(cont["cumulative_dose_uM"])
        assert float(cont["relative_dose"]) == 1.0 and float(cont["off_drug_fraction"]) == 0.0
        gains[with_cost] = _ttp(hol) - _ttp(cont)
    # the time adaptive therapy gains shrinks without the resistant clone's fitness cost
    assert gains[False] < 0.75 * gains[True], gains


@pytest.mark.mpi
def test_adaptive_spatial_holidays_win_for_the_compact_tumour_and_tie_for_the_invasive(comm, tmp_path):
    out = _shared(comm, tmp_path) / "spatial"
    compact, invasive = "0.0005 um^2/s", "0.02 um^2/s"
    _compare("adaptive_spatial", out, comm, [f"clones.motility={compact},{invasive}"])
    with open(out / "comparison.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    runs = {(arm(r), "compact" if compact in r["overrides"] else "invasive"): r for r in table}
    ttp = {k: _ttp(r) for k, r in runs.items()}
    dose = {k: float(r["cumulative_dose_uM"]) for k, r in runs.items()}
    # compact: the holidays outlast both other strategies, with less drug
    assert ttp["holiday", "compact"] > max(ttp["continuous", "compact"], ttp["modulation", "compact"])
    assert dose["holiday", "compact"] < 0.7 * dose["continuous", "compact"]
    # invasive: every arm progresses at the same assessment; the holidays with far less drug,
    # modulation with a little less
    assert ttp["holiday", "invasive"] == ttp["continuous", "invasive"] == ttp["modulation", "invasive"]
    assert dose["holiday", "invasive"] < 0.7 * dose["continuous", "invasive"]
    assert dose["modulation", "invasive"] < dose["continuous", "invasive"]
    # motility shortens every strategy
    for a in ("continuous", "holiday", "modulation"):
        assert ttp[a, "invasive"] <= ttp[a, "compact"]
