"""Bad scenario files: syntax, keys, types, units, values, references, doses, outputs."""

from bad_inputs import Case

GOOD = """\
name: tiny
mesh: {kind: rectangle, size: [100 um, 100 um], cells: [4, 4]}
time: {end: 2 hour, dt: 1 hour}
output: {plots: false, snapshots: {times: []}}
"""

#: a scenario with a drug, clones and two lines, for the cases that need them
TREATED = """\
name: treated
mesh: {kind: rectangle, size: [100, 100], cells: [4, 4], regions: [{name: tumour, where: "x < 0"}]}
drugs:
  dox: {class: dna_damaging, diffusivity: 16 um^2/s, emax: 0.1 1/hour, ec50: 0.5 uM}
  pac: {class: antimitotic, diffusivity: 10 um^2/s, emax: 0.1 1/hour}
clones:
  clones:
    s: {growth: 0.5 1/day, initial: 0.3}
    r: {growth: 0.4 1/day, repair: 0.5, initial: 0.01}
treatment:
  lines:
    - {name: first, regimen: [{drug: dox, amount: 5 uM, every: 1 week, cycles: 2}]}
    - {name: second, regimen: [{drug: pac, amount: 2 uM}]}
time: {end: 2 hour, dt: 1 hour}
output: {plots: false, snapshots: {times: []}}
"""


def validate(id, expect, text=GOOD, *sets, **kw):
    """A ``tme validate`` of ``text`` (with ``--set`` overrides) that must be refused."""
    argv = ["validate", "{dir}/s.yaml"] + [a for s in sets for a in ("--set", s)]
    return Case(id, argv, expect, files={"s.yaml": text}, **kw)


def run(id, expect, text=GOOD, *sets, **kw):
    """A ``tme run`` into an existing output directory, which must stay as it was."""
    argv = ["run", "{dir}/s.yaml", "--out", "{out}"] + [a for s in sets for a in ("--set", s)]
    return Case(id, argv, expect, files={"s.yaml": text}, **{"out_exists": True, **kw})


def build(id, expect, text, **kw):
    """A ``tme run`` refused while its mesh or tissue is built: the output directory must not
    exist afterwards (an existing one would be refused before the build)."""
    return run(id, expect, text, out_exists=False, timeout=90, **kw)


