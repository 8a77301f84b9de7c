"""The rid cache is a dict whose key table keeps each key's hash (issue 14, session 8):
``machine.rid_table`` holds what ``dict(rows)`` holds, in the same order, and stays
that kind of table through puts, eviction at ``MAX_RIDS`` and a snapshot restore,
with the same snapshot bytes and answers as a plain dict.  Only a probe's cost
differs: a table that stores the hashes compares them without reading each probed
key object (a cache miss each in a table of ``MAX_RIDS`` scattered rids)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.state import machine
from agent.state.commands import Command, KvPut, encode_command, encode_puts
from agent.state.machine import StateMachine, rid_table

AT = 1_700_000_000.0


def _keeps_hashes(table: dict[Any, Any]) -> bool:
    """A table with hashes stored takes 8 more bytes an entry than a plain str-keyed
    dict of the same items (CPython's only visible difference)."""
    plain = {key: value for key, value in table.items()}
    return sys.getsizeof(table) > sys.getsizeof(plain) or not table


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.tuples(st.text(max_size=4), st.integers() | st.binary(max_size=3)),
                     max_size=30))
def test_rid_table_holds_what_dict_holds(rows: list[tuple[str, Any]]) -> None:
    table = rid_table(rows)
    assert list(table.items()) == list(dict(rows).items())
    assert table == dict(rows)


def _puts(first: int, count: int) -> bytes:
    parts = [Command(KvPut("ns", f"k{i % 5}", b"v%d" % i), f"rid-{i}", AT)
             for i in range(first, first + count)]
    return encode_puts(parts, AT)[0]


def test_puts_eviction_and_restore_keep_the_table_and_the_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "MAX_RIDS", 40)
    sm, plain = StateMachine(), StateMachine()
    plain.rids = {}  # the plain dict it stands for
    for sm_ in (sm, plain):
        sm_.summaries = False
        for index in range(1, 9):
            sm_.apply(index, _puts(index * 10, 10), answer=index % 2 == 0)
        sm_.apply(9, encode_command(KvPut("ns", "lone", b"x"), "rid-lone", AT))
        assert sm_.apply(10, _puts(75, 3)).value == [[True, {"index": 7}, None]] * 3  # retried
    assert list(sm.rids.items()) == list(plain.rids.items())
    assert len(sm.rids) == 40 and next(iter(sm.rids)) == "rid-51"
    assert _keeps_hashes(sm.rids) and len(sm.rids) > 8
    snap = sm.snapshot()
    assert snap == plain.snapshot()
    restored = StateMachine()
    restored.restore(snap)
    assert list(restored.rids.items()) == list(sm.rids.items())
    assert list(restored.rid_order) == list(sm.rid_order)
    assert _keeps_hashes(restored.rids)
    assert restored.snapshot() == snap


def test_a_new_state_machine_starts_with_such_a_table() -> None:
    """Fails where the rid cache is a plain dict (its str keys: no hashes kept)."""
    sm = StateMachine()
    sm.summaries = False
    sm.apply(1, _puts(0, 50), answer=False)
    assert len(sm.rids) == 50 and _keeps_hashes(sm.rids)


def test_an_entry_s_usual_puts_share_one_answer_row() -> None:
    """A leader's ``kv.puts`` answers each usual put ``[True, {"index": i}, None]``:
    the same values as before, now one row object for the entry (results are only
    read); a retried rid keeps its own cached row.  Fails where each put makes its
    own row."""
    sm = StateMachine()
    sm.summaries = False
    sm.apply(1, _puts(0, 3), answer=False)
    parts = [Command(KvPut("ns", f"k{i}", b"v"), f"rid-{i}", AT) for i in (5, 1, 6, 7)]
    rows = sm.apply(2, encode_puts(parts, AT)[0]).value
    assert rows == [[True, {"index": 2}, None], [True, {"index": 1}, None],
                    [True, {"index": 2}, None], [True, {"index": 2}, None]]
    assert rows[0] is rows[2] is rows[3] and rows[1] is not rows[0]
