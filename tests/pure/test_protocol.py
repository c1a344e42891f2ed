"""The treatment protocol on synthetic burden series: RECIST nadir, progression, switching,
stopping, sequencing, and the reference checks of the scenario (no DOLFINx)."""

import math
import re

import pytest
from pydantic import ValidationError

from tme.config.treatment import (AssessmentSpec, CellScale, ProgressionSpec, Size, StopSpec,
                                  TreatmentSpec, cell_scale, check_references, detectable)
from tme.protocol import Protocol, sequence

WEEK = 7 * 24.0
MECH = {"sensitive": None, "t790m": "target_mutation", "met": "bypass", "mdr": "pgp"}


#: burdens counted in cells: one unit of burden is one cell
CELLS = CellScale(volume_per_burden=1.0, cell_volume=1.0)


def treatment(n_lines=2, progression=None, stop=None, every="6 week", lines=None, detection_limit=None):
    lines = lines or [{"name": f"line{i + 1}", "regimen": [{"drug": f"drug{i + 1}", "amount": "5 uM"}]}
                      for i in range(n_lines)]
    extra = {} if detection_limit is None else {"detection_limit": detection_limit}
    return TreatmentSpec.model_validate({"lines": lines, "assessment": {"every": every},
                                         "progression": progression or {}, "stop": stop or {}, **extra})


def run(protocol, burdens, resistant=None):
    """Assess a burden series at the protocol's own times; return the decisions."""
    out = []
    for i, b in enumerate(burdens):
        t = protocol.next_assessment()
        out.append(protocol.assess(t, b, None if resistant is None else resistant[i]))
        if out[-1].stop:
            break
    return out


def kinds(decision):
    return [e.event for e in decision.events]


# --------------------------------------------------------------------------------------------
# Specs


def test_assessment_defaults_and_units():
    a = AssessmentSpec()
    assert a.every == a.first == 6 * WEEK
    a = AssessmentSpec(every="3 week")
    assert a.first == 3 * WEEK  # first defaults to every
    a = AssessmentSpec(every="3 week", first="2 day")
    assert (a.every, a.first) == (3 * WEEK, 48.0)
    assert ProgressionSpec(increase="25 %").increase == pytest.approx(0.25)
    with pytest.raises(ValidationError):
        AssessmentSpec(every=0)
    with pytest.raises(ValidationError):
        StopSpec(on_cure=True, typo=True)


def test_a_resolved_treatment_validates_again_to_the_same_model():
    spec = sequenced_treatment(region="core")
    again = TreatmentSpec.model_validate(spec.model_dump(mode="json", by_alias=True))
    assert again == spec
    assert again.assessment.first == 6 * WEEK
    assert "lines" in TreatmentSpec.model_json_schema(by_alias=True)["properties"]


def test_duplicate_line_names_are_rejected():
    with pytest.raises(ValidationError, match=r"treatment.lines.1.name@ line name 'a' is already used"):
        treatment(lines=[{"name": "a"}, {"name": "a"}])


# --------------------------------------------------------------------------------------------
# Progression


def test_nadir_is_tracked_and_a_20_percent_rise_is_progression_at_the_right_assessment():
    p = Protocol(treatment(1))
    events = p.start(0.0, 100.0)
    assert [e.event for e in events] == ["line_start"] and p.line.name == "line1"
    assert p.next_assessment() == 6 * WEEK
    # shrinks to a nadir of 40, then regrows: 47 < 48 = 1.2 * 40 is stable, 49 is progression
    decisions = run(p, [70.0, 40.0, 45.0, 47.0, 49.0, 10.0])
    assert [d.progression for d in decisions] == [False, False, False, False, True]
    assert decisions[-1].stop and decisions[-1].events[-1].reason == "lines exhausted"
    assert p.history[-1].time == 5 * 6 * WEEK
    assert [r.nadir for r in p.history] == [100.0, 100.0, 70.0, 40.0, 40.0, 40.0]
    assert p.history[-1].threshold == pytest.approx(48.0)
    assert p.next_assessment() == math.inf


def test_progression_at_the_first_assessment():
    p = Protocol(treatment(2))
    p.start(0.0, 100.0)
    d = p.assess(6 * WEEK, 121.0)
    assert kinds(d) == ["assessment", "progression", "switch"]
    assert d.new_line.name == "line2" and not d.stop
    assert "burden 121 above (1 + 0.2) × nadir 100" in d.events[1].reason


