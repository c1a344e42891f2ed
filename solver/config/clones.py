"""The cancer cell populations: clones, their resistance traits, mutation between them.

A clone is a trait vector (docs/model.md, Cancer cells). Every resistance mechanism of the seed is one trait:

| mechanism          | trait          | effect on the kill rate κ_ij of drug j                     |
|--------------------|----------------|------------------------------------------------------------|
| target mutation    | ``ec50_shift`` | EC50_ij = f_ij · EC50_j                                    |
| oncogenic bypass   | ``bypass``     | E_max of a targeted drug scaled by (1 − b_ij)              |
| DNA repair         | ``repair``     | DNA-damaging drugs scaled by (1 − ρ_i)                     |
| P-gp efflux (MDR)  | ``pgp_vmax``   | lower intracellular level of every P-gp substrate          |
| CAF shield         | ``factor_sensitivity`` | protection π_max,j s/(s + K_s) scaled by it        |

Pre-existing heterogeneity is the initial composition, the mutation matrix and a fitness cost
(a lower ``growth``); selection then emerges from the different kill rates.

Units (base units of :mod:`tme.config.units`): rates in 1/hour (``growth`` is shown in 1/day, the
unit doubling times are quoted in), concentrations in µM, P-gp capacity in µM/hour, diffusivity
in µm²/hour (shown in µm²/s), the cell volume in µm³. Every one is written with its unit.
Densities are volume fractions of the packing capacity, 0 ≤ N ≤ 1. Mutation entries are
probabilities per division.

The kill model and the pointwise dynamics that use these traits are in :mod:`tme.cells.reactions`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Iterable, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from .drugs import DrugSpec
from ..pharmacology import DRUG_CLASSES, MECHANISMS, killing_classes, mechanism_of
from .spec import Name, Spec, at
from .units import Concentration, Diffusivity, Fraction, Quantity, Rate, parse_quantity

#: Where the clones section sits in a scenario; validation messages name paths from it.
SECTION = "clones"

#: Order in which traits name a clone's mechanism when it carries several and none is given.
TRAIT_ORDER = tuple(n for n, m in MECHANISMS.items() if m.carried is not None)

Mechanism = Literal[tuple(MECHANISMS)]  # type: ignore[valid-type]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")   # as tme.config.spec.Name

GrowthRate = Quantity("1/hour", "1/day", ge=0, description="proliferation rate g")
Repair = Quantity("dimensionless", "dimensionless", ge=0, lt=1, description="DNA repair rho")
PumpCapacity = Quantity("uM/hour", "uM/hour", ge=0, description="P-gp pump capacity V_max")


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a volume fraction, got {type(value).__name__} {value!r}")
    v = parse_quantity(value, "dimensionless", "dimensionless")
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{value!r} is not a volume fraction between 0 and 1")
    return v


def _initial(value: Any) -> float | dict[str, float]:
    # One validator for both forms keeps the error on the key itself (a pydantic union would
    # report it under an internal member name).
    if isinstance(value, dict):
        out = {}
        for region, v in value.items():
            if not isinstance(region, str) or not _NAME.fullmatch(region):
                raise ValueError(f"{region!r} is not a region name (letters, digits, underscores)")
            try:
                out[region] = _fraction(v)
            except ValueError as exc:
                raise ValueError(f"region {region!r}: {exc}") from None
        return out
    try:
        return _fraction(value)
    except ValueError as exc:
        raise ValueError(f"{exc}; give a volume fraction (e.g. 0.3 or '30 %') or a mapping "
                         f"{{region: fraction}}") from None


#: The initial density: a uniform volume fraction, or one per mesh region (0 elsewhere).
InitialDensity = Annotated[
    float | dict[str, float],
    BeforeValidator(_initial),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"},
                              {"type": "object", "additionalProperties": {"anyOf": [
                                  {"type": "number"}, {"type": "string"}]}}],
                    "description": "initial volume fraction, uniform or {region: fraction}"}),
]


def _derived_mechanism(data: dict) -> str | None:
    """The mechanism a clone's traits name, in :data:`TRAIT_ORDER`; None for a sensitive clone."""
    return mechanism_of(data)


