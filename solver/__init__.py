"""tme: a finite-element solver of the tumour microenvironment under chemotherapy.

The Python API (docs/api.md)::

    import tme

    scenario = tme.load(tme.examples.path("default"))             # or tme.Scenario(...)
    shorter = scenario.with_changes({"time.end": "10 day", "drugs.doxorubicin.emax": "0.1 1/hour"})
    results = tme.run(shorter)                                     # in memory; out=DIR writes files
    results.timeseries, results.events, results.summary            # DataFrames and a dict
    results.field("total", "5 day"), results.plot()
    table = tme.compare({"a": scenario, "b": shorter})             # a DataFrame, one row per run
    tme.sensitivity(scenario, {"drugs.doxorubicin.emax": ("0.05 1/hour", "0.5 1/hour")},
                    samples=64, output="final_burden").indices           # Sobol' indices
    tme.cohort(scenario, sample={"clones.clones.sensitive.growth": "lognormal(0.5 1/day, 0.3)"},
               n=100, seed=1).summary                                     # response, TTP, HR
    result = tme.fit(scenario, "patient.csv", {"drugs.dox.emax": "0.01 1/hour..0.5 1/hour"})

Its names are imported when first used, so ``import tme`` loads neither DOLFINx nor pandas.

The package reads as the model, each layer importing only those above it:
``pharmacology`` (drug classes and resistance mechanisms) -> ``config`` (the validated scenario:
schema, units) -> ``pk`` (plasma levels), ``protocol`` (lines of therapy), ``cells`` (clone
dynamics and their compiled kernel), ``clock`` and ``state`` (the step clock, what changes in
time) -> ``mesh`` and ``tissue`` (the domain and its properties), ``transport`` (drugs, survival
factor, oxygen), ``vasculature`` (vessel networks and blood flow) -> ``outputs`` -> ``problem``
(initialise, iterate, run, resume) -> ``results`` (the Python face of a run) -> ``studies``
(batch: the study engine; compare, verify; measurements, fit, forecast) -> ``cli``.
"""

if __name__ != "tme":   # one name, so that no module is imported twice under two
    raise ImportError(f"this package is imported as 'tme', not {__name__!r}")

__version__ = "0.1.0"

#: The public names: where each is defined (imported on first use).
_API = {
    "load": ("tme.config.scenario", "load"),
    "Scenario": ("tme.config.scenario", "Scenario"),
    "ScenarioError": ("tme.config.spec", "ScenarioError"),
    "run": ("tme.results", "run"),
    "Results": ("tme.results", "Results"),
    "FieldValues": ("tme.results", "FieldValues"),
    "compare": ("tme.studies.compare", "table"),
    "sensitivity": ("tme.studies.sensitivity", "sensitivity"),
    "cohort": ("tme.studies.cohort", "cohort"),
    "fit": ("tme.studies.fit", "fit"),
    "FitResult": ("tme.studies.fit", "FitResult"),
    "forecast": ("tme.studies.forecast", "forecast"),
    "Problem": ("tme.problem", "Problem"),
    "RunError": ("tme.problem", "RunError"),
}

__all__ = sorted(_API) + ["examples"]


def __getattr__(name: str):
    import importlib

    if name in _API:
        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name == "examples":
        return importlib.import_module("tme.examples")
    raise AttributeError(f"module 'tme' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
