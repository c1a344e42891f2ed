"""Scenario validation: units converted once, and one-line errors naming the key path."""

import subprocess
import sys
from pathlib import Path

import pytest

from solver import scenario as sc
from solver.spec import ScenarioError
from solver.units import parse_quantity

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """
name: t
mesh: {kind: rectangle, size: [1 mm, 500], cells: [10, 5]}
drugs:
  dox: {class: dna_damaging, diffusivity: 16 um^2/s, decay: 0.1 1/hour}
time: {end: 2 day}
treatment: {lines: [{name: first, regimen: [{drug: dox, amount: 5 uM}]}]}
"""


@pytest.fixture
def minimal(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(MINIMAL)
    return p


def test_units_are_converted_once_to_base_units(minimal):
    s = sc.load(minimal)
    assert s.mesh.size == [1000.0, 500.0]  # mm -> µm; a bare number is in µm
    assert s.drugs["dox"].diffusivity == pytest.approx(16 * 3600)  # µm²/s -> µm²/h
    assert s.time.end == pytest.approx(48.0)


@pytest.mark.parametrize("text, base, default, expected", [
    ("16 um^2/s", "um**2/hour", "um**2/s", 57600.0),
    (16, "um**2/hour", "um**2/s", 57600.0),
    ("0.5 nm", "um", "nm", 5e-4),
    ("3 day", "hour", "hour", 72.0),
    ("2 mM", "uM", "uM", 2000.0),
    ("50 %", "dimensionless", "dimensionless", 0.5),
    ("0.3", "1/hour", "1/day", 0.3 / 24),
])
def test_parse_quantity(text, base, default, expected):
    assert parse_quantity(text, base, default) == pytest.approx(expected)


@pytest.mark.parametrize("override, expected", [
    ("drugs.dox.difusivity=3", "drugs.dox.difusivity: unknown key (did you mean 'diffusivity'?)"),
    ("drugs.dox.diffusivity=5 hour", "drugs.dox.diffusivity: '5 hour' has dimension [time]"),
    ("mesh.sise=3", "mesh.sise: unknown key (did you mean 'size'?); valid keys here: cells, kind, origin, regions, size"),
    ("treatment.lines.0.regimen.0.drug=x", "treatment.lines.0.regimen.0.drug: unknown drug 'x'; defined drugs: dox"),
    ("time.end=-1 day", "time.end: Input should be greater than or equal to 0"),
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


def test_override_paths(minimal):
    s = sc.load(minimal, ["time.end=10 day", "mesh.cells.0=20"])
    assert s.time.end == 240.0 and s.mesh.cells == [20, 5]
    with pytest.raises(ScenarioError, match="--set mesh.cells.7"):
        sc.load(minimal, ["mesh.cells.7.x=1"])
    with pytest.raises(ScenarioError, match="expected key.path=value"):
        sc.load(minimal, ["time.end"])


def test_resolved_yaml_round_trips_with_units(minimal, tmp_path):
    s = sc.load(minimal)
    text = sc.resolved_yaml(s)
    assert "57600.0 um**2/hour" in text
    p = tmp_path / "resolved.yaml"
    p.write_text(text)
    assert sc.load(p) == s


def _tme(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "solver", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("override, key", [
    ("drugs.dox.difusivity=3", "drugs.dox.difusivity"),
    ("drugs.dox.diffusivity=5 hour", "drugs.dox.diffusivity"),
])
def test_cli_validate_one_line_and_nonzero(minimal, override, key):
    p = _tme("validate", str(minimal), "--set", override)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in p.stderr


def test_cli_validate_ok_and_schema(minimal):
    p = _tme("validate", str(minimal))
    assert p.returncode == 0 and "diffusivity: 57600.0 um**2/hour" in p.stdout
    p = _tme("schema")
    assert p.returncode == 0 and '"drugs"' in p.stdout
    p = _tme("--version")
    assert p.returncode == 0 and p.stdout.startswith("tme ")


def test_a_required_quantity_stays_required(tmp_path):
    # a default given to one field of a shared quantity type must not leak into another
    p = tmp_path / "s.yaml"
    p.write_text("name: t\nmesh: {kind: rectangle, size: [1, 1], cells: [1, 1]}\ntime: {}\n")
    with pytest.raises(ScenarioError, match="time.end: required key is missing"):
        sc.load(p)


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_validates_and_says_what_it_shows(config):
    scen = sc.load(config)
    assert scen.name == config.stem
    header = config.read_text().splitlines()[0]
    assert header.startswith("# ") and len(header) > 20


def test_global_options_before_or_after_the_command(minimal):
    assert _tme("--quiet", "validate", str(minimal), "--quiet-ok").returncode == 0
    p = _tme("validate", str(minimal), "--quiet-ok", "--log-all-ranks", "-q")
    assert p.returncode == 0, p.stderr


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
    assert adaptive.scheme == "tr_bdf2" and adaptive.linear_rtol == pytest.approx(1e-5)
    assert sc.load(minimal, ["time.tolerance=1e-3", "numerics.rtol=1e-9"]).linear_rtol == 1e-9
