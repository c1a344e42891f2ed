"""The treatment protocol: ordered lines of therapy, assessments, progression and switching.

A treatment is a list of lines. Line 1 starts at the beginning of the run; at every assessment
(an imaging time, every 6 weeks by default) the tumour burden B = ∫ N_tot dx is compared with its
nadir since the current line started (RECIST-like). On progression the next line starts and the
nadir is reset to the burden at the switch. A line may carry a *sequencing* step (personalised
targeted therapy): the tumour, or a biopsy region of it, is sequenced when the line starts, the
dominant resistance mechanism is named, and only the drugs the scenario maps to that mechanism
are given.

Units: times in hours (from the start of the run unless said otherwise); burdens in the units of
∫ N_tot dx, i.e. volume fraction × µm² in 2-D and × µm³ in 3-D; fractions dimensionless.
Tumour sizes a scenario declares (the detection limit, the smallest rise that counts as
progression) are cell counts ('100 cell') or volumes ('1e6 um**3'); a :class:`CellScale` turns
burdens into cell counts: a 2-D burden times the slice thickness is a volume, and a volume over
the cell volume is a count.

Detection: a burden below ``treatment.detection_limit`` at an assessment is "not detectable".
No progression is called on it, and it is a *cure* (an event); by default a cure ends the
treatment and the run (``stop.on_cure``), else the line goes on and a later detectable burden is
judged against the nadir as usual (a relapse is progression).

The scenario declares the treatment (:mod:`tme.config.treatment`); here is the pure decision
logic (:func:`sequence`, :class:`Protocol`), which needs no DOLFINx: the time loop feeds it
burdens and clone fractions and schedules the regimens it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from .config.treatment import CellScale, HolidaySpec, Line, ModulationSpec, TreatmentSpec, detectable

EventKind = Literal["line_start", "dose", "assessment", "progression", "switch", "sequencing",
                    "cure", "stop", "pause", "resume", "modulation", "skip", "limit",
                    "vessel_collapse"]


@dataclass(frozen=True)
class Event:
    """One entry of the event log: ``time`` [hour from the start of the run], what happened,
    why, and the numbers behind it."""

    time: float
    event: EventKind
    reason: str
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"time": self.time, "event": self.event, "reason": self.reason, "data": self.data}


def sequence(clone_fractions: dict[str, float], mechanisms: dict[str, str | None],
             detection: float) -> dict:
    """Sequence a sample: which clones are seen, and which resistance mechanism dominates.

    ``clone_fractions`` are the clones' amounts in the sample (fractions, or burdens: they are
    normalised to sum 1); ``mechanisms`` maps each clone to its mechanism (None = sensitive);
    clones below ``detection`` (a fraction of the sample) are not seen. The dominant mechanism
    is the one with the largest total detected fraction among resistant clones (ties broken by
    name), None when no resistant clone is detected.

    Returns ``{"detection", "fractions", "detected", "mechanisms", "dominant"}``, where
    ``mechanisms`` holds the detected fraction of each mechanism found.
    """
    unknown = [c for c in clone_fractions if c not in mechanisms]
    if unknown:
        raise ValueError(f"clone {unknown[0]!r} has no mechanism entry; known clones: {', '.join(sorted(mechanisms)) or '(none)'}")
    # densities may dip a little below zero in the discrete solution: no clone is negative
    amounts = {c: max(float(v), 0.0) for c, v in clone_fractions.items()}
    total = sum(amounts.values())
    fractions = {c: (v / total if total > 0 else 0.0) for c, v in amounts.items()}
    detected = {c: f for c, f in fractions.items() if f > 0 and f >= detection}
    by_mechanism: dict[str, float] = {}
    for c, f in detected.items():
        if mechanisms[c] is not None:
            by_mechanism[mechanisms[c]] = by_mechanism.get(mechanisms[c], 0.0) + f
    dominant = min(by_mechanism, key=lambda m: (-by_mechanism[m], m)) if by_mechanism else None
    return {"detection": float(detection), "fractions": fractions, "detected": detected,
            "mechanisms": by_mechanism, "dominant": dominant}


# --------------------------------------------------------------------------------------------
# Adaptive rules


def holiday(paused: bool, burden: float, baseline: float, spec: HolidaySpec) -> bool:
    """Whether the drugs are paused after a rule assessment of ``burden`` [µm^d]: a treated
    tumour at or below ``pause_below`` × ``baseline`` pauses, a paused one at or above
    ``resume_above`` × ``baseline`` resumes; otherwise nothing changes."""
    if paused:
        return not burden >= spec.resume_above * baseline
    return burden <= spec.pause_below * baseline


def modulate(level: float, burden: float, previous: float, spec: ModulationSpec) -> float:
    """The dose level after a rule assessment: ``burden`` [µm^d] against the ``previous`` rule
    assessment's; a rise of at least ``rise`` multiplies the level by ``rise_factor``, a fall of
    at least ``fall`` by ``fall_factor``, each within [``min_level``, ``max_level``]. Written
    without dividing by ``previous``, so that a zero previous burden (regrowth from nothing)
    counts as a rise."""
    if burden >= (1.0 + spec.rise) * previous and burden > previous:
        level *= spec.rise_factor
    elif burden <= (1.0 - spec.fall) * previous:
        level *= spec.fall_factor
    return min(max(level, spec.min_level), spec.max_level)


def given_level(level: float, spec: ModulationSpec) -> float:
    """The multiple of the regimen's doses given at dose ``level``: 0 below ``skip_below``."""
    return 0.0 if level < spec.skip_below or level <= 0.0 else level


