"""The clones section: units, derived mechanisms, and one-line errors naming the key path."""

import math

import pytest
from pydantic import Field, ValidationError, model_validator

from tme.config.clones import ClonesSpec, CloneSpec, check_references
from tme.config.drugs import DrugSpec
from tme.config.scenario import _format
from tme.config.spec import Spec

DAY = 24.0


def drugs():
    base = {"diffusivity": "16 um**2/s"}
    return {
        "dox": DrugSpec.model_validate({**base, "class": "dna_damaging", "emax": "0.1 1/hour"}),
        "erlotinib": DrugSpec.model_validate({**base, "class": "targeted", "emax": "0.05 1/hour", "target": "EGFR"}),
        "osimertinib": DrugSpec.model_validate({**base, "class": "targeted", "emax": "0.05 1/hour", "target": "EGFR"}),
        "tariquidar": DrugSpec.model_validate({**base, "class": "pgp_inhibitor", "pgp_inhibition": 0.9}),
        "nivolumab": DrugSpec.model_validate({**base, "class": "checkpoint_inhibitor"}),
    }


class Root(Spec):
    """The clones and drugs sections as the scenario holds them (key paths from the root)."""

    clones: ClonesSpec = ClonesSpec()
    drugs: dict[str, DrugSpec] = Field(default_factory=dict)
    regions: list[str] | None = None

    @model_validator(mode="after")
    def _references(self):
        check_references(self.clones, self.drugs, self.regions)
        return self


def error(clones: dict, regions=None) -> str:
    """The one-line message a user sees for this clones section."""
    data = {"clones": clones, "drugs": {n: d.model_dump(by_alias=True) for n, d in drugs().items()}}
    if regions is not None:
        data["regions"] = regions
    with pytest.raises(ValidationError) as err:
        Root.model_validate(data)
    msg = _format(err.value)
    assert "\n" not in msg
    return msg


SECTION = {
    "clones": {
        "sensitive": {"growth": "0.6 1/day", "initial": 0.4},
        "t790m": {"growth": "0.5 1/day", "ec50_shift": {"erlotinib": 50}, "initial": "1 %"},
        "met": {"growth": "0.5 1/day", "bypass": {"EGFR": 0.8}},
        "mdr": {"growth": "0.45 1/day", "pgp_vmax": "6.4 uM/min", "initial": {"tumour": 0.02}},
        "brca": {"growth": "0.5 1/day", "repair": "60 %"},
    },
    "mutation": {"sensitive": {"t790m": 1e-6, "met": 1e-6}, "t790m": {"mdr": 1e-7}},
}


# --------------------------------------------------------------------------------------------
# Reading


def test_units_and_defaults():
    spec = ClonesSpec.model_validate(SECTION)
    c = spec.clones
    assert c["sensitive"].growth == pytest.approx(0.6 / DAY)        # 1/day -> 1/hour
    assert c["t790m"].growth == pytest.approx(0.5 / DAY)
    assert c["t790m"].initial == pytest.approx(0.01)
    assert c["mdr"].pgp_vmax == pytest.approx(6.4 * 60)             # µM/min -> µM/hour
    assert c["brca"].repair == pytest.approx(0.6)
    assert c["met"].initial == 0.0 and c["met"].factor_sensitivity == 1.0
    assert spec.pgp_km == 1.5 and spec.motility == 0.0 and spec.necrosis is None
    assert ClonesSpec(motility="1 um**2/s").motility == pytest.approx(3600.0)  # µm²/s -> µm²/h
    assert ClonesSpec().cell_volume == pytest.approx(3000.0)  # µm³
    assert list(c) == ["sensitive", "t790m", "met", "mdr", "brca"]  # order kept


