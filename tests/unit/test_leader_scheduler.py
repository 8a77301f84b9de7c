"""``LeaderScheduler`` directly: a round proposes ``plan_round``'s decisions as commands
without waiting for them, keeps what is in flight out of the next round, asks for bids
only when something is queued and uses the ones that arrive in time, answers bid
requests, keeps a death noted while bids were out, and registers member names.
Also ``build_snapshot`` from members and state.  The agent's parts are fakes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from agent.runtime.scheduler import LeaderScheduler, build_snapshot
from agent.sched import Bid, BidRequest, ClusterSnapshot, NodeView, SchedConfig, TaskView
from agent.state import StateMachine, cmd_node_drain, cmd_node_register, decode_command
from agent.swim.members import MemberView
from agent.swim.messages import NodeLoad, NodeMeta

NOW = 1000.0


async def eventually(what: str, cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)


async def run_ready_callbacks(rounds: int = 10) -> None:
    """Let every task that is ready run a few steps (no wall clock involved): after
    this, a proposal launched before it has reached the fake ``propose``."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def bid(node: str, cpu: float, running: int, request_id: int = 1) -> Bid:
    return Bid(request_id, "", node, 0, cpu, 1.0, 2, running, 0, 1.0, None)


class Leader:
    """A scheduler on node "a" whose snapshot, proposals and messages are recorded."""

    def __init__(
        self,
        nodes: tuple[NodeView, ...],
        tasks: tuple[TaskView, ...] = (),
        bid_timeout: float = 0.05,
        interval: float = 0.01,
    ) -> None:
        self.snap = ClusterSnapshot(nodes, tasks, NOW)
        self.proposed: list[Any] = []
        self.settled = 0
        self.sent: list[tuple[str, object]] = []
        self.replies: list[tuple[str, object]] = []
        self.commit = asyncio.Event()
        """Proposals stay in flight until this is set."""
        self.names: dict[str, str] = {}
        self.sched = LeaderScheduler(
            node_id="a", interval=interval, bid_timeout=bid_timeout, lease=10.0,
            is_leader=lambda: True, has_quorum=lambda: True, snapshot=lambda: self.snap,
            sched_config=SchedConfig, propose=self.propose,
            send_to_node=lambda node, msg: self.sent.append((node, msg)),
            reply=lambda addr, msg: self.replies.append((addr, msg)),
            local_bid=lambda request_id, task, epoch: bid("a", 1.0, 2, request_id),
            registered_name=self.names.get,
        )  # fmt: skip

    async def propose(self, data: bytes) -> None:
        self.proposed.append(decode_command(data).body)
        await self.commit.wait()
        self.settled += 1


IDLE = (NodeView("a", slots=2), NodeView("b", slots=2), NodeView("c", slots=2, alive=False))


async def test_a_round_proposes_its_decisions_and_leaves_them_alone_until_committed() -> None:
    leader = Leader(IDLE, (TaskView("q1"),))
    assert await leader.sched.run_round() is False
    await run_ready_callbacks()
    (place,) = leader.proposed
    assert (place.OP, place.tasks, place.nodes, place.epochs) == ("task.place", ("q1",), ("b",), (1,))
    leader.sent.clear()
    await leader.sched.run_round()  # q1 is in flight: not placed twice, no bids asked
    await run_ready_callbacks()
    assert len(leader.proposed) == 1 and not leader.sent
    leader.commit.set()
    await eventually("the assignment settles", lambda: leader.settled == 1)
    await run_ready_callbacks()
    await leader.sched.run_round()  # settled (the fake state never changed): planned again
    await run_ready_callbacks()
    assert len(leader.proposed) == 2
    await leader.sched.close()


async def test_bids_are_asked_of_live_peers_and_late_ones_ignored() -> None:
    leader = Leader(IDLE, (TaskView("q1"),))
    leader.commit.set()
    round_ = asyncio.create_task(leader.sched.run_round())
    await eventually("a bid request is sent", lambda: bool(leader.sent))
    ((to, request),) = leader.sent  # b only: c is dead, a answers itself
    assert to == "b" and isinstance(request, BidRequest)
    # b is idle by its own account, a (ourselves) is full: b wins.
    leader.sched.on_sched_message("b:1", bid("b", 0.0, 0, request.request_id))
    await round_
    await run_ready_callbacks()
    (place,) = leader.proposed
    assert place.nodes == ("b",)
    leader.sched.on_sched_message("b:1", bid("b", 0.0, 0, request.request_id))  # too late
    await leader.sched.close()


