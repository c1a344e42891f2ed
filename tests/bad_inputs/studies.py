"""tme sensitivity and tme cohort with a bad argument: refused in one line before any run,
the output directory untouched (the other messages of their parsers: tests/pure/test_study_estimators.py)."""

from bad_inputs import Case

GOOD = """\
name: small
mesh: {kind: rectangle, size: [100 um, 100 um], cells: [4, 4]}
numerics: {reaction_kernel: numpy}
drugs: {chemo: {class: dna_damaging, diffusivity: 10 um^2/s, initial: 1 uM, emax: 0.01 1/hour}}
clones: {clones: {a: {growth: 0.5 1/day, initial: 0.1}}}
treatment: {lines: [{name: watch, regimen: []}], assessment: {every: 1 day}}
time: {end: 2 day, dt: 1 day}
output: {plots: false, snapshots: {times: []}}
"""

FILES = {"good.yaml": GOOD, "untreated.yaml": GOOD.replace("treatment: {lines: [{name: watch, regimen: []}], "
                                                          "assessment: {every: 1 day}}\n", ""),
         "bad.csv": "clones.clones.a.growth\n0.4\n"}
VARY = ["--vary", "drugs.chemo.emax=0.005 1/hour..0.05 1/hour", "--vary", "clones.clones.a.growth=0.3 1/day..0.6 1/day"]
SAMPLE = ["--sample", "clones.clones.a.growth=lognormal(0.5 1/day, 0.3)", "--n", "3"]


def S(id, extra, expect, **kw) -> Case:
    return Case(id, ["sensitivity", "{dir}/good.yaml", "--out", "{out}", *extra], expect, files=FILES,
                mpi=kw.pop("mpi", False), **kw)


def H(id, extra, expect, config="good.yaml", **kw) -> Case:
    return Case(id, ["cohort", "{dir}/" + config, "--out", "{out}", *extra], expect, files=FILES,
                mpi=kw.pop("mpi", False), **kw)


CASES = [
    S("sensitivity-bare-number", ["--vary", "drugs.chemo.emax=0.005..0.05", "--vary", VARY[3], "--samples", "4",
                                  "--output", "nadir"], "bare number is ambiguous"),
    S("sensitivity-ranks-per-run", [*VARY, "--samples", "4", "--output", "nadir", "--ranks-per-run", "3"],
      "--ranks-per-run 3: exceeds", mpi=True),
    S("sensitivity-out-not-empty", [*VARY, "--samples", "4", "--output", "nadir"], "holds no tme study",
      out_exists=True),
    H("cohort-without-seed", SAMPLE, "--seed"),
    H("cohort-out-not-empty", [*SAMPLE, "--seed", "1"], "holds no tme study", out_exists=True, mpi=True),
    H("cohort-patients-missing", ["--patients", "{dir}/nope.csv"], "nope.csv"),
    H("cohort-patients-bare-number", ["--patients", "{dir}/bad.csv"], "line 2, column clones.clones.a.growth"),
    H("cohort-strategy-sets-a-patient-key", [*SAMPLE, "--seed", "1", "--strategy",
                                             "fast=clones.clones.a.growth=0.9 1/day"], "a patient parameter"),
    H("cohort-without-a-treatment-line", [*SAMPLE, "--seed", "1"], "no treatment line", config="untreated.yaml"),
]
