"""The edges of a run that the bad-input corpus cannot show (it needs nothing to be written):
the NaN guard, an interrupt, a disk that fills during the run, a directory the user may not
write, and `tme validate` as the whole set-up. Each ends in one line and leaves what was written
readable.
"""

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tme import cli

from runs import finish as _finish, tme as _tme  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

SMALL = """\
name: small
mesh: {kind: rectangle, size: [100 um, 100 um], cells: [20, 20]}
drugs:
  d: {class: dna_damaging, diffusivity: 10 um^2/s, permeability: 1 um/s, pk: {model: constant, level: 1 uM}}
tissue: {regions: {tissue: {vascular_density: 0.01 1/um}}}
time: {end: %s, dt: 1 hour}
output: {every: 1 hour, plots: false, snapshots: {times: []}}
"""


def _config(tmp_path, end="10 hour") -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(SMALL % end)
    return p


def _readable(out: Path, frames_at_least: int = 1) -> int:
    """The outputs of a stopped run open: whole CSV rows, the XDMF index and its frames."""
    import xml.etree.ElementTree as ET

    import h5py

    with open(out / "timeseries.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(None not in r.values() and "" not in (r["t"], r["dt"]) for r in rows)
    # the frames the index lists (a frame whose write failed is not listed) all open
    items = [d.text.strip() for d in ET.parse(out / "fields.xdmf").getroot().iter("DataItem")]
    frames = sorted({i.split(":")[0] for i in items if i.startswith("fields/frame_")})
    assert len(frames) >= frames_at_least
    for f in frames:
        with h5py.File(out / f, "r") as h5:
            assert len(h5.keys())
    return len(rows)


def _tme_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("tme")]


# ------------------------------------------------------------------------------------------
# the run loop's guards, through the CLI (in this process, so that the run can be poisoned)


@pytest.mark.parametrize("error", [
    FloatingPointError("oxygen is not a number (nan) at t = 4 h, x = (1.0, 2.0) µm"),
    KeyboardInterrupt(),
])
def test_nan_guard_and_interrupt_are_one_line(tmp_path, monkeypatch, capfd, error):
    from tme.problem import Problem

    step, calls = Problem._step, {"n": 0}

    def poisoned(self, t0, t1):
        step(self, t0, t1)
        calls["n"] += 1
        if calls["n"] == 4:
            raise error

    monkeypatch.setattr(Problem, "_step", poisoned)
    out = tmp_path / "out"
    status = cli.main(["run", str(_config(tmp_path)), "--out", str(out)])
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("tme")]
    assert "Traceback" not in err and len(lines) == 1, err
    if isinstance(error, FloatingPointError):
        assert status == 2 and lines[0] == f"tme: error: {error}"
    else:
        assert status == 130 and lines[0].startswith("tme: interrupted")
    assert _readable(out, 4) == 4  # t = 0 and three complete steps


def test_real_interrupt_prints_one_line(tmp_path):
    out = tmp_path / "out"
    p = _tme("run", _config(tmp_path, "2000 hour"), "--out", out)
    deadline = time.monotonic() + 60
    while not (out / "timeseries.csv").exists() or len((out / "timeseries.csv").read_text().splitlines()) < 4:
        assert p.poll() is None and time.monotonic() < deadline, _finish(p, 0.01)
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = _finish(p, 60)
    assert p.returncode == 130, err
    # stopped at the end of the step by the run itself, or interrupted during its set-up
    assert "Traceback" not in err and len(_tme_lines(err)) == 1, err
    assert "stopped by SIGINT" in err or "interrupted" in err, err
    _readable(out)


# ------------------------------------------------------------------------------------------
# a disk that fills while the run writes (another program takes the space): a real tmpfs


def _tmpfs(path: Path, size: str):
    path.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs ({p.stderr.strip()})")


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun")
@pytest.mark.parametrize("ranks", [1, 2])
def test_disk_full_during_the_run(tmp_path, ranks):
    disk = tmp_path / "disk"
    _tmpfs(disk, "24m")
    try:
        out = disk / "out"
        # long enough (6000 steps) for the disk to fill while it runs
        p = _tme("run", _config(tmp_path, "6000 hour"), "--out", out, "--set", "output.every=80 hour",
                 "--set", "mesh.cells=[40, 40]", ranks=ranks)
        deadline = time.monotonic() + 90
        while not (out / "timeseries.csv").exists() or len((out / "timeseries.csv").read_text().splitlines()) < 30:
            assert p.poll() is None and time.monotonic() < deadline, _finish(p, 0.01)
            time.sleep(0.05)
        # another program fills the disk
        # unbuffered: nothing is left to flush (and fail) when the file closes (Python 3.14)
        with open(disk / "filler", "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        _, err = _finish(p, 90)
        assert p.returncode not in (0, None), err
        lines = _tme_lines(err)
        assert "Traceback" not in err and len(lines) == 1, err
        assert "no space left" in lines[0] and "free on its filesystem" in lines[0] and str(out) in lines[0], err
        os.unlink(disk / "filler")
        assert _readable(out) >= 30
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ------------------------------------------------------------------------------------------
# a directory the user may not write (root may write anywhere: the run is made as 'nobody')


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_unwritable_directory_is_refused_before_set_up():
    # a directory of its own under /tmp: pytest's directories are private to root
    home = Path(tempfile.mkdtemp(prefix="tme-unwritable-", dir="/tmp"))
    try:
        home.chmod(0o755)
        locked = home / "locked"
        locked.mkdir(mode=0o755)
        config = _config(home)
        config.chmod(0o644)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts" / "pythonpath"), HOME=str(home))
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                            "-m", "tme", "run", str(config), "--out", str(locked / "out")],
                           env=env, capture_output=True, text=True, cwd=home)
        assert p.returncode == 2, p.stderr
        assert p.stderr.splitlines() == [f"tme: error: --out {locked / 'out'}: {locked} is not writable "
                                         "(permission denied)"], p.stderr
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(home)