def test_zero_nadir_any_regrowth_above_min_increase_is_progression():
    p = Protocol(treatment(1, progression={"min_increase": "0.5 cell"}, stop={"stop_when_exhausted": True},
                           detection_limit="0 cell"), scale=CELLS)
    p.start(0.0, 10.0)
    d = run(p, [0.0, 0.0, 0.4, 0.6])
    assert [x.progression for x in d] == [False, False, False, True]
    # without min_increase the smallest regrowth from zero counts
    p = Protocol(treatment(1))
    p.start(0.0, 0.0)
    assert not p.assess(p.next_assessment(), 0.0).progression
    assert p.assess(p.next_assessment(), 1e-9).progression


def test_min_increase_suppresses_a_small_relative_rise():
    spec = treatment(1, progression={"min_increase": "5 cell"})
    p = Protocol(spec, scale=CELLS)
    p.start(0.0, 10.0)
    d = run(p, [2.0, 4.0, 7.5])  # 4 = 2 × nadir, but only 2 above it; 7.5 is 5.5 above
    assert [x.progression for x in d] == [False, False, True]
    assert p.history[2].threshold == pytest.approx(7.0)


def test_resistant_fraction_rule_alone_and_both_rules_at_once():
    spec = treatment(3, progression={"resistant_fraction": "50 %"})
    p = Protocol(spec)
    p.start(0.0, 100.0)
    d = p.assess(p.next_assessment(), 50.0, resistant_fraction=0.6)
    assert kinds(d) == ["assessment", "progression", "switch"]
    assert d.events[1].data["rules"] == ["resistant_fraction"]
    assert d.events[1].reason == "resistant fraction 0.6 above 0.5"
    # on line 2 (baseline 50): burden and resistant fraction both fire: one event, both reasons
    assert not p.assess(p.next_assessment(), 30.0, resistant_fraction=0.4).progression
    d = p.assess(p.next_assessment(), 40.0, resistant_fraction=0.9)
    progressions = [e for e in d.events if e.event == "progression"]
    assert len(progressions) == 1
    assert progressions[0].data["rules"] == ["burden", "resistant_fraction"]
    assert "burden 40" in progressions[0].reason and "resistant fraction 0.9" in progressions[0].reason
    assert d.new_line.name == "line3"
    with pytest.raises(ValueError, match="needs the resistant fraction"):
        p.assess(p.next_assessment(), 40.0)


def test_switching_resets_the_nadir_and_the_assessment_clock():
    p = Protocol(treatment(2, every="4 week"))
    p.start(0.0, 100.0)
    run(p, [20.0, 30.0])  # progression on line 1 at week 8 (30 > 24)
    assert p.line.name == "line2" and p.line_start == 8 * WEEK
    assert p.nadir == 30.0  # the burden at the switch, not line 1's nadir of 20
    assert p.next_assessment() == 12 * WEEK
    # 35 would be progression against 20, but not against the new baseline 30
    d = p.assess(12 * WEEK, 35.0)
    assert not d.progression and not d.stop
    assert [(r.line, r.outcome) for r in p.history] == [
        ("line1", "start"), ("line1", "continue"), ("line1", "switch"), ("line2", "start"),
        ("line2", "continue")]
    switch = [e for e in p.events if e.event == "switch"][0]
    assert switch.data["from"] == "line1" and switch.data["name"] == "line2"
    assert switch.data["regimen"] == ["drug2"]


def test_lines_exhausted_stops_or_continues():
    p = Protocol(treatment(2))
    p.start(0.0, 100.0)
    d = run(p, [130.0, 200.0, 300.0])
    assert [x.stop for x in d] == [False, True]
    assert d[-1].events[-1].event == "stop" and d[-1].events[-1].reason == "lines exhausted"
    assert p.end(1e4) == []  # already stopped: no second stop
    with pytest.raises(RuntimeError):
        p.assess(1e4, 1.0)

    p = Protocol(treatment(1, stop={"stop_when_exhausted": False}))
    p.start(0.0, 100.0)
    d = run(p, [130.0, 200.0, 300.0])
    assert [x.progression for x in d] == [True, False, False]  # the continued line is not re-judged
    assert not any(x.stop for x in d)
    assert "no further line" in d[0].events[1].reason
    assert p.next_assessment() == 4 * 6 * WEEK
    (end,) = p.end(1000.0)
    assert (end.event, end.reason) == ("stop", "end time")


