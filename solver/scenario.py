"""The scenario: a YAML file validated into frozen, unit-converted models.

Data flows one way: YAML text -> :func:`load` -> :class:`Scenario` (plain floats in the base units
of :mod:`solver.units`) -> mesh, fields, time loop, outputs. Every section is a pydantic model
that forbids unknown keys, so a misspelled key is an error, not a silently ignored line.

Errors a user can cause are raised as :class:`ScenarioError` with one line naming the key path
and what would be valid; the CLI prints that line, without a traceback.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from .clones import ClonesSpec, check_references as check_clones
from .drugs import DrugSpec
from .protocol import TreatmentSpec, check_references as check_treatment
from .spec import BoundaryValue, Name, ScenarioError, Spec, at, located
from .units import Concentration, Diffusivity, Duration, Length, Permeability, Quantity, Rate, Time


# --------------------------------------------------------------------------------------------
# Mesh


class RegionRule(Spec):
    """Tag the cells whose midpoint satisfies ``where`` (a NumPy expression of x, y, z, r in µm)."""

    name: Name
    where: str = Field(description="boolean NumPy expression of x, y, z and r = |x| (µm); "
                                   "e.g. 'r < 300' or 'x > 0'")


class BuiltinMesh(Spec):
    """A structured rectangle (2-D) or box (3-D) of P1 simplices; regions from rules."""

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
    """A circular vessel cross-section (2-D) whose wall is tagged ``vessel_wall``."""

    center: list[Quantity("um")]
    radius: Length


class SliceMesh(Spec):
    """A 2-D tissue slice (gmsh) with circular vessel holes and regions from rules."""

    kind: Literal["slice2d"]
    size: list[Length] = Field(description="width and height of the slice")
    h: Length = Field(description="target element size")
    vessels: list[Vessel] = Field(default_factory=list)
    vessel_h: Length | None = Field(None, description="element size on vessel walls (default h/3)")
    regions: list[RegionRule] = Field(default_factory=list)


class KroghMesh(Spec):
    """The Krogh unit: tissue annulus (2-D) or cylinder (3-D) around one vessel."""

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


class SpheroidMesh(Spec):
    """A 3-D ball of tissue (gmsh); its surface is tagged ``outer``."""

    kind: Literal["spheroid"]
    radius: Length
    h: Length
    regions: list[RegionRule] = Field(default_factory=list)


class FileMesh(Spec):
    """A user's mesh: gmsh .msh, or any meshio format; physical groups become named tags."""

    kind: Literal["file"]
    path: Path
    scale: float = Field(1.0, gt=0, description="factor from the file's coordinates to µm")
    regions: list[RegionRule] = Field(default_factory=list)


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


PropertyValue = Union[float, str, ExpressionField, RandomField]


class RegionTissue(Spec):
    """Tissue properties of one region (a bare number is in the documented unit)."""

    vascular_density: PropertyValue = Field(0.0, description="S_V, vessel wall area per tissue volume [1/um]")
    ecm_fraction: PropertyValue = Field(0.0, description="ECM fibre volume fraction phi [-]")
    caf_density: PropertyValue = Field(0.0, description="activated CAF density rho_CAF [-]")


class TissueSpec(Spec):
    """Tissue of every region; properties per region, as a number, expression or random field."""

    fibre_radius: Quantity("um", "nm", gt=0, description="ECM fibre radius r_f (Ogston)") = 1.5e-3
    regions: dict[Name, RegionTissue] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Species


class SurvivalFactorSpec(Spec):
    """The CAF-secreted survival factor s (e.g. HGF); defaults after Owen et al. 2011."""

    enabled: bool = True
    diffusivity: Diffusivity = 17.0 * 3600
    radius: Quantity("um", "nm", gt=0, description="molecular radius (HGF ~ 3.5 nm)") = 3.5e-3
    decay: Rate = 0.6
    secretion: Quantity("uM/hour", "uM/hour", ge=0, description="sigma_s per unit CAF density") = 0.05
    uptake: Rate = 0.0
    half_effect: Concentration = Field(0.01, description="K_s of the protection s/(s+K_s)")
    initial: Concentration = 0.0
    boundary: dict[Name, BoundaryValue] = Field(default_factory=dict)


class OxygenSpec(Spec):
    """Oxygen, supplied from vessels at a constant blood level; defaults after PhysiCell."""

    enabled: bool = True
    diffusivity: Diffusivity = 1.0e5 / 60 * 3600
    radius: Quantity("um", "nm", gt=0, description="molecular radius") = 0.15e-3
    blood_level: Concentration = 50.0
    permeability: Permeability = 3.0
    consumption: Rate = Field(36.0, description="q_o per unit cell density")
    decay: Rate = 0.0
    hypoxia: Concentration = Field(5.0, description="oxygen level of half-maximal proliferation")
    initial: Concentration | None = Field(None, description="initial level; default blood_level")
    boundary: dict[Name, BoundaryValue] = Field(default_factory=dict)


class ImmuneSpec(Spec):
    """Immune effector cells e (a dimensionless density), recruited from vessels:

        de/dt = div(D_e grad e) + r_e S_V (1 + boost A_I) − clearance e

    where A_I is the Hill activation of the checkpoint inhibitor(s) (their ec50 and hill). Kill of
    clone i: immune_kill_i (1 + kill_boost A_I) e, whatever the clone's chemoresistance.
    """

    enabled: bool = True
    diffusivity: Diffusivity = Field(5.0 / 60, description="effector motility (T cells ~ 5 um^2/min)")
    recruitment: Quantity("um/hour", "um/hour", ge=0, description="r_e: recruitment per vessel "
                          "surface density") = 1.0
    clearance: Rate = Field(0.02, description="delta_e: effector death/exhaustion rate")
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
RTOL_FRACTION = 1e-2