def test_mechanism_is_derived_from_traits_unless_given():
    spec = ClonesSpec.model_validate(SECTION)
    assert spec.mechanisms() == {"sensitive": None, "t790m": "target_mutation", "met": "bypass",
                                 "mdr": "pgp", "brca": "dna_repair"}
    assert spec.resistant() == [False, True, True, True, True]
    # a fold-shift of 1 and a zero bypass are no resistance
    assert CloneSpec(growth="1 1/day", ec50_shift={"dox": 1.0}, bypass={"EGFR": 0}).mechanism is None
    # several traits: the first of target_mutation, bypass, pgp, dna_repair
    assert CloneSpec(growth="1 1/day", repair=0.3, pgp_vmax="10 uM/hour").mechanism == "pgp"
    assert CloneSpec(growth="1 1/day", repair=0.3, mechanism="caf_shield").mechanism == "caf_shield"
    assert CloneSpec(growth="1 1/day", pgp_vmax="10 uM/hour", mechanism=None).mechanism is None


def test_mutation_matrix_rows_are_from_clones():
    spec = ClonesSpec.model_validate(SECTION)
    mu = spec.mutation_matrix()
    assert mu[0] == [0.0, 1e-6, 1e-6, 0.0, 0.0]
    assert mu[1] == [0.0, 0.0, 0.0, 1e-7, 0.0]
    assert all(row[i] == 0.0 for i, row in enumerate(mu))


def test_initial_density_uniform_or_per_region():
    spec = ClonesSpec.model_validate(SECTION)
    mdr = spec.clones["mdr"]
    assert mdr.initial_in("tumour") == pytest.approx(0.02) and mdr.initial_in("stroma") == 0.0
    assert spec.clones["sensitive"].initial_in("stroma") == pytest.approx(0.4)


def test_resolved_section_validates_again_to_the_same_model():
    spec = ClonesSpec.model_validate({**SECTION, "necrosis": {"rate": "0.5 1/day", "threshold": "1 uM"}})
    again = ClonesSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec
    assert spec.necrosis.rate == pytest.approx(0.5 / DAY)


def test_references_pass_for_a_consistent_section():
    Root.model_validate({"clones": SECTION, "drugs": {n: d.model_dump(by_alias=True) for n, d in drugs().items()},
                         "regions": ["tumour", "stroma"]})


# --------------------------------------------------------------------------------------------
# Errors


def with_clone(name, **traits):
    return {"clones": {"sensitive": {"growth": "0.6 1/day", "initial": 0.3}, name: {"growth": "0.5 1/day", **traits}}}


@pytest.mark.parametrize("section, expected", [
    (with_clone("r", growth="-0.1 1/day"), "clones.clones.r.growth: Input should be greater than or equal to 0"),
    (with_clone("r", growth=0.5), "clones.clones.r.growth: a bare number is ambiguous; write e.g. '0.5 1/day'"),
    (with_clone("r", growth="2 um"), "clones.clones.r.growth: '2 um' has dimension [length]"),
    (with_clone("r", repair=1.0), "clones.clones.r.repair: Input should be less than 1"),
    (with_clone("r", ec50_shift={"dox": 0.5}), "clones.clones.r.ec50_shift.dox: Input should be greater than or equal to 1"),
    (with_clone("r", bypass={"EGFR": 1.5}), "clones.clones.r.bypass.EGFR: Input should be less than or equal to 1"),
    (with_clone("r", pgp_vmax="-1 uM/hour"), "clones.clones.r.pgp_vmax: Input should be greater than or equal to 0"),
    (with_clone("r", immune_kill="-1 1/hour"), "clones.clones.r.immune_kill: Input should be greater than or equal to 0"),
    (with_clone("r", factor_sensitivity=2), "clones.clones.r.factor_sensitivity: Input should be less than or equal to 1"),
    (with_clone("r", initial=1.5), "clones.clones.r.initial: 1.5 is not a volume fraction between 0 and 1"),
    (with_clone("r", initial={"tumour": "120 %"}), "clones.clones.r.initial: region 'tumour': '120 %' is not a volume fraction"),
    (with_clone("r", initial=[0.1]), "clones.clones.r.initial: expected a volume fraction, got list [0.1]; give a volume fraction (e.g. 0.3 or '30 %') or a mapping {region: fraction}"),
    (with_clone("r", mechanism="luck"), "clones.clones.r.mechanism: Input should be 'target_mutation'"),
    (with_clone("r", grwoth=1), "clones.clones.r.grwoth: unknown key"),
    (with_clone("r", initial=0.8), "clones.clones: initial densities add up to 1.1 (sensitive 0.3, r 0.8)"),
    (with_clone("r", initial={"tumour": 0.75}), "clones.clones: initial densities add up to 1.05 in region 'tumour'"),
    ({**with_clone("r"), "mutation": {"s": {"r": 1e-6}}}, "clones.mutation.s: unknown clone 's'; clones: r, sensitive"),
    ({**with_clone("r"), "mutation": {"sensitive": {"x": 1e-6}}}, "clones.mutation.sensitive.x: unknown clone 'x'; clones: r, sensitive"),
    ({**with_clone("r"), "mutation": {"sensitive": {"sensitive": 1e-6}}}, "clones.mutation.sensitive.sensitive: a clone cannot mutate into itself; name another clone: r"),
    ({**with_clone("r"), "mutation": {"sensitive": {"r": 2}}}, "clones.mutation.sensitive.r: Input should be less than or equal to 1"),
    ({**with_clone("r"), "clones": {"a": {"growth": "1 1/day"}, "b": {"growth": "1 1/day"}, "c": {"growth": "1 1/day"}},
      "mutation": {"a": {"b": 0.6, "c": 0.6}}}, "clones.mutation.a: mutation probabilities per division of 'a' add up to 1.2"),
    ({**with_clone("r"), "motility": "-1 um**2/s"}, "clones.motility: Input should be greater than or equal to 0"),
    ({**with_clone("r"), "pgp_km": 0}, "clones.pgp_km: Input should be greater than 0"),
    ({**with_clone("r"), "influx": 0}, "clones.influx: Input should be greater than 0"),
    ({**with_clone("r"), "necrosis": {"rate": "1 1/hour"}}, "clones.necrosis.threshold: required key is missing"),
    ({**with_clone("r"), "necrosis": {"rate": "-1 1/hour", "threshold": "1 uM"}}, "clones.necrosis.rate: Input should be greater than or equal to 0"),
])
def test_section_errors_name_the_key(section, expected):
    msg = error(section)
    assert expected in msg, msg


