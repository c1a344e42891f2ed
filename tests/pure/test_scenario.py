"""Scenario validation: units converted once, and one-line errors naming the key path."""

import re
from pathlib import Path

import pytest

from tme.config import scenario as sc
from tme.config.spec import ScenarioError
from tme.config.units import parse_quantity

from minimal import MINIMAL  # the scenario of the fixture `minimal` (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]


def test_units_are_converted_once_to_base_units(minimal):
    s = sc.load(minimal)
    assert s.mesh.size == [1000.0, 500.0]  # mm -> µm; a bare number is in µm
    assert s.drugs["dox"].diffusivity == pytest.approx(16 * 3600)  # µm²/s -> µm²/h
    assert s.time.end == pytest.approx(48.0)


@pytest.mark.parametrize("text, base, default, expected", [
    ("16 um^2/s", "um**2/hour", "um**2/s", 57600.0),
    ("0.5 nm", "um", "nm", 5e-4),
    ("3 day", "hour", "hour", 72.0),
    ("2 mM", "uM", "uM", 2000.0),
    ("50 %", "dimensionless", "dimensionless", 0.5),
    ("0.3 1/day", "1/hour", "1/day", 0.3 / 24),
    ("0.3", "dimensionless", "dimensionless", 0.3),
    (0, "hour", "hour", 0.0),  # zero is zero in every unit
])
def test_parse_quantity(text, base, default, expected):
    assert parse_quantity(text, base, default) == pytest.approx(expected)


