"""Topology optimisation: lead from the voter closest to the other voters.

Theory of operation.  Every Raft write costs the leader one round trip to a
majority of voters, so the leader should be the voter whose round-trip times
to the other voters are smallest.  ``optimize``:

1. collects each voter's RTTs to its peers (SWIM measures them from probe
   acks): this node's from its own member list, the others' with an
   ``RttRequest`` answered by an ``RttReport`` (a voter that does not answer
   within ``REPORT_TIMEOUT`` is scored from what the others measured to it);
2. scores each voter by the mean RTT between it and the other voters, each
   pair's RTT the mean of both directions' measurements (``plan``, pure);
3. moves leadership to the best voter only when it beats the current leader
   by more than ``MIN_GAIN_MS`` and ``MIN_GAIN_RATIO`` (RTT samples jitter,
   and a transfer pauses writes for a moment: only a clear gain is worth it),
   through Raft's leadership transfer -- asked of the leader with a
   ``LeaderMove`` when this node is not the leader.

It reports the scores, what it changed or why nothing needed changing.
``move_leader`` is also what ``daa_fault_tolerance``'s failover uses to move
leadership off a node.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.errors import MeshError
from agent.runtime.event_messages import LeaderMove, LeaderMoveResult, RttReport, RttRequest
from agent.runtime.ports import Leadership, Members, NodeNamer

REPORT_TIMEOUT = 1.0
"""Seconds to wait for the voters' RTT reports (a LAN answers in milliseconds)."""
MOVE_TIMEOUT = 5.0
"""Seconds to wait for the leader to accept a LeaderMove (it answers at once; the
margin is for a loaded host)."""
MIN_GAIN_MS = 0.2
"""A move must cut the leader's mean RTT to the voters by more than this (ms)..."""
MIN_GAIN_RATIO = 0.2
"""...and by more than this fraction of it."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What ``plan`` decided: the scores (mean RTT ms, None if unmeasured) and the move."""

    scores: dict[str, float | None]
    best: str | None
    move: bool
    reason: str


def pair_rtt(reports: dict[str, dict[str, float]], a: str, b: str) -> float | None:
    """The RTT between ``a`` and ``b``: the mean of what each measured to the other."""
    seen = [r for r in (reports.get(a, {}).get(b), reports.get(b, {}).get(a)) if r is not None]
    return sum(seen) / len(seen) if seen else None


def plan(leader: str, voters: list[str], reports: dict[str, dict[str, float]]) -> Plan:
    """Score every voter and decide whether leadership should move (module doc)."""
    scores: dict[str, float | None] = {}
    for v in voters:
        rtts = [r for u in voters if u != v if (r := pair_rtt(reports, v, u)) is not None]
        scores[v] = sum(rtts) / len(rtts) if rtts else None
    ranked = sorted((s, v) for v, s in scores.items() if s is not None)
    if len(voters) < 2:
        return Plan(scores, leader or None, False, "fewer than two voters: nothing to choose")
    if not ranked:
        return Plan(scores, None, False, "no RTT measurements between voters yet")
    best_score, best = ranked[0]
    current = scores.get(leader)
    if best == leader:
        return Plan(scores, best, False, "the leader already has the lowest RTT to the voters")
    if current is None:
        return Plan(scores, best, True, "the leader's RTTs to the voters are unknown")
    gain = current - best_score
    if gain > MIN_GAIN_MS and gain > MIN_GAIN_RATIO * current:
        return Plan(scores, best, True, f"{best} is {gain:.3f} ms closer to the voters on average")
    return Plan(scores, best, False, (
        f"the best voter is only {gain:.3f} ms closer than the leader "
        f"(a move needs > {MIN_GAIN_MS} ms and > {MIN_GAIN_RATIO:.0%})"))


def steer_clear(decided: Plan, leader: str, avoid: str, avoid_name: str) -> Plan:
    """``decided`` changed so that leadership leaves ``avoid`` and never moves to it."""
    others = sorted(
        (math.inf if s is None else s, v) for v, s in decided.scores.items() if v != avoid)
    if leader == avoid:
        if not others:
            return Plan(decided.scores, None, False, f"{avoid_name} is the only voter")
        return Plan(decided.scores, others[0][1], True,
                    f"{avoid_name} leads and is being failed over: leadership moves to the "
                    "closest other voter")
    if decided.best == avoid:
        return Plan(decided.scores, leader, False,
                    f"{avoid_name} does not lead; leadership stays where it is")
    return decided


