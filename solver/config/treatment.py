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

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema, model_validator

from .. import pharmacology
from .drugs import Dose
from .spec import Name, Spec, at
from .units import Fraction, Quantity, read, remember, to_base

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


_VALID_SIZE = "a cell count ('100 cell') or a volume ('1e6 um**3', '0.001 mm**3')"


def _size(value: Any) -> Size:
    if isinstance(value, Size):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return Size(0.0, "cell")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"a bare number is ambiguous; write e.g. '{value:g} cell' or '{value:g} um**3'")
    if not isinstance(value, str):
        raise ValueError(f"expected {_VALID_SIZE}, got {value!r}")
    return Size(*_size_text(value))


@remember
def _size_text(value: str) -> list:
    """[value, unit] of a tumour size given as text (see :func:`_size`)."""
    import pint

    try:
        q = read(value)
    except ValueError as exc:
        raise ValueError(f"cannot read {value!r} ({exc}); write {_VALID_SIZE}") from None
    if not isinstance(q, pint.Quantity) or q.unitless:
        raise ValueError(f"a bare number is ambiguous; write e.g. '{value.strip()} cell' or "
                         f"'{value.strip()} um**3'")
    for unit in ("cell", "um**3"):
        if q.check(unit if unit != "cell" else "[cell_count]"):
            out = to_base(q, unit)
            if not math.isfinite(out) or out < 0:
                raise ValueError(f"{value!r} is not a finite size >= 0")
            return [out, unit]
    raise ValueError(f"{value!r} has dimension {q.dimensionality}; write {_VALID_SIZE}")


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


class HolidaySpec(Spec):
    """Adaptive therapy's treatment holiday (Zhang et al. 2017): at a rule assessment, pause the
    drugs when the burden is at or below ``pause_below`` × baseline, resume them when it is at
    or above ``resume_above`` × baseline. A dose due while paused is not given."""

    pause_below: Ratio = Field(0.5, description="pause when burden <= this × baseline (0.5 = 50 %)")
    resume_above: Ratio = Field(1.0, description="resume when burden >= this × baseline")
    drugs: list[Name] | None = Field(None, description="the drugs paused; None = every drug of the line")

    @model_validator(mode="after")
    def _hysteresis(self):
        if not self.pause_below < self.resume_above:
            raise ValueError(f"pause_below {self.pause_below:g} must be below resume_above "
                             f"{self.resume_above:g}: a burden between them would pause and "
                             f"resume at every assessment")
        return self


class ModulationSpec(Spec):
    """Dose modulation (Enriquez-Navas et al. 2016; Gallaher et al. 2018): at a rule assessment
    the relative change r = B / B_prev − 1 of the burden since the previous one sets the dose
    level ℓ (a multiple of the regimen's doses, 1 at the line's start): r >= ``rise`` →
    ℓ × ``rise_factor``; r <= −``fall`` → ℓ × ``fall_factor``; between, ℓ is unchanged. ℓ is
    kept within [``min_level``, ``max_level``]; doses are given at ℓ × their amount, and not at
    all while ℓ < ``skip_below``."""

    rise: Ratio = Field(0.2, description="relative rise of the burden that raises the dose (0.2 = 20 %)")
    rise_factor: Quantity("dimensionless", "dimensionless", ge=1, description="dose multiplier "
                          "on a rise") = 1.5
    fall: Quantity("dimensionless", "dimensionless", gt=0, lt=1, description="relative fall of "
                   "the burden that lowers the dose") = 0.2
    fall_factor: Quantity("dimensionless", "dimensionless", gt=0, le=1, description="dose "
                          "multiplier on a fall") = 0.5
    min_level: Ratio = Field(0.0, description="lowest dose level (× the regimen's dose)")
    max_level: Quantity("dimensionless", "dimensionless", gt=0, description="highest dose level "
                        "(× the regimen's dose)") = 2.0
    skip_below: Ratio = Field(0.0, description="a dose level below this skips the dose")
    drugs: list[Name] | None = Field(None, description="the drugs modulated; None = every drug of the line")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_level > self.max_level:
            raise ValueError(f"min_level {self.min_level:g} is above max_level {self.max_level:g}")
        if not 1.0 >= self.min_level or not self.max_level >= 1.0:
            raise ValueError(f"min_level {self.min_level:g} and max_level {self.max_level:g} must "
                             f"hold the starting level 1")
        if self.skip_below > 1.0:
            raise ValueError(f"skip_below {self.skip_below:g} is above the starting level 1: no "
                             f"dose would ever be given")
        return self


