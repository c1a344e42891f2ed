"""Start-up: pint's registry from its on-disk cache, and a cache that cannot be used; the
conversions of quantity texts kept on disk (``$TME_CACHE_DIR/units``), so that a process whose
every quantity was read before does not import pint."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(str(p) for p in (ROOT / "configs").glob("*.yaml"))


def _units_in(env_cache: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TME_CACHE_DIR=env_cache)
    code = ("from tme.config import units; "
            "print(units.parse_quantity('5 um^2/s', 'um^2/hour', 'um^2/s'))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)


def test_unit_registry_is_cached_on_disk(tmp_path):
    first = _units_in(str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert float(first.stdout) == 18000.0
    assert any((tmp_path / "pint").iterdir())      # pint wrote its parsed definitions
    again = _units_in(str(tmp_path))               # and reads them back
    assert again.returncode == 0 and float(again.stdout) == 18000.0


def test_unusable_cache_falls_back_to_the_definition_files(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = _units_in(str(blocker))
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == 18000.0


# --------------------------------------------------------------------------------------------
# The conversions kept on disk

#: Reads what it is given (scenario files, quantity texts, doses, tumour sizes) and prints the
#: results, or the errors, as JSON, with whether pint was imported.
PROBE = r"""
import json, sys
from tme.config import scenario as sc, units
from tme.config.drugs import PKSpec, dose_concentration
from tme.config.treatment import TreatmentSpec

jobs = json.loads(sys.stdin.read())
out = {}

def rec(f, *args):
    try:
        return ["ok", f(*args)]
    except ValueError as exc:
        return [type(exc).__name__, str(exc)]

for path in jobs.get("configs", []):
    out[path] = rec(lambda p: sc.resolved_yaml(sc.load(p)), path)
for text, base in jobs.get("quantities", []):
    out[f"{text} -> {base}"] = rec(units.parse_quantity, text, base)
for value, base, unit in jobs.get("shown", []):
    out[f"{value!r} {base} in {unit}"] = rec(units.show, value, base, unit)
pk = PKSpec(molar_mass="543.5 g/mol", volume="40 L")
for text in jobs.get("doses", []):
    out["dose " + text] = rec(dose_concentration, text, pk, "amount")
for text in jobs.get("sizes", []):
    out["size " + text] = rec(lambda t: str(TreatmentSpec(detection_limit=t).detection_limit), text)
print(json.dumps({"results": out, "pint": "pint" in sys.modules}))
"""

DOSES = ["5 uM", "0.2 mM", "10 umol", "50 mg", "2 mg/L", "1.5e-3 g"]
SIZES = ["100 cell", "1e3 cells", "1e6 um**3", "0.001 mm**3", "1 pL"]
SHOWN = [[48.0, "hour", "day"], [18000.0, "um**2/hour", "um**2/s"], [1 / 3, "1/hour", "1/day"],
         [0.5, "um", "nm"], [2.5e5, "um", "mm"], [1e-3, "uM", "nM"]]
#: Refused texts: never kept, so read by pint at every call, with pint's own message
REFUSED = [["5 foo", "hour"], ["5", "hour"], ["1 hour", "uM"], ["9**9**9 hour", "hour"], ["1e400 hour", "hour"]]

#: Base units by dimension, for the quantity texts of the shipped scenarios
BASES = ["um", "hour", "uM", "um**2/hour", "1/hour", "um/hour", "1/um", "um**3", "L", "g/mol",
         "uM/hour", "1/uM", "umol", "g", "1/(uM*hour)", "uM*hour", "um**2"]


def probe(cache_dir: Path, jobs: dict) -> dict:
    env = dict(os.environ, TME_CACHE_DIR=str(cache_dir))
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, input=json.dumps(jobs),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def registry():
    pint = pytest.importorskip("pint")
    ureg = pint.UnitRegistry()
    ureg.define("cell = [cell_count] = cells")
    return ureg


def _texts(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _texts(v)
    elif isinstance(node, list):
        for v in node:
            yield from _texts(v)
    elif isinstance(node, str) and node[:1].isdigit() and len(node) < 40:
        yield node


@pytest.fixture(scope="module")
def quantities(registry):
    """(text, base) of every quantity text of the shipped scenarios, with pint's conversion."""
    pint = sys.modules["pint"]
    out = {}
    for path in CONFIGS:
        for text in _texts(yaml.safe_load(Path(path).read_text())):
            try:
                q = registry.Quantity(text.replace("µ", "u"))
            except (pint.errors.PintError, ValueError, TypeError, AttributeError, SyntaxError):
                continue
            if not isinstance(q, registry.Quantity) or q.unitless:
                continue
            base = next((b for b in BASES if q.dimensionality == registry.parse_units(b).dimensionality), None)
            if base is not None:
                out[(text, base)] = float(q.to(base).magnitude)
    assert len(out) > 50, "the shipped scenarios hold fewer quantity texts than expected"
    return out


@pytest.fixture(scope="module")
def jobs(quantities):
    return {"configs": CONFIGS, "quantities": [list(k) for k in quantities] + REFUSED,
            "shown": SHOWN, "doses": DOSES, "sizes": SIZES}


@pytest.fixture(scope="module")
def cold(tmp_path_factory, jobs):
    """A cache filled by one process: its directory, and what that process read."""
    folder = tmp_path_factory.mktemp("cache")
    first = probe(folder, jobs)
    assert first["pint"]
    assert len(list((folder / "units").glob("*.json"))) == 1
    return folder, first["results"]


def _warm_copy(cold, tmp_path) -> Path:
    folder = tmp_path / "cache"
    shutil.copytree(cold[0], folder)
    return folder


def test_a_second_process_reads_the_same_scenarios_without_pint(cold, jobs, tmp_path):
    accepted = {**jobs, "quantities": [q for q in jobs["quantities"] if q not in REFUSED]}
    again = probe(_warm_copy(cold, tmp_path), accepted)
    assert not again["pint"]
    assert again["results"] == {k: v for k, v in cold[1].items() if k in again["results"]}
    assert all(v[0] == "ok" for k, v in again["results"].items()), again["results"]


def test_kept_conversions_are_pints(cold, quantities, tmp_path):
    """Each value served from the cache is pint's conversion (to the 15 digits kept)."""
    served = probe(_warm_copy(cold, tmp_path), {"quantities": [list(k) for k in quantities]})
    assert not served["pint"]
    for (text, base), expected in quantities.items():
        status, value = served["results"][f"{text} -> {base}"]
        assert status == "ok" and math.isclose(value, expected, rel_tol=1e-14), (text, base, value, expected)


def test_refused_texts_are_read_by_pint_every_time(cold, tmp_path):
    again = probe(_warm_copy(cold, tmp_path), {"quantities": REFUSED})
    assert again["pint"]                                  # a refusal is never kept
    for text, base in REFUSED:
        key = f"{text} -> {base}"
        assert again["results"][key][0] != "ok"
        assert again["results"][key] == cold[1][key]      # the same message as the first time


def _truncated(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _values_changed_digest_kept(data: bytes) -> bytes:
    digest, _, payload = data.partition(b"\n")
    table = {k: (v * 2 if isinstance(v, float) else v) for k, v in json.loads(payload).items()}
    return digest + b"\n" + json.dumps(table).encode()


@pytest.mark.parametrize("damage", [_truncated, _values_changed_digest_kept, lambda data: b"\x00garbage\xff"])
def test_a_damaged_cache_still_gives_the_right_values(cold, jobs, tmp_path, damage):
    folder = _warm_copy(cold, tmp_path)
    (table,) = (folder / "units").glob("*.json")
    table.write_bytes(damage(table.read_bytes()))
    again = probe(folder, {**jobs, "configs": CONFIGS[:3]})
    assert again["pint"]                                  # read anew
    assert again["results"] == {k: v for k, v in cold[1].items() if k in again["results"]}
    # and written back whole: the next process is served from it again
    assert not probe(folder, {"configs": CONFIGS[:2]})["pint"]


def test_concurrent_writers_leave_a_whole_table(tmp_path, quantities, cold):
    """Three processes filling one cache at once (as MPI ranks or parallel test runs do): the
    table is whole afterwards, and what it serves is right."""
    keys = [list(k) for k in quantities]
    parts = [{"quantities": keys[i::3], "doses": DOSES} for i in range(3)]
    env = dict(os.environ, TME_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", PROBE], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in parts]
    for p, part in zip(procs, parts):
        p.stdin.write(json.dumps(part))
        p.stdin.close()
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
        p.stdout.close(), p.stderr.close()
    assert [p.name for p in (tmp_path / "units").iterdir()] == [next((cold[0] / "units").glob("*.json")).name]
    after = probe(tmp_path, {"quantities": keys, "doses": DOSES})
    assert after["results"] == {k: v for k, v in cold[1].items() if k in after["results"]}
