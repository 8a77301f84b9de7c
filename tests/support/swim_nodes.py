"""Building and driving ``SwimNode`` cores by hand, for the message-by-message SWIM tests.

Node ``i`` has id ``nid(i)`` and address ``addr(i)``; ``drain`` takes a node's
pending Ready (its outbound messages and member events) and advances it.
"""

from __future__ import annotations

import random

from agent.swim import MemberEvent, Outbound, SwimConfig, SwimNode
from agent.swim.messages import MemberState, NodeMeta, PushPull, PushPullState

CFG = SwimConfig.lan()


def nid(i: int) -> str:
    return f"{i:032x}"


def addr(i: int) -> str:
    return f"198.18.0.{i}:7900"


def meta(i: int, role: str = "none") -> NodeMeta:
    return NodeMeta(f"n{i}", addr(i), (), 1, "test", role)


def make(i: int, cfg: SwimConfig = CFG, now: float = 0.0) -> SwimNode:
    return SwimNode(cfg, nid(i), meta(i), random.Random(i), now)


def drain(node: SwimNode) -> tuple[list[Outbound], list[MemberEvent]]:
    ready = node.ready()
    if ready is None:
        return [], []
    node.advance(ready)
    return ready.outbound, ready.events


def admit(node: SwimNode, others: list[int], now: float = 0.0) -> None:
    """Admit members ``others`` into ``node`` through a PushPull reply."""
    states = tuple(PushPullState(nid(i), addr(i), 0, MemberState.ALIVE, meta(i)) for i in others)
    node.step(now, addr(others[0]), PushPull(nid(others[0]), addr(others[0]), False, True, states))
    drain(node)


def state(node: SwimNode, i: int) -> MemberState | None:
    m = node.table.get(nid(i))
    return m.state if m is not None else None
