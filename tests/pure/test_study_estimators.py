"""The estimators and inputs of tme sensitivity and tme cohort, without a run (no DOLFINx).

- Sobol' indices through the study's own wiring (sobol(): the design, the block order scipy asks
  for, the bootstrap) with a Python evaluator in place of the runs: the Ishigami function's
  known indices.
- Morris's elementary effects: exact for a linear function (in the normalised range, linear or
  log), and each trajectory a one-at-a-time path on the grid.
- --vary, --sample, --patients and --strategy read with units, refused in one line.
- The cohort's sampling: same seed same patients (whatever the cohort's size), the lognormal's
  median and cv, a normal truncated where the key refuses negatives.
- Kaplan–Meier medians and Cox hazard ratios on times whose law is known in closed form.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tme.config import scenario as scn
from tme.config.spec import ScenarioError
from tme.studies import cohort, sensitivity
from tme.studies.batch import Outcome
from tme.studies.params import Param
from tme.studies.sensitivity import Vary

BASE = {"name": "base", "mesh": {"kind": "rectangle", "size": ["100 um", "100 um"], "cells": [4, 4]},
        "drugs": {"chemo": {"class": "dna_damaging", "diffusivity": "10 um^2/s", "emax": "0.1 1/hour"}},
        "clones": {"clones": {"a": {"growth": "0.5 1/day", "initial": 0.1}}},
        "treatment": {"lines": [{"name": "watch", "regimen": []}], "assessment": {"every": "1 day"}},
        "time": {"end": "10 day", "dt": "1 day"}}


@pytest.fixture(scope="module")
def base():
    return scn.validate(json.loads(json.dumps(BASE)))


# --------------------------------------------------------------------------------------------
# Sobol' and Morris


def ishigami(x, a=7.0, b=0.1):
    return np.sin(x[:, 0]) + a * np.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * np.sin(x[:, 0])


def test_sobol_indices_of_the_ishigami_function_through_the_study_wiring():
    """S1 = (0.3139, 0.4424, 0), ST = (0.5576, 0.4424, 0.2437) for a = 7, b = 0.1 (Ishigami &
    Homma 1990; Sobol' & Levitan 1999). The evaluator stands where the runs stand: it gets the
    blocks A, B, AB in that order and m × d points in the parameters' own values."""
    asked = []

    def evaluate(block, X):
        asked.append((block, X.shape))
        assert np.all(np.abs(X) <= math.pi)
        return ishigami(X)

    variables = [Vary(Param(f"x{i}", ""), -math.pi, math.pi) for i in (1, 2, 3)]
    n = 4096
    found = sensitivity.sobol(variables, n, evaluate, seed=7, resamples=199)
    assert asked == [("A", (n, 3)), ("B", (n, 3)), ("AB", (3 * n, 3))]
    s1, st = np.array([0.3139, 0.4424, 0.0]), np.array([0.5576, 0.4424, 0.2437])
    # Saltelli 2010 at N = 4096: a standard error of about 0.01 on these indices
    np.testing.assert_allclose(found["S1"], s1, atol=0.03)
    np.testing.assert_allclose(found["ST"], st, atol=0.03)
    for key, exact in (("S1", s1), ("ST", st)):
        assert np.all(found[f"{key}_low"] <= exact + 0.01) and np.all(exact - 0.01 <= found[f"{key}_high"])
        assert np.all(found[f"{key}_high"] - found[f"{key}_low"] < 0.15)
    print("Ishigami S1", np.round(found["S1"], 4), "ST", np.round(found["ST"], 4))


def test_sobol_needs_a_power_of_two():
    with pytest.raises(ScenarioError, match=r"--samples 100: Sobol' sampling needs a power of 2 \(e.g. 128\)"):
        sensitivity.check_sobol_samples(100)


def test_morris_effects_of_a_linear_function_are_its_slopes_per_range():
    """f = 3 u1 − 2 u2 + 0.5 u3 in the normalised coordinates u (u3 in log): every elementary
    effect is exactly the slope, so μ* = |slope|, μ = slope, σ = 0."""
    variables = [Vary(Param("a", "1/hour"), 0.1, 0.5), Vary(Param("b", ""), -1.0, 1.0),
                 Vary(Param("c", "um^2/s"), 1.0, 100.0, log=True)]
    slopes = np.array([3.0, -2.0, 0.5])

    def evaluate(block, X):
        assert block == "M" and X.shape == (10 * 4, 3)
        u = np.column_stack([(X[:, 0] - 0.1) / 0.4, (X[:, 1] + 1.0) / 2.0, np.log(X[:, 2]) / np.log(100.0)])
        return u @ slopes

    found = sensitivity.morris(variables, 10, evaluate, seed=3)
    np.testing.assert_allclose(found["mu"], slopes, atol=1e-12)
    np.testing.assert_allclose(found["mu_star"], np.abs(slopes), atol=1e-12)
    np.testing.assert_allclose(found["sigma"], 0.0, atol=1e-12)


def test_morris_trajectories_move_one_parameter_at_a_time_on_the_grid():
    for points, order, steps in sensitivity.morris_design(4, 20, seed=1):
        assert points.shape == (5, 4) and sorted(order) == [0, 1, 2, 3]
        assert np.all((points >= -1e-12) & (points <= 1 + 1e-12))
        grid = points * (sensitivity.LEVELS - 1)
        np.testing.assert_allclose(grid, np.round(grid), atol=1e-9)
        for j, i in enumerate(order):
            diff = points[j + 1] - points[j]
            assert diff[i] == pytest.approx(steps[j]) and abs(steps[j]) == pytest.approx(2.0 / 3.0)
            assert np.count_nonzero(np.abs(diff) > 1e-12) == 1


# --------------------------------------------------------------------------------------------
# Reading --vary, --sample, --patients, --strategy


def test_vary_ranges_are_read_with_their_units(base):
    v = sensitivity.plan(base, ["drugs.chemo.emax=0.05 1/hour..12 1/day",
                                "clones.clones.a.growth=0.2 1/day..0.6 1/day"],
                         logs=["drugs.chemo.emax"])
    assert v[0].param == Param("drugs.chemo.emax", "1/hour") and v[0].log
    assert v[0].low == 0.05 and v[0].high == pytest.approx(0.5)
    assert v[0].param.text(0.25) == "0.25 1/hour"
    # log-uniform: the middle of the range in log is the geometric mean
    assert v[0].at(0.5) == pytest.approx(math.sqrt(0.05 * 0.5))
    assert v[1].at(0.5) == pytest.approx(0.4) and not v[1].log


@pytest.mark.parametrize("vary, logs, words", [
    (["drugs.chemo.emax=0.05..0.5"], [], ["drugs.chemo.emax", "bare number is ambiguous"]),
    (["drugs.chemo.emax=0.05 1/hour..0.5 uM"], [], ["not of the same dimension"]),
    (["drugs.chemo.emax=0.5 1/hour..0.05 1/hour"], [], ["must be below HIGH"]),
    (["drugs.chemo.emax=0.05 uM..0.5 uM"], [], ["drugs.chemo.emax", "expected 1 / [time]"]),
    (["drugs.chemo.emx=0.05 1/hour..0.5 1/hour"], [], ["emx", "did you mean 'emax'"]),
    (["drugs.chemo.emax=0.05 1/hour"], [], ["KEY=LOW..HIGH"]),
    (["drugs.chemo.emax=0 1/hour..0.5 1/hour"], ["drugs.chemo.emax"], ["log-scaled range needs LOW > 0"]),
    (["drugs.chemo.emax=0.1 1/hour..0.5 1/hour"], ["drugs.chemo.ec50"], ["--log drugs.chemo.ec50: not a varied key"]),
    ([], [], ["at least one --vary"]),
])
def test_a_bad_range_is_refused_in_one_line(base, vary, logs, words):
    with pytest.raises(ScenarioError) as err:
        sensitivity.plan(base, vary, logs)
    text = str(err.value)
    assert "\n" not in text
    for w in words:
        assert w in text, text


def test_samples_are_read_with_their_units(base):
    s = cohort.parse_sample("clones.clones.a.growth=lognormal(0.5 1/day, 30 %)", base)
    assert (s.kind, s.a, s.b, s.param.unit) == ("lognormal", 0.5, pytest.approx(0.3), "1/day")
    u = cohort.parse_sample("drugs.chemo.emax=uniform(0.05 1/hour, 24 1/day)", base)
    assert (u.a, u.b) == (0.05, pytest.approx(1.0))
    n = cohort.parse_sample("clones.clones.a.growth=normal(0.5 1/day, 0.2 1/day)", base)
    assert n.positive                  # a growth rate refuses negative values: truncated
    h = cohort.parse_sample("drugs.chemo.hill=normal(2, 0.5)", base)
    assert h.param.unit == "" and h.positive


@pytest.mark.parametrize("text, words", [
    ("clones.clones.a.growth=lognormal(0.5, 0.3)", ["growth", "bare number is ambiguous"]),
    ("clones.clones.a.growth=lognormal(0.5 1/day, 0.3 1/day)", ["cv of lognormal", "bare number"]),
    ("clones.clones.a.growth=gamma(2, 3)", ["unknown distribution 'gamma'"]),
    ("clones.clones.a.growth=uniform(0.5 1/day)", ["uniform takes two arguments"]),
    ("clones.clones.a.growth=uniform(0.5 1/day, 0.1 1/day)", ["low < high"]),
    ("clones.clones.a.growth=normal(0.5 1/day, 1 um)", ["not of the same dimension"]),
    ("clones.clones.a.growth", ["KEY=DISTRIBUTION"]),
    ("clones.clones.a.grwth=lognormal(0.5 1/day, 0.3)", ["unknown key 'grwth'"]),
])
def test_a_bad_sample_is_refused_in_one_line(base, text, words):
    with pytest.raises(ScenarioError) as err:
        cohort.parse_sample(text, base)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_the_same_seed_gives_the_same_patients_in_a_cohort_of_any_size(base):
    samples = [cohort.parse_sample("clones.clones.a.growth=lognormal(0.5 1/day, 0.3)", base),
               cohort.parse_sample("drugs.chemo.emax=uniform(0.05 1/hour, 0.5 1/hour)", base)]
    big = cohort.draw_patients(samples, 4000, seed=11)
    np.testing.assert_array_equal(cohort.draw_patients(samples, 50, seed=11), big[:50])
    assert not np.array_equal(cohort.draw_patients(samples, 50, seed=12), big[:50])
    g = big[:, 0]
    # lognormal(median m, cv): log g ~ N(log m, log(1 + cv²)); 4000 draws: the median to ~1 %,
    # the cv to ~2 %
    assert np.median(g) == pytest.approx(0.5, rel=0.03)
    assert np.std(g) / np.mean(g) == pytest.approx(0.3, rel=0.06)
    e = big[:, 1]
    assert e.min() >= 0.05 and e.max() <= 0.5 and np.mean(e) == pytest.approx(0.275, rel=0.02)


def test_a_normal_is_truncated_where_the_key_refuses_negatives(base):
    s = cohort.parse_sample("clones.clones.a.growth=normal(0.1 1/day, 0.2 1/day)", base)
    g = cohort.draw_patients([s], 3000, seed=1)[:, 0]
    assert g.min() > 0
    # the mean of N(0.1, 0.2) truncated at 0: μ + σ φ(α)/(1 − Φ(α)), α = −μ/σ
    from scipy import stats

    a = -0.1 / 0.2
    mean = 0.1 + 0.2 * stats.norm.pdf(a) / stats.norm.sf(a)
    assert g.mean() == pytest.approx(mean, rel=0.03)


def test_patients_are_read_from_a_csv_with_units_in_the_header_or_the_cells(base, tmp_path):
    f = tmp_path / "patients.csv"
    f.write_text("patient,clones.clones.a.growth [1/day],drugs.chemo.emax\n"
                 "anna,0.4,0.1 1/hour\n"
                 "ben,0.6,2.4 1/day\n")
    ids, params, values = cohort.read_patients(f, base)
    assert ids == ["anna", "ben"]
    assert params == [Param("clones.clones.a.growth", "1/day"), Param("drugs.chemo.emax", "1/hour")]
    np.testing.assert_allclose(values, [[0.4, 0.1], [0.6, 0.1]])


@pytest.mark.parametrize("text, words", [
    ("clones.clones.a.growth\n0.4\n", ["line 2, column clones.clones.a.growth", "bare number is ambiguous"]),
    ("clones.clones.a.growth [1/day]\n0.4 1/day\n", ["line 2", "header gives the unit"]),
    ("clones.clones.a.growth [1/day],x\n0.4\n", ["line 2 has 1 cells, the header 2"]),
    ("clones.clones.a.growth [1/day]\n", ["at least one patient row"]),
    ("clones.clones.a.growth [1/day]\n-0.4\n", ["line 2, column clones.clones.a.growth", "greater than or equal"]),
    ("clones.clones.a.grow [1/day]\n0.4\n", ["grow"]),
])
def test_a_bad_patients_file_is_refused_naming_the_line(base, tmp_path, text, words):
    f = tmp_path / "p.csv"
    f.write_text(text)
    with pytest.raises(ScenarioError) as err:
        cohort.read_patients(f, base)
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg
    for w in words:
        assert w in msg, msg


def test_strategies_are_fragments_or_overrides_applied_before_the_patient(base, tmp_path):
    frag = tmp_path / "holiday.yaml"
    frag.write_text("treatment:\n  assessment: {every: 2 day}\ndrugs.chemo.emax: 0.3 1/hour\n")
    specs = cohort.parse_strategies([f"holiday={frag}", "strong=drugs.chemo.emax=0.5 1/hour",
                                     "strong=time.end=20 day"])
    assert list(specs) == ["holiday", "strong"] and len(specs["strong"].changes) == 2
    data = json.loads(json.dumps(BASE))
    scen, paths, files = cohort.strategy_scenario(data, "holiday", specs["holiday"])
    assert scen.treatment.assessment.every == 48.0 and scen.drugs["chemo"].emax == pytest.approx(0.3)
    # merged into the scenario as written: the first assessment follows the new cadence, and the
    # rest of the section is kept
    assert scen.treatment.assessment.first == 48.0
    assert scen.treatment.lines == base.treatment.lines and data == BASE
    assert paths == ["treatment.assessment.every", "drugs.chemo.emax"] and files == [frag]
    strong, paths, _ = cohort.strategy_scenario(data, "strong", specs["strong"])
    assert strong.drugs["chemo"].emax == pytest.approx(0.5) and strong.time.end == 480.0
    assert cohort._overlap("drugs.chemo.emax", "drugs.chemo") and not cohort._overlap("drugs.chemo.emax", "drugs.chemo.ec50")
    with pytest.raises(ScenarioError, match="the name 'a b'"):
        cohort.parse_strategies(["a b=time.end=1 day"])
    with pytest.raises(ScenarioError, match="neither a YAML file"):
        cohort.parse_strategies(["x=notafile"])
    # NAME= is the scenario as it is, as tme forecast takes it
    plain = cohort.parse_strategies(["as_is=", f"holiday={frag}"])
    assert plain["as_is"].changes == [] and list(plain) == ["as_is", "holiday"]
    assert cohort.strategy_scenario(json.loads(json.dumps(BASE)), "as_is", plain["as_is"])[0] == base


# --------------------------------------------------------------------------------------------
# Response, Kaplan–Meier and hazard ratios


def _outcome(assessments, prog=None, dim=2, end=240.0, ok=True):
    summary = {"end_time_hours": end, "time_to_progression_hours": prog, "baseline_burden": 100.0,
               "initial_burden": 100.0, "final_burden": assessments[-1][1] if assessments else 100.0,
               "nadir_burden": 1.0, "final_resistant_fraction": 0.0}
    return Outcome("p", {}, ok, None if ok else "boom", summary if ok else None, [], [], None, [],
                   0.0, {"dim": dim, "assessments": assessments} if ok else {})


@pytest.mark.parametrize("assessments, prog, dim, expect", [
    ([[24, 80.0, True], [48, 48.0, True]], None, 2, "PR"),     # (0.48)^(1/2) = 0.69 <= 0.7
    ([[24, 80.0, True], [48, 50.0, True]], None, 2, "SD"),     # (0.50)^(1/2) = 0.707
    ([[24, 80.0, True], [48, 34.0, True]], None, 3, "PR"),     # (0.34)^(1/3) = 0.698
    ([[24, 80.0, True], [48, 36.0, True]], None, 3, "SD"),     # (0.36)^(1/3) = 0.711
    ([[24, 80.0, True], [48, 0.001, False]], None, 2, "CR"),
    ([[24, 130.0, True]], 24.0, 2, "PD"),
    ([[24, 90.0, True], [48, 130.0, True]], 48.0, 2, "SD"),
    ([[24, 130.0, True], [48, 20.0, True]], 24.0, 2, "PD"),    # a later shrinkage does not count
    ([], None, 2, "NE"),
])
def test_the_response_follows_recist_in_diameters(assessments, prog, dim, expect):
    row = cohort.response(_outcome(assessments, prog, dim))
    assert row["response"] == expect
    if assessments:
        best = min(b for t, b, seen in assessments if seen and (prog is None or t <= prog)) / 100.0
        assert row["best_diameter_ratio"] == pytest.approx(best ** (1 / dim))


def test_a_failed_run_is_not_evaluable():
    row = cohort.response(_outcome([], ok=False))
    assert row["response"] == "NE" and row["ok"] == 0 and row["error"] == "boom"


def test_kaplan_meier_median_and_hazard_ratio_of_exponential_times():
    """Two arms of 600 exponential times with rates λ and λ/2, censored at a fixed time: the
    median of each is ln 2 / rate and the hazard ratio of the second against the first is 1/2.
    Standard errors: the median's 1/(2 f(m) √n) = 1/(rate √n) (0.8 and 1.6 day), within 3 of
    which the estimate must lie, and which the 95 % interval's width must reflect; the log HR's
    √(1/d1 + 1/d2) (≈ 0.065)."""
    rng = np.random.default_rng(5)
    lam, n, end = 1 / 20.0, 600, 60.0
    ta, tb = rng.exponential(1 / lam, n), rng.exponential(2 / lam, n)
    ea, eb = ta <= end, tb <= end
    ta, tb = np.minimum(ta, end), np.minimum(tb, end)
    for (t, e, rate) in ((ta, ea, lam), (tb, eb, lam / 2)):
        med, lo, hi = cohort.median_ttp(t, e)
        exact, se = math.log(2) / rate, 1.0 / (rate * math.sqrt(n))   # f(m) = rate / 2
        assert abs(med - exact) < 3 * se
        assert lo < med < hi and hi - lo == pytest.approx(2 * 1.96 * se, rel=0.3)
    med = cohort.median_ttp(ta, ea)[0]
    hr, hlo, hhi, p = cohort.hazard_ratio(ta, ea, tb, eb)
    assert hlo <= 0.5 <= hhi and hr == pytest.approx(0.5, rel=0.1) and p < 1e-10
    # the summary of the same rows
    rows = [{"strategy": s, "ok": 1, "time_to_progression_days": t, "progressed": int(e), "response": "SD"}
            for s, ts, es in (("a", ta, ea), ("b", tb, eb)) for t, e in zip(ts, es)]
    table = cohort.summarise(rows, ["a", "b"])
    assert table[1]["hazard_ratio"] == pytest.approx(hr) and table[0]["hazard_ratio"] == 1.0
    assert table[0]["median_ttp_days"] == pytest.approx(med)
    assert table[1]["censored"] == int((~eb).sum()) and table[0]["response_rate"] == 0.0
    assert table[0]["response_rate_ci_high"] == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-6)


def test_a_cured_run_is_censored_at_the_scenario_end_time():
    """A cure ends the run early (treatment.stop.on_cure): it never progresses, so its time to
    progression is censored at time.end, not at the cure."""
    o = _outcome([[24, 80.0, True], [48, 0.001, False]], None, end=48.0)
    o.tags = {"end_hours": 240.0}
    row = cohort.response(o)
    assert (row["response"], row["censored"], row["time_to_progression_days"]) == ("CR", 1, 10.0)
    assert sensitivity.metric_of(o, "time_to_progression") == (10.0, True)
    o.summary["time_to_progression_hours"] = 36.0
    assert sensitivity.metric_of(o, "time_to_progression") == (1.5, False)
