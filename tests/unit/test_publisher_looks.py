"""How often a following publisher looks at each table's log: idle tables less and less often,
a busy one every cycle, and a table waking up after a pause brings the others back."""

from __future__ import annotations

import itertools

from lakehouse.replication.publisher import FIRST_IDLE_LOOK_S, LONGEST_IDLE_LOOK_S, LookSchedule


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _gaps_between_looks(schedule: LookSchedule, clock: Clock, name: str, looks: int) -> list[float]:
    """Step the clock in 1/8 s ticks (exact in binary); the time between looks finding nothing new."""
    gaps, last = [], clock.now
    while len(gaps) < looks:
        if schedule.due(name):
            schedule.looked(name, changed=False)
            gaps.append(clock.now - last)
            last = clock.now
        clock.now += 0.125
    return gaps


def test_a_new_table_is_due_at_once() -> None:
    assert LookSchedule(Clock()).due("encounters")


def test_an_idle_table_is_looked_at_less_often_up_to_a_bound() -> None:
    clock = Clock()
    schedule = LookSchedule(clock)
    gaps = _gaps_between_looks(schedule, clock, "labs", 8)[1:]
    assert gaps[0] == FIRST_IDLE_LOOK_S
    assert all(b >= a for a, b in itertools.pairwise(gaps))
    assert max(gaps) == LONGEST_IDLE_LOOK_S
    assert gaps[-3:] == [LONGEST_IDLE_LOOK_S] * 3


def test_a_busy_table_is_due_again_at_once() -> None:
    clock = Clock()
    schedule = LookSchedule(clock)
    schedule.looked("encounters", changed=False)
    schedule.looked("encounters", changed=True)
    assert schedule.due("encounters")


def test_a_table_waking_after_a_pause_brings_the_others_back() -> None:
    clock = Clock()
    schedule = LookSchedule(clock)
    for _ in range(3):
        schedule.looked("encounters", changed=False)
        schedule.looked("labs", changed=False)
    assert not schedule.due("labs")
    schedule.looked("encounters", changed=True)
    assert schedule.due("labs")


def test_a_table_changing_every_cycle_leaves_idle_ones_idle() -> None:
    clock = Clock()
    schedule = LookSchedule(clock)
    _gaps_between_looks(schedule, clock, "labs", 6)
    schedule.looked("encounters", changed=True)
    schedule.looked("encounters", changed=True)
    assert not schedule.due("labs")
