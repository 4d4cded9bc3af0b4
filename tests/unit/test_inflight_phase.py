"""An in-flight prompt's phase: the transitions and what each phase allows. Pure, no I/O."""

from __future__ import annotations

import pytest

from comfy_fleet.prompts import inflight
from comfy_fleet.prompts.inflight import InflightPrompt, InflightTable, Phase

ALL = list(Phase)


def test_the_happy_path() -> None:
    item = InflightPrompt("t1", "p1", dispatched_at=1.0, last_frame=1.0)
    assert item.phase is Phase.POSTING and not item.watched and item.can_finish and not item.ran
    item.on_posted(2.0, answered=True)
    assert (item.phase, item.posted_at, item.last_frame) == (Phase.QUEUED, 2.0, 2.0)
    assert item.watched and not item.ran
    item.on_started()
    assert item.phase is Phase.RUNNING and item.watched and item.ran
    item.on_store()
    assert item.phase is Phase.STORING and not item.watched and not item.can_finish and item.ran
    item.on_end()
    assert item.phase is Phase.ENDED and not item.can_finish


def test_an_unanswered_post_is_watched_but_keeps_its_last_frame() -> None:
    item = InflightPrompt("t1", "p1", last_frame=1.0)
    item.on_posted(3.0, answered=False)
    assert (item.phase, item.posted_at, item.last_frame) == (Phase.QUEUED, 3.0, 1.0)


def test_frames_before_the_post_answers_move_it_on_and_the_answer_keeps_that() -> None:
    assert inflight.started(Phase.POSTING) is Phase.RUNNING
    assert inflight.posted(Phase.RUNNING) is Phase.RUNNING
    assert inflight.posted(Phase.STORING) is Phase.STORING
    assert inflight.posted(Phase.ENDED) is Phase.ENDED


@pytest.mark.parametrize("phase", ALL)
def test_started_never_goes_back(phase: Phase) -> None:
    expected = Phase.RUNNING if phase in (Phase.POSTING, Phase.QUEUED, Phase.RUNNING) else phase
    assert inflight.started(phase) is expected


@pytest.mark.parametrize("phase", ALL)
def test_only_one_takes_up_the_end(phase: Phase) -> None:
    if phase in inflight.FINISHABLE:
        assert inflight.store(phase) is Phase.STORING
    else:
        with pytest.raises(inflight.IllegalTransition):
            inflight.store(phase)


@pytest.mark.parametrize("phase", ALL)
def test_a_failed_store_goes_back_to_running_only_from_storing(phase: Phase) -> None:
    if phase is Phase.STORING:
        assert inflight.storing_failed(phase) is Phase.RUNNING
    else:
        with pytest.raises(inflight.IllegalTransition):
            inflight.storing_failed(phase)


@pytest.mark.parametrize("phase", ALL)
def test_any_phase_can_end(phase: Phase) -> None:
    assert inflight.end(phase) is Phase.ENDED


def test_the_table_finds_removes_and_counts() -> None:
    table = InflightTable()
    a = InflightPrompt("t1", "p1", last_frame=0.0)
    b = InflightPrompt("t2", "p2", last_frame=9.0)
    c = InflightPrompt("t3", "p3", last_frame=0.0)
    for item in (a, b, c):
        table.add(item)
    a.on_posted(1.0, answered=False)
    b.on_posted(9.0, answered=True)
    assert len(table) == 3 and table.watched() == 2  # c is still posting
    assert table.of_task("t2") is b and table.get("p3") is c and table.get(None) is None
    assert table.quiet(10.0, 2.0, force=False) == [a]
    assert table.quiet(10.0, 2.0, force=True) == [a, b]
    assert table.remove("p1") is a and a.phase is Phase.ENDED
    assert not table.holds(a) and table.of_task("t1") is None and table.remove("p1") is None
    assert table.holds(b)


def test_a_task_dispatched_again_keeps_its_newest_prompt() -> None:
    table = InflightTable()
    old, new = InflightPrompt("t1", "p1"), InflightPrompt("t1", "p2")
    table.add(old)
    table.add(new)
    table.remove("p1")
    assert table.of_task("t1") is new
