"""A leader's usual ``kv.put`` is queued as its ``PutRow`` -- no ``KvPut`` and
``Command`` objects unless its entry needs them -- and an ok row of the group commit
answers its caller with the value at once (``ValueIfOk``, no ``ApplyResult`` per write);
issue 14, session 7.  The entries and answers are those of the ``Command`` path
(test_kv_put_deferred compares them byte for byte under every release gate)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_consensus_group_commit import WAIT, leading

from agent.errors import ProtocolError
from agent.runtime import consensus_requests
from agent.runtime.handlers import kv
from agent.runtime.handlers.common import applied_value
from agent.state.commands import Command, KvPut, encode_puts, row_command
from agent.state.machine import ApplyResult, ValueIfOk

AT = 1_700_000_000.25


def test_rows_and_commands_encode_the_same_kv_puts() -> None:
    rows = [(f"rid-{i}", AT + i, "ns", f"k{i}", b"v%d" % i) for i in range(5)]
    commands = [row_command(r) for r in rows]
    assert commands[0] == Command(KvPut("ns", "k0", b"v0"), "rid-0", AT)
    mixed: list[Any] = [rows[0], commands[1], rows[2], commands[3], rows[4]]
    assert encode_puts(rows, AT) == encode_puts(commands, AT) == encode_puts(mixed, AT)
    with pytest.raises(ProtocolError, match="1-1024 puts"):  # as an empty list of commands
        encode_puts([], AT)


def test_value_if_ok_answers_as_its_refusal_function() -> None:
    finish = ValueIfOk(applied_value)
    assert finish(ApplyResult(True, {"index": 3})) == {"index": 3}
    with pytest.raises(ValueError, match="no way"):
        finish(ApplyResult(False, None, "no way"))


def test_a_leader_queues_usual_puts_as_rows_and_answers_without_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[ApplyResult] = []
    real = ApplyResult

    def counted(*args: Any) -> ApplyResult:
        made.append(real(*args))
        return made[-1]

    async def run() -> None:
        driver = await leading(tmp_path)
        try:
            put = kv.handlers(driver, driver.queries)["kv.put"]
            calls = [put({"ns": "t", "key": f"k{i}", "value": b"v", "rid": f"r{i}"})
                     for i in range(5)]
            queued = [d for _, _, d, _ in driver._queued_writes]
            assert queued and all(type(d) is tuple for d in queued)  # rows, not Commands
            monkeypatch.setattr(consensus_requests, "ApplyResult", counted)
            answers = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
            assert [a["index"] for a in answers] == [answers[0]["index"]] * 5
            assert made == []  # every ok row answered with its value
            # A retried rid whose cached row is a refusal still gets the refusal.
            cas = kv.handlers(driver, driver.queries)["kv.cas"]
            refused = await asyncio.wait_for(cas({"ns": "t", "key": "k0", "expected": b"no",
                                                  "value": b"x", "rid": "c1"}), WAIT)
            assert refused["ok"] is False
            again = [put({"ns": "t", "key": "k0", "value": b"w", "rid": "r0"}),
                     put({"ns": "t", "key": "k1", "value": b"w", "rid": "r9"})]
            rows = await asyncio.wait_for(asyncio.gather(*again), WAIT)
            assert rows[0] == answers[0] and rows[1]["index"] > answers[0]["index"]
            assert driver.queries.kv_get("t", "k0").value == b"v"  # type: ignore[union-attr]
        finally:
            await driver.close()

    asyncio.run(run())
