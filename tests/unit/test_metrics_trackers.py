"""Issue 15: leader changes from committed terms, partition recovery on both
sides, and hotspots by the scheduler's rule -- the known answers, without a clock."""

from __future__ import annotations

import pytest

from agent.metrics.trackers import GIVE_UP_S, HotspotTracker, LeaderTerms, RecoveryTracker
from agent.sched.config import SchedConfig

# ---------------------------------------------------------------- leader changes


def apply_log(counter: LeaderTerms, terms: list[int], start: int = 1) -> None:
    for index, term in enumerate(terms, start=start):
        counter.observe(index, term)


def test_leader_changes_are_term_changes_in_the_applied_log() -> None:
    # Bootstrap entries at term 1, a leader's no-op at 2, writes, two more leaders.
    log = [1, 1, 2, 2, 2, 5, 5, 6]
    nodes = [LeaderTerms() for _ in range(3)]
    for node in nodes:
        apply_log(node, log)
    assert [n.changes for n in nodes] == [3, 3, 3]  # every node counts the same


def test_a_restart_replaying_from_a_snapshot_resumes_the_saved_count() -> None:
    full = LeaderTerms()
    apply_log(full, [1, 2, 2, 3, 3, 3, 4, 4])
    saved = full.checkpoint()
    assert saved == (8, 4, 3)
    # Restart: the log is replayed from a snapshot at index 5 (entries 6.. again).
    again = LeaderTerms()
    again.resume(*saved)
    apply_log(again, [3, 4, 4, 7], start=6)  # 6:3 7:4 8:4 9:7 (a new leader since)
    assert again.changes == 4


def test_a_checkpoint_at_a_new_leaders_entry_is_not_counted_twice() -> None:
    again = LeaderTerms()
    again.resume(4, 3, 2)  # entry 4 is the no-op of the leader of term 3
    apply_log(again, [1, 2, 2, 3, 3, 5])
    assert again.changes == 3


def test_a_compacted_replay_that_starts_past_the_checkpoint_goes_on_from_it() -> None:
    again = LeaderTerms()
    again.resume(8, 4, 3)
    apply_log(again, [4, 9], start=20)
    assert again.changes == 4  # 3 saved, then 4 -> 9


# ---------------------------------------------------------------- partition recovery


def split_and_heal(tracker: RecoveryTracker, other_side: list[str], t_split: float,
                   t_first: float, t_whole: float) -> None:
    for i, member in enumerate(other_side):
        tracker.observe(t_split + 0.1 * i, member, "suspect")
    for member in other_side:
        tracker.observe(t_split + 3.0, member, "dead")
    for i, member in enumerate(other_side):
        at = t_first if i == 0 else t_whole if i == len(other_side) - 1 else (t_first + t_whole) / 2
        tracker.observe(at, member, "alive")


def test_recovery_is_measured_on_both_sides_of_a_split() -> None:
    majority, minority = RecoveryTracker(), RecoveryTracker()
    split_and_heal(majority, ["d", "e"], 100.0, 120.4, 121.9)
    split_and_heal(minority, ["a", "b", "c"], 100.0, 120.2, 122.0)
    assert majority.last is not None and majority.last.seconds == pytest.approx(1.5)
    assert minority.last is not None and minority.last.seconds == pytest.approx(1.8)
    assert majority.last.lost == 2 and minority.last.lost == 3


def test_a_refuted_suspicion_is_no_split() -> None:
    tracker = RecoveryTracker()
    tracker.observe(1.0, "a", "suspect")
    tracker.observe(1.5, "a", "alive")
    assert tracker.last is None and not tracker.open


def test_one_membership_needs_every_lost_member_back_or_gone() -> None:
    tracker = RecoveryTracker()
    tracker.observe(0.0, "a", "dead")
    tracker.observe(0.0, "b", "dead")
    tracker.observe(10.0, "a", "alive")
    assert tracker.last is None and tracker.open  # b is still lost
    tracker.observe(12.0, "b", "left")  # b left: one membership again
    assert tracker.last is not None and tracker.last.seconds == pytest.approx(2.0)


def test_a_member_dead_before_the_split_does_not_hold_it_open() -> None:
    tracker = RecoveryTracker()
    tracker.observe(0.0, "gone", "dead")
    tracker.tick(GIVE_UP_S + 1.0, ["gone", "a"])  # given up on: not part of a split now
    tracker.observe(GIVE_UP_S + 10.0, "a", "dead")
    tracker.observe(GIVE_UP_S + 20.0, "a", "alive")
    assert tracker.last is not None and tracker.last.seconds == 0.0


def test_a_reaped_member_stops_holding_the_episode_open() -> None:
    tracker = RecoveryTracker()
    tracker.observe(0.0, "a", "dead")
    tracker.observe(0.0, "b", "dead")
    tracker.observe(5.0, "a", "alive")
    tracker.tick(6.0, ["a"])  # b is no longer listed at all
    assert tracker.last is not None and tracker.last.seconds == pytest.approx(1.0)


# ---------------------------------------------------------------- hotspots


def test_hotspots_follow_the_schedulers_rule_with_hysteresis() -> None:
    cfg = SchedConfig(hot_above=0.8, hot_exit_below=0.7, hot_window=10.0)
    tracker = HotspotTracker()

    def at(t: float, cpu_a: float, cpu_b: float = 0.1) -> list[str]:
        tracker.update(t, [("a", True, cpu_a), ("b", True, cpu_b)], cfg)
        return tracker.hot()

    assert at(0.0, 0.95) == []  # above, but not for hot_window yet
    assert at(9.0, 0.95) == []
    assert at(10.0, 0.95) == ["a"]
    assert at(15.0, 0.75) == ["a"]  # below hot_above, above hot_exit_below: still hot
    assert at(16.0, 0.5) == []  # cooled
    assert at(17.0, 0.95) == []  # a new run above must last hot_window again


def test_a_dead_member_is_never_a_hotspot() -> None:
    cfg = SchedConfig(hot_window=1.0)
    tracker = HotspotTracker()
    tracker.update(0.0, [("a", True, 0.99)], cfg)
    tracker.update(2.0, [("a", True, 0.99)], cfg)
    assert tracker.hot() == ["a"]
    tracker.update(3.0, [("a", False, 0.99)], cfg)
    assert tracker.hot() == []
