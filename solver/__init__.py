"""tme: a finite-element solver of the tumour microenvironment under chemotherapy.

The package reads as the model: ``scenario`` (the validated configuration) -> ``meshes`` and
``tissue`` (the domain and its properties) -> ``pk`` (plasma levels) -> ``transport`` (drugs,
survival factor, oxygen) -> ``problem`` (the state, stepped by ``clock``) -> ``outputs``.
"""

__version__ = "0.1.0"
