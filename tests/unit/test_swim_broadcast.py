"""Broadcast queue bounds, invalidation, transmit limits; size estimate vs the codec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.swim.broadcast import MAX_MISSES, BroadcastQueue
from agent.swim.messages import (
    Ack,
    Alive,
    Dead,
    Gossip,
    LoadReport,
    MemberState,
    NodeLoad,
    NodeMeta,
    Piggyback,
    Ping,
    PushPull,
    PushPullState,
    Suspect,
)
from agent.swim.sizing import message_size, value_size

META = NodeMeta("web1", "198.18.0.1:7900", ("gpu", "ssd"), 8, "0.1.0", "voter")


def node(i: int) -> str:
    return f"{i:032x}"


def alive(i: int, inc: int = 0) -> Alive:
    return Alive(inc, node(i), f"198.18.0.{i % 250}:7900", META)


def test_newer_broadcast_about_a_node_replaces_the_older() -> None:
    q = BroadcastQueue(100)
    q.queue(alive(1, 0))
    q.queue(Suspect(0, node(1), node(2)))
    assert len(q) == 1
    q.queue(Dead(0, node(1), node(2)))
    sel = q.select(1400, transmit_limit=3)
    assert sel.dead == [Dead(0, node(1), node(2))] and not sel.alive and not sel.suspect
    # Loads are keyed apart from membership news about the same node.
    q.queue(LoadReport(node(1), 0, 1, NodeLoad(0.1, 0.2, 1, 2.0, 0, 0)))
    q.queue(alive(1, 1))
    assert len(q) == 2


def test_each_broadcast_is_sent_exactly_transmit_limit_times() -> None:
    q = BroadcastQueue(100)
    for i in range(5):
        q.queue(alive(i))
    sent: dict[str, int] = {}
    for _ in range(20):
        for a in q.select(1400, transmit_limit=4).alive:
            sent[a.node] = sent.get(a.node, 0) + 1
    assert sent == {node(i): 4 for i in range(5)}
    assert len(q) == 0


def test_least_sent_then_newest_first_and_budget_respected() -> None:
    q = BroadcastQueue(100)
    for i in range(30):
        q.queue(alive(i))
    one = value_size(alive(0))
    sel = q.select(3 * one + 5, transmit_limit=10)
    assert [a.node for a in sel.alive] == [node(29), node(28), node(27)]
    assert sel.size <= 3 * one + 5
    q.queue(alive(100))
    sel = q.select(value_size(alive(100)) + value_size(alive(26)), transmit_limit=10)
    # the fresh item and the newest never-sent one come before anything sent once
    assert [a.node for a in sel.alive] == [node(100), node(26)]


def test_queue_is_bounded_dropping_most_sent_oldest_first() -> None:
    q = BroadcastQueue(16)
    for i in range(10):
        q.queue(alive(i))
    q.select(10 * value_size(alive(0)), transmit_limit=100)  # all sent once
    for i in range(10, 30):
        q.queue(alive(i))
    assert len(q) == 16
    assert q.dropped == 14
    kept = {a.node for a in q.select(100_000, transmit_limit=100).alive}
    assert kept == {node(i) for i in range(14, 30)}


def test_a_selection_stops_after_max_misses_items_that_do_not_fit() -> None:
    """A small budget does not scan a long queue of items that cannot fit: after
    MAX_MISSES misses the selection gives up, even if a small item waits further on,
    and the skipped items keep their place (none is counted as sent)."""
    q = BroadcastQueue(1000)
    q.queue(Suspect(0, node(0), node(1)))  # oldest: scanned last
    for i in range(1, MAX_MISSES + 1):
        q.queue(alive(i))
    small = value_size(Suspect(0, node(0), node(1)))
    assert q.select(small, transmit_limit=5).suspect == []
    q.queue(alive(MAX_MISSES + 1, inc=1))  # unrelated news does not unblock it either
    assert len(q.select(small, transmit_limit=5)) == 0
    # With one miss fewer in front of it the small item is found.
    q2 = BroadcastQueue(1000)
    q2.queue(Suspect(0, node(0), node(1)))
    for i in range(1, MAX_MISSES):
        q2.queue(alive(i))
    assert q2.select(small, transmit_limit=5).suspect == [Suspect(0, node(0), node(1))]
    assert len(q2) == MAX_MISSES


def test_zero_budget_selects_nothing() -> None:
    q = BroadcastQueue(4)
    q.queue(alive(1))
    assert len(q.select(0, 3)) == 0
    assert len(q.select(10, 3)) == 0  # too small for the item
    assert len(q) == 1


# --------------------------------------------------------------------------- sizing

ids = st.text(alphabet="0123456789abcdef", min_size=0, max_size=40)
texts = st.text(max_size=60)
ints = st.integers(min_value=0, max_value=2**63 - 1)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
metas = st.builds(NodeMeta, texts, texts, st.tuples(texts, texts).map(tuple), ints, texts, texts)
loads = st.builds(LoadReport, ids, ints, ints, st.builds(NodeLoad, floats, floats, ints, floats, ints, ints))
piggies = st.builds(
    Piggyback,
    st.lists(st.builds(Alive, ints, ids, texts, metas), max_size=20).map(tuple),
    st.lists(st.builds(Suspect, ints, ids, ids), max_size=20).map(tuple),
    st.lists(st.builds(Dead, ints, ids, ids), max_size=3).map(tuple),
    st.lists(loads, max_size=3).map(tuple),
)
messages = st.one_of(
    st.builds(Ping, ints, ids, ids, texts, st.booleans(), st.none() | loads, piggies),
    st.builds(Ack, ints, ids, ids, st.none() | loads, piggies),
    st.builds(Gossip, ids, piggies),
    st.builds(
        PushPull,
        ids,
        texts,
        st.booleans(),
        st.booleans(),
        st.lists(
            st.builds(PushPullState, ids, texts, ints, st.sampled_from(MemberState), metas),
            max_size=20,
        ).map(tuple),
    ),
)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_size_estimate_is_an_upper_bound_of_the_codec(msg: object) -> None:
    wire = pytest.importorskip("agent.wire")
    wire.registry_loaded()
    assert len(wire.encode(msg)) <= message_size(msg)


def test_size_estimate_is_close_for_typical_messages() -> None:
    wire = pytest.importorskip("agent.wire")
    wire.registry_loaded()
    msg = Gossip(node(1), Piggyback(tuple(alive(i, i) for i in range(6))))
    actual, estimate = len(wire.encode(msg)), message_size(msg)
    assert actual <= estimate <= actual * 1.1 + 20