class Topology:
    """RTT reports, leader moves and ``optimize`` on the agent's loop (module doc)."""

    def __init__(
        self, node_id: str, send: Callable[[str, object], None], members: Members,
        leadership: Leadership, names: NodeNamer,
    ) -> None:
        self._node_id = node_id
        self._send = send
        self._members = members
        self._leadership = leadership
        self._names = names
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    def local_rtts(self) -> dict[str, float]:
        return {
            m.id: m.rtt_ms for m in self._members.members()
            if m.rtt_ms is not None and m.state == "alive" and m.id != self._node_id
            and math.isfinite(m.rtt_ms)
        }  # fmt: skip

    def on_message(self, from_addr: str, msg: object) -> None:
        if isinstance(msg, RttRequest):
            self._send(msg.origin, RttReport(msg.request_id, self._node_id, self.local_rtts()))
        elif isinstance(msg, LeaderMove):
            self._send(msg.origin, self._answer_move(msg))
        elif isinstance(msg, RttReport | LeaderMoveResult):
            future = self._waiting.get(msg.request_id)
            if future is not None and not future.done():
                future.set_result(msg)

    def _answer_move(self, msg: LeaderMove) -> LeaderMoveResult:
        if not self._leadership.is_leader():
            return LeaderMoveResult(msg.request_id, False, "not the leader (any more)")
        if msg.to not in self._leadership.voters():
            return LeaderMoveResult(msg.request_id, False, f"{self._names.name_of(msg.to)} is not a voter")
        if msg.to == self._node_id:
            return LeaderMoveResult(msg.request_id, True, "already the leader")
        try:
            self._leadership.transfer_leadership(msg.to)
        except MeshError as exc:
            return LeaderMoveResult(msg.request_id, False, str(exc))
        return LeaderMoveResult(msg.request_id, True, "transfer started")

    async def _ask(self, node_id: str, make: Callable[[int], object], timeout: float) -> Any:
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            self._send(node_id, make(request_id))
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(request_id, None)

    async def reports(self, voters: list[str]) -> dict[str, dict[str, float]]:
        """Each voter's RTTs to its peers (node id → ms); a silent voter is left out."""
        others = [v for v in voters if v != self._node_id]
        answers = await asyncio.gather(*(
            self._ask(v, lambda rid: RttRequest(rid, self._node_id), REPORT_TIMEOUT) for v in others
        ))
        out = {r.node: dict(r.rtts) for r in answers if isinstance(r, RttReport)}
        if self._node_id in voters:
            out[self._node_id] = self.local_rtts()
        return out

    async def move_leader(self, to: str) -> tuple[bool, str]:
        """Ask for leadership to move to voter ``to`` (node id): here if this node leads,
        else of the leader.  ``(started, message)``."""
        leader = self._leadership.leader_id
        if not leader:
            return False, "no leader known (no quorum?)"
        if leader == self._node_id:
            answer = self._answer_move(LeaderMove(0, self._node_id, to))
        else:
            answer = await self._ask(leader, lambda rid: LeaderMove(rid, self._node_id, to), MOVE_TIMEOUT)
            if answer is None:
                return False, f"the leader {self._names.name_of(leader)} did not answer"
        return answer.ok, answer.message

    async def optimize(self, apply: bool = True, avoid: str = "") -> dict[str, Any]:
        """Score the voters and move leadership if that is a clear gain; with ``avoid``
        (a node name or id being failed over), leadership leaves that node whatever the
        gain and never moves to it."""
        voters = list(self._leadership.voters())
        leader = self._leadership.leader_id
        name = self._names.name_of
        decided = plan(leader, voters, await self.reports(voters))
        if avoid:
            avoid_id = self._names.resolve(avoid)
            decided = steer_clear(decided, leader, avoid_id, name(avoid_id) or avoid)
        result: dict[str, Any] = {
            "leader": name(leader),
            "voters": [name(v) or v for v in voters],
            "scores_ms": {name(v) or v: (None if s is None else round(s, 3))
                          for v, s in decided.scores.items()},
            "best": name(decided.best) if decided.best else None,
            "changed": False,
            "reason": decided.reason,
        }
        if not decided.move or decided.best is None:
            return {**result, "action": "none"}
        if not apply:
            return {**result, "action": f"would move leadership {name(leader)} -> {name(decided.best)}"}
        ok, message = await self.move_leader(decided.best)
        action = f"leadership {name(leader)} -> {name(decided.best)}: {message}"
        return {**result, "changed": ok, "action": action}
