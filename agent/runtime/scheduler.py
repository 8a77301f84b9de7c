"""The leader's scheduler at run time: snapshot, bids, ``plan_round``, propose.

Theory of operation: every ``interval`` seconds, or at once when an applied
entry may have made something placeable (``wake``: a submit, a requeue, an
undrained or new node), while this node leads with a quorum, one round runs:

1. ``snapshot()`` -- the ``ClusterSnapshot`` (``build_snapshot``: SWIM's
   members with their gossiped load and metadata, the replicated tasks, drain
   flags and per-host history);
2. bids -- when something is queued, one ``BidRequest`` per live host for
   the whole round, answered with fresh local figures; after ``bid_timeout``
   the round goes on with what arrived (gossiped figures stand in for the rest);
3. ``plan_round`` (``agent/sched/round.py``, pure) decides failover, placement
   and moves, and carries the heat state and death times to the next round;
4. the decisions become commands (``round_commands``) and are proposed
   without waiting for the commit: the round's placements together in one
   ``task.place`` entry (each item fenced as a ``task.assign`` of its own
   would be), failovers and moves one entry each.

Rounds overlap: the next round may run while earlier decisions are still in
the log.  What they decide about (task ids, dead node ids) is ``busy`` until
the proposal settles, and ``plan_round`` leaves busy things alone; the state
machine fences each decision on the epoch it was planned against anyway.  A
round that reached its cap runs the next at once; otherwise the loop sleeps.

The scheduler also answers other leaders' bid requests (every host does) and,
as leader, registers the display names of members the state does not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from agent.errors import MeshError
from agent.sched import (
    Assign,
    Bid,
    BidRequest,
    ClusterSnapshot,
    Decision,
    FailNode,
    HeatState,
    Migrate,
    NodeView,
    SchedConfig,
    TaskView,
    needs_bids,
    plan_round,
)
from agent.state import builders
from agent.state.commands import MAX_PLACEMENTS
from agent.swim.members import MemberView

log = logging.getLogger(__name__)


class SchedState(Protocol):
    """The replicated state, as the scheduler's snapshot reads it."""

    def node_load(self) -> dict[str, dict[str, int]]: ...

    def node_perf(self, node_id: str) -> tuple[float, float | None]: ...

    def is_draining(self, node_id: str) -> bool: ...

    def sched_tasks(self) -> tuple[TaskView, ...]: ...


def build_snapshot(
    members: Iterable[MemberView], state: SchedState, with_tasks: bool, now: float
) -> ClusterSnapshot:
    """The scheduler's view at ``now``; ``with_tasks=False`` skips the O(tasks) parts
    (task list and per-node counts) for callers that only need the members."""
    loads = state.node_load() if with_tasks else {}
    nodes = []
    for m in members:
        if m.state == "left":
            continue
        success, mean = state.node_perf(m.id)
        counts = loads.get(m.id, {})
        load = m.load
        mem_free = 1.0 - (load.mem_percent / 100.0) if load is not None else 1.0
        nodes.append(
            NodeView(
                id=m.id, name=m.meta.name, alive=m.state == "alive",
                draining=state.is_draining(m.id), caps=frozenset(m.meta.caps),
                slots=max(1, m.meta.slots), running=int(counts.get("running", 0)),
                queued=int(counts.get("queued", 0)),
                cpu=load.cpu if load is not None else 0.0, mem_free=mem_free,
                success_rate=success, mean_duration=mean,
            )
        )
    tasks = state.sched_tasks() if with_tasks else ()
    snapshot = ClusterSnapshot(tuple(nodes), tasks, now)
    queued = getattr(state, "sched_queued", None)  # (a state that keeps its queue apart)
    if with_tasks and queued is not None:
        snapshot.note_queued(queued())
    return snapshot


def round_commands(decisions: Iterable[Decision], at: float) -> list[bytes]:
    """The commands that carry out a round's decisions, in order: every ``Assign`` in
    ``task.place`` entries of up to ``MAX_PLACEMENTS`` (where the first one stood),
    the other decisions one command each."""
    out: list[bytes] = []
    placements: list[tuple[str, str, int]] = []
    slot = -1
    for decision in decisions:
        if isinstance(decision, Assign):
            slot = len(out) if slot < 0 else slot
            placements.append((decision.task, decision.node, decision.epoch))
        else:
            out.append(decision_command(decision, at))
    out[slot:slot] = [
        builders.cmd_task_place(placements[i : i + MAX_PLACEMENTS], "", at)
        for i in range(0, len(placements), MAX_PLACEMENTS)
    ]
    return out