def time_off(holidays: list[list[float]], end: float) -> float:
    """Total time [hour] of the ``holidays`` ([start, end] each; end NaN while still paused,
    counted to ``end``) up to ``end`` [hour]."""
    total = 0.0
    for a, b in holidays:
        b = end if math.isnan(b) else min(b, end)
        total += max(b - min(a, end), 0.0)
    return total


# --------------------------------------------------------------------------------------------
# The protocol


@dataclass(frozen=True)
class Decision:
    """What an assessment decided: the events to log, the line to start now (its ``regimen`` is
    the effective one, after sequencing; dose times relative to the decision time), and whether
    the run stops."""

    events: tuple[Event, ...] = ()
    new_line: Line | None = None
    stop: bool = False

    @property
    def progression(self) -> bool:
        return any(e.event == "progression" for e in self.events)


@dataclass(frozen=True)
class Record:
    """One row of the protocol history, at a line start or an assessment.

    ``nadir`` is the reference the burden was judged against (the new baseline for a line
    start) and ``threshold`` the burden above which it would have been progression [µm^d];
    ``outcome`` is 'start', 'continue', 'switch', 'progression' (last line, continued), 'cured'
    (the run stops), 'not detectable' (cured, or still not detectable, and the line goes on) or
    'exhausted'.
    """

    time: float
    line_index: int
    line: str
    burden: float
    nadir: float
    threshold: float
    resistant_fraction: float | None
    outcome: str