def test_cure_stops_the_treatment():
    p = Protocol(treatment(2, detection_limit="1 cell"), scale=CELLS)
    p.start(0.0, 100.0)
    d = run(p, [10.0, 1.5, 0.5, 0.1])
    assert len(d) == 3 and d[-1].stop
    assert kinds(d[-1]) == ["assessment", "cure", "stop"]
    assert "not detectable" in d[-1].events[0].reason and d[-1].events[0].data["detectable"] is False
    assert (d[-1].events[-1].event, d[-1].events[-1].reason) == ("stop", "cured: not detectable")
    assert p.history[-1].outcome == "cured"


# --------------------------------------------------------------------------------------------
# Detection limit and cell counts


def test_a_burden_becomes_a_cell_count():
    # 2-D: a burden is an area; times the slice thickness it is a volume, over the cell volume a count
    s2 = cell_scale(2, thickness=18.0, cell_volume=3000.0)
    assert s2.cells(3000.0 / 18.0) == pytest.approx(1.0)
    assert s2.cells(1.2e6 * 0.5) == pytest.approx(1.2e6 * 0.5 * 18.0 / 3000.0)
    s3 = cell_scale(3, thickness=None, cell_volume=2000.0)
    assert s3.cells(1e9) == pytest.approx(5e5)  # 1 mm³ of 2000 µm³ cells
    assert s3.in_cells(Size(1e6, "um**3")) == pytest.approx(500.0)
    assert s3.in_cells(Size(7.0, "cell")) == 7.0
    with pytest.raises(ValueError, match="slice thickness"):
        cell_scale(2, thickness=None, cell_volume=3000.0)


def test_detectable_is_at_or_above_the_limit():
    s = cell_scale(3, None, 3000.0)
    limit = Size(10.0, "cell")
    assert detectable(3e4, limit, s) and not detectable(3e4 * (1 - 1e-9), limit, s)
    assert detectable(3e4, Size(3e4, "um**3"), s) and not detectable(2.9e3, Size(3e3, "um**3"), s)


@pytest.mark.parametrize("text, value, unit", [
    ("100 cell", 100.0, "cell"), ("1e3 cells", 1e3, "cell"), ("1 mm**3", 1e9, "um**3"),
    ("2e4 um^3", 2e4, "um**3"), ("1 pL", 1e3, "um**3"), (0, 0.0, "cell"),
])
def test_tumour_sizes_are_cells_or_volumes(text, value, unit):
    size = TreatmentSpec(detection_limit=text).detection_limit
    assert (size.unit, size.value) == (unit, pytest.approx(value))
    again = TreatmentSpec.model_validate(TreatmentSpec(detection_limit=text).model_dump(mode="json"))
    assert again.detection_limit == size


