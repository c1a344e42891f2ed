"""The study engine's pure parts (tme.studies.batch): how ranks split into groups, the jobs'
names, the outcome files and how a study directory is resumed (no run, no DOLFINx)."""

from __future__ import annotations

import json

import pytest

from tme.config import scenario as scn
from tme.config.spec import ScenarioError
from tme.studies import batch
from tme.studies.batch import Job, Outcome

SMALL = {"name": "small", "mesh": {"kind": "rectangle", "size": ["100 um", "100 um"], "cells": [4, 4]},
         "clones": {"clones": {"a": {"growth": "0.5 1/day", "initial": 0.1}}},
         "time": {"end": "1 day", "dt": "1 hour"}}


def _scenario(**changes):
    return scn.validate(json.loads(json.dumps(SMALL))).with_changes(changes)


@pytest.mark.parametrize("size, per_run, groups", [(1, 1, 1), (2, 1, 2), (2, 2, 1), (12, 3, 4),
                                                   (2048, 1, 2048), (2048, 32, 64)])
def test_groups_of_ranks(size, per_run, groups):
    assert batch.groups_for(size, per_run) == groups


@pytest.mark.parametrize("size, per_run, words", [
    (2, 3, ["exceeds the 2 MPI rank(s)", "valid: 1, 2"]),
    (6, 4, ["does not divide the 6", "valid: 1, 2, 3, 6"]),
    (2, 0, ["whole number of ranks >= 1"]),
    (2, 1.5, ["whole number"]),
    (2, True, ["whole number"]),
])
def test_a_ranks_per_run_that_does_not_fit_is_refused_in_one_line(size, per_run, words):
    with pytest.raises(ScenarioError) as err:
        batch.groups_for(size, per_run)
    text = str(err.value)
    assert "\n" not in text and text.startswith("--ranks-per-run")
    for w in words:
        assert w in text, text


