"""Comparisons with a bad member: every run is set up before any starts, so a comparison with one
bad configuration is refused as a whole, on every rank count, and writes nothing (it used to hang
on 2 ranks: the group owning the bad run left, the other waited for it)."""

from bad_inputs import Case

GOOD = """\
name: {name}
mesh: {{kind: rectangle, size: [100 um, 100 um], cells: [4, 4], regions: [{{name: tumour, where: 'r < 30'}}]}}
numerics: {{reaction_kernel: numpy}}
clones: {{clones: {{a: {{growth: 0.5 1/day, initial: {{{region}: 0.5}}}}}}}}
time: {{end: 2 hour, dt: 1 hour}}
output: {{plots: false, snapshots: {{times: []}}}}
"""

FILES = {"good.yaml": GOOD.format(name="good", region="tumour"),
         "other.yaml": GOOD.format(name="other", region="tumour"),
         # the region name is checked against the mesh: found only by the set-up
         "bad.yaml": GOOD.format(name="bad", region="tumor"),
         "fine.yaml": GOOD.format(name="fine", region="tumour").replace("cells: [4, 4]",
                                                                         "cells: [400000, 400000]"),
         "broken.yaml": "name: [unclosed\n"}


def C(id, configs, expect, *extra, **kw) -> Case:
    argv = ["compare", *[f"{{dir}}/{c}" for c in configs], "--out", "{out}", *extra]
    return Case(id, argv, expect, files=FILES, timeout=kw.pop("timeout", 90), **kw)


CASES = [
    C("compare-second-run-bad", ["good.yaml", "bad.yaml"], "run bad"),
    C("compare-first-run-bad", ["bad.yaml", "good.yaml"], "run bad"),
    C("compare-third-run-bad", ["good.yaml", "other.yaml", "bad.yaml"], "tumor"),
    C("compare-mesh-too-large", ["good.yaml", "fine.yaml"], "mesh: about"),
    C("compare-not-yaml", ["good.yaml", "broken.yaml"], "not valid YAML"),
    C("compare-missing-config", ["good.yaml", "nope.yaml"], "nope.yaml"),
    C("compare-sweep-without-values", ["good.yaml"], "--sweep", "--sweep", "time.end"),
    C("compare-sweep-bad-value", ["good.yaml"], "time.end", "--sweep", "time.end=2 hour,soon"),
    C("compare-sweep-bad-member", ["good.yaml"], "mesh.regions.0", "--sweep",
      "mesh.regions.0.where=r < 30,r < -1"),
    C("compare-out-not-empty", ["good.yaml", "other.yaml"], "not empty", out_exists=True),
    Case("compare-out-is-a-config", ["compare", "{dir}/good.yaml", "{dir}/other.yaml", "--out",
                                     "{dir}/other.yaml"], "input file", files=FILES),
]
