"""The package's imports run one way: no cycles, and the pure layers need no DOLFINx.

Read from the source (every ``import`` statement, including those inside functions), so the
test fails as soon as a module reaches back up or a pure module starts to need DOLFINx.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tme import pharmacology

PKG = Path(__file__).resolve().parents[2] / "solver"
FE = {"dolfinx", "ufl", "basix", "petsc4py", "ffcx"}
#: modules that hold pure logic: the scenario (schema, units), pharmacology, PK, the protocol,
#: clone dynamics, the step clock and state, vessel networks and blood flow
PURE = ("config", "config.scenario", "config.units", "config.spec", "config.drugs", "config.clones",
        "config.treatment", "config.vasculature", "pharmacology", "cache", "pk", "protocol",
        "cells", "cells.reactions", "cells.kernel", "clock", "state", "vasculature",
        "vasculature.network", "vasculature.files", "vasculature.generator", "vasculature.flow",
        "vasculature.transit")
#: what the scenario's package may import: it is the base every other layer reads
CONFIG_NEEDS = {"tme.pharmacology", "tme.cache"}


def _module(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = ["tme", *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Package module -> package modules it imports; and -> external top-level packages."""
    inner, outer = {}, {}
    for path in PKG.rglob("*.py"):
        name = _module(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        inner[name], outer[name] = set(), set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                    targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
                else:
                    targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t.split(".")[0] == "tme":
                    inner[name].add(t)
                else:
                    outer[name].add(t.split(".")[0])
    modules = set(inner)
    assert len(modules) > 10, f"no package found under {PKG}"
    # 'from . import log' names a module; 'from .x import f' names x: keep what is a module
    inner = {m: {t for t in deps if t in modules and t != m} for m, deps in inner.items()}
    return inner, outer


def test_no_import_cycle():
    inner, _ = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(inner[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(inner):
        if m not in state:
            visit(m)


def _unit(module: str) -> str:
    """The layer a module belongs to: its sub-package (tme.config, tme.cells, ...) or itself."""
    parts = module.split(".")
    if len(parts) < 2:
        return module
    return ".".join(parts[:2]) if len(parts) > 2 or (PKG / parts[1]).is_dir() else module


def test_packages_import_one_way():
    """Sub-packages and top-level modules form an acyclic graph (a module of a sub-package
    importing a top-level module that imports back into that sub-package is a cycle here)."""
    inner, _ = _graph()
    units: dict[str, set[str]] = {}
    for m, deps in inner.items():
        units.setdefault(_unit(m), set()).update(_unit(d) for d in deps if _unit(d) != _unit(m))
    units.pop("tme", None)
    for deps in units.values():
        deps.discard("tme")
    state: dict[str, int] = {}

    def visit(u, path):
        state[u] = 1
        for d in sorted(units.get(u, ())):
            if state.get(d) == 1:
                pytest.fail("packages import in a cycle: " + " -> ".join(path[path.index(d):] + [u, d]
                                                                        if d in path else path + [u, d]))
            if d not in state:
                visit(d, path + [u])
        state[u] = 2

    for u in sorted(units):
        if u not in state:
            visit(u, [])
    assert units["tme.config"] <= CONFIG_NEEDS, units["tme.config"] - CONFIG_NEEDS


def test_no_file_points_outside_the_project():
    """The package, its docs, configs and tests stand alone."""
    root = PKG.parent
    hits = []
    for path in [*root.glob("solver/**/*.py"), *root.glob("docs/*"), *(p for p in root.glob("configs/**/*") if p.is_file()),
                 *root.glob("tests/**/*.py"), *root.glob("bench/*.py"), root / "README.md"]:
        text = path.read_text(errors="replace")
        for bad in ("MODEL" + ".md", "../" + "shared"):
            if bad in text:
                hits.append(f"{path.relative_to(root)}: {bad}")
    assert not hits, hits


def test_pure_modules_need_no_finite_elements():
    inner, outer = _graph()
    for name in PURE:
        mod = f"tme.{name}"
        if mod not in inner:
            continue
        seen, todo = set(), [mod]
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            todo += inner[m]
        fe = {(m, e) for m in seen for e in outer[m] & FE}
        assert not fe, f"{mod} needs finite elements through {sorted(fe)}"


def test_one_table_declares_classes_and_mechanisms():
    """The scenario accepts exactly the classes of the table, clones and sequencing exactly its
    mechanisms, and the kill model reads each class's capabilities from it."""
    import typing

    from tme.config.clones import CloneSpec, ClonesSpec
    from tme.config.drugs import DrugSpec
    from tme.config.treatment import MECHANISMS
    from tme.cells.reactions import KillModel

    assert set(typing.get_args(DrugSpec.model_fields["drug_class"].annotation)) == set(pharmacology.DRUG_CLASSES)
    assert MECHANISMS == tuple(pharmacology.MECHANISMS)
    mech = CloneSpec.model_fields["mechanism"].annotation
    assert set(typing.get_args(typing.get_args(mech)[0])) == set(pharmacology.MECHANISMS)
    # each trait names its mechanism; a clone with two traits is named by the first in the table
    assert CloneSpec.model_validate({"growth": "0.5 1/day", "repair": 0.3}).mechanism == "dna_repair"
    both = CloneSpec.model_validate({"growth": "0.5 1/day", "repair": 0.3, "pgp_vmax": "10 uM/hour"})
    assert both.mechanism == "pgp"
    # the kill model: E_max only for classes that kill; repair only for repairable classes
    drugs = {n: DrugSpec.model_validate({"class": n, "diffusivity": "10 um^2/s", "emax": "0.1 1/hour"})
             for n in pharmacology.DRUG_CLASSES}
    clones = ClonesSpec.model_validate({"clones": {"r": {"growth": "0.5 1/day", "repair": 0.5}}})
    km = KillModel.from_specs(clones, drugs)
    for j, name in enumerate(km.drugs):
        kind = pharmacology.DRUG_CLASSES[name]
        expected = 0.0 if not kind.kills else 0.1 * (0.5 if kind.repairable else 1.0)
        assert km.coeff[0, j] == pytest.approx(expected), name


def test_test_files_have_unique_names():
    """The MPI run collects every test folder at once, where two test files of one basename
    stop the collection ('import file mismatch')."""
    from collections import Counter
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    names = Counter(p.name for p in tests.rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1]