@pytest.mark.parametrize("value, base, unit, message", [
    (200, "hour", "hour", "a bare number is ambiguous; write e.g. '200 hour' or '200 day'"),
    ("16", "um**2/hour", "um**2/s", "a bare number is ambiguous; write e.g. '16 um**2/s'"),
    ("9**9**9 hour", "hour", "hour", "powers must be small plain numbers"),
    ("10**400 hour", "hour", "hour", "powers must be small plain numbers"),
    ("(2**12)**12 hour", "hour", "hour", "powers must be small plain numbers"),
    ("1e400 hour", "hour", "hour", "is not a finite number"),
    ("1e308 day", "hour", "hour", "is not a finite number"),
    ("1" * 500 + " hour", "hour", "hour", "too long"),
    ("1/0 hour", "hour", "hour", "cannot read"),
    ("50 %", "hour", "hour", "has dimension dimensionless"),
])
def test_parse_quantity_refuses(value, base, unit, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_quantity(value, base, unit)


@pytest.mark.parametrize("override, expected", [
    ("drugs.dox.difusivity=3", "drugs.dox.difusivity: unknown key 'difusivity' (did you mean 'diffusivity'?)"),
    ("drugs.dox.diffusivity=5 hour", "drugs.dox.diffusivity: '5 hour' has dimension [time]"),
    ("mesh.sise=3", "mesh.sise: unknown key 'sise' (did you mean 'size'?); valid keys here: cells, kind, origin, regions, size, thickness, unit"),
    ("treatment.lines.0.regimen.0.drug=x", "treatment.lines.0.regimen.0.drug: unknown drug 'x'; defined drugs: dox"),
    ("treatment.lines[0].regimen.0.drug=x",
     "treatment.lines[0]: unknown key 'lines[0]' (a list item is a number in the path: 'treatment.lines.0')"),
    ("time.end=-1 day", "time.end: Input should be greater than 0"),
    ("mesh.kind=sphere", "mesh: Input tag 'sphere'"),
    ("drugs.dox.class=magic", "drugs.dox.class: Input should be"),
    ("drugs.dox.decay=fast", "drugs.dox.decay: cannot read 'fast' as a quantity"),
    ("numerics.reaction_kernel=fast",
     "numerics.reaction_kernel: Input should be 'auto', 'compiled' or 'numpy' (got 'fast')"),
    ("time=3", "time: Input should be a valid dictionary"),
])
def test_errors_name_the_key(minimal, override, expected):
    with pytest.raises(ScenarioError) as err:
        sc.load(minimal, [override])
    msg = str(err.value)
    assert "\n" not in msg
    assert expected in msg, msg


def test_missing_required_section(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: t\nmesh: {kind: rectangle, size: [1, 1], cells: [1, 1]}\n")
    with pytest.raises(ScenarioError, match="time: required key is missing"):
        sc.load(p)


def test_bad_yaml_and_missing_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        sc.load(p)
    with pytest.raises(ScenarioError, match="cannot read"):
        sc.load(tmp_path / "nope.yaml")


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(MINIMAL + "time: {end: 3 day}\n")
    with pytest.raises(ScenarioError, match=r"line 8: not valid YAML \(duplicate key 'time' \(first given on line 6\)"):
        sc.load(p)
    p.write_text(MINIMAL.replace("dox: {", "dox: {decay: 0.2 1/hour, ", 1))
    with pytest.raises(ScenarioError, match=r"duplicate key 'decay'"):
        sc.load(p)
    # merge keys are YAML's own way to repeat a mapping, not a duplicate
    p.write_text(MINIMAL + "numerics: &n {rtol: 1e-6}\noutput: {plots: false}\n")
    assert sc.load(p).numerics.rtol == 1e-6


def test_a_binary_file_is_not_a_scenario(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_bytes(bytes(range(256)))
    with pytest.raises(ScenarioError, match=r"not a text file \(byte 0x80 at offset 128 is not UTF-8\)"):
        sc.load(p)


@pytest.mark.parametrize("override, message", [
    ("=5", "--set '=5': the key path is empty"),
    (" =5", "--set ' =5': the key path is empty"),
    ("time..end=1 day", "the key path 'time..end' has an empty part"),
    ("time.end=[1 day", "--set time.end: value '[1 day' is not valid YAML"),
    ("time={end: 1 day, end: 2 day}", "duplicate key 'end'"),
])
def test_bad_overrides(minimal, override, message):
    with pytest.raises(ScenarioError) as err:
        sc.load(minimal, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_dose_of_every_line_is_converted_at_validation(minimal):
    with pytest.raises(ScenarioError, match=r"treatment.lines.1.regimen.0.amount: '5 hour' has dimension \[time\]"):
        sc.load(minimal, ["treatment.lines=[{name: first, regimen: [{drug: dox, amount: 5 uM}]}, "
                          "{name: second, regimen: [{drug: dox, amount: 5 hour}]}]"])


def test_snapshot_fields_are_those_of_the_scenario(minimal):
    s = sc.load(minimal)
    assert s.field_names() == ["dox", "region", "auc_dox", "time_above_ec50_dox"]
    assert s.snapshot_fields() == ["dox"]  # no clones: the transported species
    with pytest.raises(ScenarioError, match=r"output.snapshots.fields.0: no field 'total'; fields of this "
                                            r"scenario: dox, region, auc_dox, time_above_ec50_dox"):
        sc.load(minimal, ["output.snapshots.fields=[total]"])
    with_clones = sc.load(minimal, ["clones={clones: {a: {growth: 0.5 1/day}}}", "oxygen={}"])
    assert set(with_clones.field_names()) >= {"oxygen", "a", "total", "resistant_fraction"}
    assert with_clones.snapshot_fields() == ["total"]


def test_the_misspelt_key_is_named_when_a_required_key_is_missing(minimal):
    with pytest.raises(ScenarioError) as err:
        sc.load(minimal, ["drugs.dox={class: dna_damaging, diffusivty: 16 um^2/s}"])
    assert "drugs.dox.diffusivty: unknown key 'diffusivty' (did you mean 'diffusivity'?)" in str(err.value)


def test_mesh_sizes_follow_mesh_unit(minimal):
    s = sc.load(minimal, ["mesh.unit=mm", "mesh.size=[1.2, 800 um]"])
    assert s.mesh.size == [1200.0, 800.0]
    f = sc.validate({"name": "f", "mesh": {"kind": "file", "path": "/m.msh", "unit": "mm"},
                     "time": {"end": "1 hour"}})
    assert f.mesh.scale == 1000.0


def test_override_paths(minimal):
    s = sc.load(minimal, ["time.end=10 day", "mesh.cells.0=20"])
    assert s.time.end == 240.0 and s.mesh.cells == [20, 5]
    with pytest.raises(ScenarioError, match="--set mesh.cells.7"):
        sc.load(minimal, ["mesh.cells.7.x=1"])
    with pytest.raises(ScenarioError, match="expected key.path=value"):
        sc.load(minimal, ["time.end"])


def test_a_change_inside_a_drug_or_clone_that_does_not_exist_is_refused(minimal):
    """A misspelt drug or clone name must not create a new one with every other value at its
    default; a new entry is set whole, and a change inside an existing one still works."""
    with pytest.raises(ScenarioError) as err:
        sc.load(minimal, ["drugs.doxx.emax=0.1 1/hour"])
    assert str(err.value) == ("--set drugs.doxx.emax: drugs has no entry 'doxx' (entries: dox); a new "
                              "one is set whole, e.g. --set drugs.doxx='{...}'")
    with_clone = sc.load(minimal, ["clones={clones: {a: {growth: 0.5 1/day}}}"])
    with pytest.raises(ScenarioError, match=r"with_changes clones.clones.b.growth: clones.clones has no "
                                            r"entry 'b' \(entries: a\)"):
        with_clone.with_changes({"clones.clones.b.growth": "0.1 1/day"})
    assert len(with_clone.with_changes({"clones.clones.b": {"growth": "0.1 1/day"}}).clones.clones) == 2
    assert with_clone.with_changes({"clones.clones.a.growth": "1 1/day"}).clones.clones["a"].growth == pytest.approx(1 / 24)


def test_resolved_yaml_round_trips_with_units(minimal, tmp_path):
    s = sc.load(minimal)
    text = sc.resolved_yaml(s)
    assert "diffusivity: 16.0 um**2/s" in text
    p = tmp_path / "resolved.yaml"
    p.write_text(text)
    assert sc.load(p) == s


def test_a_required_quantity_stays_required(tmp_path):
    # a default given to one field of a shared quantity type must not leak into another
    p = tmp_path / "s.yaml"
    p.write_text("name: t\nmesh: {kind: rectangle, size: [1, 1], cells: [1, 1]}\ntime: {}\n")
    with pytest.raises(ScenarioError, match="time.end: required key is missing"):
        sc.load(p)


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_reads_back_from_its_resolved_form(config, tmp_path):
    scen = sc.load(config)
    p = tmp_path / "config.resolved.yaml"
    p.write_text(sc.resolved_yaml(scen))
    assert sc.load(p) == scen


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_validates_and_says_what_it_shows(config):
    scen = sc.load(config)
    assert scen.name == config.stem
    header = config.read_text().splitlines()[0]
    assert header.startswith("# ") and len(header) > 20


@pytest.mark.parametrize("overrides, expected", [
    (["time.tolerance=1e-3", "numerics.time_scheme=backward_euler"],
     "numerics.time_scheme: time.tolerance needs the error estimate of 'tr_bdf2'"),
    (["time.tolerance=1e-3", "numerics.lumped_mass=false"],
     "numerics.lumped_mass: time.tolerance needs lumped mass"),
    (["time.tolerance=2"], "time.tolerance: Input should be less than 1"),
])
def test_tolerance_settings_that_cannot_work_are_refused(minimal, overrides, expected):
    with pytest.raises(ScenarioError) as err:
        sc.load(minimal, overrides)
    msg = str(err.value)
    assert "\n" not in msg and expected in msg, msg


def test_tolerance_chooses_tr_bdf2_and_ties_the_krylov_tolerance_to_it(minimal):
    fixed = sc.load(minimal)
    assert fixed.scheme == "backward_euler" and fixed.linear_rtol == 1e-8
    adaptive = sc.load(minimal, ["time.tolerance=1e-3"])
    assert adaptive.scheme == "tr_bdf2" and adaptive.linear_rtol == pytest.approx(1e-4)
    assert sc.load(minimal, ["time.tolerance=1e-3", "numerics.rtol=1e-9"]).linear_rtol == 1e-9
