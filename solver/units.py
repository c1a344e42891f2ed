"""Physical quantities in scenario files.

Every physical number in a scenario is parsed with its unit (pint) and converted once, at
validation, to the internal base units of the solver:

    length  µm        time  hour        drug concentration  µM        amount  µmol

Cell densities are dimensionless volume fractions of the packing capacity.

A field is declared with :func:`Quantity`, naming the base unit it is stored in and the unit a
bare number is read in (its documented default). The validated model holds plain floats in base
units, so nothing downstream ever sees a unit again. When a scenario is written back
(``config.resolved.yaml``) each such float is written with its base unit.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any

import pint
import annotated_types
from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

def _registry() -> pint.UnitRegistry:
    """pint's registry with its parsed definition files cached in ``$TME_CACHE_DIR/pint``
    (0.15 s instead of 1.0 s to build, measured on a loaded machine); built from the files when
    that cache cannot be used (an unwritable or damaged cache costs time, never correctness)."""
    from .kernel import cache_dir

    try:
        return pint.UnitRegistry(cache_folder=cache_dir() / "pint")
    except Exception:  # noqa: BLE001 - any failure of the cache: build without it
        return pint.UnitRegistry()


ureg = _registry()
ureg.define("cell_fraction = [] = fraction_of_capacity")

#: Units the solver works in; everything is converted to these once.
BASE = {"length": "um", "time": "hour", "concentration": "uM", "amount": "umol"}


@functools.lru_cache(maxsize=None)
def _unit(text: str) -> pint.Unit:
    return ureg.parse_units(text)


def _pretty_dimensionality(unit: pint.Unit) -> str:
    dim = unit.dimensionality
    return "dimensionless" if not dim else str(dim)


def parse_quantity(value: Any, base: str, default: str) -> float:
    """Return ``value`` converted to ``base`` units.

    ``value`` is a number (read in ``default`` units) or a string ``"<number> <unit>"``.
    Raises ValueError with a one-line message when the value cannot be read or its unit has the
    wrong dimension.
    """
    base_u, default_u = _unit(base), _unit(default)
    if isinstance(value, bool):
        raise ValueError(f"expected a quantity such as '1 {default}', got {value!r}")
    if isinstance(value, (int, float)):
        q = ureg.Quantity(float(value), default_u)
    elif isinstance(value, str):
        try:
            q = ureg.Quantity(value.strip().replace("µ", "u").replace("μ", "u").replace("%", " percent"))
        except (pint.errors.PintError, ValueError, TypeError, AttributeError, SyntaxError) as exc:
            raise ValueError(f"cannot read {value!r} as a quantity ({exc.__class__.__name__}); write e.g. '1 {default}'") from None
        if not isinstance(q, pint.Quantity):  # a bare number written as a string
            q = ureg.Quantity(float(q), default_u)
        elif q.units == ureg.dimensionless:  # a number with no unit at all (not "%")
            q = ureg.Quantity(q.magnitude, default_u)
    else:
        raise ValueError(f"expected a quantity such as '1 {default}', got {type(value).__name__} {value!r}")
    if q.dimensionality != base_u.dimensionality:
        raise ValueError(
            f"{value!r} has dimension {_pretty_dimensionality(q.units)}, expected "
            f"{_pretty_dimensionality(base_u)} (e.g. '1 {default}')")
    out = float(q.to(base_u).magnitude)
    if not math.isfinite(out):
        raise ValueError(f"{value!r} is not a finite number")
    return out


def Quantity(base: str, default: str | None = None, *, ge: float | None = None,
             gt: float | None = None, le: float | None = None, lt: float | None = None,
             description: str = "") -> Any:
    """An annotated float field holding a quantity in ``base`` units.

    ``default`` is the unit of a bare number (``base`` when omitted). Bounds apply to the
    converted value.
    """
    default = default or base
    desc = f"{description} [{default}; a bare number is in {default}]".strip()
    # Bounds as annotated-types constraints, not a pydantic Field: a Field inside a shared
    # Annotated type would carry one field's default over to every later field of that type.
    bounds = [c for c, v in ((annotated_types.Ge, ge), (annotated_types.Gt, gt),
                             (annotated_types.Le, le), (annotated_types.Lt, lt)) if v is not None]
    values = [v for v in (ge, gt, le, lt) if v is not None]
    return Annotated[
        float,
        BeforeValidator(lambda v: parse_quantity(v, base, default)),
        *[c(v) for c, v in zip(bounds, values)],
        PlainSerializer(lambda v: f"{v!r} {base}" if base not in ("", "dimensionless") else v,
                        when_used="json"),
        WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}],
                        "description": desc}),
    ]


# The quantities that recur across the scenario, in their base units.
Length = Quantity("um", "um", gt=0, description="length")
Duration = Quantity("hour", "hour", ge=0, description="duration")
Time = Quantity("hour", "hour", ge=0, description="time")
Diffusivity = Quantity("um**2/hour", "um**2/s", ge=0, description="diffusivity")
Rate = Quantity("1/hour", "1/hour", ge=0, description="rate")
Concentration = Quantity("uM", "uM", ge=0, description="concentration")
Permeability = Quantity("um/hour", "um/s", ge=0, description="vessel wall permeability")
SurfaceDensity = Quantity("1/um", "1/um", ge=0, description="vessel surface per tissue volume")
Fraction = Quantity("dimensionless", "dimensionless", ge=0, le=1, description="fraction")
