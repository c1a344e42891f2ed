"""The example scenarios shipped with tme: the scenario files (``configs/``) and the meshes and
vessel networks they read (``meshes/``), installed with the package.

    tme.examples.names()              # ['caf_shield', 'combination', 'default', ...]
    tme.examples.path("default")      # the scenario file, ready for tme.load
    tme.examples.copy("my-study")     # my-study/configs/*.yaml and my-study/meshes/*

A copy keeps the layout (a scenario reads ``../meshes/...``), so its scenarios run from
anywhere; on the command line: ``tme examples copy DIR``.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

from .config.spec import ScenarioError

#: The folders of the examples (beside each other: scenarios read ../meshes/).
FOLDERS = ("configs", "meshes")


def root() -> Path:
    """The folder holding ``configs/`` and ``meshes/``: in the installed package, or the
    project's own folders in a checkout."""
    here = Path(__file__).resolve().parent
    for base in (here / "_examples", here.parent):
        if (base / "configs" / "default.yaml").is_file():
            return base
    raise ScenarioError(f"tme examples: no example scenarios beside {here} (this copy of tme "
                        f"was installed without them)")


def names() -> list[str]:
    """The names of the example scenarios."""
    return sorted(p.stem for p in (root() / "configs").glob("*.yaml"))


def path(name: str) -> Path:
    """The scenario file of example ``name`` (see :func:`names`)."""
    p = root() / "configs" / f"{name}.yaml"
    if not p.is_file():
        valid = names()
        hint = difflib.get_close_matches(str(name), valid, n=1)
        did = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ScenarioError(f"tme examples: no example {name!r}{did}; examples: {', '.join(valid)}")
    return p


def _files(base: Path) -> list[Path]:
    return sorted(p.relative_to(base) for folder in FOLDERS for p in (base / folder).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.name != "__init__.py")


def copy(dest: str | Path) -> Path:
    """Copy the examples into ``dest`` (``dest/configs``, ``dest/meshes``), which may exist
    but must not hold any of their files already; returns ``dest``. Writes nothing when it
    refuses (one-line :class:`ScenarioError`)."""
    dest, base = Path(dest), root()
    if dest.exists() and not dest.is_dir():
        raise ScenarioError(f"tme examples copy {dest}: exists and is not a directory")
    files = _files(base)
    clash = [f for f in files if (dest / f).exists()]
    if clash:
        raise ScenarioError(f"tme examples copy {dest}: {dest / clash[0]} exists already; choose "
                            f"another directory")
    try:
        for f in files:
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(base / f, dest / f)
    except OSError as exc:
        raise ScenarioError(f"tme examples copy {dest}: {exc.strerror or exc}") from None
    return dest
