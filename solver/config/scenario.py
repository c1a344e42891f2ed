"""The scenario: a YAML file validated into frozen, unit-converted models.

Data flows one way: YAML text -> :func:`load` -> :class:`Scenario` (plain floats in the base units
of :mod:`tme.config.units`) -> mesh, fields, time loop, outputs. Every section is a pydantic model
that forbids unknown keys, so a misspelled key is an error, not a silently ignored line.

Errors a user can cause are raised as :class:`ScenarioError` with one line naming the key path
and what would be valid; the CLI prints that line, without a traceback.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, BeforeValidator, Discriminator, Field, Tag, ValidationError,
                      model_validator)

from .clones import CELL_VOLUME, ClonesSpec, check_references as check_clones
from .drugs import DrugSpec, dose_concentration
from .treatment import CellScale, TreatmentSpec, cell_scale, check_references as check_treatment
from .spec import BoundaryValue, Name, ScenarioError, Spec, at, located
from .units import (Concentration, Diffusivity, Duration, Length, Permeability, Quantity, Rate, Time,
                    parse_quantity, show)
from .vasculature import VasculatureSpec


# --------------------------------------------------------------------------------------------
# Mesh


class RegionRule(Spec):
    """Tag the cells whose midpoint satisfies ``where`` (a NumPy expression of x, y, z, r in µm)."""

    name: Name
    where: str = Field(description="boolean NumPy expression of x, y, z and r = |x|, always in µm "
                                   "whatever mesh.unit; e.g. 'r < 300' or 'x > 0'")


#: The unit of bare mesh coordinates and sizes (``mesh.unit``).
MESH_UNIT = "um"

#: The thickness of tissue a 2-D mesh stands for: about one cell layer, the diameter of a cell of
#: the default clones.cell_volume (3000 µm³ -> 18 µm).
SLICE_THICKNESS = "18 um"


def _length_unit(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a length unit such as 'um' or 'mm', got {value!r}")
    try:
        factor = parse_quantity(f"1 {value}", "um", "um")
    except ValueError:
        raise ValueError(f"{value!r} is not a length unit; write e.g. 'um' or 'mm'") from None
    if factor <= 0:
        raise ValueError(f"{value!r} is not a length unit; write e.g. 'um' or 'mm'")
    return value


MeshUnit = Annotated[str, BeforeValidator(_length_unit)]


class _MeshKind(Spec):
    """Bare numbers among a mesh's coordinates and sizes are in ``unit``; a value with its own
    unit ('1.2 mm') is read as written."""

    #: keys holding lengths or lists of lengths (``vessels`` holds mappings of them)
    _lengths: typing.ClassVar[tuple[str, ...]] = ()

    unit: MeshUnit = Field(MESH_UNIT, description="unit of bare coordinates and sizes of the mesh "
                                                  "(region expressions are always in µm)")

    @model_validator(mode="before")
    @classmethod
    def _bare_in_unit(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unit = data.get("unit", MESH_UNIT)
        if not isinstance(unit, str):
            return data

        out = _with_unit(data, cls._lengths, unit)
        if isinstance(out.get("vessels"), list):
            out["vessels"] = [_with_unit(v, ("center", "radius"), unit) for v in out["vessels"]]
        return out


def _with_unit(data: Any, keys: tuple[str, ...], unit: str) -> Any:
    """``data`` with the bare numbers under ``keys`` (or in lists there) written in ``unit``."""
    if not isinstance(data, dict):
        return data

    def with_unit(v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{v!r} {unit}"
        return [with_unit(x) for x in v] if isinstance(v, list) else v

    return {k: with_unit(v) if k in keys else v for k, v in data.items()}


class _Slice(_MeshKind):
    thickness: Quantity("um", "um", gt=0, description="thickness of tissue the 2-D mesh stands "
                        "for: burdens [µm²] times it are volumes and cell counts") = SLICE_THICKNESS


class BuiltinMesh(_Slice):
    """A structured rectangle (2-D) or box (3-D) of P1 simplices; regions from rules."""

    _lengths = ("size", "origin")
    kind: Literal["rectangle", "box"]
    size: list[Length] = Field(description="edge lengths, 2 (rectangle) or 3 (box) entries")
    cells: list[Annotated[int, Field(ge=1)]] = Field(description="cells per edge")
    origin: list[Quantity("um")] | None = Field(None, description="lower corner; default centred on 0")
    regions: list[RegionRule] = Field(default_factory=list,
                                      description="first matching rule wins; unmatched cells are 'tissue'")

    @model_validator(mode="after")
    def _dims(self):
        dim = 2 if self.kind == "rectangle" else 3
        for key in ("size", "cells") + (("origin",) if self.origin is not None else ()):
            if len(getattr(self, key)) != dim:
                raise ValueError(f"{key} needs {dim} entries for a {self.kind}")
        return self


class Vessel(Spec):
    """A circular vessel cross-section (2-D) whose wall is tagged ``vessel_wall``; bare numbers
    are in the slice's ``unit`` (µm for a vessel declared on its own)."""

    @model_validator(mode="before")
    @classmethod
    def _bare_in_um(cls, data: Any) -> Any:
        return _with_unit(data, ("center", "radius"), MESH_UNIT)

    center: list[Quantity("um")]
    radius: Length