async def test_the_round_goes_on_once_every_asked_host_has_bid() -> None:
    # A bid timeout no test would wait out: the round may end only because b answered.
    leader = Leader(IDLE, (TaskView("q1"),), bid_timeout=600.0)
    leader.commit.set()
    round_ = asyncio.create_task(leader.sched.run_round())
    await eventually("a bid request is sent", lambda: bool(leader.sent))
    ((_, request),) = leader.sent
    leader.sched.on_sched_message("x:1", bid("x", 0.0, 0, request.request_id))  # not asked
    await run_ready_callbacks()
    assert not round_.done()
    leader.sched.on_sched_message("b:1", bid("b", 0.0, 0, request.request_id))
    await asyncio.wait_for(round_, 5.0)
    await leader.sched.close()


async def test_a_wake_runs_a_round_without_waiting_for_the_interval() -> None:
    leader = Leader(IDLE, bid_timeout=0.01, interval=600.0)
    leader.commit.set()
    leader.sched.start()
    await asyncio.sleep(0.05)  # the loop waits out its first (long) interval
    leader.snap = ClusterSnapshot(IDLE, (TaskView("q1"),), NOW)  # a submit was applied
    leader.sched.wake()
    await eventually("the woken round places q1", lambda: bool(leader.proposed))
    assert leader.proposed[0].tasks == ("q1",)
    await leader.sched.close()


async def test_without_queued_tasks_no_bids_are_asked() -> None:
    leader = Leader(IDLE)
    await leader.sched.run_round()
    assert leader.sent == [] and leader.proposed == []


async def test_a_bid_request_is_answered_with_the_local_bid() -> None:
    leader = Leader(IDLE)
    leader.sched.on_sched_message("x:1", BidRequest(7, "", (), 0))
    assert leader.replies == [("x:1", bid("a", 1.0, 2, 7))]


async def test_deaths_are_tracked_and_one_noted_while_bids_were_out_is_kept() -> None:
    leader = Leader(IDLE, (TaskView("q1"),))
    leader.sched.dead_since = {"b": 5.0}  # b is alive in the snapshot: forgotten
    leader.commit.set()
    round_ = asyncio.create_task(leader.sched.run_round())
    await eventually("bids are asked for", lambda: bool(leader.sent))
    leader.sched.on_member_down("d")
    await round_
    assert set(leader.sched.dead_since) == {"c", "d"} and leader.sched.dead_since["c"] == NOW
    await leader.sched.close()


def member(node_id: str, name: str, state: str = "alive", cpu: float = 0.5) -> MemberView:
    meta = NodeMeta(name, f"{name}:1", ("gpu",), 3, "0", "none")
    load = NodeLoad(cpu, 0.0, 0, 25.0, 0, 0)
    return MemberView(node_id, meta.addr, meta, load, state, 1, None, 0.0)


async def test_the_leader_registers_every_unknown_alive_member_at_once() -> None:
    leader = Leader(IDLE)
    leader.commit.set()
    leader.names["n1"] = "one"
    await leader.sched.register_members(
        [member("n1", "one"), member("n2", "two", "dead"), member("n3", "three"),
         member("n4", "four")]
    )  # fmt: skip
    assert [(b.OP, b.node, b.name) for b in leader.proposed] == [
        ("node.register", "n3", "three"), ("node.register", "n4", "four")
    ]


def test_the_snapshot_joins_gossip_with_the_replicated_state() -> None:
    sm = StateMachine()
    for i, cmd in enumerate([cmd_node_register("n1", "one", "", 0.0),
                             cmd_node_drain("n1", "", 0.0)], 1):  # fmt: skip
        assert sm.apply(i, cmd).ok
    members = [member("n1", "one"), member("n2", "two", "suspect"), member("n3", "x", "left")]
    snap = build_snapshot(members, sm, True, NOW)
    one, two = snap.nodes
    assert (one.id, one.draining, one.alive, one.slots, one.cpu, one.mem_free) == (
        "n1", True, True, 3, 0.5, 0.75
    )
    assert (two.id, two.alive, two.caps) == ("n2", False, frozenset({"gpu"}))
    assert snap.now == NOW and build_snapshot(members, sm, False, NOW).tasks == ()