@pytest.mark.parametrize("text, message", [
    (5, "a bare number is ambiguous"), ("5", "a bare number is ambiguous"),
    ("3 um**2", "has dimension"), ("2 hour", "has dimension"), ("-1 cell", ">= 0"),
    ("9**9**9 cell", "powers must be small"),
])
def test_tumour_size_errors(text, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        TreatmentSpec(detection_limit=text)


def test_no_progression_is_called_on_a_burden_below_the_detection_limit():
    # 2e-17 "above 1.2 × nadir 5e-24" would be progression; counted in cells, both are nothing
    p = Protocol(treatment(2, detection_limit="1 cell", stop={"on_cure": False}), scale=CELLS)
    p.start(0.0, 100.0)
    d = run(p, [5e-24, 2e-17, 0.9, 50.0])
    assert [x.progression for x in d] == [False, False, False, True]
    assert kinds(d[0]) == ["assessment", "cure"]       # the cure is an event, logged once
    assert kinds(d[1]) == ["assessment"] and kinds(d[2]) == ["assessment"]
    assert all("not detectable" in x.events[0].reason for x in d[:3])
    assert [r.outcome for r in p.history[1:4]] == ["not detectable"] * 3
    # a relapse to a detectable burden is judged against the nadir: progression, next line
    assert d[3].new_line.name == "line2" and "detectable" not in d[3].events[1].reason
    assert d[3].events[0].data["cells"] == 50.0 and d[3].events[0].data["detectable"] is True


def test_the_resistant_fraction_rule_needs_a_detectable_tumour_too():
    p = Protocol(treatment(2, progression={"resistant_fraction": 0.5}, detection_limit="10 cell",
                           stop={"on_cure": False}), scale=CELLS)
    p.start(0.0, 100.0)
    d = run(p, [5.0, 20.0], resistant=[0.99, 0.99])
    assert [x.progression for x in d] == [False, True]


def test_a_volume_detection_limit_counts_in_cells_of_the_declared_volume():
    scale = cell_scale(2, thickness=20.0, cell_volume=2000.0)  # one cell = 100 µm² of slice
    p = Protocol(treatment(1, detection_limit="1e5 um**3"), scale=scale)  # 50 cells = 5000 µm²
    p.start(0.0, 1e5)
    assert not p.assess(p.next_assessment(), 5001.0).stop
    d = p.assess(p.next_assessment(), 4999.0)
    assert d.stop and kinds(d) == ["assessment", "cure", "stop"]
    assert d.events[0].data["detection_limit_cells"] == pytest.approx(50.0)


def test_min_increase_in_cells_needs_a_scale():
    with pytest.raises(ValueError, match="CellScale"):
        Protocol(treatment(1, progression={"min_increase": "5 cell"}))


def test_assessments_land_on_the_schedule_even_slightly_off():
    p = Protocol(treatment(1, every="1 week"))
    p.start(0.0, 10.0)
    p.assess(WEEK * (1 - 1e-13), 9.0)  # the time loop landed a rounding error short
    assert p.next_assessment() == 2 * WEEK
    p.assess(3.5 * WEEK, 9.0)  # an off-schedule assessment keeps the schedule
    assert p.next_assessment() == 4 * WEEK


def test_timeseries_columns():
    p = Protocol(treatment(1))
    p.start(0.0, 10.0)
    p.assess(p.next_assessment(), 5.0)
    ts = p.timeseries()
    assert ts["time"] == [0.0, 6 * WEEK] and ts["burden"] == [10.0, 5.0]
    assert ts["nadir"] == [10.0, 10.0] and ts["outcome"] == ["start", "continue"]


# --------------------------------------------------------------------------------------------
# Sequencing


def test_sequence_detection_threshold_and_dominant_mechanism():
    fr = {"sensitive": 0.5, "t790m": 0.2, "met": 0.26, "mdr": 0.04}
    r = sequence(fr, MECH, 0.05)
    assert set(r["detected"]) == {"sensitive", "t790m", "met"}  # mdr below the limit
    assert r["dominant"] == "bypass"
    assert r["mechanisms"] == pytest.approx({"target_mutation": 0.2, "bypass": 0.26})
    assert sequence(fr, MECH, 0.3)["dominant"] is None  # only the sensitive clone is seen
    # amounts are normalised to fractions of the sample; mdr is 0.4 of this one
    r = sequence({"sensitive": 3.0, "mdr": 2.0}, MECH, 0.05)
    assert r["dominant"] == "pgp" and r["detected"]["mdr"] == pytest.approx(0.4)
    assert sequence({"sensitive": 0.0}, MECH, 0.05)["detected"] == {}
    with pytest.raises(ValueError, match="clone 'x' has no mechanism"):
        sequence({"x": 1.0}, MECH, 0.05)


def sequenced_treatment(region=None, detection=0.05):
    seq = {"choose": {"target_mutation": ["osimertinib"], "bypass": ["anti_met", "gefitinib"],
                      "pgp": ["tariquidar", "dox"]},
           "detection": detection, "region": region}
    return treatment(lines=[
        {"name": "first", "regimen": [{"drug": "gefitinib", "amount": "1 uM", "every": "1 day",
                                       "cycles": 20}]},
        {"name": "personalised", "sequencing": seq,
         "regimen": [{"drug": "osimertinib", "amount": "1 uM"}, {"drug": "anti_met", "amount": "1 uM"},
                     {"drug": "gefitinib", "amount": "1 uM"}, {"drug": "tariquidar", "amount": "1 uM"},
                     {"drug": "dox", "amount": "5 uM"}, {"drug": "backbone", "amount": "2 uM"}]}])


def test_sequencing_gives_the_drugs_mapped_to_the_dominant_mechanism():
    p = Protocol(sequenced_treatment(), MECH)
    p.start(0.0, 100.0)
    d = p.assess(p.next_assessment(), 150.0, clone_fractions={"sensitive": 0.3, "t790m": 0.6, "met": 0.1})
    assert kinds(d) == ["assessment", "progression", "sequencing", "switch"]
    # the drugs chosen for the mechanism, plus the backbone no choose list names
    assert [x.drug for x in d.new_line.regimen] == ["osimertinib", "backbone"]
    seq = d.events[2]
    assert seq.data["dominant"] == "target_mutation" and seq.data["chosen"] == ["osimertinib"]
    assert "dominant mechanism target_mutation (0.6 of the whole tumour) -> osimertinib" == seq.reason
    assert p.line.regimen == d.new_line.regimen


def test_sequencing_respects_the_detection_threshold():
    fr = {"sensitive": 0.9, "mdr": 0.04, "met": 0.06}
    p = Protocol(sequenced_treatment(detection=0.05), MECH)
    p.start(0.0, 100.0)
    d = p.assess(p.next_assessment(), 150.0, clone_fractions=fr)
    assert [x.drug for x in d.new_line.regimen] == ["anti_met", "gefitinib", "backbone"]
    # a less sensitive assay sees nothing resistant: the full regimen, and the event says so
    p = Protocol(sequenced_treatment(detection=0.1), MECH)
    p.start(0.0, 100.0)
    d = p.assess(p.next_assessment(), 150.0, clone_fractions=fr)
    assert len(d.new_line.regimen) == 6
    assert "no resistant clone detected" in d.events[2].reason and "full regimen kept" in d.events[2].reason


def test_sequencing_a_biopsy_region():
    whole = {"sensitive": 0.2, "mdr": 0.7, "met": 0.1}
    regions = {"core": {"sensitive": 0.1, "mdr": 0.2, "met": 0.7}, "rim": {"mdr": 1.0}}
    p = Protocol(sequenced_treatment(region="core"), MECH)
    p.start(0.0, 100.0)
    d = p.assess(p.next_assessment(), 150.0, clone_fractions=whole, region_fractions=regions)
    assert d.events[2].data["region"] == "core" and d.events[2].data["dominant"] == "bypass"
    assert "of the region core" in d.events[2].reason
    p = Protocol(sequenced_treatment(region="stroma"), MECH)
    p.start(0.0, 100.0)
    with pytest.raises(ValueError, match=r"treatment.lines.1.sequencing.region: no clone fractions "
                                         r"for region 'stroma'; regions given: core, rim"):
        p.assess(p.next_assessment(), 150.0, clone_fractions=whole, region_fractions=regions)


def test_sequencing_on_the_first_line():
    spec = sequenced_treatment()
    spec = spec.model_copy(update={"lines": spec.lines[1:]})
    p = Protocol(spec, MECH)
    events = p.start(0.0, 100.0, clone_fractions={"sensitive": 0.5, "mdr": 0.5})
    assert [e.event for e in events] == ["sequencing", "line_start"]
    assert [x.drug for x in p.line.regimen] == ["tariquidar", "dox", "backbone"]


# --------------------------------------------------------------------------------------------
# Reference checks

DRUGS = {"gefitinib", "osimertinib", "anti_met", "tariquidar", "dox", "backbone"}


def test_check_references_accepts_a_consistent_treatment():
    check_references(sequenced_treatment(), DRUGS, MECH, regions={"tumour"})
    check_references(treatment(0), set(), {})


@pytest.mark.parametrize("edit, clones, message", [
    (lambda d: d["lines"][0]["regimen"][0].update(drug="gefitnib"), MECH,
     "@treatment.lines.0.regimen.0.drug@ unknown drug 'gefitnib'; defined drugs: anti_met, backbone"),
    (lambda d: d["lines"][1]["sequencing"]["choose"].update(pgp=["tariquidar", "doxo"]), MECH,
     "@treatment.lines.1.sequencing.choose.pgp.1@ unknown drug 'doxo'; defined drugs:"),
    (lambda d: d["lines"][1]["regimen"].pop(), MECH | {"x": "dna_repair"},
     "@treatment.lines.1.sequencing.choose@ no drug for mechanism 'dna_repair' (carried by clone x); "
     "map every mechanism the clones carry to drugs: bypass, dna_repair, pgp, target_mutation"),
    (lambda d: d["lines"][1]["sequencing"]["choose"].update(efflux=["dox"]), MECH,
     "@treatment.lines.1.sequencing.choose.efflux@ unknown mechanism 'efflux'; valid mechanisms: "
     "target_mutation, bypass, pgp, dna_repair, caf_shield"),
    (lambda d: d["lines"][1]["regimen"].pop(0), MECH,
     "@treatment.lines.1.sequencing.choose.target_mutation.0@ drug 'osimertinib' has no dose in "
     "treatment.lines.1.regimen"),
    (lambda d: d["lines"][1]["sequencing"].update(region="core"), MECH,
     "@treatment.lines.1.sequencing.region@ unknown region 'core'; mesh regions: tumour"),
])
def test_check_references_errors_name_the_key_path(edit, clones, message):
    data = sequenced_treatment().model_dump()
    edit(data)
    with pytest.raises(ValueError) as exc:
        check_references(TreatmentSpec.model_validate(data), DRUGS, clones, regions={"tumour"})
    assert str(exc.value).startswith(message)


def test_a_clone_mechanism_missing_from_choose_is_an_error_only_when_a_clone_has_it():
    spec = sequenced_treatment()
    check_references(spec, DRUGS, {"sensitive": None, "mdr": "pgp"})
    with pytest.raises(ValueError, match="no drug for mechanism 'caf_shield'"):
        check_references(spec, DRUGS, {"sensitive": None, "shielded": "caf_shield"})


# --------------------------------------------------------------------------------------------
# Adaptive rules: treatment holiday and dose modulation


from tme.config.treatment import HolidaySpec, ModulationSpec  # noqa: E402
from tme.protocol import given_level, holiday, modulate, time_off  # noqa: E402


def adaptive(holiday_spec=None, modulation=None, every="4 week", progression=None, lines=1,
             baseline=None, drugs=("drug1",)):
    regimen = [{"drug": d, "amount": "5 uM", "every": "1 week", "cycles": 50} for d in drugs]
    adapt = {"every": every}
    if holiday_spec is not None:
        adapt["holiday"] = holiday_spec
    if modulation is not None:
        adapt["modulation"] = modulation
    if baseline is not None:
        adapt["baseline"] = baseline
    spec = [{"name": f"line{i + 1}", "regimen": regimen, "adapt": adapt} for i in range(lines)]
    return TreatmentSpec.model_validate({"lines": spec, "assessment": {"every": "6 week"},
                                         "progression": {"reference": "baseline"} if progression is None
                                         else progression})


def rules(protocol, burdens):
    """Feed ``burdens`` at the protocol's own assessment times; (time, decision) of each."""
    out = []
    for b in burdens:
        t = protocol.next_assessment()
        out.append((t, protocol.assess(t, b)))
        if out[-1][1].stop:
            break
    return out


def test_holiday_pauses_and_resumes_exactly_at_the_thresholds():
    h = HolidaySpec(pause_below=0.5, resume_above=1.0)
    assert holiday(False, 50.0, 100.0, h) is True          # at 50 % exactly: paused
    assert holiday(False, 50.0000001, 100.0, h) is False
    assert holiday(True, 100.0, 100.0, h) is False         # at 100 % exactly: resumed
    assert holiday(True, 99.9999999, 100.0, h) is True
    assert holiday(True, 20.0, 100.0, h) is True           # paused stays paused below
    with pytest.raises(ValidationError, match="pause_below 1.2 must be below resume_above 1"):
        HolidaySpec(pause_below=1.2)


def test_holiday_on_a_burden_series_with_its_own_cadence():
    p = Protocol(adaptive({"pause_below": 0.5, "resume_above": 1.0}, every="4 week"))
    p.start(0.0, 100.0)
    assert p.next_assessment() == 4 * WEEK                 # rules every 4 weeks, progression at 6
    assert p.dose_factor("drug1") == 1.0
    out = rules(p, [70.0, 50.0, 40.0, 80.0])
    assert p.dose_factor("drug1") == 0.0
    out += rules(p, [100.0])
    assert [t for t, _ in out] == [4 * WEEK, 6 * WEEK, 8 * WEEK, 12 * WEEK, 16 * WEEK]
    ev = [kinds(d) for _, d in out]
    assert ev[0] == []                                     # rule assessment: nothing changes
    assert ev[1] == ["assessment"]                         # progression only: 50 % does not pause
    assert ev[2] == ["pause"]                              # rule: 40 <= 50, paused at week 8
    assert ev[3] == ["assessment"]                         # both due: 80 < 100, still paused
    assert ev[4] == ["resume"] and p.dose_factor("drug1") == 1.0
    assert p.holidays == [[8 * WEEK, 16 * WEEK]]


def test_never_reaching_the_pause_threshold_never_pauses():
    p = Protocol(adaptive({"pause_below": 0.5}, every="1 week"))
    p.start(0.0, 100.0)
    for t, d in rules(p, [90.0, 70.0, 51.0, 60.0, 55.0, 50.5, 80.0]):
        assert "pause" not in kinds(d)
        assert p.dose_factor("drug1") == 1.0
    assert p.holidays == [] and p.off_drug(100 * WEEK) == 0.0


def test_oscillation_pauses_and_resumes_at_consecutive_assessments():
    p = Protocol(adaptive({"pause_below": 0.5, "resume_above": 1.0}, every="1 week"))
    p.start(0.0, 100.0)
    series = [50.0, 100.0, 50.0, 100.0]
    got = [[k for k in kinds(d) if k in ("pause", "resume")] for _, d in rules(p, series)]
    assert got == [["pause"], ["resume"], ["pause"], ["resume"]]
    assert p.holidays == [[1 * WEEK, 2 * WEEK], [3 * WEEK, 4 * WEEK]]
    assert p.off_drug(10 * WEEK) == pytest.approx(2 * WEEK)
    assert time_off([[1.0, math.nan]], 5.0) == 4.0         # an open holiday counts to the end


def test_holiday_of_named_drugs_keeps_the_others():
    p = Protocol(adaptive({"drugs": ["drug2"]}, every="1 week", drugs=("drug1", "drug2")))
    p.start(0.0, 100.0)
    rules(p, [40.0])
    assert p.paused
    assert p.dose_factor("drug2") == 0.0 and p.dose_factor("drug1") == 1.0


def test_declared_baseline_is_a_size():
    p = Protocol(adaptive({"pause_below": 0.5}, every="1 week", baseline="200 cell"), scale=CELLS)
    p.start(0.0, 100.0)
    assert p.baseline == 200.0
    rules(p, [100.0])                                      # 100 <= 0.5 × 200: paused
    assert p.paused


def test_modulation_steps_bounds_and_skip_floor():
    m = ModulationSpec(rise=0.2, rise_factor=1.5, fall=0.2, fall_factor=0.5, min_level=0.125,
                       max_level=2.0, skip_below=0.3)
    assert modulate(1.0, 120.0, 100.0, m) == 1.5           # +20 % exactly: up
    assert modulate(1.0, 119.9, 100.0, m) == 1.0           # between: unchanged
    assert modulate(1.0, 80.0, 100.0, m) == 0.5            # -20 % exactly: down
    assert modulate(1.0, 80.1, 100.0, m) == 1.0
    assert modulate(1.5, 200.0, 100.0, m) == 2.0           # capped at max_level
    assert modulate(0.25, 10.0, 100.0, m) == 0.125         # floored at min_level
    assert modulate(1.0, 1.0, 0.0, m) == 1.5               # regrowth from nothing is a rise
    assert given_level(0.25, m) == 0.0 and given_level(0.3, m) == 0.3  # skipped below the floor
    for bad, msg in [({"min_level": 1.5}, "must hold the starting level 1"),
                     ({"skip_below": 1.5}, "skip_below 1.5 is above the starting level"),
                     ({"fall": 1.0}, "fall")]:
        with pytest.raises(ValidationError, match=msg):
            ModulationSpec(**bad)


def test_modulation_on_a_burden_series():
    spec = adaptive(modulation={"min_level": 0.25, "skip_below": 0.5}, every="1 week",
                    progression={"reference": "baseline", "increase": 10})
    p = Protocol(spec)
    p.start(0.0, 100.0)
    levels = []
    for b in [70.0, 50.0, 45.0, 60.0, 90.0, 200.0, 400.0]:
        rules(p, [b])
        levels.append((p.level, p.dose_factor("drug1")))
    assert levels == [(0.5, 0.5), (0.25, 0.0), (0.25, 0.0), (0.375, 0.0), (0.5625, 0.5625),
                      (0.84375, 0.84375), (1.265625, 1.265625)]
    ev = [e for e in p.events if e.event == "modulation"]
    assert len(ev) == 6 and ev[1].data["skipped"] and "doses skipped" in ev[1].reason


def test_progression_while_on_holiday_switches_and_the_new_line_starts_treated():
    p = Protocol(adaptive({"pause_below": 0.5}, every="2 week", lines=2))
    p.start(0.0, 100.0)
    rules(p, [40.0])                                       # week 2: paused
    assert p.paused and p.dose_factor("drug1") == 0.0
    (t, rule), = rules(p, [90.0])                          # week 4: still paused (90 < 100)
    assert t == 4 * WEEK and p.paused
    (t, d), = rules(p, [130.0])                            # week 6: both due; 130 > 1.2 × 100
    assert t == 6 * WEEK and d.new_line is not None and d.new_line.name == "line2"
    assert "resume" not in kinds(d)                        # the switching line applies no rule
    assert not p.paused and p.level == 1.0 and p.dose_factor("drug1") == 1.0
    assert p.holidays == [[2 * WEEK, 6 * WEEK]]            # closed by the switch
    assert p.next_assessment() == 8 * WEEK                 # the new line's own rule clock


def test_baseline_reference_lets_a_holiday_regrow_without_progression():
    nadir_rule = Protocol(adaptive({"pause_below": 0.5}, every="6 week", progression={}))
    base_rule = Protocol(adaptive({"pause_below": 0.5}, every="6 week"))
    for p in (nadir_rule, base_rule):
        p.start(0.0, 100.0)
        rules(p, [50.0, 90.0])
    assert any(e.event == "progression" for e in nadir_rule.events)   # 90 > 1.2 × nadir 50
    assert not any(e.event == "progression" for e in base_rule.events)


def test_adaptive_state_round_trips():
    import json

    p = Protocol(adaptive({"pause_below": 0.5}, modulation={}, every="1 week"))
    p.start(0.0, 100.0)
    rules(p, [40.0, 30.0])
    q = Protocol(p.spec)
    q.restore(json.loads(json.dumps(p.state())))
    for b in [60.0, 110.0]:
        (ta, da), = rules(p, [b])
        (tb, db), = rules(q, [b])
        assert (ta, kinds(da)) == (tb, kinds(db))
    assert (q.paused, q.level, q.holidays) == (p.paused, p.level, p.holidays)


def test_adapt_errors_name_the_key():
    with pytest.raises(ValidationError, match="declare a holiday, a modulation or both"):
        TreatmentSpec.model_validate({"lines": [{"name": "a", "adapt": {}}]})
    spec = adaptive({"drugs": ["drug9"]})
    with pytest.raises(ValueError, match=r"treatment.lines.0.adapt.holiday.drugs.0@ drug 'drug9' has no dose"):
        check_references(spec, {"drug1", "drug9"}, {})


@pytest.mark.parametrize("override, message", [
    ("treatment.lines.0.adapt.holiday.pause_below=1.5",
     "treatment.lines.0.adapt.holiday: pause_below 1.5 must be below resume_above 1"),
    ("treatment.lines.0.adapt.modulation={min_level: 2}",
     "treatment.lines.0.adapt.modulation: min_level 2 and max_level 2 must hold the starting level 1"),
    ("treatment.lines.0.adapt.holiday.drugs=[bar]",
     "treatment.lines.0.adapt.holiday.drugs.0: drug 'bar' has no dose in treatment.lines.0.regimen"),
    ("treatment.lines.0.adapt.baseline=5", "treatment.lines.0.adapt.baseline: a bare number is ambiguous"),
    ("treatment.limits={therapy: {max_cumulative: 5}}",
     "treatment.limits.therapy.max_cumulative: a bare number is ambiguous"),
    ("treatment.limits={foo: {max_peak: 1 uM}}", "treatment.limits.foo: unknown drug 'foo'; defined drugs: therapy"),
    ("treatment.limits={therapy: {policy: reduce}}",
     "treatment.limits.therapy: declare max_cumulative, max_peak or max_auc"),
    ("treatment.limits={therapy: {max_peak: 1 mg}}", "treatment.limits.therapy.max_peak"),
])
def test_bad_adaptive_keys_are_one_line_errors_naming_the_key(override, message):
    from pathlib import Path

    from tme.config import scenario
    from tme.config.spec import ScenarioError

    config = Path(__file__).resolve().parents[2] / "configs" / "adaptive.yaml"
    with pytest.raises(ScenarioError) as err:
        scenario.load(config, [override])
    text = str(err.value)
    assert "\n" not in text and message in text, text


def test_an_auc_limit_needs_a_cycle():
    spec = TreatmentSpec.model_validate({"lines": [{"name": "a", "regimen": [{"drug": "d", "amount": "1 uM"}]}],
                                         "limits": {"d": {"max_auc": "5 uM*hour"}}})
    with pytest.raises(ValueError, match=r"treatment.limits.d.auc_window@ dose treatment.lines.0.regimen.0 "
                                         r"of d has no cycle period"):
        check_references(spec, {"d"}, {})