class CloneSpec(Spec):
    """One clone: growth, resistance traits, immune kill and initial density.

    Units: ``growth`` 1/hour (shown in 1/day), ``pgp_vmax`` µM/hour, ``immune_kill``
    1/hour per unit effector density; ``ec50_shift`` and the fractions are dimensionless.
    """

    growth: GrowthRate = Field(description="proliferation rate g at full oxygen and free space "
                                           "(doubling 1-3 days: 0.23-0.69 /day)")
    ec50_shift: dict[Name, Annotated[float, Field(ge=1)]] = Field(
        default_factory=dict, description="target mutation: drug -> EC50 fold-shift f >= 1")
    bypass: dict[Name, Fraction] = Field(
        default_factory=dict, description="oncogenic bypass: targeted drug or target pathway -> "
                                          "fraction b of its E_max bypassed")
    repair: Repair = Field(0.0, description="DNA repair: DNA-damaging kill scaled by (1 - repair)")
    pgp_vmax: PumpCapacity = Field("0 uM/hour", description="P-gp efflux capacity V_max; at low drug "
                                                    "levels a cell accumulates a fraction "
                                                    "1/(1 + V_max/(k_in K_m)) of the outside level")
    factor_sensitivity: Fraction = Field(1.0, description="scales the protection by the CAF factor")
    immune_kill: Rate = Field("0 1/hour", description="kill rate per unit immune effector density")
    initial: InitialDensity = Field(0.0, description="initial volume fraction, uniform or "
                                                     "{region: fraction} (0 in other regions)")
    # Declared last: its default is read from the traits validated above.
    mechanism: Mechanism | None = Field(
        default_factory=_derived_mechanism,
        description="resistance mechanism named in reports and by sequencing; default from the "
                    "traits (" + ", ".join(TRAIT_ORDER) + ", in that order), none = sensitive")

    def initial_in(self, region: str | None) -> float:
        """Initial volume fraction in ``region``."""
        return self.initial.get(region, 0.0) if isinstance(self.initial, dict) else self.initial


# Own annotated types for the required quantities: pydantic 2.10 lets a default given to a
# shared type (``decay: Rate = 0.0`` elsewhere) leak into ``x: Rate = Field(description=...)``,
# which would make these keys silently optional.
NecrosisRate = Quantity("1/hour", "1/hour", ge=0, description="death rate below the threshold")
NecrosisThreshold = Quantity("uM", "uM", ge=0, description="oxygen level below which cells "
                                                          "become necrotic")
CellVolume = Quantity("um**3", "um**3", gt=0, description="volume of one cell")

#: The volume of one carcinoma cell: HeLa and most carcinoma lines lie at 2000-4000 µm³.
CELL_VOLUME = "3000 um**3"


class NecrosisSpec(Spec):
    """Necrosis in severe hypoxia: cells die at ``rate`` [1/hour] where oxygen < ``threshold`` [µM]."""

    rate: NecrosisRate
    threshold: NecrosisThreshold


