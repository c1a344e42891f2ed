"""Make configs/patient_fit/measurements.csv: the patient's measurements, made by the solver.

    scripts/env-exec python3 bench/patient_data.py            # writes the file
    scripts/env-exec python3 bench/patient_data.py --print    # prints it instead

The "patient" is configs/patient_fit/patient.yaml with a hidden parameter set (HIDDEN below:
what tme fit should find) run once as the fit runs it (the measurement times are report times);
its burden at the imaging days with log-normal noise of cv 10 %, its resistant fraction at the
two biopsies with a standard deviation of 0.05 (tme.studies.fit.synthetic), seed 2026.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "pythonpath"))

import tme  # noqa: E402
from tme import log  # noqa: E402
from tme.studies.fit import synthetic  # noqa: E402

FOLDER = ROOT / "configs" / "patient_fit"
#: the patient's own values (the scenario holds population values, the fit's start)
HIDDEN = {"clones.clones.sensitive.growth": "0.1 1/day", "drugs.chemo.emax": "0.02 1/hour",
          "clones.clones.resistant.initial": 0.004}
IMAGING = [0, 14, 28, 42, 56, 84, 112, 140, 168]    # days
BIOPSIES = [0, 28]
SEED = 2026


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--print", action="store_true", help="print the file instead of writing it")
    args = ap.parse_args()
    log.setup(level=30)
    scenario = tme.load(FOLDER / "patient.yaml").with_changes(HIDDEN)
    hidden = ", ".join(f"{k} = {v}" for k, v in HIDDEN.items())
    comment = (f"Measurements of the patient of patient.yaml, made by the solver (not a real patient):\n"
               f"the scenario run with the hidden values {hidden};\n"
               f"burden at the imaging days with log-normal noise (cv 10 %), resistant fraction at the\n"
               f"biopsies (days {', '.join(map(str, BIOPSIES))}) with normal noise of sd 0.05 (its sd column), seed {SEED}.\n"
               f"Regenerate with: scripts/env-exec python3 bench/patient_data.py")
    text = synthetic(scenario, IMAGING, unit="mm^3", cv=0.1, fractions_at=BIOPSIES, fraction_sd=0.05,
                     seed=SEED, comment=comment)
    if args.print:
        print(text, end="")
    else:
        (FOLDER / "measurements.csv").write_text(text)
        print(f"wrote {FOLDER / 'measurements.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
