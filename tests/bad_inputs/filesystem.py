"""Output directories a run cannot use: files, paths below files, read-only filesystems, a disk
too small for the outputs, a directory whose overwrite would replace the run's own input.

Every one is refused before the set-up writes anything. The cases that mount a filesystem need
root in a private mount namespace (as in the tme environment) and are skipped elsewhere.
"""

import atexit
import os
import subprocess
from pathlib import Path

import pytest

from bad_inputs import Case

GOOD = """\
name: tiny
mesh: {kind: rectangle, size: [100 um, 100 um], cells: [4, 4]}
time: {end: 2 hour, dt: 1 hour}
output: {plots: false, snapshots: {times: []}}
"""

#: A run whose fields take about 3 MB: 41 frames of 3 fields on 10^4 dofs.
FIELDS = """\
name: fields
mesh: {kind: rectangle, size: [100 um, 100 um], cells: [100, 100]}
drugs:
  d: {class: dna_damaging, diffusivity: 10 um^2/s, permeability: 1 um/s, pk: {model: constant, level: 1 uM}}
tissue: {regions: {tissue: {vascular_density: 0.01 1/um}}}
time: {end: 40 hour, dt: 1 hour}
output: {every: 1 hour, plots: false, snapshots: {times: []}}
"""

S = {"s.yaml": GOOD}


def _mount(path: Path, options: str) -> None:
    """A tmpfs at ``path`` (unmounted when the tests end); skips the case where mounting fails."""
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()})")
    atexit.register(subprocess.run, ["umount", "-l", str(path)], capture_output=True)


def _read_only_out(d: Path, out: Path) -> None:
    # the user's directory, with a file of theirs, on a filesystem mounted read-only
    _mount(out, "size=1m")
    (out / "notes.txt").write_text("the user's own file\n")
    subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)


def _small_disk(d: Path, out: Path) -> None:
    _mount(out, "size=256k")
    (out / "notes.txt").write_text("the user's own file\n")


def _config_in_out(d: Path, out: Path) -> None:
    out.mkdir(exist_ok=True)
    (out / "config.resolved.yaml").write_text(GOOD)


def _loop(d: Path, out: Path) -> None:
    os.symlink(d / "loop", d / "loop")


CASES = [
    Case("fs-out-is-the-config", ["run", "{dir}/s.yaml", "--out", "{dir}/s.yaml"], "input file", files=S),
    Case("fs-out-is-a-file", ["run", "{dir}/s.yaml", "--out", "{dir}/notes.txt"], "not a directory",
         files={**S, "notes.txt": "mine\n"}),
    Case("fs-out-below-a-file", ["run", "{dir}/s.yaml", "--out", "{dir}/notes.txt/results"], "is a file",
         files={**S, "notes.txt": "mine\n"}),
    Case("fs-out-deep-below-a-file", ["run", "{dir}/s.yaml", "--out", "{dir}/notes.txt/a/b/c"],
         "is a file", files={**S, "notes.txt": "mine\n"}),
    Case("fs-out-link-loop", ["run", "{dir}/s.yaml", "--out", "{dir}/loop/results"], "loop",
         files=S, setup=_loop),
    Case("fs-out-name-too-long", ["run", "{dir}/s.yaml", "--out", "{dir}/" + "x" * 300], "too long",
         files=S),
    Case("fs-out-not-empty", ["run", "{dir}/s.yaml", "--out", "{out}"], "--overwrite", files=S,
         out_exists=True),
    Case("fs-overwrite-would-replace-the-config",
         ["run", "{out}/config.resolved.yaml", "--out", "{out}", "--overwrite"], "which this run reads",
         out_exists=True, setup=_config_in_out),
    Case("fs-out-read-only-filesystem", ["run", "{dir}/s.yaml", "--out", "{out}/results"], "read-only",
         files=S, setup=_read_only_out),
    Case("fs-out-disk-too-small", ["run", "{dir}/s.yaml", "--out", "{out}/results"], "free",
         files={"s.yaml": FIELDS}, setup=_small_disk),
    Case("fs-compare-out-read-only", ["compare", "{dir}/s.yaml", "--out", "{out}/cmp"], "read-only",
         files=S, setup=_read_only_out),
]
