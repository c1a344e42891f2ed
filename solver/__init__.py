"""tme: a finite-element solver of the tumour microenvironment under chemotherapy.

The package reads as the model: ``scenario`` (the validated configuration) -> ``meshes`` and
``tissue`` (the domain and its properties) -> ``pk`` (plasma levels) -> ``transport`` (drugs,
survival factor, oxygen) -> ``simulation`` (the time loop) -> ``outputs``.
"""

__version__ = "0.1.0"
