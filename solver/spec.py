"""The base of every scenario section, shared by the domain modules that declare one."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from .units import Concentration, Permeability


class ScenarioError(ValueError):
    """A scenario (or mesh, or command-line value) that cannot be used; the message is one line."""


class Spec(BaseModel):
    """Base of every scenario section: frozen, unknown keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


#: A name usable as a key and in file names: letters, digits, underscores.
Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class BoundaryValue(Spec):
    """Outer-boundary condition on a facet tag: a fixed value, or Robin -D dc/dn = coeff (c - value)."""

    value: Concentration = 0.0
    robin: Permeability | None = Field(None, description="Robin exchange coefficient; Dirichlet when absent")


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
