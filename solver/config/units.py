"""Physical quantities in scenario files.

Every physical number in a scenario is parsed with its unit (pint) and converted once, at
validation, to the internal base units of the solver:

    length  µm        time  hour        drug concentration  µM        amount  µmol

Cell densities are dimensionless volume fractions of the packing capacity.

The rule for bare numbers: a *dimensional* quantity needs an explicit unit (``'16 um^2/s'``,
``'8 day'``), because the unit a reader would assume differs from key to key; a bare number is
refused with a message naming units that fit. Zero is the one exception: it is zero in every
unit. *Dimensionless* quantities (fractions, ratios, Hill coefficients) stay bare numbers.
Mesh coordinates and sizes are the other exception, read in the declared ``mesh.unit``.

A field is declared with :func:`Quantity`, naming the base unit it is stored in and the unit it
is shown in (in the schema, in ``config.resolved.yaml`` and in error hints). Defaults are
declared as text with their unit (``'30 um/s'``) and read through the same path as user input,
so a default cannot be labelled in one unit and stored in another. The validated model holds
plain floats in base units, so nothing downstream ever sees a unit again.

The results of the conversions (:func:`remember`: a text in a base unit, a value shown in a unit,
doses and tumour sizes in their modules) are kept on disk between processes (:data:`memo`), so
that a process whose every quantity was read before never imports pint; pint is imported at
the first conversion not seen before, and at every text that is refused.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import annotated_types
from pydantic import BeforeValidator, PlainSerializer

from .. import cache

if TYPE_CHECKING:
    import pint


@functools.lru_cache(maxsize=None)
def registry() -> pint.UnitRegistry:
    """pint's registry, with the units of the solver defined, built at the first call (pint is
    imported only then: see :data:`memo`).

    Its parsed definition files are cached in ``$TME_CACHE_DIR/pint`` (0.15 s instead of 1.0 s
    to build, measured on a loaded machine); it is built from the files when that cache cannot
    be used (an unwritable or damaged cache costs time, never correctness)."""
    import pint

    try:
        ureg = pint.UnitRegistry(cache_folder=cache.directory() / "pint")
    except Exception:  # noqa: BLE001 - any failure of the cache: build without it
        ureg = pint.UnitRegistry()
    ureg.define("cell_fraction = [] = fraction_of_capacity")
    ureg.define("cell = [cell_count] = cells")
    return ureg


def _identity() -> str:
    """What a conversion depends on besides its text: the code of the modules whose results
    :data:`memo` keeps, and pint (its version, named by its installed metadata, and its unit
    definitions)."""
    here = Path(__file__).parent
    parts = [(here / name).read_bytes() for name in ("units.py", "drugs.py", "treatment.py")]
    spec = importlib.util.find_spec("pint")
    pkg = Path(spec.origin).parent
    parts += [(pkg / name).read_bytes() for name in ("default_en.txt", "constants_en.txt")]
    parts += sorted(p.name.encode() for p in pkg.parent.iterdir()
                    if p.name.lower().startswith("pint-") and p.suffix in (".dist-info", ".egg-info"))
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


#: The conversions of quantity texts already made, kept on disk (``$TME_CACHE_DIR/units``), so
#: that a run whose every quantity was read before never imports pint (0.15 s of each start).
#: Only results are kept: a text that is refused is read by pint at every call.
memo = cache.Memo("units", _identity)
remember = memo.remember

#: Units the solver works in; everything is converted to these once.
BASE = {"length": "um", "time": "hour", "concentration": "uM", "amount": "umol"}

#: Units named in the hint for a bare number, by dimension (the field's own unit comes first).
_SUGGESTIONS = ("hour", "day", "um", "mm", "um**2/s", "cm**2/s", "1/hour", "1/day", "uM", "nM",
                "um/s", "cm/s", "1/um", "1/mm", "uM/hour", "nM/s", "L", "mL", "g/mol", "kg/mol",
                "um/hour", "um**3", "pL", "umol", "mg")

#: Longest quantity text read; anything longer is not a number with a unit.
MAX_TEXT = 120
#: Largest exponent written after '**' or '^' (units go up to cubes; 1e-3 notation needs none).
MAX_EXPONENT = 12

_POWER = re.compile(r"(\*\*|\^)\s*(\(?\s*[-+]?\s*[0-9.]+(?:[eE][-+]?[0-9]+)?\s*\)?)?")


@functools.lru_cache(maxsize=None)
def _unit(text: str) -> pint.Unit:
    return registry().parse_units(text)


def _pretty_dimensionality(unit: pint.Unit) -> str:
    dim = unit.dimensionality
    return "dimensionless" if not dim else str(dim)


@remember
def is_dimensional(base: str) -> bool:
    return bool(_unit(base).dimensionality)


class UnsafeQuantity(ValueError):
    """A quantity text refused before pint evaluates it (too long, or a power too large)."""


def read(text: str) -> pint.Quantity | float:
    """Parse ``text`` with pint after bounding what it may compute.

    pint evaluates the arithmetic in a quantity, so ``'9**9**9 hour'`` would never return and
    ``'10**400 hour'`` would overflow; a power must be a plain small number (``um**2``), not
    chained, and the text is short. Raises ValueError with a one-line reason.
    """
    if len(text) > MAX_TEXT:
        raise UnsafeQuantity(f"{len(text)} characters is too long for a quantity (at most {MAX_TEXT})")
    s = text.strip().replace("µ", "u").replace("μ", "u").replace("%", " percent")
    for m in _POWER.finditer(s):
        exponent = m.group(2)
        rest = s[m.end():].lstrip()
        before = s[:m.start()].rstrip()
        try:
            ok = exponent is not None and abs(float(exponent.strip("() ").replace(" ", ""))) <= MAX_EXPONENT
        except ValueError:
            ok = False
        if not ok or rest.startswith(("**", "^")) or before.endswith(")"):
            raise UnsafeQuantity(f"{text!r}: powers must be small plain numbers (at most {MAX_EXPONENT}, not chained), "
                             f"as in 'um**2'; write the number out, e.g. '1e5 hour'")
    ureg = registry()
    import pint

    try:
        return ureg.Quantity(s)
    except (pint.errors.PintError, ValueError, TypeError, AttributeError, SyntaxError, AssertionError,
            ArithmeticError, KeyError, IndexError, RecursionError) as exc:
        raise ValueError(exc.__class__.__name__) from None


def to_base(q: pint.Quantity, base: pint.Unit | str) -> float:
    """The magnitude of ``q`` in ``base`` units, rounded to 15 significant digits.

    pint's conversion factors carry a last-bit error that depends on which conversions ran
    before ('2 day' came out as 47.99999999999999 hour after some, 48.0 after others); times
    must land on milestones exactly and a value must read the same in any run, so the result
    keeps the 15 digits a double holds for certain.
    """
    base_u = _unit(base) if isinstance(base, str) else base
    return float(f"{float(q.to(base_u).magnitude):.15g}")


def bare_number_message(value: Any, unit: str) -> str:
    shown = f"{value:g}" if isinstance(value, (int, float)) else str(value).strip()
    units = [unit] + [u for u in _SUGGESTIONS if u != unit and _unit(u).dimensionality == _unit(unit).dimensionality]
    examples = " or ".join(f"'{shown} {u}'" for u in units[:2])
    return f"a bare number is ambiguous; write e.g. {examples}"


@remember
def _parse_text(value: str, base: str, unit: str) -> float:
    import pint

    base_u = _unit(base)
    try:
        q = read(value)
    except UnsafeQuantity:
        raise
    except ValueError as exc:
        raise ValueError(f"cannot read {value!r} as a quantity ({exc}); write e.g. '1 {unit}'") from None
    try:
        if not isinstance(q, pint.Quantity) or q.units == registry().dimensionless:
            magnitude = q.magnitude if isinstance(q, pint.Quantity) else q
            return _bare(float(magnitude), value, base, unit)
        if q.dimensionality != base_u.dimensionality:
            raise ValueError(
                f"{value!r} has dimension {_pretty_dimensionality(q.units)}, expected "
                f"{_pretty_dimensionality(base_u)} (e.g. '1 {unit}')")
        return _finite(to_base(q, base_u), value)
    except (OverflowError, TypeError):
        raise ValueError(f"{value!r} is not a finite number") from None


def _bare(number: float, shown: Any, base: str, unit: str) -> float:
    if is_dimensional(base) and number != 0.0:
        raise ValueError(bare_number_message(shown, unit))
    return _finite(number, shown)


def _finite(out: float, value: Any) -> float:
    if not math.isfinite(out):
        raise ValueError(f"{value!r} is not a finite number")
    return out


def parse_quantity(value: Any, base: str, unit: str | None = None) -> float:
    """Return ``value`` converted to ``base`` units.

    ``value`` is a string ``"<number> <unit>"``, or a bare number when ``base`` is
    dimensionless (or the number is 0). ``unit`` is the unit named in hints (``base`` when
    omitted). Raises ValueError with a one-line message when the value cannot be read, is a
    bare number where a unit is needed, or has the wrong dimension.
    """
    unit = unit or base
    if isinstance(value, bool):
        raise ValueError(f"expected a quantity such as '1 {unit}', got {value!r}")
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise ValueError(f"{value!r} is not a finite number") from None
        return _bare(number, value, base, unit)
    if isinstance(value, str):
        return _parse_text(value, base, unit)
    raise ValueError(f"expected a quantity such as '1 {unit}', got {type(value).__name__} {value!r}")


def show(value: float, base: str, unit: str) -> str:
    """``value`` [base] written in ``unit``, with the shortest magnitude that reads back exactly."""
    if value == 0.0:
        return f"0 {unit}"
    return _shown(value, base, unit)


@remember
def _shown(value: float, base: str, unit: str) -> str:
    magnitude = float(registry().Quantity(value, _unit(base)).to(_unit(unit)).magnitude)
    candidates = [magnitude, float(f"{magnitude:.15g}")]
    for _ in range(4):
        candidates += [math.nextafter(candidates[-2], math.inf), math.nextafter(candidates[-2], -math.inf)]
    for m in sorted(set(candidates), key=lambda c: len(repr(c))):
        text = f"{m!r} {unit}"
        try:
            if parse_quantity(text, base, unit) == value:
                return text
        except ValueError:
            pass
    return f"{value!r} {base}"


class _Schema:
    """The JSON schema of a quantity, a fresh dict per field: pydantic writes each field's
    default into the dict it is given, so one shared dict would show one field's default on
    every other field of the same type."""

    def __init__(self, base: str, unit: str, description: str):
        self.base, self.unit, self.description = base, unit, description

    def __get_pydantic_json_schema__(self, core_schema, handler):
        if is_dimensional(self.base):
            kinds = [{"type": "string"}, {"type": "number", "const": 0}]
            rule = f"with a unit, e.g. '1 {self.unit}'"
        else:
            kinds = [{"type": "number"}, {"type": "string"}]
            rule = "a bare number, or e.g. '50 %'"
        return {"anyOf": kinds, "description": f"{self.description} [{self.unit}; {rule}]".strip(),
                "unit": self.unit}


def Quantity(base: str, unit: str | None = None, *, ge: float | None = None,
             gt: float | None = None, le: float | None = None, lt: float | None = None,
             description: str = "") -> Any:
    """An annotated float field holding a quantity in ``base`` units, shown in ``unit``
    (``base`` when omitted) in the schema, the resolved scenario and hints. Bounds apply to
    the converted value."""
    unit = unit or base
    # Bounds as annotated-types constraints, not a pydantic Field: a Field inside a shared
    # Annotated type would carry one field's default over to every later field of that type.
    bounds = [c(v) for c, v in ((annotated_types.Ge, ge), (annotated_types.Gt, gt),
                                (annotated_types.Le, le), (annotated_types.Lt, lt)) if v is not None]
    dimensional = is_dimensional(base)
    return Annotated[
        float,
        BeforeValidator(lambda v: parse_quantity(v, base, unit)),
        *bounds,
        PlainSerializer(lambda v: show(v, base, unit) if dimensional else v),
        _Schema(base, unit, description),
    ]


# The quantities that recur across the scenario: base unit, then the unit they are shown in.
Length = Quantity("um", "um", gt=0, description="length")
Duration = Quantity("hour", "hour", ge=0, description="duration")
Time = Quantity("hour", "hour", ge=0, description="time")
Diffusivity = Quantity("um**2/hour", "um**2/s", ge=0, description="diffusivity")
Rate = Quantity("1/hour", "1/hour", ge=0, description="rate")
Concentration = Quantity("uM", "uM", ge=0, description="concentration")
Permeability = Quantity("um/hour", "um/s", ge=0, description="permeability")
SurfaceDensity = Quantity("1/um", "1/um", ge=0, description="vessel surface per tissue volume")
Fraction = Quantity("dimensionless", "dimensionless", ge=0, le=1, description="fraction")
