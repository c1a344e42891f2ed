# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # tme from Python: a scenario, a run, a changed drug, two strategies compared, a fit
#
# This tutorial is a script and a notebook at once (jupytext's percent format): run it with
# `python3 docs/tutorial.py`, or make a notebook of it with
# `jupytext --to notebook docs/tutorial.py` and open that in Jupyter. It builds a small
# scenario in Python, runs it in memory, looks at its time series and one field, changes a drug
# and compares two treatment strategies, then fits a drug's kill rate to a patient's
# measurements. The mesh is coarse and the treatment short, so that it
# runs in seconds; the API is described in `docs/api.md`.
#
# Units: every physical value is written with its unit (`"16 um^2/s"`, `"6 hour"`); results
# come back in the model's base units (µm, hour, µM), times in the tables in hours (`t`) and
# days (`time_days`).

# %%
import matplotlib.pyplot as plt

import tme

# %% [markdown]
# ## 1. A scenario built in Python
#
# The sections are those of a scenario file (`tme schema` prints them all), given as keyword
# arguments: a 600 µm × 300 µm slab of tissue with vessels spread through it, doxorubicin given
# as weekly boluses, a sensitive majority of cancer cells and a small clone that pumps the drug
# out (P-gp). A value that is not valid raises `tme.ScenarioError` with one line naming its key.

# %%
doxorubicin = {
    "class": "dna_damaging", "diffusivity": "16 um^2/s", "radius": "0.5 nm",
    "uptake": "10 1/hour", "decay": "0.05 1/hour", "permeability": "0.5 um/s",
    "pk": {"half_life": "6 hour"}, "emax": "0.15 1/hour", "ec50": "0.3 uM", "hill": 1.5,
    "pgp_substrate": True,
}
scenario = tme.Scenario(
    name="tutorial",
    description="doxorubicin selects a P-gp (MDR) clone",
    mesh={"kind": "rectangle", "size": ["600 um", "300 um"], "cells": [24, 12]},
    tissue={"regions": {"tissue": {"vascular_density": "0.01 1/um"}}},
    drugs={"doxorubicin": doxorubicin},
    clones={
        "clones": {
            "sensitive": {"growth": "0.5 1/day", "initial": 0.5},
            "mdr": {"growth": "0.4 1/day", "pgp_vmax": "860 uM/hour", "initial": 0.01},
        },
        "mutation": {"sensitive": {"mdr": 1.0e-4}},
        "pgp_km": "1.5 uM", "influx": "60 1/hour",
    },
    treatment={"lines": [{"name": "doxorubicin",
                          "regimen": [{"drug": "doxorubicin", "amount": "5 uM", "every": "7 day",
                                       "cycles": 3}]}],
               "assessment": {"every": "1 week"}, "stop": {"stop_when_exhausted": False}},
    time={"end": "21 day", "dt": "12 hour", "dt_initial": "30 min"},
    output={"every": "1 day"},
)
print(scenario.time)

# %% [markdown]
# ## 2. Run it in memory
#
# `tme.run(scenario)` writes nothing: the time series, the events, the summary and the fields
# at the output times stay in memory (give `out="results/tutorial"` to write the files of
# `tme run` instead). On several MPI ranks the same call runs in parallel
# (`mpirun -n 4 python3 script.py`).

# %%
results = tme.run(scenario, quiet=True)
results

# %% [markdown]
# The time series is a pandas DataFrame, one row per step (the columns of `timeseries.csv`:
# `t` in hours, amounts in µm², `burden_cells` in cells, plasma levels in µM); the events are
# another (every dose, assessment and decision); the summary is a dict.

# %%
ts = results.timeseries
ts[["t", "burden_cells", "resistant_fraction", "plasma_doxorubicin"]].iloc[::8]

# %%
results.events[["time_days", "event", "reason"]]

# %%
{k: results.summary[k] for k in ("final_burden_cells", "nadir_time_hours", "final_resistant_fraction")}

# %% [markdown]
# The burden of each clone, on a log axis (switches and progressions would be marked):

# %%
ax = results.plot()

# %% [markdown]
# A field at an output time, as NumPy arrays with coordinates (µm): the doxorubicin left in the
# tissue a day after the first dose, and where the resistant cells are at the end.
# `results.function(name, t)` gives the same field as a DOLFINx function, for further
# finite-element work.

# %%
dox = results.field("doxorubicin", "1 day")
res = results.field("resistant_fraction")
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for a, f, unit in ((axes[0], dox, "µM"), (axes[1], res, "–")):
    art = a.tripcolor(f.points[:, 0], f.points[:, 1], f.values, shading="gouraud")
    fig.colorbar(art, ax=a, label=f"{f.name} [{unit}]")
    a.set_title(f"{f.name} at day {f.t / 24:g}")
    a.set_xlabel("x [µm]")
    a.set_aspect("equal")
