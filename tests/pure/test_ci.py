"""The CI script's DOLFINx lanes: both by default, trixie then sid; a sid environment that cannot be
built is a skip, not a failure; a failing lane fails CI."""

import os
import re
import shutil
import subprocess

import pytest

from runs import ROOT

UNREACHABLE = "http://127.0.0.1:9/debian"   # the discard port: refused at once


def _ci(tmp_path, *lanes, lanes_env=None, make_status=0):
    """``.ci/run LANES`` where Debian sid cannot be reached, with a stand-in ``make`` (exiting
    with ``make_status``) that records its arguments instead of running the suite; ``lanes_env``:
    CI_LANES (unset when None). Returns (the process, the recorded make commands)."""
    env = dict(os.environ, TME_ENV_CACHE=str(tmp_path / "cache"), TME_ENV_MIRROR=UNREACHABLE)
    env.pop("TME_ENV", None)
    env.pop("CI_LANES", None)
    if lanes_env is not None:
        env["CI_LANES"] = lanes_env
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "make.log"
    make = bin_dir / "make"
    make.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit {make_status}\n')
    make.chmod(0o755)
    if shutil.which("debootstrap") is None:
        # inside the environment there is no debootstrap (and installing it would change the
        # cached root): a stand-in fails as debootstrap does on a mirror it cannot reach
        fake = bin_dir / "debootstrap"
        fake.write_text('#!/bin/sh\n'
                        'echo "I: Retrieving InRelease"\n'
                        'echo "E: Failed getting release file $4/dists/$2/Release"\n'
                        'exit 1\n')
        fake.chmod(0o755)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    p = subprocess.run([str(ROOT / ".ci" / "run"), *lanes], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    return p, calls.read_text().splitlines() if calls.exists() else []


def _skipped_with_its_reason(p, line, tmp_path):
    assert line.startswith("ci: SKIPPED lane latest (Debian sid): its environment could not be built: "), p.stdout
    # the reason is the environment's own one-line error
    errors = [l for l in p.stderr.splitlines() if l.startswith("[tme-env] error: ")]
    assert errors and line.endswith(errors[-1].removeprefix("[tme-env] error: "))
    # nothing half-built is left where a later run would take it for a root (the build's lock
    # file stays: it is no directory, and a later build takes the lock again)
    cache = tmp_path / "cache"
    left = [p for p in cache.iterdir() if p.is_dir()] if cache.exists() else []
    assert not left, left


def test_a_sid_lane_that_cannot_be_built_is_skipped_with_its_reason(tmp_path):
    p, calls = _ci(tmp_path, "latest")
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout.strip().splitlines()
    assert len(out) == 1 and not calls, (p.stdout, calls)
    _skipped_with_its_reason(p, out[0], tmp_path)


def test_ci_runs_both_lanes_by_default(tmp_path):
    p, calls = _ci(tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    # the trixie lane first (the whole suite, in the default environment), then sid's
    assert calls == ["test"], calls
    out = p.stdout.strip().splitlines()
    assert len(out) == 2 and re.fullmatch(r"ci: lane default passed in \d+ s", out[0]), p.stdout
    _skipped_with_its_reason(p, out[1], tmp_path)


def test_ci_lanes_chooses_the_lanes(tmp_path):
    p, calls = _ci(tmp_path, lanes_env="default")
    assert p.returncode == 0 and calls == ["test"], (p.stdout + p.stderr, calls)
    out = p.stdout.strip().splitlines()
    assert len(out) == 1 and re.fullmatch(r"ci: lane default passed in \d+ s", out[0]), p.stdout


def test_a_failing_lane_fails_ci_and_stops_it(tmp_path):
    p, calls = _ci(tmp_path, make_status=2)
    assert p.returncode != 0 and calls == ["test"], (p.stdout + p.stderr, calls)
    assert "passed" not in p.stdout and "SKIPPED" not in p.stdout, p.stdout


def test_an_unknown_lane_is_refused():
    p = subprocess.run([str(ROOT / ".ci" / "run"), "nightly"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "no lane 'nightly'" in p.stderr


def test_make_names_the_lanes():
    p = subprocess.run(["make", "-n", "test-pure", "DOLFINX=0.12"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0 and "DOLFINX=0.12 is not a lane" in p.stderr
    p = subprocess.run(["make", "-n", "test-pure", "DOLFINX=latest"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_two_builds_of_the_environment_do_not_run_at_once(tmp_path):
    """A second `env.sh ensure` waits for a build under way in the same cache instead of
    building alongside it (two roots of 4 GB at once, each slowed by the other)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "builds.log"
    fake = bin_dir / "debootstrap"   # a build that takes a second, then fails as a bad mirror does
    fake.write_text('#!/bin/sh\n'
                    f'echo "start $(date +%s.%N)" >> {log}\n'
                    'sleep 1\n'
                    f'echo "end $(date +%s.%N)" >> {log}\n'
                    'echo "E: Failed getting release file $4/dists/$2/Release"\n'
                    'exit 1\n')
    fake.chmod(0o755)
    env = dict(os.environ, TME_ENV_CACHE=str(tmp_path / "cache"), TME_ENV_MIRROR=UNREACHABLE,
               TME_ENV="sid", PATH=f"{bin_dir}:{os.environ['PATH']}")
    cmd = [str(ROOT / "scripts" / "env.sh"), "ensure"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time
    for _ in range(100):             # the first build has started
        if log.exists():
            break
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    first.communicate(timeout=120)
    assert first.returncode != 0 and second.returncode != 0      # both failed, as the mirror does
    assert "waiting for an environment build already under way" in second.stderr, second.stderr
    events = [line.split() for line in log.read_text().splitlines()]
    assert [e[0] for e in events] == ["start", "end", "start", "end"], events   # one after the other
    assert float(events[2][1]) >= float(events[1][1])


@pytest.mark.skipif(os.geteuid() != 0, reason="a build of the environment needs root")
def test_a_command_runs_in_the_root_its_call_has_just_built(tmp_path):
    """`env-exec CMD` on a machine without the root builds it, then runs CMD in that root (the
    build reads a copy of the package list, which is gone once the root is in place). Stand-ins
    for debootstrap (an empty root) and unshare (records the root a command would enter)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    entered = tmp_path / "entered.log"
    (bin_dir / "debootstrap").write_text('#!/bin/sh\nmkdir -p "$3"\n')
    # unshare --mount --propagation private /bin/bash -c INNER _ ROOT REPO CMD...
    (bin_dir / "unshare").write_text(f'#!/bin/sh\necho "$8" >> {entered}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    cache = tmp_path / "cache"
    env = dict(os.environ, TME_ENV_CACHE=str(cache), TME_ENV="sid", PATH=f"{bin_dir}:{os.environ['PATH']}")
    p = subprocess.run([str(ROOT / "scripts" / "env.sh"), "exec", "true"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    roots = [d for d in cache.iterdir() if d.is_dir()]
    assert len(roots) == 1 and roots[0].name.startswith("sid-"), roots
    # the install, the check of the install and the command: all in the root just built
    assert entered.read_text().splitlines()[-1] == str(roots[0]), entered.read_text()