def decision_command(decision: Decision, at: float) -> bytes:
    """The command that carries out one decision of a round (proposed at ``at``)."""
    match decision:  # the most frequent first
        case Assign():
            return builders.cmd_task_assign(
                decision.task, decision.node, decision.epoch, "placed", "", at
            )
        case FailNode():
            return builders.cmd_task_fail_node(decision.node, decision.targets, "", at)
        case Migrate():
            return builders.cmd_task_migrate(
                decision.task, decision.to, str(decision.reason), "", at, decision.epoch
            )


class LeaderScheduler:
    """The placement loop (leader only), bids both ways, and member registration."""

    def __init__(
        self,
        *,
        node_id: str,
        interval: float,
        bid_timeout: float,
        lease: float,
        is_leader: Callable[[], bool],
        has_quorum: Callable[[], bool],
        snapshot: Callable[[], ClusterSnapshot],
        sched_config: Callable[[], SchedConfig],
        propose: Callable[[bytes], Awaitable[object]],
        send_to_node: Callable[[str, object], None],
        reply: Callable[[str, object], object],
        local_bid: Callable[[int, str, int], Bid],
        registered_name: Callable[[str], object],
    ) -> None:
        """``interval``, ``bid_timeout`` and ``lease`` are seconds.  ``propose`` commits
        on this (leader) node; ``reply(addr, msg)`` answers a peer over its stream;
        ``local_bid(request_id, task, epoch)`` is this host's bid;
        ``registered_name(node_id)`` is the name the state holds for a node (or None)."""
        self.node_id = node_id
        self.interval = interval
        self.bid_timeout = bid_timeout
        self.lease = lease
        self._is_leader = is_leader
        self._has_quorum = has_quorum
        self._snapshot = snapshot
        self._sched_config = sched_config
        self._propose = propose
        self._send_to_node = send_to_node
        self._reply = reply
        self._local_bid = local_bid
        self._registered_name = registered_name
        self.heat = HeatState()
        self.dead_since: dict[str, float] = {}
        """Node id -> when this node first saw it dead (wall clock, seconds)."""
        self._inflight: set[str] = set()
        """Task ids (and dead node ids) with a decision proposed, not yet committed."""
        self._placing: dict[str, str] = {}
        """Task id -> node of the placements among them (counted by the next rounds)."""
        self._proposals: set[asyncio.Task[None]] = set()
        self._bids: dict[int, dict[str, Bid]] = {}
        self._bid_waits: dict[int, tuple[set[str], asyncio.Event]] = {}
        """Request id -> (hosts asked that have not answered, set when none is left)."""
        self._bid_ids = itertools.count(1)
        self._loop: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()

    def start(self) -> None:
        self._loop = asyncio.create_task(self._leader_loop(), name="sched")

    async def close(self) -> None:
        tasks = [*([self._loop] if self._loop is not None else []), *self._proposals]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def on_member_down(self, node_id: str) -> None:
        self.dead_since.setdefault(node_id, time.time())

    # ------------------------------------------------------------ rounds

    def wake(self) -> None:
        """Something new may be placeable (``ApplyResult.placeable``): run a round now
        instead of at the next ``interval``.  Wakes during a round make one more round
        after it, so a stream of submits costs a round per round's time, not per submit."""
        if self._is_leader():
            self._woken.set()

    async def _leader_loop(self) -> None:
        backlog = False
        while True:
            # A round that hit the proposal cap left work queued: go again at once.
            if backlog:
                await asyncio.sleep(0)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), self.interval)
            self._woken.clear()
            backlog = False
            if not self._is_leader() or not self._has_quorum():
                continue
            try:
                backlog = await self.run_round()
            except Exception:
                log.exception("scheduling round failed")

    async def run_round(self) -> bool:
        """One round; True if it reached its cap (run the next at once)."""
        snap = self._snapshot()
        cfg = self._sched_config()
        # What is in flight and who is dead as of the snapshot: the plan is made
        # against that instant, even though the bids take a moment to arrive.
        busy = frozenset(self._inflight)
        # Taken with the snapshot too: a placement that commits while the bids are out
        # is not in the snapshot's counts, and must still count on its host.
        placing = {t: n for t, n in self._placing.items() if t in busy}
        dead_before = dict(self.dead_since)
        bids = await self.collect_bids(snap) if needs_bids(snap, busy) else None
        plan = plan_round(
            snap, self.heat, cfg, dead_before, busy, self.lease, bids, placing=placing
        )
        self.heat = plan.heat
        # A death noted while the bids were out (on_member_down) is kept.
        noted = {n: t for n, t in self.dead_since.items() if n not in dead_before}
        self.dead_since = {**noted, **plan.dead_since}
        self._launch(plan.decisions, snap.now)
        return plan.backlog

    def _launch(self, decisions: tuple[Decision, ...], at: float) -> None:
        """Propose a round's decisions without waiting for them to commit."""
        if not decisions:
            return
        commands = round_commands(decisions, at)
        keys = [d.key for d in decisions]
        self._inflight.update(keys)
        self._placing.update((d.task, d.node) for d in decisions if isinstance(d, Assign))
        # Kept in self._proposals until done (and cancelled by close()).
        proposal = asyncio.create_task(self._propose_all(commands, keys))
        self._proposals.add(proposal)
        proposal.add_done_callback(self._proposals.discard)

    async def _propose_all(self, commands: list[bytes], keys: list[str]) -> None:
        try:
            results = await asyncio.gather(
                *(self._propose(c) for c in commands), return_exceptions=True
            )
        finally:
            self._inflight.difference_update(keys)
            for key in keys:
                self._placing.pop(key, None)
        for res in results:
            if isinstance(res, BaseException) and not isinstance(res, MeshError):
                log.error("placement proposal failed: %r", res)

    # ------------------------------------------------------------ bids

    async def collect_bids(self, snap: ClusterSnapshot) -> dict[str, Bid]:
        """One bid per live host for this round: ours at once, the others' until each
        asked host has answered or ``bid_timeout`` has passed, whichever is first (the
        timeout is for the hosts that do not answer; waiting it out when all did
        only delayed the round)."""
        request_id = next(self._bid_ids)
        bucket: dict[str, Bid] = {}
        self._bids[request_id] = bucket
        asked = [n.id for n in snap.nodes if n.alive and n.id != self.node_id]
        for node_id in asked:
            self._send_to_node(node_id, BidRequest(request_id, "", (), 0))
        bucket[self.node_id] = self._local_bid(request_id, "", 0)
        if asked:
            answered = self._bid_waits[request_id] = (set(asked), asyncio.Event())
            try:
                await asyncio.wait_for(answered[1].wait(), self.bid_timeout)
            except TimeoutError:
                pass
            finally:
                self._bid_waits.pop(request_id, None)
        return self._bids.pop(request_id, {})

    def on_sched_message(self, from_addr: str, msg: object) -> None:
        """A bid request from a leader (answered), or a bid for one of our rounds."""
        if isinstance(msg, BidRequest):
            self._reply(from_addr, self._local_bid(msg.request_id, msg.task, msg.epoch))
        elif isinstance(msg, Bid):
            bucket = self._bids.get(msg.request_id)
            if bucket is not None:
                bucket[msg.node] = msg
            wait = self._bid_waits.get(msg.request_id)
            if wait is not None:
                wait[0].discard(msg.node)
                if not wait[0]:
                    wait[1].set()

    # ------------------------------------------------------------ membership

    async def register_members(self, members: list[MemberView]) -> None:
        """Leader: record the names of the alive nodes the state machine does not
        know yet, all of them at once (a cluster formed with every host as a voter
        is ready in a few seconds, and ``drain NODE`` needs the node registered)."""
        if not self._is_leader():
            return
        now = time.time()
        missing = [
            builders.cmd_node_register(m.id, m.meta.name, "", now)
            for m in members
            if m.state == "alive" and self._registered_name(m.id) != m.meta.name
        ]
        results = await asyncio.gather(*(self._propose(c) for c in missing), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException) and not isinstance(res, MeshError):
                raise res
