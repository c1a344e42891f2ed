"""Bad scenario files: syntax, keys, types, units, values."""

from bad_inputs import Case

GOOD = """\
name: tiny
mesh: {kind: rectangle, size: [100 um, 100 um], cells: [4, 4]}
time: {end: 2 hour, dt: 1 hour}
output: {plots: false, snapshots: {times: []}}
"""

CASES = [
    Case("config-missing-file", ["run", "{dir}/nope.yaml", "--out", "{out}"], "nope.yaml"),
    Case("config-not-yaml", ["run", "{dir}/s.yaml", "--out", "{out}"], "not valid YAML",
         files={"s.yaml": "name: [unclosed\n"}),
]
