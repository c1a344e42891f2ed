"""pip install into an existing DOLFINx environment: a venv with the system's site packages,
without the network, then ``tme run`` of a shipped example outside the repository."""

import os
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

from runs import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: wheels of pip, setuptools and wheel, which Debian ships for venvs (an isolated build offline)
SYSTEM_WHEELS = Path("/usr/share/python-wheels")


def test_every_sub_package_is_packaged():
    """The list of packages in pyproject.toml is every package under solver/, each under its
    import name, and the example folders."""
    setup = PYPROJECT["tool"]["setuptools"]
    found = {"tme"} | {"tme." + ".".join(p.parent.relative_to(ROOT / "solver").parts)
                       for p in (ROOT / "solver").rglob("__init__.py") if p.parent != ROOT / "solver"}
    examples = {"tme._examples.configs", "tme._examples.meshes"}
    assert set(setup["packages"]) == found | examples
    assert setup["package-dir"] == {"tme": "solver", "tme._examples.configs": "configs",
                                    "tme._examples.meshes": "meshes"}
    # nothing a system pyvista would make pip fetch (PyPI's VTK) among what pip install . asks for
    deps = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["plots"]
    assert not [d for d in deps if d.split(">")[0].split("=")[0].strip() in ("pyvista", "vtk")]


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True,
                   capture_output=True, timeout=300)
    return path / "bin"


def _clean_env(bin_dir: Path) -> dict:
    # the caller's pip settings (an index, a directory of wheels) would let pip find what the
    # system lacks
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "OMPI_COMM_WORLD_RANK") and not k.startswith("PIP_")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    env["PIP_NO_INDEX"] = "1"                 # no network: what is needed must be found here
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _source(tmp: Path) -> Path:
    """A copy of the project as a user would unpack it (no git, no caches)."""
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "results", "__pycache__", "*.egg-info",
                                                             "build", ".pytest_cache"))
    return src


def _pip(bin_dir: Path, env: dict, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "pip"), "install", "-q", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _unshipped(requirements) -> dict[str, str]:
    """What pip would have to download to install ``requirements`` over the system's packages:
    walks them through the installed distributions and returns {requirement: the installed
    distribution declaring it} for each declared but not installed. A requirement of tme itself
    that the system lacks fails the test: what tme asks pip for must all be on the system.

    Some systems' packages declare what they do not ship as a Python distribution (Debian sid's
    python-dateutil 3.0 requires ``tzdata``, whose zone files Debian installs outside Python):
    pip then cannot resolve pandas offline, whatever tme asks for."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    missing, seen = {}, set()
    todo = [(Requirement(r), None) for r in requirements]
    while todo:
        req, by = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            assert by is not None, f"tme requires {req}, which this system does not provide"
            missing[str(req)] = by
            continue
        for line in dist.requires or []:
            r = Requirement(line)
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append((r, f"{dist.metadata['Name']} {dist.version}"))
    return missing


def _offline_deps(*extras) -> list[str]:
    """``[]``, or ``["--no-deps"]`` where the system's packages declare requirements they do not
    ship (:func:`_unshipped`; tme's own requirements are checked to be there), with a warning
    naming them."""
    project = PYPROJECT["project"]
    wanted = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    missing = _unshipped(wanted)
    if not missing:
        return []
    warnings.warn("pip install --no-deps: the system's packages declare requirements they do not "
                  "ship: " + ", ".join(f"{by} requires {req}" for req, by in sorted(missing.items())))
    return ["--no-deps"]


@pytest.mark.slow
def test_pip_install_runs_an_example_outside_the_repository(tmp_path):
    src = _source(tmp_path)
    bin_dir = _venv(tmp_path / "venv")
    env = _clean_env(bin_dir)
    # every dependency (and the plots extra) is satisfied by the system's packages, offline
    p = _pip(bin_dir, env, "--no-build-isolation", *_offline_deps("plots"), ".[plots]", cwd=src)
    assert p.returncode == 0, p.stderr

    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run([str(bin_dir / "python"), "-c", "import tme, tme.examples; "
                            "print(tme.__file__); print(tme.examples.path('default'))"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    module, example = where.stdout.split()
    assert module.startswith(str(tmp_path / "venv")) and example.startswith(str(tmp_path / "venv"))

    tme = [str(bin_dir / "tme")]
    p = subprocess.run(tme + ["examples", "copy", "examples"], cwd=work, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (work / "examples" / "meshes" / "tissue_slice.msh").is_file()
    # penetration.yaml reads ../meshes/tissue_slice.msh: the copy keeps the layout
    p = subprocess.run(tme + ["run", "examples/configs/penetration.yaml", "--out", "out", "-q",
                              "--set", "time.end=1 hour", "--set", "time.dt=30 min",
                              "--set", "output.snapshots.times=[]"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert (work / "out" / "summary.json").is_file() and (work / "out" / "plots" / "species.png").is_file()
    resolved = (work / "out" / "config.resolved.yaml").read_text()
    assert str(work / "examples" / "meshes" / "tissue_slice.msh") in resolved


@pytest.mark.slow
def test_pip_install_with_build_isolation(tmp_path):
    """``pip install .`` (an isolated build) with the build requirements from the wheels the
    system ships for venvs; the install step of docker/Dockerfile (``--no-deps
    --no-build-isolation``) into the same venv."""
    if not list(SYSTEM_WHEELS.glob("setuptools-*.whl")):
        pytest.skip(f"no setuptools wheel in {SYSTEM_WHEELS} for an isolated build without network")
    src = _source(tmp_path)
    bin_dir = _venv(tmp_path / "venv")
    env = _clean_env(bin_dir)
    p = _pip(bin_dir, env, "--find-links", str(SYSTEM_WHEELS), *_offline_deps(), ".", cwd=src)
    assert p.returncode == 0, p.stderr
    p = _pip(bin_dir, env, "--force-reinstall", "--no-deps", "--no-build-isolation", ".", cwd=src)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([str(bin_dir / "tme"), "examples", "path", "mdr_pgp"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip().startswith(str(tmp_path / "venv")), p.stderr
