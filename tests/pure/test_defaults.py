"""Every default of the schema (``tme schema``), read back with its unit, is what the validated
scenario uses, and ``config.resolved.yaml`` shows it in the same unit.

The walk goes over the schema's own definitions, so a key added without a default in its unit
(or with a default the solver does not use) fails here.
"""

import json
import typing

import pint
import pytest
import yaml
from pydantic import BaseModel

from tme.config import scenario as sc
from tme.config.treatment import Size

UREG = pint.UnitRegistry()
UREG.define("cell = [cell_count] = cells")

#: every optional section switched on, with only its required keys, so that defaults stay defaults
FULL = {
    "name": "full",
    "tissue": {"regions": {"tumour": {"vascular_density": {"expression": "0 * x", "unit": "1/um"},
                                      "caf_density": {"mean": 0.1, "correlation_length": "50 um"}}}},
    "drugs": {"dox": {"class": "dna_damaging", "diffusivity": "16 um**2/s", "boundary": {"outer": {}},
                      "pk": {}}},
    "survival_factor": {"boundary": {"outer": {}}},
    "oxygen": {"boundary": {"outer": {}}},
    "immune": {"boundary": {"outer": {}}},
    "clones": {"clones": {"s": {"growth": "0.5 1/day"}, "r": {"growth": "0.4 1/day", "pgp_vmax": "5 uM/hour"}},
               "necrosis": {"rate": "0.1 1/hour", "threshold": "1 uM"}},
    "treatment": {"lines": [{"name": "first", "regimen": [{"drug": "dox", "amount": "5 uM"}],
                             "sequencing": {"choose": {"pgp": ["dox"]}},
                             "adapt": {"holiday": {}}}],
                  "assessment": {}, "progression": {}, "stop": {}, "limits": {"dox": {"max_peak": "10 uM"}}},
    "time": {"end": "10 day"},
    "numerics": {},
    "output": {"snapshots": {}, "checkpoint": {}},
    "vasculature": {"generate": {}, "blood": {}, "collapse": {}},
}

MESHES = [
    {"kind": "rectangle", "size": [100, 100], "cells": [2, 2], "regions": [{"name": "tumour", "where": "x < 0"}]},
    {"kind": "box", "size": [100, 100, 100], "cells": [2, 2, 2]},
    {"kind": "slice2d", "size": [100, 100], "h": 10, "vessels": [{"center": [0, 0], "radius": 5}]},
    {"kind": "krogh", "vessel_radius": 5, "tissue_radius": 50, "h": 5},
    {"kind": "spheroid", "radius": 100, "h": 10},
    {"kind": "file", "path": "m.msh"},
]

#: the same with the optional subsections left out, so that their defaults are compared whole
LEANER = dict(FULL, clones={"clones": FULL["clones"]["clones"]},
              treatment={"lines": [{"name": "first"}, {"name": "second", "adapt": {"modulation": {}}}],
                         "limits": {"dox": {"max_cumulative": "50 uM", "max_auc": "5 uM*hour",
                                            "auc_window": "1 day"}}}, output={},
              tissue={"regions": {"tumour": {}}},
              drugs={"dox": {"class": "dna_damaging", "diffusivity": "16 um**2/s"}},
              survival_factor={}, oxygen={}, immune={})

#: a vessel network from a file, with conditions for its end nodes
NETWORK_FILE = {"file": {"path": "n.vtp", "boundary": [{"where": "x < 0", "pressure": "40 mmHg"},
                                                       {"where": "x > 0", "flow": "1 nl/min"}]}}

SCENARIOS = ([dict(FULL, mesh=m) for m in MESHES]
             + [dict(LEANER, mesh=MESHES[0]), {"name": "minimal", "mesh": MESHES[0], "time": {"end": "1 day"}},
                dict(FULL, mesh=MESHES[1], vasculature=NETWORK_FILE)])


def _quantity_base(field) -> tuple[str, str] | None:
    """(base unit, shown unit) of a quantity field, from the metadata tme.config.units attaches."""
    for m in field.metadata:
        if hasattr(m, "base") and hasattr(m, "unit"):
            return m.base, m.unit
    stack = [field.annotation]
    while stack:
        a = stack.pop()
        for m in getattr(a, "__metadata__", ()):
            if hasattr(m, "base") and hasattr(m, "unit"):
                return m.base, m.unit
        stack.extend(typing.get_args(a))
    return None


def _resolve(schema, node):
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    return node


def _shown_unit(prop) -> str | None:
    if "unit" in prop:
        return prop["unit"]
    for member in prop.get("anyOf", []):
        if "unit" in member:
            return member["unit"]
    return None


def _children(value):
    if isinstance(value, BaseModel):
        return [value]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, BaseModel)]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, BaseModel)]
    return []


