"""The container and the local environment are built from one package list."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_and_env_script_read_the_same_package_list():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    env_sh = (ROOT / "scripts" / "env.sh").read_text()
    assert "COPY docker/apt-packages.txt" in dockerfile
    assert re.search(r'PKG_LIST="\$REPO/docker/apt-packages.txt"', env_sh)
    # both strip comments the same way before installing
    strip = "sed -e 's/#.*//' -e 's/[[:space:]]//g'"
    assert strip in dockerfile and strip in env_sh
    assert "FROM debian:trixie" in dockerfile and "SUITE=trixie" in env_sh


def test_package_list_names_what_the_solver_imports():
    names = {l.split("#")[0].strip() for l in (ROOT / "docker" / "apt-packages.txt").read_text().splitlines()}
    for pkg in ("python3-dolfinx", "python3-mpi4py", "python3-pyvista", "python3-pydantic",
                "python3-pint", "python3-gmsh", "python3-meshio", "xvfb", "openmpi-bin"):
        assert pkg in names, pkg
