"""docs/tutorial.py runs as a script and converts to a notebook (jupytext)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from runs import ROOT

TUTORIAL = ROOT / "docs" / "tutorial.py"


def test_tutorial_runs_as_a_script(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT / "scripts" / "pythonpath"))
    env.pop("OMPI_COMM_WORLD_RANK", None)
    p = subprocess.run([sys.executable, str(TUTORIAL)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    # the bad value of the tutorial is reported in one line, naming its key
    assert "drugs.doxorubicin.emax: '0.1 uM' has dimension" in p.stdout
    assert list(tmp_path.iterdir()) == []   # in memory: nothing written


def test_tutorial_converts_to_a_notebook(tmp_path):
    out = tmp_path / "tutorial.ipynb"
    p = subprocess.run([sys.executable, "-m", "jupytext", "--to", "notebook", "--output", str(out),
                        str(TUTORIAL)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    nb = json.loads(out.read_text())
    assert nb["nbformat"] == 4
    cells = nb["cells"]
    markers = [ln for ln in TUTORIAL.read_text().splitlines() if ln.startswith("# %%")]
    assert len(cells) == len(markers)
    kinds = [c["cell_type"] for c in cells]
    assert kinds.count("markdown") == sum("[markdown]" in m for m in markers) >= 5
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for call in ("tme.Scenario(", "tme.run(", "with_changes(", "tme.compare(", ".plot(", "tme.fit("):
        assert call in code, call
