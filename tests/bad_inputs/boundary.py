"""Drugs that cannot enter the tissue, and boundaries that follow a plasma level that is not there."""

from bad_inputs import Case

TAIL = """\
time: {end: 2 hour, dt: 1 hour}
output: {plots: false, snapshots: {times: []}}
"""

DOSED = """\
treatment:
  lines:
    - name: first
      regimen: [{drug: dox, amount: 5 uM, every: 1 day, cycles: 3}]
"""

SPHEROID = "mesh: {kind: spheroid, radius: 100 um, h: 50 um}\n"
RECTANGLE = "mesh: {kind: rectangle, size: [100 um, 100 um], cells: [4, 4]}\n"


def drug(extra: str = "") -> str:
    return ("drugs:\n  dox:\n    class: dna_damaging\n    diffusivity: 16 um^2/s\n"
            "    uptake: 1 1/hour\n" + "".join(f"    {line}\n" for line in extra.splitlines()))


def scenario(mesh: str, drugs: str, rest: str = DOSED) -> dict:
    return {"s.yaml": "name: entry\n" + mesh + drugs + rest + TAIL}


RUN = ["run", "{dir}/s.yaml", "--out", "{out}"]

CASES = [
    # the reported case: a spheroid whose outer value is 0, while the plasma cycles
    Case("boundary-spheroid-zero-outer-value", RUN, "drugs.dox: 'dox' is dosed but has no way into the tissue",
         files=scenario(SPHEROID, drug("boundary: {outer: {value: 0 uM}}"))),
    Case("boundary-rectangle-no-vessels-zero-sv", RUN, "no way into the tissue",
         files=scenario(RECTANGLE + "tissue: {regions: {tissue: {vascular_density: 0 1/um}}}\n",
                        drug("permeability: 0.5 um/s"))),
    Case("boundary-sv-without-permeability", RUN, "drugs.dox.permeability (now 0 um/s)",
         files=scenario(RECTANGLE + "tissue: {regions: {tissue: {vascular_density: 0.01 1/um}}}\n", drug())),
    Case("boundary-closed-robin-is-no-way-in", RUN, "no way into the tissue",
         files=scenario(RECTANGLE, drug("boundary: {left: {value: 1 uM, robin: 0 um/s}}"))),
    Case("boundary-constant-pk-no-way-in", RUN, "has a constant pk.level but has no way into the tissue",
         files=scenario(RECTANGLE, drug("pk: {model: constant, level: 1 uM}"), rest="")),
    Case("boundary-plasma-on-undosed-drug", RUN, "drugs.dox.boundary.outer.plasma: the plasma level of 'dox' is 0",
         files=scenario(SPHEROID, drug("boundary: {outer: {plasma: true}}"), rest="")),
    Case("boundary-plasma-on-drug-with-zero-constant-level", RUN, "its pk.level is 0",
         files=scenario(SPHEROID, drug("pk: {model: constant, level: 0 uM}\nboundary: {outer: {plasma: true}}"),
                        rest="")),
    Case("boundary-plasma-on-survival-factor", RUN, "survival_factor.boundary.outer.plasma",
         files=scenario(SPHEROID, "survival_factor: {enabled: true, boundary: {outer: {plasma: true}}}\n", rest="")),
    Case("boundary-plasma-on-immune", RUN, "immune.boundary.left.plasma",
         files=scenario(RECTANGLE, "immune: {enabled: true, boundary: {left: {plasma: true}}}\n", rest="")),
    Case("boundary-plasma-and-value", RUN, "drugs.dox.boundary.outer: give either value or plasma: true",
         files=scenario(SPHEROID, drug("boundary: {outer: {plasma: true, value: 1 uM}}"))),
    Case("boundary-plasma-fraction-without-plasma", RUN, "plasma_fraction needs plasma: true",
         files=scenario(SPHEROID, drug("boundary: {outer: {value: 1 uM, plasma_fraction: 0.5}}"))),
    Case("boundary-plasma-fraction-above-one", RUN, "drugs.dox.boundary.outer.plasma_fraction",
         files=scenario(SPHEROID, drug("boundary: {outer: {plasma: true, plasma_fraction: 1.5}}"))),
    Case("boundary-plasma-fraction-zero", RUN, "drugs.dox.boundary.outer.plasma_fraction",
         files=scenario(SPHEROID, drug("boundary: {outer: {plasma: true, plasma_fraction: 0}}"))),
    Case("boundary-plasma-on-unknown-facets", RUN, "drugs.dox.boundary.rim: the mesh has no facets 'rim'",
         files=scenario(SPHEROID, drug("boundary: {rim: {plasma: true}}"))),
]