class SliceMesh(_Slice):
    """A 2-D tissue slice (gmsh) with circular vessel holes and regions from rules."""

    _lengths = ("size", "h", "vessel_h")
    kind: Literal["slice2d"]
    size: list[Length] = Field(description="width and height of the slice")
    h: Length = Field(description="target element size")
    vessels: list[Vessel] = Field(default_factory=list)
    vessel_h: Length | None = Field(None, description="element size on vessel walls (default h/3)")
    regions: list[RegionRule] = Field(default_factory=list)


class KroghMesh(_Slice):
    """The Krogh unit: tissue annulus (2-D) or cylinder (3-D) around one vessel; ``thickness``
    applies to the 2-D annulus."""

    _lengths = ("vessel_radius", "tissue_radius", "length", "h")
    kind: Literal["krogh"]
    dim: Literal[2, 3] = 2
    vessel_radius: Length
    tissue_radius: Length
    length: Length | None = Field(None, description="cylinder length (3-D only)")
    h: Length = Field(description="element size away from the vessel (graded to h/6 at its wall)")
    regions: list[RegionRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _radii(self):
        if self.tissue_radius <= self.vessel_radius:
            raise ValueError(at("mesh.tissue_radius", f"must exceed vessel_radius ({self.vessel_radius:g} µm)"))
        if self.dim == 3 and self.length is None:
            raise ValueError(at("mesh.length", "required for a 3-D Krogh cylinder"))
        return self


class SpheroidMesh(_MeshKind):
    """A 3-D ball of tissue (gmsh); its surface is tagged ``outer``."""

    _lengths = ("radius", "h")
    kind: Literal["spheroid"]
    radius: Length
    h: Length
    regions: list[RegionRule] = Field(default_factory=list)


class FileMesh(_Slice):
    """A user's mesh: gmsh .msh, or any meshio format; physical groups become named tags.
    The file's coordinates are in ``unit``; ``thickness`` applies when the mesh is 2-D."""

    kind: Literal["file"]
    path: Path
    regions: list[RegionRule] = Field(default_factory=list)

    @property
    def scale(self) -> float:
        """Factor from the file's coordinates to µm."""
        return parse_quantity(f"1 {self.unit}", "um", "um")


MeshSpec = Annotated[Union[BuiltinMesh, SliceMesh, KroghMesh, SpheroidMesh, FileMesh],
                     Field(discriminator="kind")]

# --------------------------------------------------------------------------------------------
# Tissue


class ExpressionField(Spec):
    """A property given as a NumPy expression of x, y, z, r (µm), in ``unit``."""

    expression: str
    unit: str = Field(description="unit of the expression's value, e.g. '1/um'")


class RandomField(Spec):
    """A log-normal random field: mean, coefficient of variation, correlation length, seed.

    Reproducible for the same seed on any number of ranks (it is a function of x only).
    """

    mean: float | str = Field(description="mean value, with unit")
    cv: float = Field(0.5, ge=0, description="coefficient of variation")
    correlation_length: Length
    seed: int = 0


def _property_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "random" if "mean" in value or "correlation_length" in value else "expression"
    if isinstance(value, (ExpressionField, RandomField)):
        return "random" if isinstance(value, RandomField) else "expression"
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else "text"


#: A tissue property: a number or quantity, an expression with its unit, or a random field. The
#: form is chosen from the value, so that an error names the key, not every form it could be.
PropertyValue = Annotated[Union[Annotated[float, Tag("number")], Annotated[str, Tag("text")],
                                Annotated[ExpressionField, Tag("expression")],
                                Annotated[RandomField, Tag("random")]],
                          Discriminator(_property_kind)]
_PROPERTY_FORMS = {"number", "text", "expression", "random"}

#: tissue property -> (base unit, unit it is written in, lower bound, upper bound (exclusive) or None)
PROPERTIES = {
    "vascular_density": ("1/um", "1/um", 0.0, None),
    "ecm_fraction": ("dimensionless", "dimensionless", 0.0, 1.0),
    "caf_density": ("dimensionless", "dimensionless", 0.0, None),
}


class RegionTissue(Spec):
    """Tissue properties of one region: a quantity (``vascular_density`` with its unit, the
    fractions bare), a NumPy expression of position with its unit, or a random field."""

    vascular_density: PropertyValue = Field(0.0, description="S_V, vessel wall area per tissue "
                                                             "volume [1/um; with a unit]")
    ecm_fraction: PropertyValue = Field(0.0, description="ECM fibre volume fraction phi [-]")
    caf_density: PropertyValue = Field(0.0, description="activated CAF density rho_CAF [-]")


class TissueSpec(Spec):
    """Tissue of every region; properties per region, as a number, expression or random field."""

    fibre_radius: Quantity("um", "nm", gt=0, description="ECM fibre radius r_f (Ogston)") = "1.5 nm"
    regions: dict[Name, RegionTissue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _readable(self):
        # read here what can be read without the mesh, so that a bad unit fails at validation
        for name, region in self.regions.items():
            for prop, (base, unit, low, high) in PROPERTIES.items():
                _check_property(getattr(region, prop), base, unit, low, high,
                                f"tissue.regions.{name}.{prop}")
        return self


def _check_property(value, base: str, unit: str, low: float, high: float | None, key: str) -> None:
    if isinstance(value, ExpressionField):
        try:
            parse_quantity(f"1 {value.unit}", base, unit)
        except ValueError:
            raise ValueError(at(f"{key}.unit", f"{value.unit!r} is not a unit of this property "
                                               f"(expected e.g. '{unit}')")) from None
        return
    if isinstance(value, RandomField):
        key, value = f"{key}.mean", value.mean
    try:
        number = parse_quantity(value, base, unit)
    except ValueError as exc:
        raise ValueError(at(key, str(exc))) from None
    if number < low or (high is not None and number >= high and not key.endswith(".mean")):
        valid = f"lie in [{low:g}, {high:g})" if high is not None else f"be >= {low:g}"
        raise ValueError(at(key, f"must {valid}; got {number:.4g}"))


# --------------------------------------------------------------------------------------------
# Species


class SurvivalFactorSpec(Spec):
    """The CAF-secreted survival factor s (e.g. HGF); defaults after Owen et al. 2011."""

    enabled: bool = True
    diffusivity: Diffusivity = "17 um**2/s"
    radius: Quantity("um", "nm", gt=0, description="molecular radius (HGF ~ 3.5 nm)") = "3.5 nm"
    decay: Quantity("1/hour", "1/min", ge=0, description="decay rate") = "0.01 1/min"
    secretion: Quantity("uM/hour", "uM/hour", ge=0, description="sigma_s per unit CAF density") = "0.05 uM/hour"
    uptake: Rate = "0 1/hour"
    half_effect: Concentration = Field("0.01 uM", description="K_s of the protection s/(s+K_s)")
    initial: Concentration = "0 uM"
    boundary: dict[Name, BoundaryValue] = Field(default_factory=dict)


class OxygenSpec(Spec):
    """Oxygen, supplied from vessels at a constant blood level; defaults after PhysiCell."""

    enabled: bool = True
    diffusivity: Quantity("um**2/hour", "um**2/min", ge=0, description="diffusivity") = "1e5 um**2/min"
    radius: Quantity("um", "nm", gt=0, description="molecular radius") = "0.15 nm"
    blood_level: Concentration = "50 uM"
    permeability: Permeability = Field("30 um/s", description="vessel wall permeability")
    consumption: Rate = Field("36 1/hour", description="q_o per unit cell density")
    decay: Rate = "0 1/hour"
    hypoxia: Concentration = Field("5 uM", description="oxygen level of half-maximal proliferation")
    initial: Concentration | None = Field(None, description="initial level, with quasi_steady "
                                          "false; default blood_level")
    quasi_steady: bool = Field(True, description="solve oxygen's steady problem at every step and at "
                               "the start: its relaxation time, 1/(consumption N + permeability S_V), "
                               "is seconds to minutes, far below the steps of a treatment run, so a "
                               "step's time derivative carries nothing; false: step it in time like "
                               "the other species (for steps of seconds)")
    boundary: dict[Name, BoundaryValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _initial_needs_time_stepping(self):
        if self.enabled and self.quasi_steady and self.initial is not None:
            raise ValueError(at("oxygen.initial", "a quasi-steady oxygen (oxygen.quasi_steady, the "
                                "default) starts at its steady state; remove initial, or set "
                                "oxygen.quasi_steady: false"))
        return self


class ImmuneSpec(Spec):
    """Immune effector cells e (a dimensionless density), recruited from vessels:

        de/dt = div(D_e grad e) + r_e S_V (1 + boost A_I) − clearance e

    where A_I is the Hill activation of the checkpoint inhibitor(s) (their ec50 and hill). Kill of
    clone i: immune_kill_i (1 + kill_boost A_I) e, whatever the clone's chemoresistance.
    """

    enabled: bool = True
    diffusivity: Quantity("um**2/hour", "um**2/min", ge=0, description="effector motility "
                          "(T cells ~ 5 um^2/min)") = "5 um**2/min"
    recruitment: Quantity("um/hour", "um/hour", ge=0, description="r_e: recruitment per vessel "
                          "surface density") = "1 um/hour"
    clearance: Rate = Field("0.02 1/hour", description="delta_e: effector death/exhaustion rate")
    boost: float = Field(5.0, ge=0, description="recruitment raised by (1 + boost A_I)")
    kill_boost: float = Field(3.0, ge=0, description="kill raised by (1 + kill_boost A_I)")
    initial: float = Field(0.0, ge=0)
    boundary: dict[Name, BoundaryValue] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Treatment


# --------------------------------------------------------------------------------------------
# Time, numerics, outputs


#: Krylov tolerance as a fraction of time.tolerance: the algebraic error stays well below the
#: time error (docs/performance.md measures that the total error does not grow).
RTOL_FRACTION = 1e-1


class TimeSpec(Spec):
    """Simulated period and step control [hour]."""

    end: Time = Field(gt=0, description="end of the simulation")
    dt: Duration = Field("1 hour", gt=0, description="largest step")
    dt_min: Duration = Field("0.001 hour", gt=0, description="smallest step")
    dt_initial: Duration | None = Field(None, gt=0, description="first step, and the step after a "
                                        "dose event, within [dt_min, dt]; default dt (with "
                                        "tolerance: dt times tolerance^(1/3))")
    tolerance: float | None = Field(None, gt=0, lt=1, description="relative local error allowed per "
                                    "step in each clone density and transported species (in the "
                                    "field's mass-weighted L2 norm), e.g. 1e-3: the steps then follow "
                                    "the error (TR-BDF2 and its error estimate, a predictive "
                                    "controller, rejected steps redone) and dt is the largest step; "
                                    "unset: steps of dt, shorter after doses")
    tolerance_floor: float = Field(1e-3, gt=0, le=1, description="a field whose RMS is below this "
                                   "fraction of its scale (its largest value so far, or the level "
                                   "at which it acts; the capacity for clones) is held to the "
                                   "tolerance times the floor times its scale, absolute")

    @model_validator(mode="after")
    def _ordered(self):
        if self.dt_min > self.dt:
            raise ValueError(at("time.dt_min", f"{self.dt_min:g} hour exceeds time.dt "
                                               f"({self.dt:g} hour); the smallest step must be at most the largest"))
        if self.dt_initial is not None and not self.dt_min <= self.dt_initial <= self.dt:
            raise ValueError(at("time.dt_initial", f"{self.dt_initial:g} hour lies outside "
                                f"[dt_min, dt] = [{self.dt_min:g}, {self.dt:g}] hour"))
        return self


class NumericsSpec(Spec):
    lumped_mass: bool = True
    solver: Literal["auto", "jacobi", "amg", "direct"] = "auto"
    amg_threshold: float = Field(10.0, gt=0, description="'auto' uses AMG when D dt/h^2 exceeds this")
    rtol: float | None = Field(None, gt=0, lt=1, description="relative tolerance of every linear "
                               "solve (the previous solution is the initial guess); default 1e-8, "
                               "or time.tolerance/10 with time.tolerance")
    time_scheme: Literal["backward_euler", "tr_bdf2"] | None = Field(
        None, description="transport step: 'backward_euler' (first order, positive) or 'tr_bdf2' "
        "(second order, L-stable, two solves per step with one matrix); default tr_bdf2 with "
        "time.tolerance, else backward_euler")
    reaction_kernel: Literal["auto", "compiled", "numpy"] = Field(
        "auto", description="clone reaction step: 'compiled' (C generated for the population, "
        "built with the system C compiler and cached), 'numpy' (the reference), 'auto' (compiled "
        "when a C compiler works, else NumPy with a warning)")


class SnapshotSpec(Spec):
    """Off-screen pictures of chosen fields at chosen times."""

    fields: list[str] | None = Field(None, description="field names (see Scenario.field_names); "
                                     "default: 'total' with clones, else the transported species")
    times: list[Time] | None = Field(None, description="default: the end time; [] for none")
    scale: Literal["fixed", "auto"] = Field(
        "fixed", description="colour range of each field: 'fixed', one range over all output times "
        "(pictures comparable across time); 'auto', each picture its own")


class CheckpointSpec(Spec):
    """When the whole state is saved for ``tme run --resume``: every ``every`` of simulated
    time and/or every ``wall`` of wall-clock time; always at a stop by SIGINT, SIGTERM or SIGUSR1."""

    every: Duration | None = Field(None, gt=0, description="simulated-time interval; None = none")
    wall: Duration | None = Field("1 hour", gt=0, description="wall-clock interval (e.g. '30 min'); None = none")


class OutputSpec(Spec):
    every: Duration | None = Field(None, gt=0, description="field output interval; default end/20")
    snapshots: SnapshotSpec = SnapshotSpec()
    plots: bool = True
    checkpoint: CheckpointSpec = CheckpointSpec()


class _OneLineErrors(type(Spec)):
    """Construction in Python (``Scenario(name=..., ...)``) reports a bad value in one line,
    as loading a file does (validation from a mapping does not pass through here)."""

    def __call__(cls, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise ScenarioError(f"{cls.__name__}(...): {_format(exc)}") from None


class Scenario(Spec, metaclass=_OneLineErrors):
    """A complete scenario: what is simulated, on what tissue, with which treatment.

    Built from a file (:func:`load`), from a mapping (:func:`validate`) or in Python, with the
    sections as keyword arguments written as in a file::

        Scenario(name="slab", mesh={"kind": "rectangle", "size": ["400 um", "200 um"],
                                    "cells": [20, 10]},
                 time={"end": "2 day", "dt": "1 hour"})

    A value that is not valid raises :class:`ScenarioError` with one line naming its key.
    Scenarios are frozen: :meth:`with_changes` returns a changed copy.
    """

    def with_changes(self, changes: dict[str, Any]) -> "Scenario":
        """A copy with the dotted keys of ``changes`` set, validated as a whole, e.g.
        ``with_changes({"drugs.dox.emax": "0.1 1/hour", "time.end": "10 day"})``.

        Keys and values are those of ``--set key.path=value``: a value is given as in a file
        (a quantity as text with its unit, a section as a dict); list items by index
        (``treatment.lines.0.assess_every``). Raises :class:`ScenarioError` with one line naming
        the key on a bad key or value.
        """
        if not isinstance(changes, dict):
            raise ScenarioError(f"with_changes: expected a dict of key.path -> value, got "
                                f"{type(changes).__name__}")
        data = self.model_dump(mode="json", by_alias=True)
        for key, value in changes.items():
            if not isinstance(key, str):
                raise ScenarioError(f"with_changes: key {key!r} is not text; write e.g. 'time.end'")
            set_key(data, key, value, how="with_changes")
        return validate(data, source=f"scenario {self.name!r} with changes")

    name: Name
    description: str = ""
    mesh: MeshSpec
    tissue: TissueSpec = TissueSpec()
    drugs: dict[Name, DrugSpec] = Field(default_factory=dict)
    survival_factor: SurvivalFactorSpec = SurvivalFactorSpec(enabled=False)
    oxygen: OxygenSpec = OxygenSpec(enabled=False)
    immune: ImmuneSpec = ImmuneSpec(enabled=False)
    vasculature: VasculatureSpec | None = Field(None, description="a vessel network (from a file or "
                                                "generated) delivering drugs, oxygen and immune cells")
    clones: ClonesSpec | None = Field(None, description="cancer cell populations; without them "
                                      "cells fill the tissue (N_tot = 1) and only transport runs")
    treatment: TreatmentSpec = TreatmentSpec()
    time: TimeSpec
    numerics: NumericsSpec = NumericsSpec()
    output: OutputSpec = OutputSpec()

    @model_validator(mode="after")
    def _references(self):
        mechanisms = {}
        if self.clones is not None:
            check_clones(self.clones, self.drugs)
            mechanisms = self.clones.mechanisms()
        check_treatment(self.treatment, set(self.drugs), mechanisms)
        if self.time.tolerance is not None:
            if self.numerics.time_scheme == "backward_euler":
                raise ValueError("numerics.time_scheme: time.tolerance needs the error estimate of "
                                 "'tr_bdf2'; remove numerics.time_scheme or set it to tr_bdf2")
            if not self.numerics.lumped_mass:
                raise ValueError("numerics.lumped_mass: time.tolerance needs lumped mass (its error "
                                 "estimate is built on it); remove lumped_mass: false")
        self._check_doses()
        self._check_output()
        return self

    def _check_doses(self) -> None:
        # every dose of every line, so that a later line cannot fail mid-run
        for name, limit in self.treatment.limits.items():
            if limit.max_cumulative is not None:
                key = f"treatment.limits.{name}.max_cumulative"
                try:
                    dose_concentration(limit.max_cumulative, self.drugs[name].pk, key)
                except ScenarioError as exc:
                    raise ValueError(at(key, str(exc).removeprefix(f"{key}: "))) from None
        for i, line in enumerate(self.treatment.lines):
            for k, dose in enumerate(line.regimen):
                key = f"treatment.lines.{i}.regimen.{k}.amount"
                try:
                    dose_concentration(dose.amount, self.drugs[dose.drug].pk, key)
                except ScenarioError as exc:
                    raise ValueError(at(key, str(exc).removeprefix(f"{key}: "))) from None

    def _check_output(self) -> None:
        snaps = self.output.snapshots
        valid = self.field_names()
        for k, name in enumerate(snaps.fields or []):
            if name not in valid:
                hint = difflib.get_close_matches(name, valid, n=1)
                did = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise ValueError(at(f"output.snapshots.fields.{k}", f"no field {name!r}{did}; fields "
                                                                   f"of this scenario: {', '.join(valid)}"))

    def species_names(self) -> list[str]:
        """The transported fields, in the order the run builds them."""
        names = list(self.drugs)
        names += ["factor"] if self.survival_factor.enabled else []
        names += ["oxygen"] if self.oxygen.enabled else []
        names += ["immune"] if self.immune.enabled else []
        return names

    def field_names(self) -> list[str]:
        """Every field a run writes, by name: the species, the clones, 'total' and
        'resistant_fraction' (with clones), 'region', and per drug 'auc_<drug>' and
        'time_above_ec50_<drug>'."""
        names = self.species_names()
        if self.clones is not None:
            names += list(self.clones.clones) + ["total", "resistant_fraction"]
        names += ["region"] + [f"auc_{d}" for d in self.drugs] + [f"time_above_ec50_{d}" for d in self.drugs]
        return names

    def cell_scale(self, dim: int) -> CellScale:
        """How burdens on this scenario's ``dim``-D mesh become cell counts."""
        volume = self.clones.cell_volume if self.clones is not None else parse_quantity(CELL_VOLUME, "um**3")
        return cell_scale(dim, getattr(self.mesh, "thickness", None), volume)

    def snapshot_fields(self) -> list[str]:
        """The fields of each snapshot: ``output.snapshots.fields``, by default 'total' with
        clones and the transported species without."""
        if self.output.snapshots.fields is not None:
            return list(self.output.snapshots.fields)
        return ["total"] if self.clones is not None else self.species_names()

    @property
    def scheme(self) -> str:
        """The transport scheme in use: numerics.time_scheme, or its default."""
        if self.numerics.time_scheme is not None:
            return self.numerics.time_scheme
        return "tr_bdf2" if self.time.tolerance is not None else "backward_euler"

    @property
    def linear_rtol(self) -> float:
        """The Krylov tolerance: numerics.rtol, or 1e-8, or time.tolerance/10 (at least 1e-12)."""
        if self.numerics.rtol is not None:
            return self.numerics.rtol
        tol = self.time.tolerance
        return 1e-8 if tol is None else max(1e-12, RTOL_FRACTION * tol)


# --------------------------------------------------------------------------------------------
# Loading and error messages


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last
    one silently: a repeated drug or section would replace the first without a word)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base loader says what is wrong with it
                if first is None:
                    seen[key] = key_node.start_mark.line + 1
                else:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first}); "
                                    f"a mapping lists each key once", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _yaml(text: str):
    """Parse YAML text with :class:`UniqueKeyLoader`."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}:" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where} not valid YAML ({problem})"


def load(path: str | Path, overrides: list[str] = ()) -> Scenario:
    """Read, override (``key.path=value``) and validate a scenario file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not a text file (byte {exc.object[exc.start]:#04x} at offset "
                            f"{exc.start} is not UTF-8); a scenario is a YAML text file") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = _yaml(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}:{_yaml_error(exc)}") from None
    except RecursionError:
        raise ScenarioError(f"{path}: not valid YAML (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario is a YAML mapping of sections (name, mesh, time, ...)")
    for item in overrides:
        apply_override(data, item)
    return validate(data, source=str(path), base_dir=path.parent)


def apply_override(data: dict, item: str) -> None:
    """Apply ``key.path=value`` (value read as YAML) to a raw scenario mapping in place."""
    if "=" not in item:
        raise ScenarioError(f"--set {item!r}: expected key.path=value")
    key, value = item.split("=", 1)
    try:
        parsed = _yaml(value)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"--set {key.strip()}: value {value!r} is{_yaml_error(exc).split(':', 1)[-1]}; "
                            f"quote text such as '10 day'") from None
    set_key(data, key, parsed, f"--set {item!r}", "--set")


def set_key(data: dict, key: str, value: Any, item: str | None = None, how: str = "--set") -> None:
    """Set the dotted ``key`` (list items by index: ``treatment.lines.0.regimen``) of a raw
    scenario mapping to ``value`` in place, making missing sections on the way (the validation
    that follows names a key that does not exist). ``how`` starts every error line
    ('--set', 'with_changes'), ``item`` names the change as given."""
    key = key.strip()
    item = item or f"{how} {key!r}"
    parts = key.split(".")
    if not key or any(not p.strip() for p in parts):
        what = "is empty" if not key else f"{key!r} has an empty part"
        raise ScenarioError(f"{item}: the key path {what}; write e.g. time.end='10 day'")
    parts = [p.strip() for p in parts]
    _refuse_new_entry_on_the_way(data, parts, how, key)
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ScenarioError(f"{how} {key}: '{'.'.join(parts[:depth + 1])}' is not an index of a list of {len(node)}") from None
        else:
            if node.get(part) is None:   # a section absent, or null in a written-out scenario
                node[part] = {}
            node = node[part]
            if not isinstance(node, (dict, list)):
                raise ScenarioError(f"{how} {key}: '{'.'.join(parts[:depth + 1])}' is a value, not a section")
    if isinstance(node, list):
        try:
            node[int(parts[-1])] = value
        except (ValueError, IndexError):
            raise ScenarioError(f"{how} {key}: '{parts[-1]}' is not an index of a list of {len(node)}") from None
    else:
        node[parts[-1]] = value


#: The mappings whose entries define a thing by their name (a new one is given whole).
DEFINING = {("drugs",), ("clones", "clones")}


def _refuse_new_entry_on_the_way(data: dict, parts: list[str], how: str, key: str) -> None:
    """A change inside a named entry that does not exist (``clones.clones.sensitve.growth``,
    a misspelt clone) would create that entry with every other value at its default: refused,
    naming the entries there. A new entry is added whole (``clones.clones.new={...}``). Only
    the mappings that define what their names mean (:data:`DEFINING`: a drug, a clone) are
    checked here; the others name regions, drugs or clones defined elsewhere, which the
    validation checks."""
    for where in DEFINING:
        if len(parts) <= len(where) + 1 or tuple(parts[:len(where)]) != where:
            continue
        node: Any = data
        for part in where:
            node = node.get(part) if isinstance(node, dict) else None
        entry = parts[len(where)]
        if isinstance(node, dict) and entry not in node:
            at = ".".join(where)
            names = ", ".join(map(str, node)) or "none"
            raise ScenarioError(f"{how} {key}: {at} has no entry {entry!r} (entries: {names}); "
                                f"a new one is set whole, e.g. {how} {at}.{entry}='{{...}}'")


def validate(data: dict, source: str = "scenario", base_dir: Path | None = None) -> Scenario:
    try:
        scenario = Scenario.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {_format(exc)}") from None
    if base_dir is not None and isinstance(scenario.mesh, FileMesh) and not scenario.mesh.path.is_absolute():
        # absolute, so that config.resolved.yaml, read from the output directory, finds it too
        scenario = scenario.model_copy(update={"mesh": scenario.mesh.model_copy(
            update={"path": (base_dir / scenario.mesh.path).resolve()})})
    vs = scenario.vasculature
    if base_dir is not None and vs is not None and vs.file is not None and not vs.file.path.is_absolute():
        # a network file is found beside the scenario, as a mesh file is
        scenario = scenario.model_copy(update={"vasculature": vs.model_copy(update={
            "file": vs.file.model_copy(update={"path": (base_dir / vs.file.path).resolve()})})})
    return scenario


def _format(exc: ValidationError) -> str:
    """One line naming the key path of the first error and what would be valid."""
    errors = exc.errors(include_url=False)
    # a misspelt key also leaves the key it should have been missing: name the typo
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    err = extra[0] if extra else errors[0]
    loc = [str(p) for p in err["loc"]]
    # drop the discriminator tag pydantic inserts into union paths (e.g. 'mesh.rectangle.size')
    tags = [p for p in loc if p not in _strip_union_tags(loc)]
    loc = _strip_union_tags(loc)
    msg = err["msg"]
    if msg.startswith("Value error, @"):
        return located(msg)
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(loc[:-1], tags)
        hint = difflib.get_close_matches(loc[-1], valid, n=1)
        did = f" (did you mean '{hint[0]}'?)" if hint else ""
        item = re.fullmatch(r"(\w+)\[(\d+)\]", loc[-1])
        if item and item.group(1) in valid:   # 'lines[0]': list items are numbered in the path
            did = f" (a list item is a number in the path: '{'.'.join(loc[:-1] + list(item.groups()))}')"
        return f"{key}: unknown key '{loc[-1]}'{did}; valid keys here: {', '.join(valid)}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    if err["type"] == "union_tag_invalid":
        return f"{key}: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) or err["type"] == "value_error" else f" (got {value!r})"
    unit = _quantity_units(loc)
    if unit is not None and isinstance(value, float) and shown:
        # a bound is checked on the value in base units: show it in the key's own unit
        shown = f" (got {show(value, *unit)})"
    return f"{key}: {msg}{shown}"


def _quantity_units(loc: list[str]) -> tuple[str, str] | None:
    """(base unit, shown unit) of the quantity field at ``loc``, or None."""
    parent = _unwrap(_annotation_at(loc[:-1]))
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
        return None
    field = parent.model_fields.get(loc[-1]) if loc else None
    stack = [field] if field is not None else []
    while stack:
        a = stack.pop()
        for m in getattr(a, "metadata", None) or getattr(a, "__metadata__", ()):
            if hasattr(m, "base") and hasattr(m, "unit"):
                return m.base, m.unit
        stack.extend(typing.get_args(getattr(a, "annotation", a)))
    return None


def _strip_union_tags(loc: list[str]) -> list[str]:
    out, model = [], Scenario
    for part in loc:
        if model is not None and _is_tag(model, out, part):
            continue
        if part in _PROPERTY_FORMS and out and out[-1] in PROPERTIES:  # the form of a tissue property
            continue
        out.append(part)
    return out


def _is_tag(model, path, part) -> bool:
    ann = _annotation_at(path)
    args = typing.get_args(ann)
    if args and typing.get_origin(ann) is Annotated:
        ann = args[0]
    members = typing.get_args(ann) if typing.get_origin(ann) is Union else ()
    tags = set()
    for m in members:
        f = getattr(m, "model_fields", {}).get("kind")
        if f is not None:
            tags.update(typing.get_args(f.annotation))
    return part in tags


def _annotation_at(path: list[str]):
    """The annotation of the field at a key path of the scenario, or None."""
    ann: Any = Scenario
    for part in path:
        ann = _unwrap(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(part) or next(
                (f for f in ann.model_fields.values() if f.alias == part), None)
            if field is None:
                return None
            ann = field.annotation
        elif typing.get_origin(ann) in (dict, list):
            ann = typing.get_args(ann)[-1]
        else:
            return None
    return ann


def _unwrap(ann):
    while True:
        origin = typing.get_origin(ann)
        if origin is Annotated:
            ann = typing.get_args(ann)[0]
        elif origin is Union or origin is types.UnionType:   # Optional[X] and X | None alike
            models = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(models) != 1:
                return ann
            ann = models[0]
        else:
            return ann


def _valid_keys(path: list[str], tags: list[str] = ()) -> list[str]:
    ann = _unwrap(_annotation_at(path))
    if typing.get_origin(ann) is Union:  # a discriminated union: the keys of the chosen member
        keys = set()
        for m in typing.get_args(ann):
            kind = getattr(m, "model_fields", {}).get("kind")
            if kind is not None and (not tags or set(typing.get_args(kind.annotation)) & set(tags)):
                keys.update(f.alias or n for n, f in m.model_fields.items())
        return sorted(keys)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [f.alias or n for n, f in ann.model_fields.items()]
    return []


def quantity_units(key: str) -> tuple[str, str] | None:
    """(base unit, unit shown) of the quantity at the dotted scenario ``key`` (list items by
    index, as ``--set`` takes them), e.g. ``('1/hour', '1/day')`` for
    ``clones.clones.sensitive.growth``; None when the key holds no declared quantity (a bare
    number, text, a section, or no such key)."""
    return _quantity_units([p.strip() for p in key.split(".")])


def value_at(scenario: Scenario, key: str) -> Any:
    """The validated value at the dotted ``key`` of ``scenario`` (in base units; list items by
    index); raises ScenarioError with one line naming the first part that is not there."""
    node: Any = scenario
    parts = [p.strip() for p in key.split(".")]
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth + 1])
        if isinstance(node, BaseModel):
            name = part if part in type(node).model_fields else next(
                (n for n, f in type(node).model_fields.items() if f.alias == part), None)
            if name is None:
                valid = [f.alias or n for n, f in type(node).model_fields.items()]
                raise ScenarioError(f"{key}: no key {here!r}; valid keys here: {', '.join(valid)}")
            node = getattr(node, name)
        elif isinstance(node, dict):
            if part not in node:
                raise ScenarioError(f"{key}: no key {here!r}; keys here: {', '.join(map(str, node)) or '(none)'}")
            node = node[part]
        elif isinstance(node, (list, tuple)):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ScenarioError(f"{key}: {here!r} is not an index of a list of {len(node)}") from None
        else:
            raise ScenarioError(f"{key}: {'.'.join(parts[:depth])!r} is a value, not a section")
    return node


def resolved_yaml(scenario: Scenario) -> str:
    """The scenario with every default filled in and every quantity written with its unit."""
    data = scenario.model_dump(mode="json", by_alias=True)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def json_schema() -> dict:
    return Scenario.model_json_schema(by_alias=True)
