"""Bad meshes: geometry that leaves no tissue, meshes too large for the machine, unreadable mesh
files, and names the mesh does not have (found by the set-up, which `tme validate` runs too)."""

from pathlib import Path

from bad_inputs import Case

TAIL = """\
time: {end: 2 hour, dt: 1 hour}
output: {plots: false, snapshots: {times: []}}
"""


def scenario(mesh: str, extra: str = "") -> dict:
    return {"s.yaml": f"name: m\nmesh: {mesh}\n{extra}{TAIL}"}


SLICE = "{kind: slice2d, size: [100 um, 100 um], h: 20 um, vessels: [%s]}"
RECT = "{kind: rectangle, size: [100 um, 100 um], cells: [4, 4], regions: [{name: tumour, where: 'r < 30'}]}"
DRUG = ("drugs:\n  d: {class: dna_damaging, diffusivity: 10 um^2/s, permeability: 1 um/s, "
        "initial: 0.1 uM, pk: {half_life: 10 hour}%s}\n")
CLONE = ("numerics: {reaction_kernel: numpy}\n"
         "clones: {clones: {a: {growth: 0.5 1/day, initial: %s}}}\n")


def _sparse(size: int):
    def setup(d: Path, out: Path):
        with open(d / "big.msh", "wb") as fh:
            fh.truncate(size)  # a file this long, occupying no disk
    return setup


def C(id, argv_kind, expect, mesh, extra="", **kw) -> Case:
    argv = {"run": ["run", "{dir}/s.yaml", "--out", "{out}"],
            "validate": ["validate", "{dir}/s.yaml"]}[argv_kind] + kw.pop("args", [])
    return Case(id, argv, expect, files={**scenario(mesh, extra), **kw.pop("files", {})}, **kw)


CASES = [
    # geometry without tissue, or vessels cutting the boundary
    C("mesh-vessel-larger-than-slice", "run", "mesh.vessels.0.radius",
      SLICE % "{center: [0 um, 0 um], radius: 80 um}"),
    C("mesh-vessel-reaches-edge", "run", "mesh.vessels.1.radius",
      SLICE % "{center: [0 um, 0 um], radius: 5 um}, {center: [40 um, 0 um], radius: 15 um}"),
    C("mesh-vessel-centre-outside", "validate", "mesh.vessels.0.center",
      SLICE % "{center: [200 um, 0 um], radius: 5 um}"),
    # meshes that would exhaust memory: refused before they are built, with the estimate
    C("mesh-slice-h-too-fine", "run", "mesh: about",
      "{kind: slice2d, size: [1200 um, 800 um], h: 1e-3 um}", timeout=60),
    C("mesh-rectangle-cells-too-many", "run", "mesh: about 4.8e+11 cells",
      "{kind: rectangle, size: [1200 um, 800 um], cells: [1200000, 200000]}", timeout=60),
    C("mesh-box-cells-too-many", "validate", "available",
      "{kind: box, size: [100 um, 100 um, 100 um], cells: [10000, 10000, 10000]}", timeout=60),
    C("mesh-spheroid-h-too-fine", "validate", "mesh: about",
      "{kind: spheroid, radius: 500 um, h: 0.01 um}", timeout=60),
    C("mesh-krogh-h-too-fine", "run", "mesh: about",
      "{kind: krogh, vessel_radius: 5 um, tissue_radius: 100 um, h: 1e-4 um}", timeout=60),
    C("mesh-krogh-cylinder-h-too-fine", "validate", "mesh: about",
      "{kind: krogh, dim: 3, vessel_radius: 5 um, tissue_radius: 100 um, length: 1 mm, h: 0.01 um}",
      timeout=60),
    C("mesh-above-max-memory", "run", "--max-memory is 1 MB",
      "{kind: rectangle, size: [100 um, 100 um], cells: [100, 100]}", args=["--max-memory", "1 MB"]),
    C("mesh-file-too-large", "validate", "mesh: about",
      "{kind: file, path: big.msh}", setup=_sparse(4 * 10**12), timeout=60),
    # unreadable mesh files
    C("mesh-file-missing", "run", "no such file", "{kind: file, path: nope.msh}"),
    C("mesh-file-not-a-mesh", "run", "gmsh cannot read", "{kind: file, path: bad.msh}",
      files={"bad.msh": "this is not a mesh\n"}),
    C("mesh-file-binary-garbage", "validate", "mesh.path", "{kind: file, path: bad.vtu}",
      files={"bad.vtu": bytes(range(256)) * 8}),
    # names the mesh lacks, refused by validate as by run
    C("mesh-validate-region-typo", "validate", "clones.clones.a.initial.tumor", RECT,
      CLONE % "{tumor: 0.5}"),
    C("mesh-validate-empty-region", "validate", "region 'core' is empty",
      "{kind: rectangle, size: [100 um, 100 um], cells: [4, 4], regions: [{name: core, where: 'r < -1'}]}"),
    C("mesh-validate-unknown-facet", "validate", "has no facets 'vessel_wall'", RECT,
      DRUG % ", boundary: {vessel_wall: {value: 1 uM}}"),
    Case("mesh-validate-unknown-snapshot-field", ["validate", "{dir}/s.yaml"], "output.snapshots.fields.0",
         files={"s.yaml": f"name: m\nmesh: {RECT}\n" + DRUG % "" + "time: {end: 2 hour, dt: 1 hour}\n"
                "output: {plots: false, snapshots: {fields: [dox], times: [1 hour]}}\n"}),
    # a dose of the second line, converted at set-up rather than at the progression that starts it
    C("mesh-validate-second-line-dose", "validate", "treatment.lines.1.regimen.0.amount", RECT,
      DRUG % "" + "treatment:\n  lines:\n"
      "    - {name: first, regimen: [{drug: d, amount: 1 uM}]}\n"
      "    - {name: second, regimen: [{drug: d, amount: 5 hour}]}\n"),
]
