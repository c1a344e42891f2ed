"""What each drug class does and what each resistance mechanism changes, declared once.

Two tables. Everything else derives from them: the drug classes a scenario accepts, the
mechanism names clones carry and a sequencing step may name, which clone traits name a
mechanism, the checks on a clone's traits against the scenario's drugs, the coefficients of the
kill model (and so the plan of the compiled reaction step), and which drugs act through the
immune effectors. Adding a drug class or a mechanism is one row here plus the term it adds to
the kill model (:mod:`tme.cells.reactions`).

The kill rate of drug j on clone i (docs/model.md, Cancer cells):

    κ_ij = E_max,j (1 − b_ij)(1 − ρ_i) · A(c_in,ij; f_ij EC50_j, n_j) · (1 − π_max,j σ_i s/(s + K_s))

where the bypass b applies to ``bypassable`` classes, the repair ρ to ``repairable`` ones, and
only classes that ``kill`` have an E_max at all. Pure data: no NumPy, no DOLFINx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class DrugClass:
    """A pharmacological class: how its drugs act on the cells."""

    name: str
    description: str
    kills: bool = False             # E_max is a direct kill rate [1/hour]
    bypassable: bool = False        # an oncogenic bypass of its target lowers the kill
    repairable: bool = False        # DNA repair lowers the kill
    inhibits_pgp: bool = False      # lowers the P-gp capacity of every clone
    blocks_factor: bool = False     # lowers the survival factor the cells see
    activates_immunity: bool = False  # raises immune recruitment and kill


DRUG_CLASSES: dict[str, DrugClass] = {c.name: c for c in (
    DrugClass("dna_damaging", "DNA-damaging chemotherapy (doxorubicin, cisplatin)",
              kills=True, repairable=True),
    DrugClass("antimitotic", "microtubule poison (paclitaxel, vinca alkaloids)", kills=True),
    DrugClass("targeted", "kinase inhibitor of a named pathway (erlotinib -> EGFR)",
              kills=True, bypassable=True),
    DrugClass("pgp_inhibitor", "P-glycoprotein inhibitor (tariquidar)", kills=True, inhibits_pgp=True),
    DrugClass("factor_blocker", "blocker of the CAF survival factor (anti-HGF/MET)",
              kills=True, blocks_factor=True),
    DrugClass("checkpoint_inhibitor", "immune checkpoint inhibitor (anti-PD-1): acts only "
              "through the immune effectors", activates_immunity=True),
)}


def _any_above(key: str, threshold: float) -> Callable[[Mapping[str, Any]], bool]:
    def carried(traits: Mapping[str, Any]) -> bool:
        value = traits.get(key)
        if isinstance(value, Mapping):
            return any(float(v) > threshold for v in value.values())
        return value is not None and float(value) > threshold
    return carried


@dataclass(frozen=True)
class Mechanism:
    """A resistance mechanism: the clone trait that carries it and what it changes.

    ``carried`` says from a clone's traits whether it has the mechanism (None: the mechanism is
    never inferred from traits and must be named with ``mechanism:``). The order of the table is
    the order in which traits name a clone's mechanism when it carries several.
    """

    name: str
    trait: str
    effect: str
    carried: Callable[[Mapping[str, Any]], bool] | None = None


MECHANISMS: dict[str, Mechanism] = {m.name: m for m in (
    Mechanism("target_mutation", "ec50_shift", "EC50 of the named drug raised f-fold",
              _any_above("ec50_shift", 1.0)),
    Mechanism("bypass", "bypass", "E_max of a targeted drug (or of every drug of a target "
              "pathway) scaled by (1 - b)", _any_above("bypass", 0.0)),
    Mechanism("pgp", "pgp_vmax", "P-gp efflux lowers the intracellular level of every P-gp "
              "substrate", _any_above("pgp_vmax", 0.0)),
    Mechanism("dna_repair", "repair", "kill by DNA-damaging drugs scaled by (1 - repair)",
              _any_above("repair", 0.0)),
    Mechanism("caf_shield", "factor_sensitivity", "protection by the CAF survival factor "
              "scaled by the clone's sensitivity"),
)}


def killing_classes() -> tuple[str, ...]:
    """Classes whose E_max kills cells directly."""
    return tuple(n for n, c in DRUG_CLASSES.items() if c.kills)


def mechanism_of(traits: Mapping[str, Any]) -> str | None:
    """The first mechanism (in table order) that a clone's traits carry; None = sensitive."""
    return next((m.name for m in MECHANISMS.values() if m.carried is not None and m.carried(traits)),
                None)
