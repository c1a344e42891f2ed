"""The base of every scenario section, shared by the domain modules that declare one."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from .units import Concentration, Permeability


class ScenarioError(ValueError):
    """A scenario (or mesh, or command-line value) that cannot be used; the message is one line."""


class Spec(BaseModel):
    """Base of every scenario section: frozen, unknown keys forbidden."""

    # defaults are declared as text with their unit and read like user input
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, validate_default=True)


#: A name usable as a key and in file names: letters, digits, underscores.
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class BoundaryValue(Spec):
    """Outer-boundary condition on a facet tag: a fixed value [µM], or Robin
    -D dc/dn = robin (c - value) with ``robin`` a permeability of the boundary [µm/hour].

    With ``plasma: true`` the value follows the species' plasma level instead: c_b(t) =
    plasma_fraction * C_p(t) (a drug's PK level; oxygen's blood level), e.g. the medium around a
    spheroid or the vascularised stroma beyond the domain.
    """

    value: Concentration = "0 uM"
    robin: Permeability | None = Field(None, description="Robin exchange coefficient of the outer "
                                                         "boundary; Dirichlet when absent")
    plasma: bool = Field(False, description="the boundary value follows the plasma level C_p(t) "
                         "(drugs: their PK; oxygen: blood_level) instead of 'value'")
    plasma_fraction: float = Field(1.0, gt=0, le=1, description="with plasma: true, the boundary "
                                   "value is plasma_fraction * C_p(t) [-]")

    @model_validator(mode="after")
    def _plasma_or_value(self):
        # one source of the boundary value: a fixed one, or the plasma level
        if self.plasma and "value" in self.model_fields_set:
            raise ValueError("give either value or plasma: true, not both")
        if not self.plasma and "plasma_fraction" in self.model_fields_set:
            raise ValueError("plasma_fraction needs plasma: true")
        return self

    @model_serializer(mode="wrap")
    def _shown(self, handler):
        # written back (config.resolved.yaml) without the unused fixed value, so that it reads
        # as what it is and validates again
        data = handler(self)
        if self.plasma:
            data.pop("value", None)
        return data


def at(path: str, msg: str) -> str:
    """Mark a validation message with the key path it concerns (the error formatter reads it)."""
    return f"@{path}@ {msg}"


def located(exc: Exception) -> str:
    """The one-line message of a validation error, as 'key.path: message' when marked by :func:`at`."""
    msg = str(exc)
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if msg.startswith("@") and "@ " in msg:
        path, text = msg[1:].split("@ ", 1)
        return f"{path}: {text}"
    return msg
