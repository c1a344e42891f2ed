"""Start-up: pint's registry from its on-disk cache, and a cache that cannot be used."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
