"""The treatment a scenario declares: ordered lines of therapy, their regimens, sequencing,
assessments, progression, the detection limit and when to stop (the engine that runs them is
:mod:`tme.protocol`).

Tumour sizes a scenario declares (the detection limit, the smallest rise that counts as
progression) are cell counts ('100 cell') or volumes ('1e6 um**3'); a :class:`CellScale` turns
burdens into cell counts: a 2-D burden times the slice thickness is a volume, and a volume over
the cell volume is a count. Times in hours, fractions dimensionless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Iterable, Literal

import pint
from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema, model_validator

from .. import pharmacology
from .drugs import Dose
from .spec import Name, Spec, at
from .units import Fraction, Quantity, read, to_base

#: Resistance mechanisms a clone can carry (docs/model.md, Cancer cells) and a sequencing step can name.
MECHANISMS = tuple(pharmacology.MECHANISMS)

#: Default interval between assessments: 6 weeks, like imaging in the clinic.
SIX_WEEKS = "6 week"

#: The default detection limit: a continuum density summing to less than one cell over the
#: whole domain no longer stands for any cell, and a domain of a few mm holds only 10^3-10^5
#: cells, far below a clinical imaging limit (~10^8-10^9 cells, ~1 cm³).
DETECTION_LIMIT = "1 cell"

#: A non-negative dimensionless ratio with no upper bound (a relative increase may exceed 100 %).
Ratio = Quantity("dimensionless", "dimensionless", ge=0, description="relative increase")

Weeks = Quantity("hour", "week", gt=0, description="time")


@dataclass(frozen=True)
class Size:
    """A tumour size a scenario declares: ``value`` cells (``unit`` 'cell') or µm³ ('um**3')."""

    value: float
    unit: Literal["cell", "um**3"]

    def __str__(self) -> str:
        return f"{self.value!r} {self.unit}"


def _size(value: Any) -> Size:
    if isinstance(value, Size):
        return value
    valid = "a cell count ('100 cell') or a volume ('1e6 um**3', '0.001 mm**3')"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return Size(0.0, "cell")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"a bare number is ambiguous; write e.g. '{value:g} cell' or '{value:g} um**3'")
    if not isinstance(value, str):
        raise ValueError(f"expected {valid}, got {value!r}")
    try:
        q = read(value)
    except ValueError as exc:
        raise ValueError(f"cannot read {value!r} ({exc}); write {valid}") from None
    if not isinstance(q, pint.Quantity) or q.unitless:
        raise ValueError(f"a bare number is ambiguous; write e.g. '{value.strip()} cell' or "
                         f"'{value.strip()} um**3'")
    for unit in ("cell", "um**3"):
        if q.check(unit if unit != "cell" else "[cell_count]"):
            out = to_base(q, unit)
            if not math.isfinite(out) or out < 0:
                raise ValueError(f"{value!r} is not a finite size >= 0")
            return Size(out, unit)
    raise ValueError(f"{value!r} has dimension {q.dimensionality}; write {valid}")


#: A tumour size: cells or volume (see :class:`Size`); shown as '100 cell' or '1e6 um**3'.
TumourSize = Annotated[Size, BeforeValidator(_size), PlainSerializer(str),
                       WithJsonSchema({"type": "string", "description": "a cell count ('100 cell') "
                                       "or a volume ('1e6 um**3')"})]


@dataclass(frozen=True)
class CellScale:
    """How a burden ∫ N_tot dx becomes a cell count.

    ``volume_per_burden`` [µm³ per unit of burden]: the slice thickness [µm] in 2-D (a burden is
    then an area), 1 in 3-D; ``cell_volume`` [µm³] the volume of one cell at full packing.
    """

    volume_per_burden: float
    cell_volume: float

    def cells(self, burden: float) -> float:
        """The cell count of ``burden`` [µm^d]."""
        return burden * self.volume_per_burden / self.cell_volume

    def in_cells(self, size: Size) -> float:
        """A declared size as a cell count."""
        return size.value if size.unit == "cell" else size.value / self.cell_volume


def cell_scale(dim: int, thickness: float | None, cell_volume: float) -> CellScale:
    """The :class:`CellScale` of a ``dim``-D domain; ``thickness`` [µm] is needed in 2-D."""
    if dim == 2:
        if thickness is None:
            raise ValueError("a 2-D domain needs a slice thickness to count cells")
        return CellScale(float(thickness), float(cell_volume))
    return CellScale(1.0, float(cell_volume))


def detectable(burden: float, limit: Size, scale: CellScale) -> bool:
    """Whether ``burden`` [µm^d] is at or above the detection ``limit``."""
    return scale.cells(burden) >= scale.in_cells(limit)


# --------------------------------------------------------------------------------------------
# Scenario models


class SequencingSpec(Spec):
    """Personalised targeted therapy: sequence the tumour when the line starts, then treat the
    dominant resistance mechanism.

    The line's ``regimen`` lists the doses of every candidate drug. Drugs named in a ``choose``
    list are candidates: only those mapped to the dominant mechanism are given. Drugs named in
    no ``choose`` list are a backbone, given whatever is found. When no resistant clone is
    detected the whole regimen is given.
    """

    region: Name | None = Field(None, description="biopsy region (a mesh region tag); "
                                                  "None = the whole tumour")
    detection: Fraction = Field(0.05, description="detection limit: clones below this fraction "
                                                  "of the sample are not seen")
    choose: dict[Name, Annotated[list[Name], Field(min_length=1)]] = Field(
        description="mechanism -> drugs to give when it dominates; mechanisms: "
                    + ", ".join(MECHANISMS))


class Line(Spec):
    """One line of therapy: a regimen of doses (times from the start of the line, in hours),
    optionally chosen by sequencing the tumour when the line starts."""

    name: Name
    regimen: list[Dose] = Field(default_factory=list)
    sequencing: SequencingSpec | None = None


class AssessmentSpec(Spec):
    """When the tumour is assessed: ``first`` after the start of each line, then ``every``
    [hour]. The clock restarts with each line, whose start is its new baseline."""

    every: Weeks = Field(SIX_WEEKS, description="interval between assessments")
    first: Weeks = Field(SIX_WEEKS, description="first assessment after the start of a "
                                                     "line; default: every")

    @model_validator(mode="before")
    @classmethod
    def _first_defaults_to_every(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("first") is None:
            data = {**data, "first": data.get("every", SIX_WEEKS)}
        return data


class ProgressionSpec(Spec):
    """When a line has failed (RECIST-like), judged at an assessment.

    Progression when B > (1 + increase)·nadir and B − nadir > min_increase, the nadir being the
    smallest burden assessed since the line started, its starting burden included; or, when
    ``resistant_fraction`` is set, when the resistant clones exceed that fraction of the tumour.
    Either needs a detectable burden.
    """

    increase: Ratio = Field(0.2, description="relative rise above the nadir (0.2 = 20 %)")
    min_increase: TumourSize = Field("0 cell", description="absolute rise above the nadir that "
                                     "must also be exceeded: cells or a volume")
    resistant_fraction: Fraction | None = Field(None, description="progression also when the "
                                                                  "resistant fraction exceeds this")


class StopSpec(Spec):
    """When the treatment (and the run) ends before the end time."""

    on_cure: bool = Field(True, description="a cure (a burden below the detection limit at an "
                                            "assessment) ends the treatment and the run; false: "
                                            "the line goes on, and a relapse is progression")
    stop_when_exhausted: bool = Field(True, description="stop at progression on the last line; "
                                                        "else continue the last line")


class TreatmentSpec(Spec):
    """Ordered lines of therapy, when they are assessed, and when they have failed."""

    lines: list[Line] = Field(default_factory=list)
    assessment: AssessmentSpec = AssessmentSpec()
    detection_limit: TumourSize = Field(DETECTION_LIMIT, description="a burden below this at an "
                                        "assessment is not detectable: no progression is called, "
                                        "and it is a cure; cells or a volume")
    progression: ProgressionSpec = ProgressionSpec()
    stop: StopSpec = StopSpec()

    @model_validator(mode="after")
    def _unique_names(self):
        # the event log and the outputs name lines, so a name must say which line it is
        seen: dict[str, int] = {}
        for i, line in enumerate(self.lines):
            if line.name in seen:
                raise ValueError(at(f"treatment.lines.{i}.name",
                                    f"line name {line.name!r} is already used by line {seen[line.name]}; "
                                    f"give every line its own name"))
            seen[line.name] = i
        return self


def _choices(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "(none)"


def check_references(treatment: TreatmentSpec, drugs: set[str], clones: dict[str, str | None],
                     regions: Iterable[str] | None = None) -> None:
    """Check the names a treatment uses against the rest of the scenario.

    ``drugs`` are the defined drug names, ``clones`` maps each clone to its resistance mechanism
    (None for a sensitive clone) and ``regions``, when known, are the mesh region tags. Raises
    ValueError marked with the key path (``treatment.lines.<i>...``) and what would be valid.
    """
    drugs = set(drugs)
    found = sorted({m for m in clones.values() if m is not None})
    for i, line in enumerate(treatment.lines):
        here = f"treatment.lines.{i}"
        for k, dose in enumerate(line.regimen):
            if dose.drug not in drugs:
                raise ValueError(at(f"{here}.regimen.{k}.drug",
                                    f"unknown drug {dose.drug!r}; defined drugs: {_choices(drugs)}"))
        seq = line.sequencing
        if seq is None:
            continue
        dosed = {d.drug for d in line.regimen}
        for mech, names in seq.choose.items():
            if mech not in MECHANISMS:
                raise ValueError(at(f"{here}.sequencing.choose.{mech}",
                                    f"unknown mechanism {mech!r}; valid mechanisms: {', '.join(MECHANISMS)}"))
            for n, name in enumerate(names):
                path = f"{here}.sequencing.choose.{mech}.{n}"
                if name not in drugs:
                    raise ValueError(at(path, f"unknown drug {name!r}; defined drugs: {_choices(drugs)}"))
                if name not in dosed:
                    raise ValueError(at(path, f"drug {name!r} has no dose in {here}.regimen, which "
                                              f"holds the doses of the candidates; doses given for: "
                                              f"{_choices(dosed)}"))
        # a mechanism that sequencing can find but that maps to no drug would only fail mid-run
        for mech in found:
            if mech not in seq.choose:
                carriers = _choices(c for c, m in clones.items() if m == mech)
                raise ValueError(at(f"{here}.sequencing.choose",
                                    f"no drug for mechanism {mech!r} (carried by clone {carriers}); "
                                    f"map every mechanism the clones carry to drugs: {', '.join(found)}"))
        if regions is not None and seq.region is not None and seq.region not in set(regions):
            raise ValueError(at(f"{here}.sequencing.region",
                                f"unknown region {seq.region!r}; mesh regions: {_choices(regions)}"))


# --------------------------------------------------------------------------------------------
# Events and sequencing