class Protocol:
    """The protocol state during a run: the current line, its start time [hour], the nadir of
    the burden since it started, the assessment clock, the event log and the history.

    ``mechanisms`` maps each clone to its resistance mechanism (None = sensitive); it is only
    needed when a line has sequencing. ``scale`` turns burdens into cell counts, for the
    detection limit and a min_increase; without it every burden is detectable and min_increase
    must be 0.
    """

    def __init__(self, treatment: TreatmentSpec, mechanisms: dict[str, str | None] | None = None,
                 scale: CellScale | None = None):
        self.spec = treatment
        self.mechanisms = dict(mechanisms or {})
        self.scale = scale
        if scale is None and treatment.progression.min_increase.value > 0:
            raise ValueError("progression.min_increase needs a CellScale to compare with burdens")
        # both in units of burden [µm^d]
        self.min_increase = (0.0 if scale is None else
                             scale.in_cells(treatment.progression.min_increase) / scale.cells(1.0))
        self.detection_burden = (0.0 if scale is None else
                                 scale.in_cells(treatment.detection_limit) / scale.cells(1.0))
        self.index = -1            # current line; -1 before start
        self.line: Line | None = None  # current line with its effective regimen
        self.line_start = math.nan
        self.nadir = math.nan
        self.stopped = False
        self.exhausted = False     # progression on the last line was seen and the run continued
        self.cured = False         # an assessment found the tumour not detectable
        self._next = math.inf
        self.events: list[Event] = []
        self.history: list[Record] = []
        # the adaptive rules of the current line: paused (holiday), dose level (modulation),
        # the holiday's baseline and the burden at the previous rule assessment [µm^d], the
        # next rule assessment [hour]; and every holiday of the run, [start, end] [hour]
        self.paused = False
        self.level = 1.0
        self.baseline = math.nan
        self.rule_previous = math.nan
        self._next_rule = math.inf
        self.holidays: list[list[float]] = []

    # -- the time loop's interface ------------------------------------------------------------
    def start(self, t: float, burden: float, clone_fractions: dict[str, float] | None = None,
              region_fractions: dict[str, dict[str, float]] | None = None) -> list[Event]:
        """Start line 1 at time ``t`` [hour] with baseline ``burden`` [µm^d].

        Returns the events ('sequencing' if the line sequences, then 'line_start'); the regimen
        to schedule from ``t`` is ``self.line.regimen``. Fractions are needed only when line 1
        has sequencing. With no lines there is nothing to do: no events, no assessments.
        """
        if self.index >= 0:
            raise RuntimeError("the protocol has already started")
        if not self.spec.lines:
            self.stopped = True
            return []
        events = self._begin(0, t, burden, clone_fractions, region_fractions, "line_start",
                             "first line", {})
        self.events.extend(events)
        return events

    def next_assessment(self) -> float:
        """Time of the next assessment [hour], of progression or of the line's adaptive rules,
        a milestone for the time loop; inf when stopped."""
        return math.inf if self.stopped else min(self._next, self._next_rule)

    def dose_factor(self, drug: str) -> float:
        """The multiple of its regimen's amount at which a dose of ``drug`` is given now: 0 on
        holiday (for the drugs the holiday names) or below the modulation's ``skip_below``,
        the dose level for the modulated drugs, else 1."""
        adapt = None if self.line is None else self.line.adapt
        if adapt is None:
            return 1.0
        m = adapt.modulation
        if self.on_holiday(drug):
            return 0.0
        if m is not None and (m.drugs is None or drug in m.drugs):
            return given_level(self.level, m)
        return 1.0

    def on_holiday(self, drug: str) -> bool:
        """Whether ``drug`` is paused by the current line's holiday."""
        h = None if self.line is None or self.line.adapt is None else self.line.adapt.holiday
        return h is not None and self.paused and (h.drugs is None or drug in h.drugs)

    def assess(self, t: float, burden: float, resistant_fraction: float | None = None,
               clone_fractions: dict[str, float] | None = None,
               region_fractions: dict[str, dict[str, float]] | None = None) -> Decision:
        """Assess the tumour at time ``t`` [hour]: ``burden`` [µm^d], the fraction of it in
        resistant clones, and, for a next line with sequencing, the clone fractions of the whole
        tumour and of each region. At a progression assessment decides cure, progression, switch
        or stop; at a rule assessment of an adaptive line (the same time or its own), pause,
        resume or modulate the doses. A line that switches or stops at t applies no rule.
        """
        if self.stopped or self.line is None:
            raise RuntimeError("assess() called on a protocol that has not started or has stopped")
        near = 1e-9 * max(1.0, abs(t))
        rule_due = self.line.adapt is not None and t >= self._next_rule - near
        decision = None
        if not rule_due or t >= self._next - near:
            decision = self._assess(t, burden, resistant_fraction, clone_fractions, region_fractions)
            if decision.stop or decision.new_line is not None:
                return decision
        if not rule_due:
            return decision
        events = self._adapt(t, burden)
        self.events.extend(events)
        return Decision((decision.events if decision else ()) + tuple(events), None, False)

    def _assess(self, t, burden, resistant_fraction, clone_fractions, region_fractions) -> Decision:
        """The progression assessment of :meth:`assess`."""
        spec, prog = self.spec, self.spec.progression
        nadir = self.nadir
        ref = self.reference()
        threshold = max(ref * (1.0 + prog.increase), ref + self.min_increase)
        seen = self.scale is None or detectable(burden, spec.detection_limit, self.scale)
        data = {"line": self.line.name, "burden": burden, "nadir": nadir, "threshold": threshold,
                "detectable": seen}
        if self.scale is not None:
            data["cells"] = self.scale.cells(burden)
            data["detection_limit_cells"] = self.scale.in_cells(spec.detection_limit)
        if resistant_fraction is not None:
            data["resistant_fraction"] = resistant_fraction
        reason = f"assessment of line {self.line.name}"
        if not seen:
            reason += (f": not detectable ({data['cells']:.3g} cells, below the detection limit "
                       f"of {data['detection_limit_cells']:.3g} cells)")
        events = [Event(t, "assessment", reason, data)]
        record = dict(time=t, line_index=self.index, line=self.line.name, burden=burden,
                      nadir=nadir, threshold=threshold, resistant_fraction=resistant_fraction)

        if not seen:
            self.nadir = min(self.nadir, burden)
            first = not self.cured
            self.cured = True
            if first:
                events.append(Event(t, "cure", f"not detectable on line {self.line.name}",
                                    {"line": self.line.name, "cells": data["cells"],
                                     "detection_limit_cells": data["detection_limit_cells"]}))
            if spec.stop.on_cure:
                events.append(Event(t, "stop", "cured: not detectable", {"line": self.line.name}))
                return self._decide(t, events, record, "cured", stop=True)
            return self._decide(t, events, record, "not detectable")

        reasons = [] if self.exhausted else self._progression(burden, ref, resistant_fraction)
        if not reasons:
            self.nadir = min(self.nadir, burden)
            return self._decide(t, events, record, "continue")

        rules = [r for r, _ in reasons]
        text = "; ".join(s for _, s in reasons)
        pdata = {**data, "rules": rules}
        if self.index + 1 < len(spec.lines):
            events.append(Event(t, "progression", text, pdata))
            self.history.append(Record(**record, outcome="switch"))
            old = self.line.name
            events += self._begin(self.index + 1, t, burden, clone_fractions, region_fractions,
                                  "switch", f"progression on line {old}", {"from": old})
            self.events.extend(events)
            return Decision(tuple(events), self.line, False)
        if spec.stop.stop_when_exhausted:
            events.append(Event(t, "progression", text, pdata))
            events.append(Event(t, "stop", "lines exhausted", {"line": self.line.name}))
            return self._decide(t, events, record, "exhausted", stop=True)
        # no line left and the run goes on: the last line continues, judged no further
        self.exhausted = True
        events.append(Event(t, "progression", f"{text}; no further line, {self.line.name} continues",
                            {**pdata, "action": "continue"}))
        return self._decide(t, events, record, "progression")

    def end(self, t: float) -> list[Event]:
        """The run reached its end time ``t`` [hour]: a 'stop' event, unless already stopped."""
        if self.stopped:
            return []
        self.stopped = True
        event = Event(t, "stop", "end time", {"line": self.line.name if self.line else None})
        self.events.append(event)
        return [event]

    def state(self) -> dict:
        """What the protocol has decided so far, as plain data (JSON): :meth:`restore` takes it.

        The current line is saved as its index and the positions of the doses its effective
        regimen kept (a sequenced line gives only some of its doses)."""
        kept = None
        if self.line is not None:
            given = self.spec.lines[self.index].regimen
            kept = [i for i, d in enumerate(given) if any(d is k for k in self.line.regimen)]
        return {"index": self.index, "kept": kept, "line_start": self.line_start,
                "nadir": self.nadir, "stopped": self.stopped, "exhausted": self.exhausted,
                "cured": self.cured, "next": self._next, "events": [e.as_dict() for e in self.events],
                "history": [dict(r.__dict__) for r in self.history],
                "start_record": getattr(self, "_start_record", 0), "paused": self.paused,
                "level": self.level, "baseline": self.baseline, "rule_previous": self.rule_previous,
                "next_rule": self._next_rule, "holidays": [list(h) for h in self.holidays]}

    def restore(self, state: dict) -> None:
        """Continue from a :meth:`state` of a protocol of the same treatment."""
        self.index = state["index"]
        if state["kept"] is None:
            self.line = None
        else:
            line = self.spec.lines[self.index]
            kept = [line.regimen[i] for i in state["kept"]]
            self.line = line if len(kept) == len(line.regimen) else line.model_copy(update={"regimen": kept})
        self.line_start, self.nadir = state["line_start"], state["nadir"]
        self.stopped, self.exhausted, self._next = state["stopped"], state["exhausted"], state["next"]
        self.cured = state.get("cured", False)
        self.events = [Event(e["time"], e["event"], e["reason"], e["data"]) for e in state["events"]]
        self.history = [Record(**r) for r in state["history"]]
        self._start_record = state.get("start_record", 0)
        self.paused, self.level = state.get("paused", False), state.get("level", 1.0)
        self.baseline = state.get("baseline", math.nan)
        self.rule_previous = state.get("rule_previous", math.nan)
        self._next_rule = state.get("next_rule", math.inf)
        self.holidays = [list(h) for h in state.get("holidays", [])]

    def timeseries(self) -> dict[str, list]:
        """The history as columns (time, line_index, line, burden, nadir, threshold,
        resistant_fraction, outcome) for the outputs."""
        names = list(Record.__dataclass_fields__)
        return {n: [getattr(r, n) for r in self.history] for n in names}

    # -- internals --------------------------------------------------------------------------
    def reference(self) -> float:
        """The burden [µm^d] a rise is measured from: the nadir, or the line's starting burden
        (``progression.reference``)."""
        if self.spec.progression.reference == "baseline":
            return self.history[self._start_record].burden
        return self.nadir

    def _progression(self, burden: float, nadir: float, rf: float | None) -> list[tuple[str, str]]:
        """The progression rules that fire, as (rule, reason) pairs; ``nadir`` is the reference."""
        prog = self.spec.progression
        word = prog.reference
        out = []
        # written without dividing by the nadir, so a zero nadir (an eradicated tumour) works:
        # any regrowth above min_increase is then progression
        if burden > nadir * (1.0 + prog.increase) and burden - nadir > self.min_increase:
            out.append(("burden", f"burden {burden:.4g} above (1 + {prog.increase:.4g}) × {word} "
                                  f"{nadir:.4g}" + (f" and {word} + {prog.min_increase}"
                                                    if self.min_increase > 0 else "")))
        if prog.resistant_fraction is not None:
            if rf is None:
                raise ValueError("progression.resistant_fraction is set: assess() needs the resistant fraction")
            if rf > prog.resistant_fraction:
                out.append(("resistant_fraction", f"resistant fraction {rf:.4g} above "
                                                  f"{prog.resistant_fraction:.4g}"))
        return out

    def _begin(self, index: int, t: float, burden: float, clone_fractions, region_fractions,
               kind: EventKind, reason: str, extra: dict) -> list[Event]:
        """Start line ``index`` at ``t`` with baseline ``burden``; returns its events."""
        line = self.spec.lines[index]
        events = []
        if line.sequencing is not None:
            line, event = self._sequenced(index, line, t, clone_fractions, region_fractions)
            events.append(event)
        self.index, self.line, self.line_start, self.nadir = index, line, t, burden
        self.cured = False
        self._next = t + self.spec.assessment.first
        events.append(Event(t, kind, reason, {**extra, "line": index, "name": line.name,
                                              "regimen": [d.drug for d in line.regimen]}))
        threshold = max(burden * (1.0 + self.spec.progression.increase), burden + self.min_increase)
        self._start_record = len(self.history)
        self.history.append(Record(t, index, line.name, burden, burden, threshold, None, "start"))
        # the adaptive rules start afresh with each line
        if self.paused:
            self.holidays[-1][1] = t
        self.paused, self.level, self.rule_previous = False, 1.0, burden
        adapt = line.adapt
        self.baseline = burden
        if adapt is not None and adapt.baseline is not None:
            if self.scale is None:
                raise ValueError(f"treatment.lines.{index}.adapt.baseline: a declared baseline "
                                 f"needs a CellScale to compare with burdens")
            self.baseline = self.scale.in_cells(adapt.baseline) / self.scale.cells(1.0)
        self._next_rule = math.inf if adapt is None else t + adapt.first
        return events

    def _adapt(self, t: float, burden: float) -> list[Event]:
        """A rule assessment of the current line at ``t``: its events (pause, resume,
        modulation), and the next rule assessment."""
        adapt, name = self.line.adapt, self.line.name
        events = []
        data = {"line": name, "burden": burden}
        h = adapt.holiday
        if h is not None:
            paused = holiday(self.paused, burden, self.baseline, h)
            drugs = ", ".join(h.drugs or sorted({d.drug for d in self.line.regimen}))
            hdata = {**data, "baseline": self.baseline, "drugs": drugs,
                     "ratio": burden / self.baseline if self.baseline > 0 else math.inf}
            if paused and not self.paused:
                self.holidays.append([t, math.nan])
                events.append(Event(t, "pause", f"burden {burden:.4g} <= {h.pause_below:g} × "
                                    f"baseline {self.baseline:.4g}: {drugs} paused on line {name}",
                                    {**hdata, "threshold": h.pause_below * self.baseline}))
            elif self.paused and not paused:
                self.holidays[-1][1] = t
                events.append(Event(t, "resume", f"burden {burden:.4g} >= {h.resume_above:g} × "
                                    f"baseline {self.baseline:.4g}: {drugs} resumed on line {name}",
                                    {**hdata, "threshold": h.resume_above * self.baseline}))
            self.paused = paused
        m = adapt.modulation
        if m is not None:
            level = modulate(self.level, burden, self.rule_previous, m)
            if level != self.level:
                change = burden / self.rule_previous - 1.0 if self.rule_previous > 0 else math.inf
                skipped = given_level(level, m) == 0.0
                events.append(Event(t, "modulation", f"burden {change:+.1%} since the previous rule "
                                    f"assessment: dose level {self.level:.4g} -> {level:.4g} on line "
                                    f"{name}" + ("; below skip_below, doses skipped" if skipped else ""),
                                    {**data, "previous": self.rule_previous, "from": self.level,
                                     "to": level, "skipped": skipped}))
            self.level = level
        self.rule_previous = burden
        first = self.line_start + adapt.first
        k = max(0, math.floor((t - first) / adapt.every + 1e-9) + 1)
        self._next_rule = first + k * adapt.every
        return events

    def off_drug(self, end: float) -> float:
        """Time [hour] on holiday up to ``end`` [hour]."""
        return time_off(self.holidays, end)

    def metrics(self, end: float, final_burden: float, doses: dict[str, tuple[float, float]],
                volumes: dict[str, float], events: list[Event] | None = None) -> dict:
        """The clinical metrics of a run that reached ``end`` [hour] with ``final_burden``
        [µm^d]; ``doses`` maps each dosed drug to its (given, planned) total [µM] and
        ``volumes`` to its central volume [L] (amounts [µmol] = µM × L); ``events``: the whole
        event log (the doses and limits included), default the protocol's own.

        Time to progression: the first progression; time to treatment failure: the first
        progression or dose cut by a limit (None: neither happened, censored at the end);
        relative dose: given over the planned amounts of the same doses (the continuous
        schedule); off-drug fraction: time on holiday over the time since the first line
        started; controlled: the final burden at or below the first line's starting burden."""
        events = self.events if events is None else events
        first = {kind: next((e.time for e in events if e.event == kind), None)
                 for kind in ("progression", "limit")}
        failures = [(t, k) for k, t in first.items() if t is not None]
        t_fail, why = min(failures) if failures else (None, None)
        start = self.history[0].time if self.history else 0.0
        baseline = self.history[0].burden if self.history else math.nan
        span = max(end - start, 0.0)
        off = self.off_drug(end)
        return {
            "time_to_progression_hours": first["progression"],
            "time_to_treatment_failure_hours": t_fail,
            "treatment_failure": why,
            "cumulative_dose_uM": {d: g for d, (g, _) in doses.items()},
            "cumulative_dose_umol": {d: g * volumes[d] for d, (g, _) in doses.items()},
            "relative_dose": {d: (g / p if p > 0 else None) for d, (g, p) in doses.items()},
            "off_drug_hours": off,
            "off_drug_fraction": off / span if span > 0 else 0.0,
            "holidays": len(self.holidays),
            "holiday_intervals_hours": [[a, end if math.isnan(b) else b] for a, b in self.holidays],
            "baseline_burden": baseline,
            "controlled": bool(final_burden <= baseline),
        }

    def _sequenced(self, index: int, line: Line, t: float, clone_fractions, region_fractions):
        """The line with the regimen chosen by sequencing, and the 'sequencing' event."""
        seq = line.sequencing
        here = f"treatment.lines.{index}.sequencing"
        if seq.region is None:
            if clone_fractions is None:
                raise ValueError(f"{here}: sequencing the whole tumour needs its clone fractions")
            sample = clone_fractions
        else:
            if not region_fractions or seq.region not in region_fractions:
                raise ValueError(f"{here}.region: no clone fractions for region {seq.region!r}; "
                                 f"regions given: {', '.join(sorted(region_fractions or {})) or '(none)'}")
            sample = region_fractions[seq.region]
        report = sequence(sample, self.mechanisms, seq.detection)
        where = "whole tumour" if seq.region is None else f"region {seq.region}"
        mech = report["dominant"]
        if mech is None:
            chosen, kept = [], list(line.regimen)
            reason = (f"no resistant clone detected in the {where} above {seq.detection:.3g}; "
                      f"full regimen kept")
        else:
            if mech not in seq.choose:
                # check_references rules this out for the scenario's clones
                raise ValueError(f"{here}.choose: no drug for the dominant mechanism {mech!r}")
            chosen = list(seq.choose[mech])
            candidates = {d for names in seq.choose.values() for d in names}
            kept = [d for d in line.regimen if d.drug in chosen or d.drug not in candidates]
            reason = (f"dominant mechanism {mech} ({report['mechanisms'][mech]:.3g} of the {where}) "
                      f"-> {', '.join(chosen)}")
        event = Event(t, "sequencing", reason,
                      {**report, "line": line.name, "region": seq.region, "chosen": chosen,
                       "regimen": [d.drug for d in kept]})
        return line.model_copy(update={"regimen": kept}), event

    def _decide(self, t: float, events: list[Event], record: dict, outcome: str, *,
                stop: bool = False) -> Decision:
        """Close an assessment that starts no line: log it and set the assessment clock."""
        if stop:
            self.stopped = True
        else:
            every = self.spec.assessment.every
            first = self.line_start + self.spec.assessment.first
            # the next scheduled time strictly after t, robust to t landing a hair off it
            k = max(0, math.floor((t - first) / every + 1e-9) + 1)
            self._next = first + k * every
        self.history.append(Record(**record, outcome=outcome))
        self.events.extend(events)
        return Decision(tuple(events), None, stop)
