"""Bad command lines: unknown commands and options, missing or malformed arguments."""

from bad_inputs import Case

GOOD = """\
name: tiny
mesh: {kind: rectangle, size: [100 um, 100 um], cells: [4, 4]}
time: {end: 2 hour, dt: 1 hour}
output: {plots: false, snapshots: {times: []}}
"""

S = {"s.yaml": GOOD}

CASES = [
    Case("cli-no-command", [], "a command is needed"),
    Case("cli-unknown-command", ["frobnicate"], "invalid choice: 'frobnicate'"),
    Case("cli-unknown-option", ["run", "{dir}/s.yaml", "--out", "{out}", "--bogus"],
         "unrecognized arguments: --bogus", files=S),
    Case("cli-unknown-global-option", ["--bogus", "validate", "{dir}/s.yaml"],
         "unrecognized arguments: --bogus", files=S),
    Case("cli-run-without-config", ["run"], "give a scenario file"),
    Case("cli-validate-without-config", ["validate"], "required: config"),
    Case("cli-validate-two-configs", ["validate", "{dir}/s.yaml", "{dir}/s.yaml"],
         "unrecognized arguments", files=S),
    Case("cli-set-without-value", ["run", "{dir}/s.yaml", "--out", "{out}", "--set"],
         "--set: expected one argument", files=S),
    Case("cli-out-without-value", ["run", "{dir}/s.yaml", "--out"], "--out: expected one argument",
         files=S),
    Case("cli-set-without-equals", ["run", "{dir}/s.yaml", "--out", "{out}", "--set", "time.end"],
         "time.end", files=S),
    Case("cli-max-memory-not-a-size", ["run", "{dir}/s.yaml", "--out", "{out}", "--max-memory", "lots"],
         "--max-memory", files=S),
    Case("cli-max-memory-negative", ["validate", "{dir}/s.yaml", "--max-memory=-4 GB"],
         "--max-memory", files=S),
    Case("cli-max-memory-zero", ["validate", "{dir}/s.yaml", "--max-memory", "0 GB"],
         "must be positive", files=S),
    Case("cli-max-memory-unknown-unit", ["validate", "{dir}/s.yaml", "--max-memory", "4 parsecs"],
         "not an amount of memory", files=S),
    Case("cli-compare-without-out", ["compare", "{dir}/s.yaml"], "required: --out", files=S),
    Case("cli-compare-without-configs", ["compare", "--out", "{out}"], "required: CONFIG"),
    Case("cli-verify-unknown-case", ["verify", "--case", "nope"], "--case nope"),
    Case("cli-schema-extra-argument", ["schema", "extra"], "unrecognized arguments: extra"),
]
