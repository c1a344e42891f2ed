"""Virtual cohorts: ``tme cohort``.

``tme cohort CONFIG --sample KEY=DISTRIBUTION [--sample ...] --n N [--patients FILE.csv]
[--strategy NAME=FILE_OR_OVERRIDE ...] --seed S --out DIR`` makes N virtual patients (each a
set of scenario parameters), runs every patient under every strategy through the study engine
(:func:`tme.studies.batch.run_batch`) and writes:

- ``patients.csv``: one row per patient, one column per parameter ``key [unit]`` (the format
  ``--patients`` reads back);
- ``cohort.csv``: per patient × strategy: time to progression or censoring [day], whether it
  progressed, the baseline and best burden [cells], the best response ratio in burden and in
  diameter, the response category (CR, PR, SD, PD; NE when not evaluable), nadir, final burden
  and resistant fraction, and the error of a run that failed;
- ``summary.csv``: per strategy: patients, evaluable, the counts of each response, the response
  rate with its 95 % Clopper–Pearson interval, the median time to progression with its 95 %
  interval (Kaplan–Meier, statsmodels' SurvfuncRight), and the hazard ratio of progression
  against the first strategy with its 95 % interval and p-value (Cox model, statsmodels'
  PHReg, Efron ties);
- ``km.png``: the Kaplan–Meier curve of each strategy (days; censored patients ticked).

Patients: ``lognormal(median, cv)`` (median with its unit, cv the coefficient of variation),
``uniform(low, high)``, ``normal(mean, sd)`` — truncated to positive values where the key
refuses negative ones (a draw ≤ 0 is drawn again) —, and/or the rows of ``--patients``. Patient
i's values come from its own random stream (``numpy.random.default_rng([seed, i])``, the keys
in the order given), so a cohort is the same on any number of ranks, and patient i the same in a
cohort of any size.

Strategies: each is a scenario fragment (a YAML file whose sections are merged into the
scenario, dotted keys allowed) or ``--set``-style ``key.path=value`` overrides (the same name
repeated adds overrides). Each run's scenario is CONFIG with ``--set``, then the strategy, then
the patient's parameters: every patient has the same parameters under every strategy (a
strategy that sets a patient's key is refused). Without ``--strategy`` the CONFIG's own
treatment is the only arm, named ``config``.

Response (RECIST 1.1's best overall response, on the model's assessments): RECIST measures
the sum of diameters, so the burden B (an area in 2-D, a volume in 3-D) is compared as
(B / B₀)^(1/d), d the mesh dimension: a partial response is a best diameter ratio ≤ 0.7 (a
30 % decrease: B/B₀ ≤ 0.49 in 2-D, 0.343 in 3-D) at an assessment before progression; complete
response, a tumour not detectable at an assessment (a cure); progressive disease, progression
at the first assessment; stable disease otherwise. A patient with no assessment, or whose run
failed, is not evaluable. Time to progression is the first progression (the model calls it only
at assessments, so it lies on the assessment grid); a run that never progresses is censored at
the scenario's end time (also when a cure ended it early: a cured tumour does not progress).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import log
from ..config.scenario import Scenario, _yaml, load, validate
from ..config.spec import ScenarioError
from .batch import Job, groups_for, run_batch, study_directory
from . import strategies as strategies_
from .params import Param, check, convert, must_be_positive, quantity, split_key, split_top
from .strategies import Strategy

DISTRIBUTIONS = ("lognormal", "uniform", "normal")
FILES = ("patients.csv", "cohort.csv", "summary.csv", "km.png")
#: RECIST 1.1: a partial response is a 30 % decrease of the sum of diameters
PARTIAL_RESPONSE = 0.7
#: Largest number of draws of a truncated normal for one value.
MAX_DRAWS = 1000


# --------------------------------------------------------------------------------------------
# Patients


@dataclass(frozen=True)
class Sample:
    """A sampled parameter: ``kind`` with parameters ``a``, ``b`` (in ``param.unit``; a
    lognormal's ``b`` is its cv), ``positive``: a normal truncated to positive values."""

    param: Param
    kind: str
    a: float
    b: float
    positive: bool = False

    def draw(self, rng) -> float:
        if self.kind == "lognormal":
            sigma = math.sqrt(math.log1p(self.b ** 2))
            return float(self.a * math.exp(sigma * rng.standard_normal()))
        if self.kind == "uniform":
            return float(self.a + (self.b - self.a) * rng.random())
        for _ in range(MAX_DRAWS):
            v = float(self.a + self.b * rng.standard_normal())
            if v > 0 or not self.positive:
                return v
        raise ScenarioError(f"--sample {self.param.key}: normal({self.a:g}, {self.b:g}) truncated "
                            f"to positive values gave no positive value in {MAX_DRAWS} draws")

    def describe(self) -> str:
        u = f" {self.param.unit}" if self.param.unit else ""
        if self.kind == "lognormal":
            return f"lognormal(median {self.a:g}{u}, cv {self.b:g})"
        if self.kind == "uniform":
            return f"uniform({self.a:g}{u}, {self.b:g}{u})"
        return f"normal({self.a:g}{u}, {self.b:g}{u}){' > 0' if self.positive else ''}"


def parse_sample(text: str, base: Scenario) -> Sample:
    form = ("KEY=DISTRIBUTION, e.g. clones.clones.sensitive.growth='lognormal(0.5 1/day, 0.3)'; "
            "distributions: lognormal(median, cv), uniform(low, high), normal(mean, sd)")
    key, rest = split_key(text, "--sample", form)
    m = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", rest)
    if m is None:
        raise ScenarioError(f"--sample {text!r}: expected {form}")
    kind, args = m.group(1), [a.strip() for a in split_top(m.group(2))]
    what = f"--sample {key}"
    if kind not in DISTRIBUTIONS:
        raise ScenarioError(f"{what}: unknown distribution {kind!r}; valid: lognormal(median, cv), "
                            f"uniform(low, high), normal(mean, sd)")
    if len(args) != 2 or not all(args):
        raise ScenarioError(f"{what}: {kind} takes two arguments, got {len(args)} ({m.group(2)!r})")
    a, unit = quantity(args[0], what)
    param = Param(key, unit)
    if kind == "lognormal":
        cv, cv_unit = quantity(args[1], what)
        if cv_unit:
            raise ScenarioError(f"{what}: the cv of lognormal(median, cv) is a bare number (0.3 or "
                                f"'30 %'), got {args[1]!r}")
        if not a > 0 or not cv > 0:
            raise ScenarioError(f"{what}: lognormal needs a median > 0 and a cv > 0")
        check(base, param, (a,), what)
        return Sample(param, kind, a, cv)
    b, b_unit = quantity(args[1], what)
    b = convert(b, b_unit, unit, what)
    if kind == "uniform":
        if not a < b:
            raise ScenarioError(f"{what}: uniform(low, high) needs low < high")
        check(base, param, (a, b), what)
        return Sample(param, kind, a, b)
    if not b > 0:
        raise ScenarioError(f"{what}: normal(mean, sd) needs sd > 0")
    check(base, param, (a,), what)
    return Sample(param, kind, a, b, must_be_positive(base, param, a))


def draw_patients(samples: list[Sample], n: int, seed: int) -> np.ndarray:
    """(n × len(samples)) values: patient i from ``default_rng([seed, i])``."""
    out = np.zeros((n, len(samples)))
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        out[i] = [s.draw(rng) for s in samples]
    return out


_HEADER = re.compile(r"^\s*([^\[\]]+?)\s*(?:\[\s*([^\]]*?)\s*\])?\s*$")


def read_patients(path: Path, base: Scenario) -> tuple[list[str], list[Param], np.ndarray]:
    """The patients of a CSV file: (their ids, the parameters, n × k values).

    One row per patient, one column per key path. A column is ``key [unit]`` with bare numbers
    in its cells, or ``key`` with a value and its unit in each cell (``0.02 1/hour``; bare
    numbers for a key without dimension). An optional first column ``patient`` names the
    patients. Every value is checked against the scenario; an error names the file, the line
    and the column."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"--patients {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    except csv.Error as exc:
        raise ScenarioError(f"--patients {path}: not a CSV file ({exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ScenarioError(f"--patients {path}: needs a header (key paths) and at least one patient row")
    header = [h.strip() for h in rows[0]]
    ids_col = 0 if header and header[0] == "patient" else None
    cols = [k for k in range(len(header)) if k != ids_col]
    if not cols:
        raise ScenarioError(f"--patients {path}: no parameter column (header: key paths, e.g. "
                            f"'clones.clones.sensitive.growth [1/day]')")
    keys, units = [], []
    for k in cols:
        m = _HEADER.match(header[k])
        if m is None or not m.group(1) or " " in m.group(1):
            raise ScenarioError(f"--patients {path}: column {k + 1} {header[k]!r}: expected a key path, "
                                f"optionally with its unit: 'key.path [unit]'")
        if m.group(1) in keys:
            raise ScenarioError(f"--patients {path}: column {m.group(1)!r} is given twice")
        keys.append(m.group(1))
        units.append(m.group(2))
    values = np.zeros((len(rows) - 1, len(cols)))
    cell_units: list[str | None] = [None] * len(cols)
    ids = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ScenarioError(f"--patients {path}: line {line} has {len(row)} cells, the header {len(header)}")
        ids.append(row[ids_col].strip() if ids_col is not None else str(line - 1))
        for j, k in enumerate(cols):
            cell = row[k].strip()
            what = f"--patients {path}: line {line}, column {keys[j]}"
            if units[j] is not None:
                v, u = quantity(cell, what)
                if u:
                    raise ScenarioError(f"{what}: {cell!r}: the header gives the unit [{units[j]}]; write "
                                        f"the bare number")
                values[line - 2, j] = v
            else:
                v, u = quantity(cell, what)
                if cell_units[j] is None:
                    cell_units[j] = u
                values[line - 2, j] = convert(v, u, cell_units[j], what)
    params = [Param(key, units[j] if units[j] is not None else (cell_units[j] or ""))
              for j, key in enumerate(keys)]
    for j, p in enumerate(params):
        for i in range(values.shape[0]):
            check(base, p, (values[i, j],), f"--patients {path}: line {i + 2}, column {p.key}")
    return ids, params, values


# --------------------------------------------------------------------------------------------
# Strategies


def parse_strategies(items) -> dict[str, Strategy]:
    """``--strategy`` items (:func:`tme.studies.strategies.parse`) -> name -> strategy, in the
    order the names first appear."""
    return {st.name: st for st in strategies_.parse(items)}


def strategy_scenario(data: dict, name: str, strategy: Strategy, base_dir: Path | None = None
                      ) -> tuple[Scenario, list[str], list[Path]]:
    """(the scenario of ``strategy`` applied to the scenario mapping ``data`` — the CONFIG
    file's own, with ``--set`` —, the key paths it sets, the files it reads)."""
    changed, paths = strategies_.apply(data, strategy)
    scen = validate(changed, source=f"strategy {name}", base_dir=base_dir)
    return scen, paths, strategy.files


def raw(path: Path, overrides=()) -> dict:
    """The mapping of a scenario file with ``--set`` items applied (read as :func:`load` reads
    it; the file was loaded once already, so it reads)."""
    from ..config.scenario import apply_override

    data = _yaml(Path(path).read_text(encoding="utf-8"))
    for item in overrides:
        apply_override(data, item)
    return data


_overlap = strategies_.overlap


# --------------------------------------------------------------------------------------------
# Outcomes


def measure(problem) -> dict:
    """What a cohort needs beyond the summary: each progression assessment (time [hour],
    burden [µm^d], detectable) and the mesh dimension."""
    events = problem.events.events
    return {"dim": problem.model.domain.dim,
            "assessments": [[e.time, e.data.get("burden"), bool(e.data.get("detectable", True))]
                            for e in events if e.event == "assessment"],
            "progression_hours": next((e.time for e in events if e.event == "progression"), None)}


def response(outcome) -> dict:
    """The cohort row of one run (see the module docstring)."""
    s, x = outcome.summary, outcome.extra
    row = {"ok": int(outcome.ok), "error": outcome.error or ""}
    if not outcome.ok:
        return {**row, "time_to_progression_days": "", "progressed": "", "censored": "",
                "response": "NE"}
    prog = s.get("time_to_progression_hours")
    # never progressed: censored at the scenario's end time (also when a cure ended the run)
    end = max(s["end_time_hours"], outcome.tags.get("end_hours") or 0.0)
    d = x["dim"]
    base = s.get("baseline_burden")
    if base is None or not base > 0:
        base = s.get("initial_burden")
    assessed = [(t, b, seen) for t, b, seen in x["assessments"] if prog is None or t <= prog + 1e-9]
    cure = any(not seen for _, _, seen in assessed)
    ratios = [b / base for _, b, seen in assessed if seen and base]
    best = min(ratios) if ratios else None
    fb, fbc = s.get("final_burden"), s.get("final_burden_cells")
    cells = fbc / fb if fb and fbc is not None else None     # cells per unit of burden
    if not x["assessments"]:
        category = "NE"
    elif cure:
        category = "CR"
    elif best is not None and best ** (1.0 / d) <= PARTIAL_RESPONSE + 1e-12:
        category = "PR"
    elif prog is not None and x["assessments"] and x["assessments"][0][0] >= prog - 1e-9:
        category = "PD"
    else:
        category = "SD"
    return {**row,
            "time_to_progression_days": (prog if prog is not None else end) / 24.0,
            "progressed": int(prog is not None), "censored": int(prog is None),
            "baseline_cells": base * cells if cells is not None else "",
            "best_burden_ratio": "" if best is None else best,
            "best_diameter_ratio": "" if best is None else best ** (1.0 / d),
            "response": category,
            "nadir_cells": s.get("nadir_burden_cells", s.get("nadir_burden")),
            "final_burden_cells": s.get("final_burden_cells", s.get("final_burden")),
            "final_resistant_fraction": s.get("final_resistant_fraction"),
            "assessments": len(x["assessments"]),
            "wall_time_seconds": outcome.wall_time_seconds}


def km(times, events):
    """statsmodels' Kaplan–Meier estimate of progression-free survival."""
    from statsmodels.duration.survfunc import SurvfuncRight

    return SurvfuncRight(np.asarray(times, float), np.asarray(events, float))


def median_ttp(times, events) -> tuple[float, float, float]:
    """(median time to progression, its 95 % CI low, high) [day]; NaN where not reached."""
    if not len(times):
        return (math.nan,) * 3
    sf = km(times, events)
    med = float(sf.quantile(0.5))
    try:
        lo, hi = sf.quantile_ci(0.5, alpha=0.05)
    except Exception:  # noqa: BLE001 - too few events for an interval
        lo, hi = math.nan, math.nan
    return med, float(lo), float(hi)


def hazard_ratio(times_ref, events_ref, times, events) -> tuple[float, float, float, float]:
    """(hazard ratio of the second arm against the first, 95 % CI low, high, p-value) from a
    Cox model with the arm as covariate (Efron ties)."""
    from statsmodels.duration.hazard_regression import PHReg

    t = np.concatenate([times_ref, times]).astype(float)
    e = np.concatenate([events_ref, events]).astype(float)
    z = np.concatenate([np.zeros(len(times_ref)), np.ones(len(times))])[:, None]
    if not e.any() or len(times_ref) == 0 or len(times) == 0:
        return (math.nan,) * 4
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = PHReg(t, z, status=e, ties="efron").fit()
        lo, hi = np.exp(res.conf_int(alpha=0.05)[0])
        return float(np.exp(res.params[0])), float(lo), float(hi), float(res.pvalues[0])


def proportion_ci(k: int, n: int) -> tuple[float, float]:
    """The 95 % Clopper–Pearson interval of a proportion k/n."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return math.nan, math.nan
    lo, hi = proportion_confint(k, n, alpha=0.05, method="beta")
    return float(lo), float(hi)


def summarise(rows: list[dict], strategies: list[str]) -> list[dict]:
    """The per-strategy rows of summary.csv from the cohort rows."""
    out = []
    arms = {}
    for name in strategies:
        mine = [r for r in rows if r["strategy"] == name]
        ok = [r for r in mine if r["ok"]]
        t = np.array([r["time_to_progression_days"] for r in ok], dtype=float)
        e = np.array([r["progressed"] for r in ok], dtype=float)
        arms[name] = (t, e)
        counts = {c: sum(r["response"] == c for r in mine) for c in ("CR", "PR", "SD", "PD", "NE")}
        evaluable = len(mine) - counts["NE"]
        responders = counts["CR"] + counts["PR"]
        lo, hi = proportion_ci(responders, evaluable)
        med, mlo, mhi = median_ttp(t, e)
        row = {"strategy": name, "patients": len(mine), "failed": len(mine) - len(ok),
               "evaluable": evaluable, **counts,
               "response_rate": responders / evaluable if evaluable else math.nan,
               "response_rate_ci_low": lo, "response_rate_ci_high": hi,
               "progressed": int(e.sum()), "censored": int(len(e) - e.sum()),
               "median_ttp_days": med, "median_ttp_ci_low": mlo, "median_ttp_ci_high": mhi}
        if name == strategies[0]:
            row.update({"hazard_ratio": 1.0, "hazard_ratio_ci_low": "", "hazard_ratio_ci_high": "",
                        "hazard_ratio_p": ""})
        else:
            hr, hlo, hhi, p = hazard_ratio(*arms[strategies[0]], t, e)
            row.update({"hazard_ratio": hr, "hazard_ratio_ci_low": hlo, "hazard_ratio_ci_high": hhi,
                        "hazard_ratio_p": p})
        out.append(row)
    return out


def plot_km(path: Path, rows: list[dict], strategies: list[str]) -> None:
    """The Kaplan–Meier curve of each strategy against time [day], censored patients ticked."""
    from ..outputs import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for k, name in enumerate(strategies):
        ok = [r for r in rows if r["strategy"] == name and r["ok"]]
        if not ok:
            continue
        t = np.array([r["time_to_progression_days"] for r in ok], float)
        e = np.array([r["progressed"] for r in ok], float)
        sf = km(t, e)
        st, sp = np.concatenate([[0.0], sf.surv_times]), np.concatenate([[1.0], sf.surv_prob])
        end = max(t.max(), st[-1])
        ax.step(np.append(st, end), np.append(sp, sp[-1]), where="post", color=f"C{k}",
                lw=1.8, label=f"{name} (n = {len(ok)})")
        cens = t[e == 0]
        if len(cens):
            at = sp[np.searchsorted(st, cens, side="right") - 1]
            ax.plot(cens, at, "|", color=f"C{k}", ms=9, mew=1.5)
    ax.plot([], [], "|", color="0.3", ms=9, mew=1.5, label="censored")
    ax.set_xlabel("time [day]")
    ax.set_ylabel("progression-free fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=0)
    ax.set_title("Kaplan–Meier: time to progression per strategy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The study


@dataclass
class CohortResult:
    """The tables of a cohort as pandas DataFrames: ``patients`` (patients.csv), ``runs``
    (cohort.csv: one row per patient × strategy) and ``summary`` (summary.csv, indexed by
    strategy)."""

    patients: object
    runs: object
    summary: object


def _write(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    fields = fields or list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)


def study(config, comm, *, samples=(), n: int | None = None, patients: Path | None = None,
          strategies=(), seed: int | None = None, overrides=(), out: Path | None = None,
          overwrite: bool = False, ranks_per_run: int = 1,
          max_memory: float | None = None) -> CohortResult:
    """The cohort study (see the module docstring); collective, the result on every rank.

    ``config``: a scenario file or a :class:`Scenario`; ``samples``: ``--sample`` items;
    ``strategies``: ``--strategy`` items, or a dict name -> a YAML file, a dict of changes or a
    list of ``key=value`` items; ``overrides``: ``--set`` items."""
    import pandas as pd

    groups_for(comm.size, ranks_per_run)
    inputs, base_dir = [], None
    if isinstance(config, Scenario):
        from .sensitivity import _with_sets

        base = _with_sets(config, overrides) if overrides else config
        data = base.model_dump(mode="json", by_alias=True)
    else:
        base = load(config, list(overrides))
        inputs.append(Path(config))
        # strategies are merged into the file as written (a default derived from another
        # key, such as assessment.first from assessment.every, follows the strategy's value)
        data, base_dir = raw(Path(config), overrides), Path(config).parent
    if getattr(base.mesh, "path", None) is not None:
        inputs.append(Path(base.mesh.path))
    sampled = [parse_sample(t, base) for t in samples]
    if not sampled and patients is None:
        raise ScenarioError("tme cohort: give --sample KEY=DISTRIBUTION (with --n) or --patients FILE.csv")
    if sampled and seed is None:
        raise ScenarioError("tme cohort: --seed S is needed with --sample (the same seed gives the same cohort)")
    ids, params, values = [], [], np.zeros((0, 0))
    if patients is not None:
        ids, params, values = read_patients(Path(patients), base)
        inputs.append(Path(patients))
        if n is not None and n != len(ids):
            raise ScenarioError(f"--n {n}: --patients {patients} holds {len(ids)} patients; leave out --n")
        n = len(ids)
    if n is None or isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ScenarioError(f"--n {n!r}: expected the number of patients, a whole number >= 1")
    if sampled:
        keys = [p.key for p in params]
        for s in sampled:
            if s.param.key in keys:
                raise ScenarioError(f"--sample {s.param.key}: also a column of --patients; give it once")
            keys.append(s.param.key)
        drawn = draw_patients(sampled, n, seed)
        params = params + [s.param for s in sampled]
        values = np.hstack([values.reshape(n, -1), drawn]) if values.size else drawn
    if not ids:
        ids = [str(i + 1) for i in range(n)]
    if len({p.key for p in params}) != len(params):
        raise ScenarioError("tme cohort: a key is sampled twice; sample each key once")
    if isinstance(strategies, dict):
        specs = {st.name: st for st in strategies_.from_python(strategies)}
    else:
        specs = parse_strategies(list(strategies))
    arms = {}
    for name, spec in (specs or {"config": Strategy("config")}).items():
        scen, paths, files = strategy_scenario(data, name, spec, base_dir) if spec.changes else (base, [], [])
        for p in params:
            hit = next((q for q in paths if _overlap(p.key, q)), None)
            if hit is not None:
                raise ScenarioError(f"--strategy {name}: sets {hit}, a patient parameter ({p.key}); "
                                    f"patients keep their parameters under every strategy")
        if not scen.treatment.lines:
            raise ScenarioError(f"tme cohort: {'strategy ' + name if spec.changes else 'the scenario'} has no "
                                f"treatment line (treatment.lines), so no assessment: no progression "
                                f"and no response to report (an untreated arm is a line with an "
                                f"empty regimen)")
        arms[name] = scen
        inputs += files
    names = list(arms)
    logger = log.get()
    # every run's scenario, validated before any run starts
    jobs = []
    for i in range(n):
        changes = {p.key: p.text(values[i, j]) for j, p in enumerate(params)}
        for name, scen in arms.items():
            try:
                job_scen = scen.with_changes(changes)
            except ScenarioError as exc:
                raise ScenarioError(f"patient {ids[i]} under {name}: {exc}") from None
            jobs.append(Job(f"p{i + 1:05d}__{name}", job_scen, {"patient": i + 1, "patient_id": ids[i],
                                                                 "strategy": name, "end_hours": job_scen.time.end}))
    if out is not None:
        if study_directory(out, comm, "cohort", overwrite=overwrite, inputs=inputs, owned=FILES):
            logger.info(f"cohort: continuing the cohort in {out}")
    logger.info(f"cohort: {n} patient(s) x {len(names)} strategy(ies) ({', '.join(names)}); "
                f"parameters: {', '.join(s.param.key + ' ~ ' + s.describe() for s in sampled) or 'from ' + str(patients)}")
    patient_rows = [{"patient": i + 1, "patient_id": ids[i],
                     **{p.header(): float(values[i, j]) for j, p in enumerate(params)}} for i in range(n)]
    if comm.rank == 0 and out is not None:
        _write(out / "patients.csv", patient_rows)
    outcomes = run_batch(jobs, comm, ranks_per_run=ranks_per_run, out=out, measure=measure,
                         label="cohort", max_memory=max_memory)
    rows = []
    for o in outcomes:
        rows.append({"patient": o.tags["patient"], "patient_id": o.tags["patient_id"],
                     "strategy": o.tags["strategy"], **response(o)})
    table = summarise(rows, names) if comm.rank == 0 else None
    table = comm.bcast(table, root=0)
    if comm.rank == 0 and out is not None:
        _write(out / "cohort.csv", rows)
        _write(out / "summary.csv", table)
        plot_km(out / "km.png", rows, names)
        logger.info(f"cohort: wrote {out / 'patients.csv'}, cohort.csv, summary.csv and km.png")
    for r in table:
        hr = "" if r["strategy"] == names[0] else (
            f", HR {r['hazard_ratio']:.3g} [{r['hazard_ratio_ci_low']:.3g}, {r['hazard_ratio_ci_high']:.3g}]")
        logger.info(f"  {r['strategy']}: response {r['response_rate']:.0%} of {r['evaluable']}, median TTP "
                    f"{r['median_ttp_days']:.4g} day [{r['median_ttp_ci_low']:.4g}, "
                    f"{r['median_ttp_ci_high']:.4g}]{hr}")
    return CohortResult(pd.DataFrame(patient_rows), pd.DataFrame(rows), pd.DataFrame(table).set_index("strategy"))


def cohort(config, *, sample=None, n: int | None = None, patients=None, strategies=None,
           seed: int | None = None, changes: dict | None = None, out=None, comm=None,
           overwrite: bool = False, ranks_per_run: int = 1,
           max_memory: float | None = None) -> CohortResult:
    """``tme.cohort``: the study of ``tme cohort`` from Python (collective).

    ``sample``: ``{"key.path": "lognormal(0.5 1/day, 0.3)"}`` (or a list of ``KEY=DIST``
    items); ``patients``: a CSV file; ``strategies``: ``{"name": "fragment.yaml" | {"key.path":
    value} | ["key.path=value", ...]}`` (None: the scenario's own treatment); ``changes``: set
    in every run (as ``--set``); ``out``: the study's directory (None: in memory)."""
    from mpi4py import MPI

    from .sensitivity import _items

    if isinstance(sample, dict):
        items = [f"{k}={v}" for k, v in sample.items()]
    else:
        items = [sample] if isinstance(sample, str) else list(sample or [])
    return study(config, MPI.COMM_WORLD if comm is None else comm, samples=items, n=n,
                 patients=None if patients is None else Path(patients), strategies=strategies or (),
                 seed=seed, overrides=_items(changes), out=None if out is None else Path(out),
                 overwrite=overwrite, ranks_per_run=ranks_per_run, max_memory=max_memory)
