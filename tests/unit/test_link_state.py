"""The link-state core (agent/links/state.py): its rule tables, with time as an input."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agent.errors import ConfigError
from agent.links.config import LinkConfig
from agent.links.state import LinkState, LinkTable, Route
from agent.runtime.messages import LinkEntry, LinkSummary

CFG = LinkConfig.lan()
ME, A, B, C, D = "me", "a", "b", "c", "d"


def table(members: tuple[str, ...] = (A, B, C, D)) -> LinkTable:
    t = LinkTable(CFG, ME)
    t.set_members({ME, *members}, 0.0)
    return t


def probe_round(t: LinkTable, now: float, answer: set[str], rtt: float = 0.001) -> None:
    """Send the due probes at ``now``; those to ``answer`` get a pong after ``rtt``."""
    for node, seq in t.due_probes(now):
        if node in answer:
            t.on_pong(node, seq, now + rtt)
    t.tick(now + CFG.probe_timeout + 1e-6)


def run(t: LinkTable, start: float, rounds: int, answer: set[str]) -> float:
    now = start
    for _ in range(rounds):
        probe_round(t, now, answer)
        now += CFG.probe_interval
    return now


def summary(origin: str, version: int, **links: int) -> LinkSummary:
    return LinkSummary(origin, version, tuple(LinkEntry(p, s, "", 0.5, 1.0) for p, s in links.items()))


def test_small_clusters_track_every_live_member() -> None:
    t = table()
    assert sorted(t.tracked()) == [A, B, C, D]
    t.set_members({ME, A, B}, 1.0)
    assert sorted(t.tracked()) == [A, B]


def test_one_lost_probe_moves_nothing_two_in_a_row_break_the_path() -> None:
    t = table()
    now = run(t, 0.0, 1, {B, C, D})
    assert t.direct_ok(A)
    assert t.route(A, now) == Route()
    run(t, now, 1, {B, C, D})
    assert not t.direct_ok(A)
    assert t.broken_peers() == [A]
    assert t.broken_events == 1


def test_a_failure_between_successes_resets_the_count() -> None:
    t = table()
    now = 0.0
    for answer in ({B}, {A, B}, {B}, {A, B}):
        now = run(t, now, 1, answer)
    assert t.direct_ok(A)


def test_one_answered_probe_heals_within_one_probe_interval() -> None:
    t = table()
    now = run(t, 0.0, 3, {B, C, D})
    assert not t.direct_ok(A)
    # The link comes back just after a probe went out: the next probe is due
    # at most one probe interval later, and its pong heals the path.
    healed_at = now + 0.01
    for node, seq in t.due_probes(now + CFG.probe_interval):
        t.on_pong(node, seq, now + CFG.probe_interval + 0.001)
    assert t.direct_ok(A)
    assert now + CFG.probe_interval + 0.001 - healed_at <= CFG.probe_interval
    assert t.heal_events == 1
    assert t.route(A, now) == Route()


def test_refused_connections_count_as_failures() -> None:
    t = table()
    t.observe_failure(A, 0.1)
    assert t.direct_ok(A)
    t.observe_failure(A, 0.2)
    assert not t.direct_ok(A)


def test_a_late_pong_is_not_counted_twice() -> None:
    t = table()
    probes = dict(t.due_probes(0.0))
    t.tick(CFG.probe_timeout + 0.01)  # A's probe timed out: one failure
    t.on_pong(A, probes[A], 0.6)  # the late pong is ignored
    probes = dict(t.due_probes(CFG.probe_interval))
    t.tick(CFG.probe_interval + CFG.probe_timeout)
    assert not t.direct_ok(A)


def test_route_picks_the_relay_that_reaches_both_with_the_best_score() -> None:
    t = table()
    now = run(t, 0.0, 3, {B, C, D})
    t.on_summary(summary(B, 1, a=0, me=0), now)
    t.on_summary(summary(C, 1, a=2, me=0), now)  # C cannot reach A
    t.on_summary(summary(D, 1, me=0), now)  # D says nothing of A: unknown leg
    route = t.route(A, now)
    assert route == Route(B, True)
    assert next(p for p in t.pairs() if (p.a, p.b) == (ME, A)).state == LinkState.RELAYED


def test_the_destination_summary_rules_a_relay_out_too() -> None:
    t = table()
    now = run(t, 0.0, 3, {B, C, D})
    t.on_summary(summary(B, 1, a=0), now)
    t.on_summary(summary(A, 1, b=1), now)  # A's own view: its path to B is broken
    t.on_summary(summary(C, 1, a=0), now)
    assert t.route(A, now) == Route(C, True)


def test_a_relay_is_sticky_and_a_failed_one_is_replaced_then_retried_later() -> None:
    t = table()
    now = run(t, 0.0, 3, {B, C, D})
    t.on_summary(summary(B, 1, a=0), now)
    t.on_summary(summary(C, 1, a=0), now)
    first = t.route(A, now).via
    assert first == B  # equal scores: the lower id
    # C becomes a little better on paper: B stays (frames keep their order).
    t.on_summary(LinkSummary(C, 2, (LinkEntry(A, 0, "", 0.01, 1.0),)), now)
    assert t.route(A, now).via == B
    t.relay_failed(A, B, now)
    assert t.route(A, now).via == C
    t.relay_failed(A, C, now)
    assert t.route(A, now).via == D  # the unknown leg, as a last resort
    t.relay_failed(A, D, now)
    assert t.route(A, now) == Route("", True)  # down: nothing reaches both
    assert t.route(A, now + CFG.relay_retry + 0.1).via in (B, C)


def test_a_relay_whose_leg_to_us_breaks_is_not_used() -> None:
    t = table()
    now = run(t, 0.0, 3, {C, D})  # A and B both broken
    t.on_summary(summary(B, 1, a=0), now)
    t.on_summary(summary(C, 1, a=0), now)
    assert t.route(A, now).via == C


def test_summaries_expire_and_older_versions_are_ignored() -> None:
    t = table()
    t.on_summary(summary(B, 5, a=2), 0.0)
    t.on_summary(summary(B, 4, a=0), 0.1)
    assert [(p.a, p.b, p.state) for p in t.pairs() if p.a == B] == [(B, A, LinkState.DOWN)]
    t.tick(CFG.summary_ttl + 0.5)
    assert [p for p in t.pairs() if p.a == B] == []


def test_our_summary_lists_broken_links_first_and_is_bounded() -> None:
    many = tuple(f"n{i:02d}" for i in range(15))
    t = table(many)
    now = 0.0
    for _ in range(3):
        now = run(t, now, 1, set(many) - {"n07"})
    s = t.summary()
    assert s.origin == ME
    assert s.links[0].peer == "n07" and s.links[0].state == LinkState.DOWN
    assert len(s.links) == CFG.max_summary_entries
    assert t.summary().version > s.version


def test_relay_score_ranks_swim_helpers_by_both_legs() -> None:
    t = table()
    run(t, 0.0, 2, {A, B, C, D})
    t.on_summary(summary(B, 1, d=0), 1.0)
    t.on_summary(summary(C, 1, d=2), 1.0)
    assert t.relay_score(B, D) > t.relay_score(A, D) > t.relay_score(C, D) == 0.0
    assert t.relay_score(D, D) == 0.0
    t.observe_indirect(D, A)
    assert t.relay_score(A, D) > t.relay_score(B, D) * 0.5


def test_rtt_is_smoothed() -> None:
    t = table()
    for node, seq in t.due_probes(0.0):
        t.on_pong(node, seq, 0.002)
    assert t.rtt(A) == pytest.approx(0.002)
    for node, seq in t.due_probes(CFG.probe_interval):
        t.on_pong(node, seq, CFG.probe_interval + 0.012)
    assert t.rtt(A) == pytest.approx(0.7 * 0.002 + 0.3 * 0.012)


def test_next_deadline_is_the_next_probe_or_timeout() -> None:
    t = table()
    assert t.next_deadline() == 0.0
    t.due_probes(0.0)
    assert t.next_deadline() == pytest.approx(CFG.probe_timeout)


@pytest.mark.parametrize("field,value", [("probe_interval", 0.0), ("broken_after", 0),
                                         ("probe_timeout", 0.6), ("rtt_smoothing", 1.5)])
def test_config_refuses_values_out_of_range(field: str, value: float) -> None:
    changes: dict[str, Any] = {field: value}
    with pytest.raises(ConfigError):
        dataclasses.replace(CFG, **changes).validate()


def test_profiles_validate() -> None:
    assert LinkConfig.local().validate().probe_interval < CFG.probe_interval


def test_swim_ranks_its_indirect_probe_helpers_by_the_relay_score() -> None:
    from agent.swim.probe import rank_helpers

    t = table()
    run(t, 0.0, 2, {A, B, C, D})
    t.on_summary(summary(B, 1, d=0), 1.0)
    t.on_summary(summary(C, 1, d=2), 1.0)
    pool = [C, A, B]  # SWIM's random sample
    assert rank_helpers(pool, 2, str, D, t.relay_score) == [B, A]
    assert rank_helpers(pool, 2, str, D, None) == [C, A]  # no link state: the random order


def test_an_unchanged_summary_waits_for_the_refresh_a_changed_one_goes_at_the_next_tick() -> None:
    t = table()
    now = run(t, 0.0, 2, {A, B, C, D})
    assert t.summary_due(CFG.summary_refresh)  # nothing sent yet: the first goes on refresh
    t.summary()
    assert not t.summary_due(CFG.summary_interval)  # same links: no datagram each second
    assert t.summary_due(CFG.summary_refresh)
    now = run(t, now, 2, {B, C, D})  # A's path breaks
    assert t.broken_peers() == [A]
    assert not t.summary_due(CFG.summary_interval / 2)  # never between ticks
    assert t.summary_due(CFG.summary_interval)
    t.summary()
    assert not t.summary_due(CFG.summary_interval)
    run(t, now, 1, {A, B, C, D})  # healed: a change again
    assert t.summary_due(CFG.summary_interval)


@pytest.mark.parametrize(("field", "value"), [("summary_refresh", 0.5), ("summary_ttl", 2.0)])
def test_the_summary_refresh_sits_between_the_tick_and_the_ttl(field: str, value: float) -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(CFG, **{field: value}).validate()
