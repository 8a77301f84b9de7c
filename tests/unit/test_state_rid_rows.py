"""The rid cache keeps a put's usual row ``[rid, True, {"index": i}, None]`` as its
int and packs it only when a snapshot is taken or the rid is retried; a follower's
``kv.puts`` (``apply(..., answer=False)``) builds no rows (issue 14, session 7).
Neither changes what the state machine computes: the same snapshot bytes as every
row packed when cached (what ``msgpack.packb`` writes for the whole state), the
same answers to retried rids, the same eviction order at ``MAX_RIDS``."""

from __future__ import annotations

import msgpack
import pytest

from agent.state import machine
from agent.state.commands import Command, KvCas, KvPut, encode_command, encode_puts
from agent.state.machine import StateMachine

AT = 1_700_000_000.0


def _puts(first: int, count: int) -> bytes:
    parts = [Command(KvPut("ns", f"k{i % 7}", b"v%d" % i), f"rid-{i}", AT) for i in
             range(first, first + count)]
    parts.append(parts[0])  # a retried rid inside the entry: its cached row
    return encode_puts(parts, AT)[0]


def _expected_snapshot(sm: StateMachine, rows: list[list[object]]) -> bytes:
    """What the snapshot is when every row is packed: the map ``packb`` writes."""
    state = msgpack.unpackb(sm.snapshot(), raw=False, strict_map_key=False)
    state["rids"] = rows
    return bytes(msgpack.packb(state, use_bin_type=True))


def _log(sm: StateMachine, answer: bool) -> list[object]:
    values = [sm.apply(1, _puts(0, 5), answer=answer).value]
    values.append(sm.apply(2, encode_command(KvPut("ns", "lone", b"x"), "rid-lone", AT)).value)
    values.append(sm.apply(3, encode_command(
        KvCas("ns", "k1", b"nope", b"y"), "rid-cas", AT)).value)
    values.append(sm.apply(4, _puts(3, 4), answer=answer).value)  # rid-3 and rid-4 retried
    return values


@pytest.mark.parametrize("answer", [True, False])
def test_rows_snapshot_and_retries_as_if_packed_when_cached(answer: bool) -> None:
    sm = StateMachine()
    sm.summaries = False
    values = _log(sm, answer)
    # Puts are cached as ints until a snapshot; any other result packed at once.
    assert sm.rids["rid-0"] == 1 and sm.rids["rid-lone"] == 2
    assert isinstance(sm.rids["rid-cas"], bytes)
    rows: list[list[object]] = [[f"rid-{i}", True, {"index": 1}, None] for i in range(5)]
    rows.append(["rid-lone", True, {"index": 2}, None])
    rows.append(["rid-cas", True, {"index": 3, "ok": False}, None])
    rows += [[f"rid-{i}", True, {"index": 4}, None] for i in (5, 6)]
    if answer:
        assert values[0] == [[True, {"index": 1}, None]] * 6
        assert values[3] == [[True, {"index": 1}, None], [True, {"index": 1}, None],
                             [True, {"index": 4}, None], [True, {"index": 4}, None],
                             [True, {"index": 1}, None]]
    else:  # a follower's kv.puts: no rows built, nobody reads them
        assert values[0] is None and values[3] is None
    snapshot = sm.snapshot()
    assert snapshot == _expected_snapshot(sm, rows)
    assert all(isinstance(v, bytes) for v in sm.rids.values())  # packed once, kept
    assert sm.snapshot() == snapshot
    restored = StateMachine()
    restored.restore(snapshot)
    assert restored.snapshot() == snapshot
    # A retried rid as its own entry gets its row, packed or not.
    again = StateMachine()
    again.summaries = False
    _log(again, answer)
    retried = again.apply(5, encode_command(KvPut("ns", "k0", b"z"), "rid-2", AT))
    assert (retried.ok, retried.value, retried.error) == (True, {"index": 1}, None)
    assert again.kv_get("ns", "k0").value == b"v0"  # type: ignore[union-attr]


def test_eviction_order_unchanged_at_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oldest rid goes first, per write, even inside one entry: a rid evicted by
    an earlier put of the entry is written again by a later one."""
    monkeypatch.setattr(machine, "MAX_RIDS", 3)
    sm = StateMachine()
    sm.summaries = False
    sm.apply(1, _puts(0, 3), answer=False)  # rid-0..2, then rid-0 again: cached
    assert list(sm.rids) == ["rid-0", "rid-1", "rid-2"]
    parts = [Command(KvPut("ns", "a", b"1"), "rid-9", AT), Command(KvPut("ns", "b", b"2"), "rid-0", AT)]
    sm.apply(2, encode_puts(parts, AT)[0], answer=False)
    # rid-9 evicted rid-0, so rid-0 was applied anew and evicted rid-1.
    assert list(sm.rids) == ["rid-2", "rid-9", "rid-0"]
    assert sm.kv_get("ns", "b").mod_index == 2  # type: ignore[union-attr]