def edit(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


CASES = [
    Case("config-missing-file", ["run", "{dir}/nope.yaml", "--out", "{out}"], "nope.yaml"),
    Case("config-not-yaml", ["run", "{dir}/s.yaml", "--out", "{out}"], "not valid YAML",
         files={"s.yaml": "name: [unclosed\n"}),

    # -- files that are not scenarios
    Case("config-binary-file", ["validate", "{dir}/s.yaml"], "not a text file",
         files={"s.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"}),
    Case("config-binary-file-run", ["run", "{dir}/s.yaml", "--out", "{out}"], "not a text file",
         files={"s.yaml": bytes(range(256))}, out_exists=True),
    validate("config-a-list", "a scenario is a YAML mapping", "- name: tiny\n- time: 1 hour\n"),
    validate("config-empty-file", "a scenario is a YAML mapping", ""),

    # -- bare numbers where a unit is needed (dimensionless ones stay bare)
    validate("config-bare-end", "time.end: a bare number is ambiguous; write e.g. '200 hour' or '200 day'",
             edit(GOOD, "end: 2 hour", "end: 200")),
    validate("config-bare-end-set", "time.end: a bare number is ambiguous", GOOD, "time.end=200"),
    validate("config-bare-dt", "time.dt: a bare number is ambiguous", edit(GOOD, "dt: 1 hour", "dt: 1")),
    validate("config-bare-diffusivity", "drugs.dox.diffusivity: a bare number is ambiguous; write e.g. '16 um**2/s'",
             edit(TREATED, "diffusivity: 16 um^2/s", "diffusivity: 16")),
    validate("config-bare-growth", "clones.clones.s.growth: a bare number is ambiguous; write e.g. '0.5 1/day'",
             edit(TREATED, "growth: 0.5 1/day", "growth: 0.5")),
    validate("config-bare-dose", "treatment.lines.0.regimen.0.amount: a bare number is ambiguous",
             edit(TREATED, "amount: 5 uM", "amount: 5")),
    validate("config-bare-cycle-period", "treatment.lines.0.regimen.0.every: a bare number is ambiguous",
             edit(TREATED, "every: 1 week", "every: 168")),
    validate("config-bare-vascular-density", "tissue.regions.tissue.vascular_density: a bare number is ambiguous",
             GOOD + "tissue: {regions: {tissue: {vascular_density: 0.01}}}\n"),
    validate("config-bare-correlation-length", "tissue.regions.tissue.caf_density.correlation_length: a bare number",
             GOOD + "tissue: {regions: {tissue: {caf_density: {mean: 0.2, correlation_length: 50}}}}\n"),
    validate("config-bare-oxygen-permeability", "oxygen.permeability: a bare number is ambiguous; write e.g. '30 um/s'",
             GOOD, "oxygen.permeability=30"),
    validate("config-oxygen-initial-quasi-steady", "oxygen.initial: a quasi-steady oxygen (oxygen.quasi_steady, "
             "the default) starts at its steady state; remove initial, or set oxygen.quasi_steady: false",
             GOOD, "oxygen.initial=10 uM"),
    validate("config-bare-detection-limit", "treatment.detection_limit: a bare number is ambiguous",
             TREATED, "treatment.detection_limit=100"),
    validate("config-bare-boundary-value", "drugs.dox.boundary.outer.value: a bare number",
             TREATED, "drugs.dox.boundary={outer: {value: 2}}"),

    # -- units of the wrong kind, or no unit at all
    validate("config-wrong-dimension", "drugs.dox.diffusivity: '5 hour' has dimension [time]",
             TREATED, "drugs.dox.diffusivity=5 hour"),
    validate("config-unknown-unit", "drugs.dox.decay: cannot read '2 bananas/hour'",
             TREATED, "drugs.dox.decay=2 bananas/hour"),
    validate("config-percent-time", "time.end: '50 %' has dimension dimensionless", GOOD, "time.end=50 %"),
    validate("config-mesh-unit-not-length", "mesh.unit: 'kg' is not a length unit", GOOD, "mesh.unit=kg"),
    validate("config-expression-unit", "tissue.regions.tissue.vascular_density.unit: 'um' is not a unit of this property",
             GOOD + "tissue: {regions: {tissue: {vascular_density: {expression: 'x', unit: um}}}}\n"),
    validate("config-detection-limit-area", "treatment.detection_limit: '1 mm**2' has dimension",
             TREATED, "treatment.detection_limit=1 mm**2"),

    # -- zero, negative and out-of-order values
    validate("config-end-zero", "time.end: Input should be greater than 0", GOOD, "time.end=0"),
    validate("config-end-zero-hours", "time.end: Input should be greater than 0", GOOD, "time.end=0 hour"),
    validate("config-end-negative", "time.end: Input should be greater than 0", GOOD, "time.end=-1 day"),
    validate("config-dt-zero", "time.dt: Input should be greater than 0", GOOD, "time.dt=0 s"),
    validate("config-dt-min-above-dt", "time.dt_min: 2 hour exceeds time.dt (1 hour)", GOOD, "time.dt_min=2 hour"),
    validate("config-dt-initial-above-dt", "time.dt_initial: 3 hour lies outside [dt_min, dt]",
             GOOD, "time.dt_initial=3 hour"),
    validate("config-dt-initial-below-dt-min", "time.dt_initial: 0.0001 hour lies outside [dt_min, dt]",
             GOOD, "time.dt_initial=0.36 s"),
    validate("config-ec50-zero", "drugs.dox.ec50: Input should be greater than 0", TREATED, "drugs.dox.ec50=0 uM"),
    validate("config-growth-negative", "clones.clones.s.growth: Input should be greater than or equal to 0",
             TREATED, "clones.clones.s.growth=-0.1 1/day"),
    validate("config-output-every-zero", "output.every: Input should be greater than 0", GOOD, "output.every=0 hour"),
    validate("config-cycle-period-zero", "treatment.lines.0.regimen.0.every: Input should be greater than 0",
             TREATED, "treatment.lines.0.regimen.0.every=0 day"),
    validate("config-cell-volume-zero", "clones.cell_volume: Input should be greater than 0",
             TREATED, "clones.cell_volume=0 um**3"),
    validate("config-slice-thickness-negative", "mesh.thickness: Input should be greater than 0",
             GOOD, "mesh.thickness=-5 um"),
    validate("config-initial-above-capacity", "clones.clones: initial densities add up to 1.01",
             TREATED, "clones.clones.s.initial=1.0"),

    # -- a key given twice: YAML would keep the last one without a word
    validate("config-duplicate-key", "line 3: not valid YAML (duplicate key 'end' (first given on line 3)",
             edit(GOOD, "end: 2 hour,", "end: 2 hour, end: 5 hour,")),
    validate("config-duplicate-section", "duplicate key 'time' (first given on line 3)",
             GOOD + "time: {end: 9 hour}\n"),
    validate("config-duplicate-drug", "duplicate key 'dox' (first given on line 4)",
             edit(TREATED, "  pac:", "  dox: {class: targeted, diffusivity: 1 um^2/s}\n  pac:")),
    validate("config-duplicate-in-set", "--set time: value '{end: 1 hour, end: 2 hour}' is not valid YAML",
             GOOD, "time={end: 1 hour, end: 2 hour}"),

    # -- values that would hang or overflow the unit parser or the expression evaluator
    validate("config-power-tower-end", "time.end: '9**9**9 hour': powers must be small", GOOD, "time.end=9**9**9 hour"),
    validate("config-power-overflow-end", "time.end: '10**400 hour': powers must be small",
             edit(GOOD, "end: 2 hour", "end: 10**400 hour"), timeout=30),
    validate("config-nested-powers", "powers must be small", GOOD, "time.end=((2**12)**12)**12 hour", timeout=30),
    validate("config-float-overflow-end", "time.end: '1e400 hour' is not a finite number", GOOD, "time.end=1e400 hour"),
    validate("config-huge-magnitude", "time.end: '1e308 day' is not a finite number", GOOD, "time.end=1e308 day"),
    validate("config-long-quantity", "characters is too long for a quantity", GOOD, "time.end=" + "9" * 400 + " hour"),
    validate("config-power-tower-dose", "treatment.lines.0.regimen.0.amount: '9**9**9 uM': powers must be small",
             TREATED, "treatment.lines.0.regimen.0.amount=9**9**9 uM", timeout=30),
    validate("config-power-tower-detection", "powers must be small", TREATED, "treatment.detection_limit=9**9**9 cell",
             timeout=30),
    build("config-power-tower-region", "mesh.regions.0.where: cannot evaluate 'x < 9**9**9'",
          edit(TREATED, 'where: "x < 0"', 'where: "x < 9**9**9"')),
    build("config-shift-region", "mesh.regions.0.where: '1 << 10**9 > x': shifts",
          edit(TREATED, 'where: "x < 0"', 'where: "1 << 10**9 > x"')),
    build("config-power-tower-tissue", "tissue.regions.tissue.ecm_fraction.expression: cannot evaluate",
          GOOD + "tissue: {regions: {tissue: {ecm_fraction: {expression: '0 * x + 9**9**9', unit: '1'}}}}\n"),
    build("config-huge-literal-region", "is too large; write it as a float",
          edit(TREATED, 'where: "x < 0"', 'where: "x < ' + "9" * 400 + '"')),

    # -- misspelt keys name the typo, even for a required key
    validate("config-typo-required-key", "drugs.dox.diffusivty: unknown key 'diffusivty' (did you mean 'diffusivity'?)",
             edit(TREATED, "diffusivity: 16 um^2/s", "diffusivty: 16 um^2/s")),
    validate("config-typo-section", "tme: unknown key 'tme' (did you mean 'time'?)", edit(GOOD, "time:", "tme:")),
    validate("config-typo-mesh-key", "mesh.sise: unknown key 'sise' (did you mean 'size'?)", edit(GOOD, "size:", "sise:")),
    validate("config-removed-cure-burden", "treatment.stop.cure_burden: unknown key 'cure_burden'",
             TREATED, "treatment.stop.cure_burden=1"),
    validate("config-file-mesh-scale", "mesh.scale: unknown key 'scale'",
             "name: f\nmesh: {kind: file, path: m.msh, scale: 1000}\ntime: {end: 1 hour}\n"),

    # -- --set paths and values
    validate("config-set-empty-path", "--set '=5': the key path is empty", GOOD, "=5"),
    validate("config-set-empty-part", "--set 'time..end=5 hour': the key path 'time..end' has an empty part",
             GOOD, "time..end=5 hour"),
    validate("config-set-yaml-error", "--set time.end: value '[1 hour' is not valid YAML", GOOD, "time.end=[1 hour"),
    validate("config-set-no-equals", "expected key.path=value", GOOD, "time.end"),

    # -- every dose converted and checked at validation, not when it is scheduled
    validate("config-second-line-dose-time", "treatment.lines.1.regimen.0.amount: '5 hour' has dimension [time]",
             TREATED, "treatment.lines.1.regimen.0.amount=5 hour"),
    run("config-second-line-dose-time-run", "treatment.lines.1.regimen.0.amount: '5 hour' has dimension [time]",
        TREATED, "treatment.lines.1.regimen.0.amount=5 hour"),
    run("config-first-line-mass-without-molar-mass", "treatment.lines.0.regimen.0.amount: '50 mg' is a mass",
        TREATED, "treatment.lines.0.regimen.0.amount=50 mg"),
    validate("config-negative-dose", "treatment.lines.1.regimen.0.amount: '-2 uM' is not a finite amount >= 0",
             TREATED, "treatment.lines.1.regimen.0.amount=-2 uM"),
    validate("config-dose-unknown-drug", "treatment.lines.1.regimen.0.drug: unknown drug 'cis'",
             TREATED, "treatment.lines.1.regimen.0.drug=cis"),

    # -- snapshot fields named from the scenario
    validate("config-snapshot-unknown-field", "output.snapshots.fields.0: no field 'tumor'",
             TREATED, "output.snapshots.fields=[tumor]"),
    run("config-snapshot-unknown-field-run", "output.snapshots.fields.1: no field 'auc_cis'",
        TREATED, "output.snapshots.fields=[total, auc_cis]"),
    validate("config-snapshot-total-without-clones", "output.snapshots.fields.0: no field 'total'; fields of this scenario: region",
             GOOD, "output.snapshots.fields=[total]"),
    validate("config-snapshot-typo", "no field 'resistant_fractoin' (did you mean 'resistant_fraction'?)",
             TREATED, "output.snapshots.fields=[resistant_fractoin]"),

    # -- other references
    validate("config-ec50-shift-unknown-drug", "clones.clones.r.ec50_shift.cis: unknown drug 'cis'",
             TREATED, "clones.clones.r.ec50_shift={cis: 5}"),
    validate("config-mutation-unknown-clone", "clones.mutation.s.q: unknown clone 'q'",
             TREATED, "clones.mutation={s: {q: 1e-6}}"),
]