class ClonesSpec(Spec):
    """The cancer cell populations (docs/model.md, Cancer cells): clones in order, mutation between them,
    motility and the shared parameters of P-gp efflux, necrosis and hypoxic growth.

    Units: ``motility`` µm²/hour (shown in µm²/s), ``pgp_km`` µM, ``influx`` 1/hour,
    ``cell_volume`` µm³; mutation entries are probabilities per division.
    """

    clones: dict[Name, CloneSpec] = Field(default_factory=dict, description="clones, in order")
    mutation: dict[Name, dict[Name, Fraction]] = Field(
        default_factory=dict, description="from clone -> {to clone: probability per division}")
    motility: Diffusivity = Field("0 um**2/s", description="random motility D_N of every clone")
    pgp_km: Concentration = Field("1.5 uM", gt=0, description="P-gp Michaelis constant K_m "
                                                             "(about 1.5 uM: FEBS Lett 1994)")
    cell_volume: CellVolume = Field(CELL_VOLUME, description="volume of one cancer cell; a burden "
                                    "over it is a cell count (HeLa ~3000 um^3: Milo & Phillips, "
                                    "Cell Biology by the Numbers)")
    influx: Rate = Field("60 1/hour", gt=0, description="passive influx k_in across the membrane; fast, "
                                                 "as the quasi-steady intracellular level assumes")
    necrosis: NecrosisSpec | None = Field(None, description="necrosis in severe hypoxia; none when absent")
    hypoxia_growth: bool = Field(True, description="with oxygen on, growth, mutation and the kill "
                                                   "by cycle-dependent drugs scale with o/(o + o_half)")

    @model_validator(mode="after")
    def _consistent(self):
        names = list(self.clones)
        for src, row in self.mutation.items():
            here = f"{SECTION}.mutation.{src}"
            if src not in self.clones:
                raise ValueError(at(here, f"unknown clone {src!r}; clones: {_choices(names)}"))
            for dst in row:
                if dst not in self.clones:
                    raise ValueError(at(f"{here}.{dst}", f"unknown clone {dst!r}; clones: {_choices(names)}"))
                if dst == src:
                    others = _choices(n for n in names if n != src)
                    raise ValueError(at(f"{here}.{dst}", f"a clone cannot mutate into itself; name "
                                                         f"another clone: {others}"))
            total = sum(row.values())
            if total > 1.0 + 1e-12:
                raise ValueError(at(here, f"mutation probabilities per division of {src!r} add up to "
                                          f"{total:.6g}; their sum must be at most 1"))
        self._check_initial_total()
        return self

    def _check_initial_total(self) -> None:
        # A region no mapping names holds only the uniform densities, never more than a named one.
        regions = sorted({r for c in self.clones.values() if isinstance(c.initial, dict) for r in c.initial})
        for region in regions or [None]:
            amounts = {n: c.initial_in(region) for n, c in self.clones.items()}
            total = sum(amounts.values())
            if total > 1.0 + 1e-12:
                where = "" if region is None else f" in region {region!r}"
                parts = ", ".join(f"{n} {v:.3g}" for n, v in amounts.items())
                raise ValueError(at(f"{SECTION}.clones", f"initial densities add up to {total:.6g}{where} "
                                                         f"({parts}); their total is a volume fraction "
                                                         f"of at most 1"))

    # -- views used by the rest of the solver --------------------------------------------------
    def mechanisms(self) -> dict[str, str | None]:
        """Clone -> resistance mechanism (None = sensitive), as the protocol needs it."""
        return {n: c.mechanism for n, c in self.clones.items()}

    def resistant(self) -> list[bool]:
        """Per clone, in order: whether it carries a resistance mechanism."""
        return [c.mechanism is not None for c in self.clones.values()]

    def mutation_matrix(self) -> list[list[float]]:
        """μ[i][k]: probability per division of clone i that a daughter is clone k (μ[i][i] = 0)."""
        index = {n: i for i, n in enumerate(self.clones)}
        mu = [[0.0] * len(index) for _ in index]
        for src, row in self.mutation.items():
            for dst, p in row.items():
                mu[index[src]][index[dst]] = p
        return mu


def _choices(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "(none)"


def check_references(clones: ClonesSpec, drugs: dict[str, DrugSpec],
                     regions: Iterable[str] | None = None) -> None:
    """Check the drug, target and region names the clones use against the rest of the scenario.

    ``drugs`` are the scenario's drugs; ``regions``, when known, the mesh region tags. Raises
    ValueError marked with the key path (``clones.clones.<clone>...``) and what would be valid.
    """
    killing = sorted(n for n, d in drugs.items() if d.drug_class in killing_classes() and d.emax > 0)
    targeted = sorted(n for n, d in drugs.items() if DRUG_CLASSES[d.drug_class].bypassable)
    targets = sorted({d.target for n, d in drugs.items() if n in targeted and d.target})
    for name, clone in clones.clones.items():
        here = f"{SECTION}.clones.{name}"
        for drug in clone.ec50_shift:
            path = f"{here}.ec50_shift.{drug}"
            if drug not in drugs:
                raise ValueError(at(path, f"unknown drug {drug!r}; drugs that kill: {_choices(killing)}"))
            if drug not in killing:
                d = drugs[drug]
                raise ValueError(at(path, f"drug {drug!r} ({d.drug_class}, emax {d.emax:g} 1/hour) kills "
                                          f"no cell, so an EC50 shift has no effect; drugs that kill: "
                                          f"{_choices(killing)}"))
        for key in clone.bypass:
            path = f"{here}.bypass.{key}"
            if key in drugs and key not in targeted:
                raise ValueError(at(path, f"drug {key!r} is {drugs[key].drug_class}, not targeted; a "
                                          f"bypass names a targeted drug ({_choices(targeted)}) or "
                                          f"the target of one ({_choices(targets)})"))
            if key not in drugs and key not in targets:
                raise ValueError(at(path, f"{key!r} is neither a targeted drug ({_choices(targeted)}) "
                                          f"nor the target of one ({_choices(targets)})"))
        if regions is not None and isinstance(clone.initial, dict):
            known = set(regions)
            for region in clone.initial:
                if region not in known:
                    raise ValueError(at(f"{here}.initial.{region}",
                                        f"unknown region {region!r}; mesh regions: {_choices(known)}"))

