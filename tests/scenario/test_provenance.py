"""Provenance: what a run records about the code, the machine, the command and the scenario."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tme import provenance
from tme.config import scenario as sc

ROOT = Path(__file__).resolve().parents[2]

SMALL = """\
name: small
mesh: {kind: rectangle, size: [100 um, 100 um], cells: [4, 4]}
tissue:
  regions:
    tissue: {vascular_density: 0.01 1/um, ecm_fraction: {mean: 0.2, cv: 0.3, correlation_length: 20 um, seed: 7}}
drugs:
  d: {class: dna_damaging, diffusivity: 10 um^2/s, permeability: 1 um/s, pk: {model: constant, level: 1 uM}}
time: {end: 2 hour, dt: 1 hour}
output: {plots: false, snapshots: {times: []}}
"""


def _git(where, *args):
    return subprocess.run(["git", "-C", str(where), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_git_state_of_a_checkout_clean_and_modified(tmp_path):
    pytest.importorskip("shutil").which("git") or pytest.skip("needs git")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert provenance.git_state(repo) == {"commit": head, "modified": False}
    (repo / "a.py").write_text("x = 2\n")
    assert provenance.git_state(repo) == {"commit": head, "modified": True}


def test_git_state_outside_a_checkout_or_without_git(tmp_path, monkeypatch):
    assert provenance.git_state(tmp_path) == {"commit": None, "modified": None}
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert provenance.git_state(ROOT) == {"commit": None, "modified": None}


def test_scenario_hash_follows_the_resolved_scenario(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(SMALL)
    a = provenance.scenario_hash(sc.resolved_yaml(sc.load(p)))
    assert a == provenance.scenario_hash(sc.resolved_yaml(sc.load(p)))
    assert a != provenance.scenario_hash(sc.resolved_yaml(sc.load(p, ["time.end=3 hour"])))


def test_record_and_header(comm):
    record = provenance.collect("name: x\n", comm, argv=["tme", "run", "a b.yaml"])
    assert record["tme_version"] and record["python"] and record["dolfinx"] and record["petsc"]
    assert record["command"] == "tme run 'a b.yaml'" and record["ranks"] == comm.size
    assert record["hosts"] and record["start"] and record["end"] is None
    assert record["scenario_sha256"] == provenance.scenario_hash("name: x\n")
    done = provenance.finished(record)
    assert done["end"] >= done["start"]
    text = provenance.header(done) + "name: x\n"
    assert all(ln.startswith("# ") for ln in text.splitlines()[:-1])
    assert yaml.safe_load(text) == {"name": "x"}  # a comment: the file still loads as the scenario


@pytest.mark.mpi
def test_a_run_records_provenance_everywhere(comm, tmp_path):
    from tme.problem import run

    d = Path(comm.bcast(str(tmp_path), root=0))
    cfg = d / "s.yaml"
    if comm.rank == 0:
        cfg.write_text(SMALL)
    comm.barrier()
    out = d / "out"
    run(sc.load(cfg), out, comm=comm)
    if comm.rank != 0:
        return
    summary = json.loads((out / "summary.json").read_text())
    rec = summary["provenance"]
    assert rec["ranks"] == comm.size and rec["end"] >= rec["start"]
    text = (out / "config.resolved.yaml").read_text()
    header = [ln for ln in text.splitlines() if ln.startswith("#")]
    body = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#")) + "\n"
    assert any(rec["scenario_sha256"] in ln for ln in header)
    assert provenance.scenario_hash(body) == rec["scenario_sha256"]
    # the seed of the random field is in the resolved scenario, which reloads to the same one
    assert yaml.safe_load(body)["tissue"]["regions"]["tissue"]["ecm_fraction"]["seed"] == 7
    assert sc.load(out / "config.resolved.yaml") == sc.load(cfg)
    # and in the field index, which ParaView reads past
    import xml.etree.ElementTree as ET

    info = ET.parse(out / "fields.xdmf").getroot().find("./Domain/Information[@Name='provenance']")
    assert info is not None and json.loads(info.get("Value"))["scenario_sha256"] == rec["scenario_sha256"]


def test_default_seed_is_recorded(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(SMALL.replace(", seed: 7", ""))
    data = yaml.safe_load(sc.resolved_yaml(sc.load(p)))
    assert data["tissue"]["regions"]["tissue"]["ecm_fraction"]["seed"] == 0
