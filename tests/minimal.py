"""The smallest scenario tme accepts, for the tests of scenario loading (tests/pure) and of
`tme validate` (tests/scenario); the ``minimal`` fixture (tests/conftest.py) writes it to a file.
Imports nothing, so a pure test may use it with DOLFINx blocked."""

MINIMAL = """
name: t
mesh: {kind: rectangle, size: [1 mm, 500], cells: [10, 5]}
drugs:
  dox: {class: dna_damaging, diffusivity: 16 um^2/s, decay: 0.1 1/hour, boundary: {outer: {plasma: true}}}
time: {end: 2 day}
treatment: {lines: [{name: first, regimen: [{drug: dox, amount: 5 uM}]}]}
"""
