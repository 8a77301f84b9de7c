"""User events (issue 16): the sans-IO core over an in-memory network with loss,
plus RTT-based leader placement (topology.plan)."""

from __future__ import annotations

import random

import pytest

from agent import wire
from agent.runtime.event_messages import EventAck, LeaderMove, RttReport, UserEvent
from agent.runtime.topology import MIN_GAIN_MS, plan, steer_clear
from agent.runtime.user_events import UserEvents, UserEventsConfig


class Net:
    """N cores; ``flush`` delivers queued messages (dropping those ``drop`` says to)."""

    def __init__(self, n: int, seed: int = 1, config: UserEventsConfig | None = None) -> None:
        self.ids = [f"node{i}" for i in range(n)]
        self.cores = {
            i: UserEvents(i, i.replace("node", "n"), config, rng=random.Random(seed + k))
            for k, i in enumerate(self.ids)
        }
        self.queue: list[tuple[str, str, object]] = []
        self.sent = 0
        self.drop = lambda src, dst, msg: False

    def post(self, src: str, sends: list[tuple[str, object]]) -> None:
        for dst, msg in sends:
            self.sent += 1
            if not self.drop(src, dst, msg):
                self.queue.append((src, dst, msg))

    def flush(self) -> None:
        while self.queue:
            src, dst, msg = self.queue.pop(0)
            core = self.cores[dst]
            if isinstance(msg, UserEvent):
                self.post(dst, core.receive(100.0, msg, src, self.ids))
            elif isinstance(msg, EventAck):
                core.ack(msg)

    def publish(self, origin: str, name: str = "hello", to: str = "", now: float = 0.0) -> str:
        event_id = f"e{self.sent}-{origin}"
        out, sends = self.cores[origin].publish(
            now, 100.0, event_id, name, b"payload", to=to, sender="agent-x", peers=self.ids)
        self.post(origin, sends)
        return out.event.id


def received(net: Net, event_id: str) -> dict[str, int]:
    return {i: sum(1 for r in c.inbox() if r["id"] == event_id) for i, c in net.cores.items()}


def test_an_event_for_all_reaches_every_node_exactly_once() -> None:
    net = Net(12)
    event_id = net.publish("node0")
    net.flush()
    assert set(received(net, event_id).values()) == {1}
    out = net.cores["node0"].outgoing(event_id)
    assert out is not None and out.delivered == set(net.ids) and not out.pending
    row = net.cores["node5"].inbox()[0]
    assert (row["from"], row["origin"], row["name"], row["payload"]) == ("agent-x", "n0", "hello", b"payload")


def test_lost_copies_and_acks_are_repaired_by_resends_without_double_delivery() -> None:
    net = Net(6, seed=3)
    rng = random.Random(7)
    net.drop = lambda src, dst, msg: rng.random() < 0.5  # half of everything is lost
    event_id = net.publish("node0")
    net.flush()
    origin = net.cores["node0"]
    for step in range(1, origin.config.retransmits + 1):
        net.post("node0", origin.tick(step * origin.config.retransmit_interval))
        net.flush()
    counts = received(net, event_id)
    assert max(counts.values()) == 1  # never twice
    out = origin.outgoing(event_id)
    assert out is not None
    # Whoever acknowledged has it; with 6 resends at 50% loss, all but bad luck arrive.
    assert {i for i, c in counts.items() if c} >= out.delivered
    assert len(out.delivered) >= 5


def test_an_event_for_one_node_goes_only_there() -> None:
    net = Net(5)
    event_id = net.publish("node1", to="node3")
    net.flush()
    assert received(net, event_id) == {i: int(i == "node3") for i in net.ids}
    out = net.cores["node1"].outgoing(event_id)
    assert out is not None and out.expected == out.delivered == {"node3"}


def test_resends_stop_after_the_bound_and_the_node_counts_as_pending() -> None:
    net = Net(3)
    net.drop = lambda src, dst, msg: dst == "node2"
    event_id = net.publish("node0")
    net.flush()
    origin = net.cores["node0"]
    for step in range(1, 20):
        net.post("node0", origin.tick(step * 10.0))
        net.flush()
    out = origin.outgoing(event_id)
    assert out is not None and out.pending == {"node2"} and out.tries == origin.config.retransmits


def test_bounds_inbox_and_dedup() -> None:
    config = UserEventsConfig(inbox=3, seen=100, max_payload=8)
    core = UserEvents("a", "a", config)
    for i in range(5):
        core.receive(1.0, UserEvent(f"id{i}", "b", "b", "b", "x", b"", "", 0.0), "b", ["a", "b"])
    assert [r["seq"] for r in core.inbox()] == [3, 4, 5] and core.dropped == 2
    assert [r["seq"] for r in core.inbox(since=4)] == [5]
    # A duplicate is acked again but not delivered again.
    again = core.receive(1.0, UserEvent("id4", "b", "b", "b", "x", b"", "", 0.0), "b", ["a", "b"])
    assert again == [("b", EventAck("id4", "a"))] and core.duplicates == 1 and core.last_seq == 5
    with pytest.raises(ValueError, match="payload exceeds 8 bytes"):
        core.publish(0.0, 0.0, "x", "n", b"123456789", peers=["a"])
    with pytest.raises(ValueError, match="name must be"):
        core.publish(0.0, 0.0, "x", "", b"", peers=["a"])
    big = UserEvent("big", "b", "b", "b", "x", b"123456789", "", 0.0)
    assert core.receive(1.0, big, "b", ["a", "b"]) == []  # over the bound: dropped, not acked


def test_messages_round_trip_the_wire_codec() -> None:
    for msg in (
        UserEvent("id", "o", "n1", "agent", "name", b"\x00\x01", "", 12.5),
        EventAck("id", "node"),
        RttReport(3, "node", {"a": 0.25, "b": 1.0}),
        LeaderMove(4, "origin", "to"),
    ):
        assert wire.decode(wire.encode(msg)) == msg


def test_plan_moves_leadership_only_for_a_clear_gain() -> None:
    voters = ["a", "b", "c"]
    near = {"a": {"b": 5.0, "c": 5.0}, "b": {"a": 5.0, "c": 0.4}, "c": {"a": 5.0, "b": 0.4}}
    decided = plan("a", voters, near)
    assert decided.move and decided.best in ("b", "c")
    assert decided.scores["a"] == pytest.approx(5.0)
    assert decided.scores["b"] == pytest.approx(2.7)
    flat = {v: {u: 0.3 for u in voters if u != v} for v in voters}
    flat["b"] = {"a": 0.3 - MIN_GAIN_MS / 4, "c": 0.3 - MIN_GAIN_MS / 4}
    assert not plan("a", voters, flat).move  # jitter-sized gains do not move it
    assert not plan("b", voters, near).move or plan("b", voters, near).best == "c"
    assert plan("a", ["a"], {}).reason.startswith("fewer than two voters")
    assert plan("a", voters, {}).reason.startswith("no RTT measurements")


def test_steer_clear_moves_leadership_off_a_failed_over_node() -> None:
    voters = ["a", "b", "c"]
    flat = {v: {u: 0.3 for u in voters if u != v} for v in voters}
    decided = steer_clear(plan("a", voters, flat), "a", "a", "n-a")
    assert decided.move and decided.best in ("b", "c")
    kept = steer_clear(plan("b", voters, flat), "b", "a", "n-a")
    assert not kept.move
