"""Drugs: transport parameters, plasma pharmacokinetics and pharmacodynamics, and doses.

Every quantity is held in the base units of :mod:`solver.units` (µm, hour, µM).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .pharmacology import DRUG_CLASSES
from .spec import BoundaryValue, Name, Spec
from .units import (Concentration, Diffusivity, Duration, Fraction, Permeability, Quantity, Rate,
                    Time)


class PKSpec(Spec):
    """Plasma pharmacokinetics: one or two compartments, with first-order elimination."""

    model: Literal["one_compartment", "two_compartment", "constant"] = "one_compartment"
    half_life: Duration = Field("24 hour", description="elimination half-life from the central "
                                                      "compartment")
    volume: Quantity("L", "L", gt=0, description="central volume of distribution") = "40 L"
    k12: Rate = "0 1/hour"
    k21: Rate = "0 1/hour"
    molar_mass: Quantity("g/mol", "g/mol", gt=0) | None = Field(None, description="to read doses in mg")
    level: Concentration = Field("0 uM", description="plasma level of model 'constant'")


DrugClass = Literal[tuple(DRUG_CLASSES)]  # type: ignore[valid-type]


class DrugSpec(Spec):
    """A drug: transport, plasma PK, and pharmacodynamics (kill model of MODEL.md §3)."""

    drug_class: DrugClass = Field(alias="class")
    diffusivity: Diffusivity = Field(description="free diffusivity D0")
    radius: Quantity("um", "nm", gt=0, description="molecular radius for Ogston hindrance") = "0.5 nm"
    decay: Rate = "0 1/hour"
    uptake: Rate = Field("0 1/hour", description="cellular binding/uptake k per unit cell density")
    permeability: Permeability = Field("0 um/s", description="vessel wall permeability P")
    initial: Concentration = "0 uM"
    boundary: dict[Name, BoundaryValue] = Field(default_factory=dict)
    pk: PKSpec = PKSpec()
    # pharmacodynamics
    emax: Rate = Field("0 1/hour", description="maximal kill rate E_max")
    ec50: Concentration = Field("1 uM", gt=0, description="half-maximal (intracellular) concentration")
    hill: float = Field(1.0, gt=0)
    pgp_substrate: bool = False
    cycle_dependent: bool = False
    factor_protection: Fraction = Field(0.0, description="pi_max: kill reduction by the CAF factor")
    target: str | None = Field(None, description="pathway a targeted drug inhibits")
    pgp_inhibition: Fraction = Field(0.0, description="for pgp_inhibitor: maximal fractional V_max reduction")


class Dose(Spec):
    """A dose (or repeating cycle of doses) of one drug, in time from the start of its line."""

    drug: Name
    amount: float | str = Field(description="plasma concentration reached (e.g. '5 uM'), or an "
                                            "amount ('50 mg', '10 umol') given the PK volume; "
                                            "always with a unit")
    start: Time = "0 hour"
    infusion: Duration = Field("0 hour", description="infusion duration; 0 = bolus")
    every: Duration | None = Field(None, gt=0, description="cycle period")
    cycles: int = Field(1, ge=1)