class AdaptSpec(Spec):
    """Rules that adapt a line's doses to the tumour, judged at rule assessments: ``first``
    after the line's start, then ``every`` [hour], a cadence of their own (the progression
    assessments go on as before). The holiday's ``baseline`` is the burden at the line's start,
    or a declared size."""

    every: Weeks = Field("4 week", description="interval between rule assessments")
    first: Weeks = Field("4 week", description="first rule assessment after the start of the "
                                               "line; default: every")
    baseline: Annotated[Size, BeforeValidator(_size), PlainSerializer(str),
                        WithJsonSchema({"type": "string", "description": "a baseline burden: a "
                                        "cell count ('100 cell') or a volume ('1e6 um**3')"})] | None = Field(None, description="the holiday's baseline: cells or a "
                                        "volume; None = the burden at the line's start")
    holiday: HolidaySpec | None = None
    modulation: ModulationSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _first_defaults_to_every(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("first") is None:
            data = {**data, "first": data.get("every", "4 week")}
        return data

    @model_validator(mode="after")
    def _some_rule(self):
        if self.holiday is None and self.modulation is None:
            raise ValueError("declare a holiday, a modulation or both (or remove adapt)")
        return self


class Line(Spec):
    """One line of therapy: a regimen of doses (times from the start of the line, in hours),
    optionally chosen by sequencing the tumour when the line starts, optionally adapted to the
    tumour by holiday and modulation rules."""

    name: Name
    regimen: list[Dose] = Field(default_factory=list)
    sequencing: SequencingSpec | None = None
    adapt: AdaptSpec | None = None


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

    Progression when B > (1 + increase)·R and B − R > min_increase, the reference R being the
    nadir (the smallest burden assessed since the line started, its starting burden included)
    or, with ``reference: baseline``, the burden at the line's start (the rule of adaptive
    therapy, whose holidays let the burden regrow from its nadir on purpose); or, when
    ``resistant_fraction`` is set, when the resistant clones exceed that fraction of the tumour.
    Either needs a detectable burden.
    """

    reference: Literal["nadir", "baseline"] = Field("nadir", description="burden the rise is "
                                                    "measured from: the nadir, or the line's "
                                                    "starting burden")
    increase: Ratio = Field(0.2, description="relative rise above the reference (0.2 = 20 %)")
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


class LimitSpec(Spec):
    """Toxicity and dose limits of one drug, checked when each dose is given, from the exact
    plasma curve of the doses given so far: the cumulative dose over the run, the plasma peak
    over the dose's delivery, and the plasma AUC over the cycle the dose starts
    (``auc_window`` from the dose, default its cycle period ``every``). A dose that would exceed
    a limit is reduced to the largest that meets every limit (``policy: reduce``) or not given
    (``skip``); either is an event."""

    max_cumulative: float | str | None = Field(None, description="largest total dose over the "
                                               "run, as a dose amount ('500 mg', '100 umol', "
                                               "'60 uM'): always with a unit")
    max_peak: Quantity("uM", "uM", gt=0, description="largest plasma concentration") | None = None
    max_auc: Quantity("uM*hour", "uM*hour", gt=0, description="largest plasma AUC over one "
                      "cycle") | None = None
    auc_window: Quantity("hour", "hour", gt=0, description="the cycle of max_auc; default: "
                         "the dose's every") | None = None
    policy: Literal["reduce", "skip"] = Field("reduce", description="a dose over a limit is "
                                              "reduced to it, or skipped")

    @model_validator(mode="after")
    def _some_limit(self):
        if self.max_cumulative is None and self.max_peak is None and self.max_auc is None:
            raise ValueError("declare max_cumulative, max_peak or max_auc (or remove the entry)")
        if self.auc_window is not None and self.max_auc is None:
            raise ValueError("auc_window is the window of max_auc, which is not set")
        return self


class TreatmentSpec(Spec):
    """Ordered lines of therapy, when they are assessed, when they have failed, the drugs'
    limits and the times at which the outcome is reported."""

    lines: list[Line] = Field(default_factory=list)
    limits: dict[Name, LimitSpec] = Field(default_factory=dict, description="drug -> its "
                                          "toxicity and dose limits")
    report_times: list[Quantity("hour", "day", ge=0, description="time")] = Field(
        default_factory=list, description="times at which summary.json reports the burden and "
                                          "the resistant fraction")
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
    for name in treatment.limits:
        if name not in drugs:
            raise ValueError(at(f"treatment.limits.{name}",
                                f"unknown drug {name!r}; defined drugs: {_choices(drugs)}"))
    for name, limit in treatment.limits.items():
        if limit.max_auc is None or limit.auc_window is not None:
            continue
        for i, line in enumerate(treatment.lines):
            for k, dose in enumerate(line.regimen):
                if dose.drug == name and dose.every is None:
                    raise ValueError(at(f"treatment.limits.{name}.auc_window",
                                        f"dose treatment.lines.{i}.regimen.{k} of {name} has no "
                                        f"cycle period (every) to take the AUC over; declare "
                                        f"auc_window (e.g. '21 day')"))
    found = sorted({m for m in clones.values() if m is not None})
    for i, line in enumerate(treatment.lines):
        here = f"treatment.lines.{i}"
        for k, dose in enumerate(line.regimen):
            if dose.drug not in drugs:
                raise ValueError(at(f"{here}.regimen.{k}.drug",
                                    f"unknown drug {dose.drug!r}; defined drugs: {_choices(drugs)}"))
        seq = line.sequencing
        dosed = {d.drug for d in line.regimen}
        adapt = line.adapt
        for rule in ("holiday", "modulation"):
            spec = None if adapt is None else getattr(adapt, rule)
            for n, name in enumerate(spec.drugs or [] if spec is not None else []):
                if name not in dosed:
                    raise ValueError(at(f"{here}.adapt.{rule}.drugs.{n}",
                                        f"drug {name!r} has no dose in {here}.regimen; doses "
                                        f"given for: {_choices(dosed)}"))
        if seq is None:
            continue
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