def test_the_split_of_ranks_is_that_of_tme_compare():
    """split() puts rank r of n in group r * groups // n: consecutive ranks together, the
    sizes equal when groups divides n (and within one otherwise, as tme compare needs)."""

    class Comm:
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

        def Split(self, color, key):
            return (color, key)

    for size, groups in [(8, 4), (8, 2), (5, 2), (3, 3)]:
        colors = [batch.split(Comm(r, size), groups)[0] for r in range(size)]
        assert colors == sorted(colors) and set(colors) == set(range(groups))
        counts = [colors.count(c) for c in range(groups)]
        assert max(counts) - min(counts) <= 1
        if size % groups == 0:
            assert colors == [r // (size // groups) for r in range(size)]


def test_the_fingerprint_is_the_resolved_scenario_and_follows_every_change():
    a = _scenario()
    same = scn.validate(scn._yaml(scn.resolved_yaml(a)))   # written out and read back
    assert batch.fingerprint(a) == batch.fingerprint(same)
    assert batch.fingerprint(a) != batch.fingerprint(_scenario(**{"clones.clones.a.growth": "0.6 1/day"}))
    # the same value in another unit is the same scenario
    assert batch.fingerprint(_scenario(**{"time.end": "24 hour"})) == batch.fingerprint(a)


@pytest.mark.parametrize("name", ["a/b", "", ".hidden", "x" * 201, "a b", 3])
def test_a_job_name_that_is_not_a_file_name_is_refused(name):
    with pytest.raises(ScenarioError, match="not a file name"):
        batch._check_jobs([Job(name, _scenario())])


def test_a_job_name_given_twice_is_refused():
    with pytest.raises(ScenarioError, match="given twice"):
        batch._check_jobs([Job("p1", _scenario()), Job("p1", _scenario())])


def _outcome(name, fp, ok=True):
    return Outcome(name=name, tags={"patient": 1}, ok=ok, error=None if ok else "it failed",
                   summary={"final_burden": 2.5} if ok else None, times_days=[0.0, 1.0],
                   burden=[1.0, 2.5], burden_cells=None, resistant_fraction=[0.0, 0.0],
                   wall_time_seconds=0.1, extra={"k": [1, 2]}, fingerprint=fp)


def test_an_outcome_round_trips_through_its_json_file(tmp_path):
    o = _outcome("p1", "ab" * 32)
    path = tmp_path / "p1.json"
    path.write_text(json.dumps(o.to_json()))
    assert Outcome.from_json(json.loads(path.read_text())) == o


def test_resume_takes_the_matching_files_and_refuses_a_changed_job(tmp_path):
    jobs = [Job(f"p{i}", _scenario(**{"clones.clones.a.growth": f"0.{i + 1} 1/day"}), {"patient": i})
            for i in range(3)]
    prints = [batch.fingerprint(j.scenario) for j in jobs]
    assert len(set(prints)) == 3
    (tmp_path / "p0.json").write_text(json.dumps(_outcome("p0", prints[0]).to_json()))
    (tmp_path / "p2.json").write_text(json.dumps(_outcome("p2", prints[2], ok=False).to_json()))
    (tmp_path / "p1.json.tmp").write_text("{\"name\": ")   # a write cut by a kill: not a job
    done, err = batch.finished(jobs, prints, tmp_path)
    assert err is None
    assert sorted(done) == [0, 2] and done[2].ok is False and done[0].tags == {"patient": 0}
    # a file run with another scenario: refused, naming the job
    (tmp_path / "p1.json").write_text(json.dumps(_outcome("p1", prints[0]).to_json()))
    _, err = batch.finished(jobs, prints, tmp_path)
    assert err is not None and "job p1 was run with another scenario" in err and "--overwrite" in err
    (tmp_path / "p1.json").write_text("not json")
    _, err = batch.finished(jobs, prints, tmp_path)
    assert "p1.json: not a finished job" in err and "\n" not in err


def test_progress_lines_say_done_failed_and_time_left():
    import logging

    from tme import log

    class Counter:
        def read(self):
            return 30, 2, 0

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    logger, keep = log.get(), Keep()
    level = logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        p = batch._Progress("cohort", 200, 7, 1, Counter(), on=True)
        p.start -= 60.0     # 30 runs in a minute: 163 left take about 5 min
        p.tick(force=True)
        p.tick()            # within PROGRESS_EVERY of the last: no line
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    assert keep.lines == ["cohort: 37/200 done (3 failed), ~5 min left"]


class _OneRank:
    """The little of an MPI communicator the directory checks use, for one rank."""

    rank, size = 0, 1

    def bcast(self, value, root=0):
        return value

    def barrier(self):
        pass


def test_a_study_directory_is_made_continued_or_refused(tmp_path):
    comm, out = _OneRank(), tmp_path / "cohort"
    assert batch.study_directory(out, comm, "cohort") is False
    assert json.loads((out / "study.json").read_text()) == {"study": "cohort"}
    (out / "runs").mkdir()
    (out / "runs" / "p0.json").write_text("{}")
    (out / "cohort.csv").write_text("old table\n")
    (out / "notes.txt").write_text("the user's own\n")
    # the same command again continues the study
    assert batch.study_directory(out, comm, "cohort", owned=["cohort.csv"]) is True
    assert (out / "runs" / "p0.json").exists()
    # another kind of study, or a directory of something else, is refused in one line
    with pytest.raises(ScenarioError) as err:
        batch.study_directory(out, comm, "sensitivity")
    assert "holds a tme cohort study, not a sensitivity study" in str(err.value)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "x.txt").write_text("mine\n")
    with pytest.raises(ScenarioError, match="holds no tme study") as err:
        batch.study_directory(other, comm, "cohort")
    assert "\n" not in str(err.value) and sorted(p.name for p in other.iterdir()) == ["x.txt"]
    # --overwrite removes the study's files only
    assert batch.study_directory(out, comm, "cohort", overwrite=True, owned=["cohort.csv"]) is False
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "study.json"]
    # ... unless that would remove a file the study reads
    (out / "runs").mkdir()
    (out / "runs" / "patients.csv").write_text("a\n")
    with pytest.raises(ScenarioError, match="which this study reads"):
        batch.study_directory(out, comm, "cohort", overwrite=True, inputs=[out / "runs" / "patients.csv"])
    assert (out / "runs" / "patients.csv").exists()
    with pytest.raises(ScenarioError, match="is not a directory"):
        batch.study_directory(out / "notes.txt", comm, "cohort")
