"""A linearizability checker for key-value histories (Wing & Gong, with porcupine's memoisation).

A history is a list of ``Operation``s with call and return times (unique, from
one logical clock).  An operation whose outcome is unknown (the client gave up:
timeout, crashed server) has ``ret = inf`` and ``output = UNKNOWN``: it may have
taken effect at any point after its call, or never (placing it last is then
equivalent).

The search walks the time-ordered list of call/return events, tentatively
linearizing a call whose effect is consistent with the model, and backtracking
when it meets a return whose call has not been linearized.  States already
explored — (set of linearized ops as a bitmask, model state) — are cached, which
turns the exponential search into something fast for real histories.  KV
histories are checked per key (linearizability is compositional).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

UNKNOWN: Any = object()
"""Output of an operation whose result the client never saw."""


@dataclass(frozen=True, slots=True)
class Operation:
    client: int
    key: str
    kind: str
    """``put`` (args: value) → None; ``get`` () → value or None; ``cas`` (expected, new) → bool."""
    args: tuple[Any, ...]
    output: Any
    call: float
    ret: float = math.inf


def kv_step(state: Any, op: Operation) -> tuple[bool, Any]:
    """The register model: (is the op's output consistent with ``state``?, next state)."""
    if op.kind == "put":
        return True, op.args[0]
    if op.kind == "get":
        return op.output is UNKNOWN or op.output == state, state
    if op.kind == "cas":
        expected, new = op.args
        hit = state == expected
        if op.output is UNKNOWN:
            return True, new if hit else state
        return op.output == hit, new if hit else state
    raise AssertionError(f"unknown op kind {op.kind!r}")


class _Node:
    __slots__ = ("is_call", "match", "next", "op_id", "prev", "time")

    def __init__(self, time: float, op_id: int, is_call: bool) -> None:
        self.time = time
        self.op_id = op_id
        self.is_call = is_call
        self.match: _Node | None = None
        self.prev: _Node | None = None
        self.next: _Node | None = None


class CheckBudgetExceeded(AssertionError):
    """The search took more steps than allowed: neither verdict is proven."""


def check_register(ops: list[Operation], initial: Any = None, max_steps: int = 2_000_000) -> bool:
    """Is this single-key history linearizable?  Raises CheckBudgetExceeded after
    ``max_steps`` search steps (a failing test must fail, not hang)."""
    if not ops:
        return True
    events: list[_Node] = []
    for op_id, op in enumerate(ops):
        assert op.call < op.ret, f"op {op} returns before its call"
        call, ret = _Node(op.call, op_id, True), _Node(op.ret, op_id, False)
        call.match = ret
        events += [call, ret]
    # Calls sort before returns at equal times (only the infinite returns tie).
    events.sort(key=lambda n: (n.time, not n.is_call, n.op_id))
    head = _Node(-math.inf, -1, False)
    prev = head
    for node in events:
        prev.next, node.prev = node, prev
        prev = node

    def lift(call: _Node) -> None:
        assert call.prev is not None and call.match is not None and call.match.prev is not None
        call.prev.next = call.next
        if call.next is not None:
            call.next.prev = call.prev
        ret = call.match
        ret.prev.next = ret.next
        if ret.next is not None:
            ret.next.prev = ret.prev

    def unlift(call: _Node) -> None:
        ret = call.match
        assert ret is not None and ret.prev is not None and call.prev is not None
        ret.prev.next = ret
        if ret.next is not None:
            ret.next.prev = ret
        call.prev.next = call
        if call.next is not None:
            call.next.prev = call

    state = initial
    linearized = 0
    cache: set[tuple[int, Any]] = set()
    stack: list[tuple[_Node, Any]] = []
    entry = head.next
    steps = 0
    while head.next is not None:
        assert entry is not None
        steps += 1
        if steps > max_steps:
            raise CheckBudgetExceeded(f"gave up after {max_steps} steps on {len(ops)} ops")
        if entry.is_call:
            ok, new_state = kv_step(state, ops[entry.op_id])
            if ok:
                new_linearized = linearized | (1 << entry.op_id)
                if (new_linearized, new_state) not in cache:
                    cache.add((new_linearized, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, new_linearized
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                return False
            call, state = stack.pop()
            linearized &= ~(1 << call.op_id)
            unlift(call)
            entry = call.next
    return True


def check_kv(ops: list[Operation]) -> list[str]:
    """Check a multi-key history key by key; returns the keys that are not linearizable."""
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    return [key for key, key_ops in sorted(by_key.items()) if not check_register(key_ops)]
