"""The ``vasculature:`` section of a scenario: a vessel network from a file or generated.

Every physical number carries its unit (tme.config.units: a bare number is refused where a unit
is needed); the validated section holds µm, hour, mmHg. Pure: no DOLFINx.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .spec import Spec, at
from .units import Fraction, Length, Quantity, parse_quantity

#: Discharge haematocrit of systemic blood (the fraction of its volume that is red cells), the default.
HAEMATOCRIT = 0.45

Pressure = Quantity("mmHg", "mmHg", description="blood pressure")
Face = Literal["x-", "x+", "y-", "y+", "z-", "z+"]


class NodeCondition(Spec):
    """A boundary condition on the network's end nodes (degree 1) where ``where`` holds."""

    where: str = Field(description="boolean NumPy expression of x, y, z and r = |x| (µm), e.g. 'x < 10'")
    pressure: Pressure | None = None
    flow: Quantity("um**3/hour", "nl/min", description="inflow into the network") | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.pressure is None) == (self.flow is None):
            raise ValueError("give exactly one of pressure and flow")
        return self


class NetworkFileSpec(Spec):
    """A network read from ``.vtp``/``.vtk`` (polylines with a radius), ``.yaml`` or ``.csv``."""

    path: Path
    unit: str = Field("um", description="length unit of a VTK file's coordinates and radii "
                           "(VTK carries none; a table declares its own units)")
    boundary: list[NodeCondition] = Field(default_factory=list, description="conditions for end "
                                          "nodes the file leaves without one")

    @field_validator("unit")
    @classmethod
    def _length_unit(cls, value):
        try:
            ok = isinstance(value, str) and parse_quantity(f"1 {value}", "um", "um") > 0
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{value!r} is not a length unit; write e.g. 'um' or 'mm'")
        return value

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "scale" in data:
            raise ValueError(at("vasculature.file.scale", "is now 'unit', the length unit of the file "
                                "as for mesh files (e.g. unit: mm)"))
        return data


class GeneratedNetworkSpec(Spec):
    """A seeded synthetic network for a tissue block (docs/model.md, "Vessel networks")."""

    seed: int = 0
    lower: list[Quantity("um")] | None = Field(None, description="block corner; default the mesh's")
    upper: list[Quantity("um")] | None = Field(None, description="opposite corner; default the mesh's")
    spacing: Length = Field("100 um", description="mean inter-capillary distance in normal tissue")
    capillary_radius: Length = "4 um"
    loops: Fraction = Field(0.15, description="share of non-tree candidate vessels kept as loops")
    inlet_faces: list[Face] = Field(default_factory=lambda: ["x-"])
    outlet_faces: list[Face] = Field(default_factory=lambda: ["x+"])
    feeder_spacing: Length = Field("300 um", description="distance between inlets (outlets) on a face")
    arteriole_radius: Length = "7.5 um"
    venule_radius: Length = "10 um"
    inlet_pressure: Pressure = "40 mmHg"
    outlet_pressure: Pressure = "15 mmHg"
    tumour: str | None = Field(None, description="where vessels are abnormal: a region name of "
                               "mesh.regions, or a NumPy expression of x, y, z, r (µm)")
    rarefaction: int = Field(3, ge=1, le=8, description="tumour spacing / normal spacing")
    tumour_loops: Fraction = 0.1
    dead_ends: Fraction = Field(0.2, description="share of tumour vessels cut")
    dilation: list[Annotated[float, Field(ge=1)]] = Field(default_factory=lambda: [1.5, 2.5],
                                                          description="range of the tumour's radius factor")
    tortuosity: float = Field(0.15, ge=0, description="sideways displacement / vessel length")

    @model_validator(mode="after")
    def _shape(self):
        for key in ("lower", "upper"):
            v = getattr(self, key)
            if v is not None and len(v) != 3:
                raise ValueError(at(f"vasculature.generate.{key}", "needs 3 entries (x, y, z)"))
        if len(self.dilation) != 2 or self.dilation[1] < self.dilation[0]:
            raise ValueError(at("vasculature.generate.dilation", "needs [low, high] with low <= high"))
        return self


class BloodSpec(Spec):
    """Blood rheology: the in-vivo apparent viscosity of Pries et al. (1994)."""

    haematocrit: Fraction = Field(HAEMATOCRIT, description="discharge haematocrit H_D")
    plasma_viscosity: Quantity("mmHg*hour", "mPa*s", gt=0, description="plasma viscosity") = "1.2 mPa*s"


class CollapseSpec(Spec):
    """Vessels closed by solid stress where the cells are packed densely (Padera et al., Nature
    427:695, 2004): a segment along which the total cell density exceeds ``threshold`` somewhere
    closes and stays closed (checked at t = 0 and then at the assessments or every K steps); flow and delivery are recomputed (docs/model.md, "Vessel networks")."""

    threshold: Fraction = Field(0.9, description="total cell density (volume fraction of the packing "
                                "capacity) above which a vessel collapses")
    every_steps: int | None = Field(None, ge=1, description="check at the start and every K time "
                                    "steps; default: at the start and at the treatment's assessments")


class VasculatureSpec(Spec):
    """A vessel network delivering the drugs, oxygen and immune cells through its walls."""

    file: NetworkFileSpec | None = None
    generate: GeneratedNetworkSpec | None = None
    blood: BloodSpec = BloodSpec()
    well_model: bool = Field(True, description="correct the exchange of vessels thinner than the "
                             "mesh for the unresolved radial resistance (r_eq = 0.3 h)")
    immune_recruitment: Quantity("um**2/hour", "um**2/hour", ge=0, description="immune effectors "
                                 "recruited per unit length of perfused vessel") = "0 um**2/hour"
    collapse: CollapseSpec | None = Field(None, description="vessels collapsing under compression; "
                                          "default: none collapse")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.file is None) == (self.generate is None):
            raise ValueError(at("vasculature", "give exactly one of 'file' and 'generate'"))
        return self
