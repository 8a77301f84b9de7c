"""A leader applies its group-commit batch from the commands it already decoded
(``StateMachine.apply(..., parts=...)``, issue 14): the same results, events and
snapshot as a follower that decodes every command from the entry's bytes; and
the exact-type fast path of the command converters (``agent/state/convert.py``)
accepts and refuses exactly what the per-field converters do."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import ProtocolError
from agent.state.builders import cmd_batch
from agent.state.commands import (
    Batch,
    Command,
    KvCas,
    KvDelete,
    KvPut,
    TaskCancel,
    decode_command,
    encode_command,
    encode_command_decoded,
)
from agent.state.convert import converter_for
from agent.state.machine import StateMachine

AT = 1_700_000_000.0


def _writes() -> list[tuple[bytes, Command | None]]:
    bodies: list[Any] = [
        KvPut("ns", "a", b"1"),
        KvPut("ns", "b", b"2"),
        KvCas("ns", "a", b"1", b"3"),
        KvDelete("ns", "b"),
        TaskCancel("no-such-task"),  # refused: an error row, the others still apply
        KvPut("ns", "a", b"4"),
    ]
    out = [encode_command_decoded(body, f"rid-{i}", AT) for i, body in enumerate(bodies)]
    out.append(out[0])  # a retried rid: the cached result, no change
    return out


@pytest.mark.parametrize("summaries", [False, True])
def test_parts_apply_like_decoding(summaries: bool) -> None:
    writes = _writes()
    entry = cmd_batch([data for data, _ in writes], "", AT)
    leader, follower = StateMachine(), StateMachine()
    leader.summaries = follower.summaries = summaries
    ours = leader.apply(1, entry, decode_command(entry), [decoded for _, decoded in writes])
    theirs = follower.apply(1, entry)
    assert ours == theirs
    assert leader.snapshot() == follower.snapshot()
    rows = ours.value
    assert [row[0] for row in rows] == [True, True, True, True, False, True, True]
    assert rows[-1] == rows[0]


def test_parts_of_another_length_are_ignored() -> None:
    writes = _writes()
    entry = cmd_batch([data for data, _ in writes], "", AT)
    machine = StateMachine()
    result = machine.apply(1, entry, None, [writes[0][1]])  # too few: decoded instead
    assert len(result.value) == len(writes)
    assert machine.kv.get("ns", "a") is not None


def test_missing_parts_are_decoded() -> None:
    writes = _writes()
    entry = cmd_batch([data for data, _ in writes], "", AT)
    machine, reference = StateMachine(), StateMachine()
    parts: list[Command | None] = [None] * len(writes)
    parts[1] = writes[1][1]
    assert machine.apply(1, entry, None, parts) == reference.apply(1, entry)


@pytest.mark.parametrize(
    "mapping",
    [
        {"ns": "n", "key": "k", "value": "not bytes"},
        {"ns": "n", "key": 1, "value": b"v"},
        {"ns": "n", "keys": "k", "value": b"v"},
        {"ns": "n", "key": "k"},
        {"ns": True, "key": "k", "value": b"v"},
    ],
)
def test_plain_fast_path_refuses_what_the_converters_refuse(mapping: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="bad command field"):
        converter_for(KvPut).build(dict(mapping))


def test_plain_fast_path_validates_before_encoding() -> None:
    assert converter_for(KvPut).plain is not None
    assert converter_for(KvCas).plain is None  # expected: bytes | None
    with pytest.raises(ProtocolError, match="bad command field value"):
        encode_command(KvPut("n", "k", "text"), "", AT)  # type: ignore[arg-type]
    data = encode_command(KvPut("n", "k", b"v"), "r", AT)
    assert decode_command(data) == Command(KvPut("n", "k", b"v"), "r", AT)


def test_a_batch_encoded_with_its_decoded_form_decodes_to_it() -> None:
    cmds = tuple(data for data, _ in _writes())
    data, decoded = encode_command_decoded(Batch(cmds), "", AT)
    assert decoded is not None and decoded == decode_command(data)
    assert data == cmd_batch(list(cmds), "", AT)  # the same bytes as before
    leader, follower = StateMachine(), StateMachine()
    parts = [d for _, d in _writes()]
    assert leader.apply(1, data, decoded, parts) == follower.apply(1, data)
    assert leader.snapshot() == follower.snapshot()
    # A list of commands is no tuple: no decoded form claimed for it.
    assert encode_command_decoded(Batch(list(cmds)), "", AT)[1] is None  # type: ignore[arg-type]