# ------------------------------------------------------------------------------------------
# tme validate is the set-up of tme run


def test_validate_runs_the_set_up_and_says_how_long(tmp_path):
    p = _tme("validate", _config(tmp_path), "--quiet-ok")
    out, err = _finish(p, 120)
    assert p.returncode == 0 and out == "", err
    assert "mesh: 2-D, 800 cells" in err and "set up in" in err and "valid" in err, err


def test_validate_refuses_what_run_would_refuse(tmp_path):
    # a snapshot of a field the scenario does not have: known only once the fields exist
    config = _config(tmp_path)
    config.write_text(config.read_text().replace("times: []", "fields: [dox], times: [2 hour]"))
    for args in (["validate", config], ["run", config, "--out", tmp_path / "out"]):
        p = _tme(*args)
        _, err = _finish(p, 120)
        lines = _tme_lines(err)
        assert p.returncode == 2 and len(lines) == 1, err
        assert "output.snapshots.fields.0: no field 'dox'" in lines[0] and "auc_d" in lines[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config", ["default.yaml", "penetration.yaml", "caf_shield.yaml"])
def test_shipped_scenarios_pass_the_whole_set_up(config):
    p = _tme("validate", ROOT / "configs" / config, "--quiet-ok")
    _, err = _finish(p, 300)
    assert p.returncode == 0, err


def test_max_memory_sizes():
    from tme.resources import human, parse_bytes

    assert parse_bytes("40 GB") == 40 * 10**9 and parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("2e9") == 2 * 10**9 and parse_bytes("1.5 kB") == 1500
    for bad in ("lots", "-1 GB", "0", "4 parsecs", ""):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert human(17.3e6) == "17.3 MB" and human(999) == "999 B" and human(math.pi * 1e12) == "3.14 TB"


# `tme validate`, `tme schema` and the global options (validate builds the whole problem), on
# the scenario of the fixture `minimal` (tests/conftest.py)


def _tme_now(*args, cwd=ROOT):
    p = _tme(*args, cwd=cwd)
    out, err = _finish(p, 300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.mark.parametrize("override, key", [
    ("drugs.dox.difusivity=3", "drugs.dox.difusivity"),
    ("drugs.dox.diffusivity=5 hour", "drugs.dox.diffusivity"),
])
def test_cli_validate_one_line_and_nonzero(minimal, override, key):
    p = _tme_now("validate", str(minimal), "--set", override)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in p.stderr


def test_cli_validate_ok_and_schema(minimal):
    p = _tme_now("validate", str(minimal))
    assert p.returncode == 0 and "diffusivity: 16.0 um**2/s" in p.stdout
    p = _tme_now("schema")
    assert p.returncode == 0 and '"drugs"' in p.stdout
    p = _tme_now("--version")
    assert p.returncode == 0 and p.stdout.startswith("tme ")


def test_global_options_before_or_after_the_command(minimal):
    assert _tme_now("--quiet", "validate", str(minimal), "--quiet-ok").returncode == 0
    p = _tme_now("validate", str(minimal), "--quiet-ok", "--log-all-ranks", "-q")
    assert p.returncode == 0, p.stderr


# ------------------------------------------------------------------------------------------
# the collector: what a run loads is frozen when tme is the process, never in a caller's


def test_tme_freezes_what_it_loaded_only_when_it_is_the_process(tmp_path):
    import gc

    config = _config(tmp_path)
    before = gc.get_freeze_count()
    assert cli.main(["validate", str(config), "--quiet-ok"]) == 0
    assert gc.get_freeze_count() == before          # a call from Python: the caller's collector untouched
    code = ("import gc, sys; from tme.cli import main; "
            f"sys.argv = ['tme', 'validate', {str(config)!r}, '--quiet-ok']; status = main(); "
            "print(status, gc.get_freeze_count() > 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-2:] == ["0", "True"]
