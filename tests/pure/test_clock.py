"""The step clock and the run state, without DOLFINx: milestones, growth, exact landing, save and
restore of the state, the protocol and the plasma schedules."""

import json
import math

import pytest

from tme.clock import Clock, regular
from tme.config.drugs import Dose, PKSpec
from tme.pk import PlasmaSet
from tme.config.treatment import TreatmentSpec
from tme.protocol import Protocol
from tme.state import State


def _walk(clock, moving=lambda t: ()):
    """The step ends of a run driven by the clock alone, restarting after moving milestones."""
    t, dt, ends = 0.0, clock.dt_first, []
    while not clock.done(t):
        events = tuple(moving(t))
        t1 = clock.step_end(t, dt, events)
        dt = clock.next_dt(t1 - t, restart=clock.at(t1, events))
        t = t1
        ends.append(t)
    return ends


def test_regular_times_are_multiples_not_running_sums():
    times = regular(0.1, 1.0)
    assert times == [k * 0.1 for k in range(1, 10)]
    assert regular(None, 5.0) == [] and regular(2.0, 4.0) == [2.0]


def test_steps_land_exactly_on_milestones():
    # 1/3-hour steps grow by 1.5 and would reach 48 h as a rounded sum: landing gives 48.0 itself
    clock = Clock(end=96.0, dt_max=4.0, dt_first=1 / 3, dt_min=1e-3, milestones=(48.0,))
    ends = _walk(clock)
    assert 48.0 in ends and ends[-1] == 96.0
    assert all(b > a for a, b in zip(ends, ends[1:]))
    # the step that lands is cut to the milestone, the next grows from the cut step
    i = ends.index(48.0)
    assert ends[i] - ends[i - 1] <= 4.0


def test_growth_restart_after_an_event_and_bounds():
    clock = Clock(end=100.0, dt_max=4.0, dt_first=0.5, dt_min=0.1)
    assert clock.next_dt(0.5, restart=False) == 0.75
    assert clock.next_dt(3.9, restart=False) == 4.0
    assert clock.next_dt(0.01, restart=False) == 0.1          # never below dt_min
    assert clock.next_dt(4.0, restart=True) == 0.5
    # a moving milestone (a dose at 30 h) is landed on and restarts the growth
    ends = _walk(clock, moving=lambda t: (30.0,) if t < 30.0 else ())
    i = ends.index(30.0)
    assert ends[i + 1] - ends[i] == 0.5


def test_a_step_within_tolerance_of_a_milestone_lands_on_it():
    clock = Clock(end=10.0, dt_max=1.0, dt_first=1.0, dt_min=0.1, milestones=(5.0,))
    assert clock.step_end(4.0, 1.0 - 1e-12) == 5.0
    assert clock.step_end(4.0, 0.5) == 4.5
    assert clock.step_end(4.9, 1.0, moving=(5.2,)) == 5.0     # the nearer milestone first
    assert clock.step_end(5.0, 1.0, moving=(5.0,)) == 6.0     # one just reached is behind
    assert clock.done(10.0 - 1e-12) and not clock.done(9.9)


def test_milestones_outside_the_run_are_dropped_and_the_end_kept():
    clock = Clock(end=10.0, dt_max=1.0, dt_first=1.0, dt_min=0.1, milestones=(0.0, 3.0, 3.0, 12.0))
    assert clock.milestones == (3.0, 10.0)
    with pytest.raises(ValueError):
        Clock(end=0.0, dt_max=1.0, dt_first=1.0, dt_min=0.1)


def test_state_round_trips_exactly_through_json():
    st = State(t=47.99999999999902, dt_next=1 / 3, steps=17, nadir=(0.1 + 0.2, 12.5), stopped=None,
               protocol={"nadir": math.nan, "next": math.inf}, plasma={"a": [[0.0, 1.0, 0.0, 0.3]]},
               pending_doses=[(168.0, "dox", 2)], solvers={"oxygen": {"dt": 4.0, "n_tot": True}},
               written={"rows": 18, "frames": 2}, wall_seconds=12.25, segments=2)
    back = State.from_json(st.to_json())
    assert back.t == st.t and back.dt_next == st.dt_next and back.nadir == st.nadir
    assert back.pending_doses == st.pending_doses and back.written == st.written
    assert math.isnan(back.protocol["nadir"]) and back.protocol["next"] == math.inf
    assert back.solvers == st.solvers and back.segments == 2
    data = json.loads(st.to_json())
    data["version"] = 0
    with pytest.raises(ValueError, match="version"):
        State.from_json(json.dumps(data))


TREATMENT = {
    "lines": [
        {"name": "first", "regimen": [{"drug": "a", "amount": "2 uM", "every": "7 day", "cycles": 4}]},
        {"name": "second", "regimen": [{"drug": "a", "amount": "1 uM", "infusion": "3 hour"},
                                       {"drug": "b", "amount": "1 uM"}],
         "sequencing": {"detection": 0.05, "choose": {"pgp": ["b"], "dna_repair": ["a"]}}},
    ],
    "assessment": {"every": "2 day"},
}


def _protocol():
    return Protocol(TreatmentSpec.model_validate(TREATMENT), {"s": None, "p": "pgp"})


def _plasma():
    pk = PKSpec.model_validate({"model": "one_compartment", "half_life": "6 hour"})
    from tme.config.drugs import DrugSpec

    drugs = {n: DrugSpec.model_validate({"class": "dna_damaging", "diffusivity": "10 um^2/s", "pk": pk.model_dump()})
             for n in ("a", "b")}
    return PlasmaSet(drugs)


def test_protocol_and_plasma_resume_exactly_from_their_saved_state():
    """A switch with sequencing, then a checkpoint in the middle of an infusion: the restored
    protocol decides and the restored plasma levels are what the uninterrupted ones give."""
    def history(stop_at=None):
        prot, plasma = _protocol(), _plasma()
        prot.start(0.0, 1.0)
        plasma.add_regimen(prot.line.regimen, 0.0, "treatment.lines.0.regimen")
        out = []
        burdens = iter([0.9, 1.5, 1.4, 1.6, 2.0])
        t = 0.0
        while t < 240.0:
            t = prot.next_assessment()
            decision = prot.assess(t, next(burdens), 0.5, {"s": 0.5, "p": 0.5})
            if decision.new_line is not None:
                plasma.cancel_from(t)
                plasma.add_regimen(decision.new_line.regimen, t, "treatment.lines.1.regimen")
            out.append([(e.event, e.time) for e in decision.events])
            levels = [plasma.levels(t + 1.5), plasma.means(t, t + 1.5)]
            out.append(levels)
            if stop_at is not None and t >= stop_at:
                saved = json.loads(json.dumps({"p": prot.state(), "k": plasma.state()}))
                prot, plasma = _protocol(), _plasma()
                prot.restore(saved["p"])
                plasma.restore(saved["k"])
                stop_at = None
            if prot.stopped:
                break
        return out, prot

    straight, p1 = history()
    resumed, p2 = history(stop_at=96.0)     # after the switch at 96 h, an infusion running
    assert resumed == straight
    assert [d.drug for d in p2.line.regimen] == [d.drug for d in p1.line.regimen] == ["b"]
    assert p2.history == p1.history


def test_dose_model_is_plain():
    # the Dose of a regimen needs no DOLFINx either
    assert Dose.model_validate({"drug": "a", "amount": "1 uM"}).cycles == 1
