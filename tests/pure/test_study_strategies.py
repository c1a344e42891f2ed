"""One parser and one way of applying the strategies of tme cohort and tme forecast."""

import pytest

from tme.config.spec import ScenarioError
from tme.studies import strategies

BASE = {"name": "s", "time": {"end": "10 day", "dt": "1 hour"},
        "treatment": {"assessment": {"every": "1 week", "first": "1 week"}}}


def test_changes_apply_in_the_order_given_and_name_their_paths(tmp_path):
    frag = tmp_path / "f.yaml"
    frag.write_text("time: {dt: 2 hour}\ntreatment.assessment.every: 2 week\n")
    (a, b) = strategies.parse([f"a={frag}", "a=time.dt=3 hour", "b="])
    data, paths = strategies.apply(BASE, a)
    assert data["time"] == {"end": "10 day", "dt": "3 hour"}                         # the later change wins
    assert data["treatment"]["assessment"] == {"every": "2 week", "first": "1 week"}   # merged, kept
    assert paths == ["time.dt", "treatment.assessment.every", "time.dt"] and a.files == [frag]
    assert BASE["time"]["dt"] == "1 hour"                                             # a copy
    assert strategies.apply(BASE, b) == (BASE, []) and b.describe() == "the scenario as it is"


def test_the_python_form_is_the_command_line_form(tmp_path):
    frag = tmp_path / "f.yaml"
    frag.write_text("time: {dt: 2 hour}\n")
    py = strategies.from_python({"a": [str(frag), "time.end=5 day"], "b": None, "c": {"time.end": "4 day"}})
    cli = strategies.parse([f"a={frag}", "a=time.end=5 day", "b="])
    assert [(s.name, [c[:2] for c in s.changes]) for s in py[:2]] == \
        [(s.name, [c[:2] for c in s.changes]) for s in cli]
    assert strategies.apply(BASE, py[2])[0]["time"]["end"] == "4 day"
    with pytest.raises(ScenarioError, match="neither a YAML file"):
        strategies.from_python({"a": "notafile"})


@pytest.mark.parametrize("items, message", [
    (["x y=time.end=1 day"], "the name 'x y' names files"),
    (["x=nofile.yaml"], "--strategy x: nofile.yaml: cannot read"),
    (["x=notyaml.txt"], "is neither a YAML file (.yaml) nor a key.path=value override"),
    (["x"], "expected NAME=FILE.yaml, NAME=key.path=value"),
])
def test_bad_strategies_get_one_line(items, message):
    with pytest.raises(ScenarioError) as err:
        strategies.parse(items)
    assert message in str(err.value) and "\n" not in str(err.value)