@pytest.mark.parametrize("traits, expected", [
    ({"ec50_shift": {"gefitinib": 10}},
     "clones.clones.r.ec50_shift.gefitinib: unknown drug 'gefitinib'; drugs that kill: dox, erlotinib, osimertinib"),
    ({"ec50_shift": {"nivolumab": 10}},
     "clones.clones.r.ec50_shift.nivolumab: drug 'nivolumab' (checkpoint_inhibitor, emax 0 1/hour) kills no cell"),
    ({"ec50_shift": {"tariquidar": 10}}, "clones.clones.r.ec50_shift.tariquidar: drug 'tariquidar' (pgp_inhibitor"),
    ({"bypass": {"MET": 0.5}},
     "clones.clones.r.bypass.MET: 'MET' is neither a targeted drug (erlotinib, osimertinib) nor the target of one (EGFR)"),
    ({"bypass": {"dox": 0.5}}, "clones.clones.r.bypass.dox: drug 'dox' is dna_damaging, not targeted"),
])
def test_references_errors_name_the_key(traits, expected):
    msg = error(with_clone("r", **traits))
    assert expected in msg, msg


def test_bypass_may_name_a_targeted_drug_or_its_target():
    for key in ("EGFR", "erlotinib"):
        Root.model_validate({"clones": with_clone("r", bypass={key: 0.5}),
                             "drugs": {n: d.model_dump(by_alias=True) for n, d in drugs().items()}})


def test_initial_regions_are_checked_when_the_mesh_is_known():
    msg = error(with_clone("r", initial={"tumor": 0.1}), regions=["tumour", "stroma"])
    assert "clones.clones.r.initial.tumor: unknown region 'tumor'; mesh regions: stroma, tumour" in msg


def test_doubling_times_of_the_documented_range():
    # 1-3 days doubling is ln2/3 .. ln2 per day
    spec = ClonesSpec.model_validate({"clones": {"fast": {"growth": f"{math.log(2)!r} 1/day"},
                                                 "slow": {"growth": f"{math.log(2) / 3!r} 1/day"}}})
    assert math.log(2) / spec.clones["fast"].growth == pytest.approx(DAY)
    assert math.log(2) / spec.clones["slow"].growth == pytest.approx(3 * DAY)
