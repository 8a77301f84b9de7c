"""The Wing-Gong/porcupine checker on histories whose verdict is known."""

from __future__ import annotations

import math

from sim.linearizability import UNKNOWN, Operation, check_kv, check_register


def op(kind: str, args: tuple[object, ...], out: object, call: float, ret: float) -> Operation:
    return Operation(0, "k", kind, args, out, call, ret)


def test_sequential_history_is_linearizable() -> None:
    h = [
        op("put", ("a",), None, 1, 2),
        op("get", (), "a", 3, 4),
        op("cas", ("a", "b"), True, 5, 6),
        op("get", (), "b", 7, 8),
    ]
    assert check_register(h)


def test_stale_read_after_write_returned_is_not_linearizable() -> None:
    h = [op("put", ("a",), None, 1, 2), op("get", (), None, 3, 4)]
    assert not check_register(h)


def test_concurrent_write_may_be_seen_or_not() -> None:
    # put overlaps both reads: one sees the old value, the later one the new.
    h = [
        op("put", ("a",), None, 1, 10),
        op("get", (), None, 2, 3),
        op("get", (), "a", 4, 5),
    ]
    assert check_register(h)


def test_reads_cannot_go_back_in_time() -> None:
    # Once a read saw "a", a later non-overlapping read cannot see the older None.
    h = [
        op("put", ("a",), None, 1, 10),
        op("get", (), "a", 2, 3),
        op("get", (), None, 4, 5),
    ]
    assert not check_register(h)


def test_cas_results_must_be_consistent() -> None:
    ok = [
        op("put", ("a",), None, 1, 2),
        op("cas", ("a", "b"), True, 3, 6),
        op("cas", ("a", "c"), False, 4, 7),
        op("get", (), "b", 8, 9),
    ]
    assert check_register(ok)
    both_win = [
        op("put", ("a",), None, 1, 2),
        op("cas", ("a", "b"), True, 3, 6),
        op("cas", ("a", "c"), True, 4, 7),
    ]
    assert not check_register(both_win)


def test_unknown_outcome_may_or_may_not_have_happened() -> None:
    maybe = op("put", ("x",), UNKNOWN, 1, math.inf)
    assert check_register([maybe, op("get", (), "x", 5, 6)])
    assert check_register([maybe, op("get", (), None, 5, 6)])
    # ...but not both ways, in that order.
    assert not check_register([maybe, op("get", (), "x", 5, 6), op("get", (), None, 7, 8)])


def test_per_key_check_reports_the_bad_key() -> None:
    good = Operation(0, "a", "put", ("1",), None, 1, 2)
    bad_w = Operation(1, "b", "put", ("2",), None, 3, 4)
    bad_r = Operation(2, "b", "get", (), "3", 5, 6)
    assert check_kv([good, bad_w, bad_r]) == ["b"]


def test_large_concurrent_history_is_fast() -> None:
    # 3 clients, 120 overlapping puts then reads: memoisation keeps this quick.
    h: list[Operation] = []
    t = 0
    for i in range(40):
        for c in range(3):
            h.append(Operation(c, "k", "put", (f"v{i}-{c}",), None, t + c, t + 10 + c))
        t += 5
    h.append(Operation(9, "k", "get", (), "v39-2", t + 100, t + 101))
    assert check_register(h)