class TimeSpec(Spec):
    """Simulated period and step control."""

    end: Time = Field(description="end of the simulation")
    dt: Duration = Field(1.0, gt=0, description="largest step")
    dt_min: Duration = Field(1.0e-3, gt=0, description="smallest step")
    dt_initial: Duration | None = Field(None, description="first step, and the step after a dose "
                                        "event; default dt (with tolerance: dt times tolerance^(1/3))")
    tolerance: float | None = Field(None, gt=0, lt=1, description="relative local error allowed per "
                                    "step in the clone densities and the transported species, e.g. "
                                    "1e-3: the steps then follow the error (TR-BDF2 and its error "
                                    "estimate, a PI controller, rejected steps redone) and dt is the "
                                    "largest step; unset: steps of dt, shorter after doses")
    tolerance_floor: float = Field(1e-3, gt=0, le=1, description="below this fraction of a field's "
                                   "scale (its largest value so far; the capacity for clones) the "
                                   "tolerance is absolute")


class NumericsSpec(Spec):
    lumped_mass: bool = True
    solver: Literal["auto", "jacobi", "amg", "direct"] = "auto"
    amg_threshold: float = Field(10.0, gt=0, description="'auto' uses AMG when D dt/h^2 exceeds this")
    rtol: float | None = Field(None, gt=0, lt=1, description="relative tolerance of every linear "
                               "solve (the previous solution is the initial guess); default 1e-8, "
                               "or time.tolerance/100 with time.tolerance")
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

    fields: list[str] = Field(default_factory=lambda: ["total"], description="field names; the "
                              "transported species when none of them exists")
    times: list[Time] | None = Field(None, description="default: the end time; [] for none")


class CheckpointSpec(Spec):
    """When the whole state is saved for ``tme run --resume``: every ``every`` of simulated
    time and/or every ``wall`` of wall-clock time; always at a stop by SIGINT, SIGTERM or SIGUSR1."""

    every: Duration | None = Field(None, gt=0, description="simulated-time interval; None = none")
    wall: Duration | None = Field(1.0, gt=0, description="wall-clock interval (e.g. '30 min'); None = none")


class OutputSpec(Spec):
    every: Duration | None = Field(None, description="field output interval; default end/20")
    snapshots: SnapshotSpec = SnapshotSpec()
    plots: bool = True
    checkpoint: CheckpointSpec = CheckpointSpec()


class Scenario(Spec):
    """A complete scenario: what is simulated, on what tissue, with which treatment."""

    name: Name
    description: str = ""
    mesh: MeshSpec
    tissue: TissueSpec = TissueSpec()
    drugs: dict[Name, DrugSpec] = Field(default_factory=dict)
    survival_factor: SurvivalFactorSpec = SurvivalFactorSpec(enabled=False)
    oxygen: OxygenSpec = OxygenSpec(enabled=False)
    immune: ImmuneSpec = ImmuneSpec(enabled=False)
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
        return self

    @property
    def scheme(self) -> str:
        """The transport scheme in use: numerics.time_scheme, or its default."""
        if self.numerics.time_scheme is not None:
            return self.numerics.time_scheme
        return "tr_bdf2" if self.time.tolerance is not None else "backward_euler"

    @property
    def linear_rtol(self) -> float:
        """The Krylov tolerance: numerics.rtol, or 1e-8, or time.tolerance/100 (at most 1e-8 tighter)."""
        if self.numerics.rtol is not None:
            return self.numerics.rtol
        tol = self.time.tolerance
        return 1e-8 if tol is None else max(1e-12, RTOL_FRACTION * tol)


# --------------------------------------------------------------------------------------------
# Loading and error messages


def load(path: str | Path, overrides: list[str] = ()) -> Scenario:
    """Read, override (``key.path=value``) and validate a scenario file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ScenarioError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
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
    parts = key.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError):
                raise ScenarioError(f"--set {key}: '{'.'.join(parts[:depth + 1])}' is not an index of a list of {len(node)}") from None
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ScenarioError(f"--set {key}: '{'.'.join(parts[:depth + 1])}' is a value, not a section")
    parsed = yaml.safe_load(value)
    if isinstance(node, list):
        try:
            node[int(parts[-1])] = parsed
        except (ValueError, IndexError):
            raise ScenarioError(f"--set {key}: '{parts[-1]}' is not an index of a list of {len(node)}") from None
    else:
        node[parts[-1]] = parsed


def validate(data: dict, source: str = "scenario", base_dir: Path | None = None) -> Scenario:
    try:
        scenario = Scenario.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {_format(exc)}") from None
    if base_dir is not None and isinstance(scenario.mesh, FileMesh) and not scenario.mesh.path.is_absolute():
        scenario = scenario.model_copy(update={"mesh": scenario.mesh.model_copy(
            update={"path": (base_dir / scenario.mesh.path)})})
    return scenario


def _format(exc: ValidationError) -> str:
    """One line naming the key path of the first error and what would be valid."""
    err = exc.errors(include_url=False)[0]
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
        return f"{key}: unknown key{did}; valid keys here: {', '.join(valid)}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    if err["type"] == "union_tag_invalid":
        return f"{key}: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) or err["type"] == "value_error" else f" (got {value!r})"
    return f"{key}: {msg}{shown}"


def _strip_union_tags(loc: list[str]) -> list[str]:
    out, model = [], Scenario
    for part in loc:
        if model is not None and _is_tag(model, out, part):
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
        elif origin is Union:
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


def resolved_yaml(scenario: Scenario) -> str:
    """The scenario with every default filled in and every quantity written with its unit."""
    data = scenario.model_dump(mode="json", by_alias=True)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def json_schema() -> dict:
    return Scenario.model_json_schema(by_alias=True)
