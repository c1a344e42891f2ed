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
    # trixie is Debian 13: the image is pinned to one of its point releases
    assert re.search(r"^FROM debian:13\.\d+$", dockerfile, re.M) and "SUITE=trixie" in env_sh


def _dockerfile_lines() -> list[str]:
    text = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_the_image_bakes_in_no_mpi_settings_and_runs_as_a_user():
    lines = _dockerfile_lines()
    env = " ".join(ln for ln in lines if ln.startswith("ENV "))
    assert "OMPI_" not in env and "PRTE_" not in env
    users = [ln for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] != "USER root" and users[-1] != "USER 0"
    assert any("useradd --uid \"$UID\"" in ln for ln in lines) and "ARG UID=1000" in lines
    # the entry point sets the single-node Open MPI settings for the container's own mpirun only
    entry = (ROOT / "docker" / "entrypoint.sh").read_text()
    mpirun_branch = entry[entry.index("mpirun|mpiexec)"):entry.index(";;")]
    outside = entry.replace(mpirun_branch, "")
    assert "OMPI_MCA_btl" in mpirun_branch and "OMPI_" not in outside.split("case", 1)[1]
    assert 'ENTRYPOINT ["/usr/local/bin/tme-entrypoint"]' in lines


def test_the_build_context_holds_what_the_dockerfile_copies():
    import fnmatch

    rules = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]

    def ignored(path: str) -> bool:   # Docker's rule: the last matching pattern decides
        out = False
        for rule in rules:
            neg, pat = rule.startswith("!"), rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                out = not neg
        return out

    sources = [src for ln in _dockerfile_lines() if ln.startswith("COPY ")
               for src in ln.split()[1:-1] if not src.startswith("--")]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not ignored(src), f".dockerignore leaves {src} out of the build context"
    for kept_out in ("results", "tests", ".git", "bench"):
        assert ignored(kept_out), kept_out


def test_the_slim_image_leaves_out_only_paraview():
    names = {l.split("#")[0].strip() for l in (ROOT / "docker" / "apt-packages.txt").read_text().splitlines()}
    run = next(ln for ln in _dockerfile_lines() if 'if [ "$PARAVIEW" = no ]' in ln)
    dropped = re.search(r"grep -v -x((?: -e [\w.+-]+)+)", run).group(1).split()[1::2]
    assert set(dropped) == {"paraview", "python3-paraview"} <= names


def test_the_apptainer_definition_reads_no_file_of_the_checkout():
    text = (ROOT / "docker" / "apptainer.def").read_text()
    assert "%files" not in text and "Bootstrap: docker-daemon" in text
    assert "/opt/tme/configs" in text and "WORKDIR /opt/tme" in (ROOT / "docker" / "Dockerfile").read_text()


def test_package_list_names_what_the_solver_imports():
    names = {l.split("#")[0].strip() for l in (ROOT / "docker" / "apt-packages.txt").read_text().splitlines()}
    for pkg in ("python3-dolfinx", "python3-mpi4py", "python3-pyvista", "python3-pydantic",
                "python3-pint", "python3-gmsh", "python3-meshio", "xvfb", "openmpi-bin"):
        assert pkg in names, pkg
