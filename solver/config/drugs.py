"""Drugs: transport parameters, plasma pharmacokinetics and pharmacodynamics, and doses.

Every quantity is held in the base units of :mod:`tme.config.units` (µm, hour, µM).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..pharmacology import DRUG_CLASSES
from .spec import BoundaryValue, Name, ScenarioError, Spec
from .units import (Concentration, Diffusivity, Duration, Fraction, Permeability, Quantity, Rate,
                    Time, UnsafeQuantity, bare_number_message, read, registry, remember)

if TYPE_CHECKING:
    import pint


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
    """A drug: transport, plasma PK, and pharmacodynamics (kill model of docs/model.md, Cancer cells)."""

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


# --------------------------------------------------------------------------------------------
# Dose amounts


_VALID = ("a dose is the plasma concentration it reaches ('5 uM', '0.2 mM'), an amount of "
          "substance ('10 umol', divided by pk.volume) or a mass ('50 mg', with pk.molar_mass)")

_DIM = {"concentration": "uM", "amount": "umol", "mass": "g", "mass_concentration": "g/L"}


def dose_concentration(amount: float | str, pk: PKSpec, key: str) -> float:
    """The plasma concentration [µM] a dose ``amount`` amounts to.

    ``amount`` is a concentration reached by a bolus ('5 uM', '0.2 mM'; a bare number is
    refused, as it could be any of these), an
    amount of substance ('10 umol', divided by the central volume ``pk.volume`` [L]), a mass
    ('50 mg', converted with ``pk.molar_mass`` [g/mol], then divided by the volume) or a mass
    concentration ('2 mg/L', with ``pk.molar_mass``). An infusion delivers this same total over
    its duration. Raises ScenarioError naming ``key`` when the amount cannot be used.
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, float, str)):
        raise ScenarioError(f"{key}: got {type(amount).__name__} {amount!r}; {_VALID}")
    if not isinstance(amount, str):
        raise ScenarioError(f"{key}: {bare_number_message(amount, 'uM')}, or '{amount:g} umol'")
    return _concentration(amount, pk.volume, pk.molar_mass, key)


@remember
def _concentration(amount: str, volume: float, molar_mass: float | None, key: str) -> float:
    """:func:`dose_concentration` of a text, given the PK's ``volume`` [L] and ``molar_mass``
    [g/mol] (or None)."""
    q = _read(amount, key)
    dim = q.dimensionality
    ureg = registry()
    dims = {name: ureg.parse_units(unit).dimensionality for name, unit in _DIM.items()}
    if dim == dims["concentration"]:
        conc = q.to("uM").magnitude
    elif dim == dims["amount"]:
        conc = q.to("umol").magnitude / volume
    elif dim in (dims["mass"], dims["mass_concentration"]):
        if molar_mass is None:
            raise ScenarioError(
                f"{key}: {amount!r} is a mass, which needs the drug's pk.molar_mass (e.g. "
                f"'543.5 g/mol') to convert; or give a concentration ('5 uM') or an amount ('10 umol')")
        moles = q / ureg.Quantity(molar_mass, "g/mol")
        conc = moles.to("umol").magnitude / volume if dim == dims["mass"] else moles.to("uM").magnitude
    else:
        shown = "dimensionless" if not dim else str(dim)
        raise ScenarioError(f"{key}: {amount!r} has dimension {shown}; {_VALID}")
    try:
        conc = float(conc)
    except OverflowError:
        conc = math.inf
    if not (math.isfinite(conc) and conc >= 0.0):
        raise ScenarioError(f"{key}: {amount!r} is not a finite amount >= 0; {_VALID}")
    return conc


def _read(text: str, key: str) -> pint.Quantity:
    """Parse a dose string with pint; a number without a unit is refused."""
    import pint

    try:
        q = read(text)
    except UnsafeQuantity as exc:
        raise ScenarioError(f"{key}: {exc}") from None
    except ValueError:
        raise ScenarioError(f"{key}: cannot read {text!r} as a dose; {_VALID}") from None
    if not isinstance(q, pint.Quantity) or q.units == registry().dimensionless:
        raise ScenarioError(f"{key}: {bare_number_message(text, 'uM')}, or '{text.strip()} umol'")
    return q
