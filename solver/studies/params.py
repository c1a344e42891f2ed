"""Scenario parameters that studies vary or sample: a key path with values in a unit.

``tme sensitivity --vary KEY=LOW..HIGH`` and ``tme cohort --sample KEY=DISTRIBUTION`` (and the
columns of ``--patients FILE.csv``) name scenario keys (``clones.clones.sensitive.growth``) and
give their values with units, as a scenario file would (``'0.05 1/hour'``; a bare number only
where the key has no dimension). A :class:`Param` reads those values with the project's unit
parser (:mod:`tme.config.units`), keeps them as magnitudes in one unit (the unit of the first
value given), and writes each sampled value back as text with that unit, which the scenario
validates as it validates ``--set`` (a bare number for a dimensional key is refused there,
naming the key, and so is a value of the wrong dimension or out of the key's range).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..config.scenario import Scenario
from ..config.spec import ScenarioError
from ..config.units import read

_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")


def quantity(text, what: str) -> tuple[float, str]:
    """``'0.05 1/hour'`` -> (0.05, '1/hour'); a bare number or a percentage -> (value, '')
    (``'30 %'`` -> 0.3). ``what`` starts the one-line error."""
    if isinstance(text, bool):
        raise ScenarioError(f"{what}: expected a number with its unit, got {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
        if not math.isfinite(value):
            raise ScenarioError(f"{what}: {text!r} is not a finite number")
        return value, ""
    text = str(text).strip()
    m = _NUMBER.match(text)
    try:
        q = read(text)
    except ValueError as exc:
        raise ScenarioError(f"{what}: cannot read {text!r} as a quantity ({exc}); write e.g. "
                            f"'0.05 1/hour', or a bare number for a key without dimension") from None
    if not hasattr(q, "units"):
        value, unit = float(q), ""
    elif q.unitless:
        value, unit = float(q.to("dimensionless").magnitude), ""
    elif m is None or not m.group(2):
        raise ScenarioError(f"{what}: {text!r}: write the number first, then its unit (e.g. "
                            f"'0.05 1/hour')")
    else:
        value, unit = float(m.group(1)), m.group(2)
    if not math.isfinite(value):
        raise ScenarioError(f"{what}: {text!r} is not a finite number")
    return value, unit


def convert(value: float, unit: str, to: str, what: str) -> float:
    """``value`` [unit] in the unit ``to``; a value of another dimension is refused."""
    if unit == to:
        return value
    try:
        q = read(f"{value!r} {unit}" if unit else f"{value!r}")
        return float(q.to(read(f"1 {to}").units).magnitude) if to else float(q.to("dimensionless").magnitude)
    except Exception:  # noqa: BLE001 - pint's DimensionalityError and the like
        a, b = (unit or "no unit"), (to or "no unit")
        raise ScenarioError(f"{what}: {a!r} and {b!r} are not of the same dimension; give both "
                            f"values in units of one kind") from None


@dataclass(frozen=True)
class Param:
    """A scenario key whose values are magnitudes in ``unit`` ('' for a key without
    dimension)."""

    key: str
    unit: str

    def text(self, value: float):
        """The value as a scenario takes it: text with the unit, or a bare number."""
        return f"{float(value)!r} {self.unit}" if self.unit else float(value)

    def header(self) -> str:
        """The column name of a table: ``key [unit]`` (the key alone without a unit)."""
        return f"{self.key} [{self.unit}]" if self.unit else self.key


def check(base: Scenario, param: Param, values, what: str) -> None:
    """Refuse, with the scenario's one line naming the key, a value ``base`` does not accept
    (an unknown key, a bare number where a unit is needed, a wrong dimension, a value out of
    the key's range)."""
    for v in values:
        try:
            base.with_changes({param.key: param.text(v)})
        except ScenarioError as exc:
            raise ScenarioError(f"{what}: {exc}") from None


def must_be_positive(base: Scenario, param: Param, value: float) -> bool:
    """Whether the key refuses negative values (a rate, a density, a diffusivity): a draw of a
    normal distribution is then truncated to positive values."""
    try:
        base.with_changes({param.key: param.text(-abs(value) - 1.0)})
    except ScenarioError:
        return True
    return False


def split_key(text: str, option: str, form: str) -> tuple[str, str]:
    """``KEY=REST`` -> (key, rest), or one line saying what ``option`` expects."""
    if not isinstance(text, str) or "=" not in text:
        raise ScenarioError(f"{option} {text!r}: expected {form}")
    key, rest = text.split("=", 1)
    key, rest = key.strip(), rest.strip()
    if not key or not rest or " " in key:
        raise ScenarioError(f"{option} {text!r}: expected {form}")
    return key, rest


def split_top(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and braces (``tme compare --sweep``'s
    values, a distribution's arguments)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts
