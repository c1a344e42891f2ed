"""tme: a finite-element solver of the tumour microenvironment under chemotherapy.

The package reads as the model, each layer importing only those above it:
``pharmacology`` (drug classes and resistance mechanisms) -> ``config`` (the validated scenario:
schema, units) -> ``pk`` (plasma levels), ``protocol`` (lines of therapy), ``cells`` (clone
dynamics and their compiled kernel), ``clock`` and ``state`` (the step clock, what changes in
time) -> ``mesh`` and ``tissue`` (the domain and its properties), ``transport`` (drugs, survival
factor, oxygen), ``vasculature`` (vessel networks and blood flow) -> ``outputs`` -> ``problem``
(initialise, iterate, run, resume) -> ``studies`` (compare, verify) -> ``cli``.
"""

if __name__ != "tme":   # one name, so that no module is imported twice under two
    raise ImportError(f"this package is imported as 'tme', not {__name__!r}")

__version__ = "0.1.0"