axes[0].set_ylabel("y [µm]")

# %% [markdown]
# ## 3. Change a drug
#
# Scenarios are frozen; `with_changes` returns a validated copy with dotted keys changed,
# exactly as `tme run --set key.path=value` does on the command line. Here a second drug is
# added, the P-gp inhibitor tariquidar, given with each dose of doxorubicin.

# %%
tariquidar = {
    "class": "pgp_inhibitor", "diffusivity": "10 um^2/s", "radius": "0.7 nm",
    "uptake": "1 1/hour", "decay": "0.05 1/hour", "permeability": "0.5 um/s",
    "pk": {"half_life": "24 hour"}, "ec50": "0.05 uM", "pgp_inhibition": 0.95,
}
combination = scenario.with_changes({
    "drugs.tariquidar": tariquidar,
    "treatment.lines.0.regimen": [
        {"drug": "doxorubicin", "amount": "5 uM", "every": "7 day", "cycles": 3},
        {"drug": "tariquidar", "amount": "1 uM", "every": "7 day", "cycles": 3},
    ],
})
try:
    scenario.with_changes({"drugs.doxorubicin.emax": "0.1 uM"})
except tme.ScenarioError as error:
    print(error)

# %% [markdown]
# ## 4. Compare two strategies
#
# `tme.compare` takes scenarios, scenario files or finished runs (which are not run again) and
# returns one row per run: time to progression and nadir in days, burdens in µm². With
# `out=DIR` it writes every run and `comparison.csv` as `tme compare` does; with `sweep=` it
# runs one scenario per value of a key.

# %%
with_inhibitor = tme.run(combination, quiet=True)
table = tme.compare({"doxorubicin_alone": results, "with_tariquidar": with_inhibitor})
table[["nadir", "nadir_day", "final_burden", "final_resistant_fraction"]]

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, r in (("doxorubicin alone", results), ("with tariquidar", with_inhibitor)):
    t = r.timeseries
    ax.semilogy(t["t"] / 24, t["burden_cells"], label=f"{name}: all cells")
    ax.semilogy(t["t"] / 24, t["burden_cells"] * t["resistant_fraction"], ls="--",
                label=f"{name}: MDR clone")
ax.set_xlabel("time [day]")
ax.set_ylabel("cells")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
ax.set_title("the P-gp inhibitor restores the kill of the MDR clone")

# %%
assert table.loc["with_tariquidar", "final_burden"] < table.loc["doxorubicin_alone", "final_burden"]

# %% [markdown]
# ## 5. Fit the model to a patient's measurements
#
# `tme.fit` chooses scenario values (each between bounds with their unit) that make the model
# match a patient's measurements: a table with `time [day]`, `burden [mm^3]` and, from biopsies,
# `resistant_fraction` (with `<column>_sd` columns, or a noise model for the rows without one).
# The example patient of `configs/patient_fit` was made by the solver from hidden values, with
# 10 % noise. To keep this quick we fit two values, the growth rate of the sensitive cells and
# the drug's maximal kill rate, to the first four weeks (two weeks untreated, two treated; the
# full fit of three values to 24 weeks is in `configs/patient_fit/README.md`). The result
# holds the fitted values with standard errors and 95 % intervals (a Laplace approximation), the
# identifiability flags, and the fitted scenario.

# %%
import pandas as pd

folder = tme.examples.root() / "configs" / "patient_fit"
measured = pd.read_csv(folder / "measurements.csv", comment="#")
early = measured[measured["time [day]"] <= 28]
fitted = tme.fit(folder / "patient.yaml", early,
                 {"clones.clones.sensitive.growth": "0.02 1/day..0.5 1/day",
                  "drugs.chemo.emax": "0.005 1/hour..0.1 1/hour"},
                 log=["drugs.chemo.emax"], noise="lognormal:cv=0.1", overrides=["time.end=28 day"],
                 quiet=True)
fitted.parameters[["value", "unit", "se", "low_95", "high_95", "start"]]

# %% [markdown]
# The fitted scenario runs like any other: its burden (in mm³: the tumour is a 1 mm³ block, so
# ∫ N_tot dx in µm³ times 1e-9) against the measurements.

# %%
run = tme.run(fitted.scenario, quiet=True).timeseries
ax = plt.figure(figsize=(7, 4)).gca()
ax.semilogy(run["t"] / 24, run["burden"] * 1e-9, label="fitted model")
ax.semilogy(early["time [day]"], early["burden [mm^3]"], "ko", label="measured")
ax.set_xlabel("time [day]")
ax.set_ylabel("burden [mm³]")
ax.legend()
ax.grid(alpha=0.3)
# four weeks of data leave the growth rate uncertain: its standard error is flagged if it
# exceeds the value
print(fitted.identifiability or "no parameter flagged")