def _raw_children(raw, value):
    if isinstance(value, BaseModel):
        return [raw if isinstance(raw, dict) else {}]
    if isinstance(value, dict):
        return [(raw or {}).get(k, {}) for k, v in value.items() if isinstance(v, BaseModel)]
    if isinstance(value, list):
        return [r for r, v in zip(raw or [], value) if isinstance(v, BaseModel)]
    return []


def walk(schema, model: BaseModel, raw: dict, resolved, path: str, checked: set):
    node = schema if type(model).__name__ == schema.get("title") else schema["$defs"][type(model).__name__]
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        prop = node["properties"][key]
        value = getattr(model, name)
        here = f"{path}.{key}".lstrip(".")
        shown_value = resolved.get(key) if isinstance(resolved, dict) else None
        if "default" in prop and key not in raw:
            check_default(prop, field, value, shown_value, here)
            checked.add((node["title"], key))
        if key not in raw:
            continue  # a default section is compared whole, above: its inner defaults may differ
        for child, child_raw, child_shown in zip(_children(value), _raw_children(raw.get(key), value),
                                                 _resolved_children(shown_value, value)):
            walk(schema, child, child_raw, child_shown, here, checked)


def _resolved_children(shown, value):
    if isinstance(value, BaseModel):
        return [shown]
    if isinstance(value, dict):
        return [shown[k] for k, v in value.items() if isinstance(v, BaseModel)]
    if isinstance(value, list):
        return [s for s, v in zip(shown, value) if isinstance(v, BaseModel)]
    return []


def check_default(prop, field, value, shown_value, path):
    default = prop["default"]
    quantity = _quantity_base(field)
    if quantity is not None and default is not None:
        base, unit = quantity
        q = UREG.Quantity(default)
        assert _shown_unit(prop) == unit, f"{path}: the schema shows no unit or another one"
        assert q.units == UREG.parse_units(unit), f"{path}: default {default!r} is not in its unit {unit}"
        assert value == pytest.approx(q.to(base).magnitude, rel=1e-12, abs=0), \
            f"{path}: the schema says {default!r}, the scenario uses {value!r} {base}"
        r = UREG.Quantity(shown_value)
        assert r.units == UREG.parse_units(unit), f"{path}: resolved as {shown_value!r}, not in {unit}"
        assert r.to(base).magnitude == pytest.approx(value, rel=1e-12, abs=0)
    elif isinstance(value, Size):
        assert UREG.Quantity(default) == UREG.Quantity(f"{value.value} {value.unit}"), path
        assert UREG.Quantity(shown_value) == UREG.Quantity(default), path
    else:
        dumped = value.model_dump(mode="json", by_alias=True) if isinstance(value, BaseModel) else value
        if isinstance(dumped, list):
            dumped = [v.model_dump(mode="json", by_alias=True) if isinstance(v, BaseModel) else v for v in dumped]
        assert json.loads(json.dumps(dumped)) == default, f"{path}: schema default {default!r}, used {dumped!r}"
        assert shown_value == default or isinstance(value, BaseModel), path


def test_every_default_of_the_schema_is_what_the_scenario_uses_in_its_unit():
    schema = sc.json_schema()
    checked: set = set()
    for data in SCENARIOS:
        scenario = sc.validate(json.loads(json.dumps(data)))
        resolved = yaml.safe_load(sc.resolved_yaml(scenario))
        walk(schema, scenario, data, resolved, "", checked)
    declared = {(d.get("title", n), k) for n, d in schema["$defs"].items()
                for k, p in d.get("properties", {}).items() if "default" in p}
    declared |= {(schema["title"], k) for k, p in schema["properties"].items() if "default" in p}
    assert declared - checked == set(), "defaults no scenario of this test reached"


def test_required_keys_have_no_default_anywhere_in_the_schema():
    # a shared quantity type once carried one field's default into other fields' schema
    schema = sc.json_schema()
    for name, d in list(schema["$defs"].items()) + [("Scenario", schema)]:
        for key in d.get("required", []):
            prop = d["properties"][key]
            text = json.dumps(prop)
            assert '"default"' not in text, f"{name}.{key} is required but the schema shows a default: {text}"


def test_no_default_hides_inside_a_type_of_the_schema():
    # time.dt_initial once showed dt_min's 0.001 inside its quantity type
    schema = sc.json_schema()
    for name, d in list(schema["$defs"].items()) + [("Scenario", schema)]:
        for key, prop in d.get("properties", {}).items():
            for member in prop.get("anyOf", []) + prop.get("oneOf", []):
                assert "default" not in member, f"{name}.{key}: a default inside {member}"


def test_the_oxygen_default_is_the_permeability_the_docs_state():
    # 30 µm/s, not 30 µm/hour: the solver's internal unit is µm/hour
    s = sc.validate({"name": "o", "mesh": MESHES[0], "time": {"end": "1 day"}, "oxygen": {"enabled": True}})
    assert s.oxygen.permeability == pytest.approx(30 * 3600)
    assert "permeability: 30.0 um/s" in sc.resolved_yaml(s)
