"""``kv.puts`` (issue 14, release 0.3.0): a group commit of ``kv.put`` writes as
arrays.  Applied from its bytes (a follower) or from the leader's decoded parts, it
gives exactly what a ``batch`` of the same commands' own bytes gives: each row,
retried rids, one refusal per bad item (the text its own entry would get), the
events and the snapshot bytes; and a leader proposes it only while every member
runs a release that applies it (``agent/runtime/compat.py``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from test_consensus_group_commit import WAIT, leading

from agent.runtime import consensus_requests
from agent.runtime.compat import batches_applied
from agent.state.builders import cmd_batch
from agent.state.commands import (
    MAX_KEY_LEN,
    Command,
    KvPut,
    KvPuts,
    decode_command,
    encode_command,
    encode_command_decoded,
    encode_puts,
)
from agent.state.machine import StateMachine

AT = 1_700_000_000.0


def _puts() -> list[Command]:
    writes = [Command(KvPut("ns", f"k{i % 5}", b"v%d" % i), f"rid-{i}", AT + i) for i in range(12)]
    writes.append(writes[3])  # a retried rid: its cached row, no change
    writes.append(Command(KvPut("ns", "k9", b""), "", AT))  # no rid: never cached
    return writes


def _apply_both(
    batch_items: list[bytes], puts: KvPuts, summaries: bool
) -> tuple[StateMachine, StateMachine, Any, Any]:
    old, new = StateMachine(), StateMachine()
    old.summaries = new.summaries = summaries
    old.apply(1, encode_command(KvPut("ns", "k0", b"before"), "rid-x", AT))
    new.apply(1, encode_command(KvPut("ns", "k0", b"before"), "rid-x", AT))
    batch = old.apply(2, cmd_batch(batch_items, "", AT))
    compact = new.apply(2, encode_command(puts, "", AT))
    return old, new, batch, compact


@pytest.mark.parametrize("summaries", [False, True])
def test_kv_puts_applies_exactly_as_the_batch_of_its_commands(summaries: bool) -> None:
    writes = _puts()
    data, whole = encode_puts(writes, AT)
    assert decode_command(data) == whole
    items = [encode_command(w.body, w.rid, w.at) for w in writes]
    old, new, batch, compact = _apply_both(items, whole.body, summaries)  # type: ignore[arg-type]
    assert batch == compact  # rows, events, placeable
    assert old.snapshot() == new.snapshot()
    assert compact.value[-2] == compact.value[3] and all(row[0] for row in compact.value)
    # The leader applies its parts: the same as a follower decoding the entry.
    leader = StateMachine()
    leader.summaries = summaries
    leader.apply(1, encode_command(KvPut("ns", "k0", b"before"), "rid-x", AT))
    assert leader.apply(2, data, whole, list(writes)) == compact
    assert leader.snapshot() == new.snapshot()


def _raw(rid: Any, at: Any, ns: Any, key: Any, value: Any) -> bytes:
    item = {"op": "kv.put", "rid": rid, "at": at, "ns": ns, "key": key, "value": value}
    return msgpack.packb(item, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("summaries", [False, True])
def test_each_bad_item_is_refused_alone_with_its_own_entrys_error(summaries: bool) -> None:
    items: list[tuple[Any, ...]] = [
        ("r1", AT, "ns", "a", b"1"),
        ("r2", AT, "ns", "k" * (MAX_KEY_LEN + 1), b"2"),  # bounds
        ("r3", AT, "ns", "b", "not bytes"),  # type
        (5, AT, "ns", "c", b"3"),  # rid type
        ("r5", float("nan"), "ns", "d", b"4"),  # at not finite
        ("r6", 7, "ns", "e", b"5"),  # an int at: converted, applied
        ("r7", AT, "", "f", b"6"),  # empty namespace
        ("r8", AT, "ns", "g", None),  # missing value
        ("r1", AT, "ns", "a", b"other"),  # retried rid after the refusals
    ]
    puts = KvPuts(*(tuple(column) for column in zip(*items, strict=True)))
    raw = [_raw(*item) for item in items]
    old, new, batch, compact = _apply_both(raw, puts, summaries)
    assert batch == compact and old.snapshot() == new.snapshot()
    assert [row[0] for row in compact.value] == [True, False, False, False, False, True, False, False, True]
    assert "key must be" in compact.value[1][2]


def test_a_kv_puts_of_mismatched_arrays_is_refused_whole() -> None:
    machine = StateMachine()
    bad = msgpack.packb({"op": "kv.puts", "rid": "", "at": AT, "rids": ["a", "b"], "ats": [AT],
                         "ns": ["n", "n"], "keys": ["k", "l"], "values": [b"", b""]})
    result = machine.apply(1, bad)
    assert not result.ok and "as many" in (result.error or "")
    assert machine.kv_get("n", "k") is None
    # Inside a batch it is refused as that item, like a batch inside a batch.
    data, _ = encode_puts([Command(KvPut("n", "k", b"v"), "r", AT)], AT)
    inner = machine.apply(2, cmd_batch([data], "", AT))
    assert inner.value == [[False, None, "a batch inside a batch"]]


def gate(*versions: str | None) -> Any:
    members = [SimpleNamespace(meta=SimpleNamespace(version=v)) for v in versions]
    return batches_applied(lambda: members)  # type: ignore[arg-type,return-value]


def test_the_release_gate_says_when_kv_puts_may_be_proposed() -> None:
    assert gate("0.3.0", "0.3.1")() and gate("0.3.0", "0.3.1").compact()
    assert gate("0.3.0", "0.2.0")() and not gate("0.3.0", "0.2.0").compact()
    assert not gate("0.3.0", None).compact() and not gate("0.1.0")()


def test_the_leader_writes_kv_puts_only_when_every_member_applies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compact: list[int] = []
    real = encode_puts

    def spy(parts: list[Command], at: float) -> Any:
        compact.append(len(parts))
        return real(parts, at)

    monkeypatch.setattr(consensus_requests, "encode_puts", spy)

    async def burst(driver: Any, tag: str) -> list[Any]:
        writes = [encode_command_decoded(KvPut("t", f"{tag}{i}", b"v"), f"{tag}-{i}", time.time())
                  for i in range(4)]
        futures = [driver.submit(data, decoded=decoded) for data, decoded in writes]
        return list(await asyncio.wait_for(asyncio.gather(*futures), WAIT))

    async def run() -> None:
        driver = await leading(tmp_path)
        try:
            driver.use_batch_gate(gate("0.3.0", "0.2.0"))  # a member not upgraded: batch
            assert all(r.ok for r in await burst(driver, "old")) and compact == []
            driver.use_batch_gate(lambda: True)  # a gate that says nothing of kv.puts
            assert all(r.ok for r in await burst(driver, "any")) and compact == []
            driver.use_batch_gate(gate("0.3.0", "0.3.0"))
            results = await burst(driver, "new")
            assert compact == [4] and [r.value["index"] for r in results] == [results[0].value["index"]] * 4
            assert driver.queries.kv_get("t", "new3") is not None
        finally:
            await driver.close()

    asyncio.run(run())
