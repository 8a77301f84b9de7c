"""Writes a follower forwards join the leader's group commit (issue 14,
``consensus_requests._forwarded``): the forwards served in one pass of the leader's
loop go as one entry (``kv.puts`` for a burst of ``kv.put``), and each follower
gets the answer its write would get as an entry of its own; a forwarded batch or
bytes that are no command still go alone, answered as before."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from test_consensus_group_commit import WAIT, leading

from agent.runtime.forwarding import unpack_result
from agent.runtime.messages import ForwardPropose
from agent.state.builders import cmd_batch
from agent.state.commands import KvCas, KvPut, encode_command


def put(key: str, rid: str) -> bytes:
    return encode_command(KvPut("t", key, b"v-" + key.encode()), rid, time.time())


def test_forwards_of_one_pass_commit_as_one_entry_with_their_own_answers(tmp_path: Path) -> None:
    async def run() -> None:
        driver = await leading(tmp_path)
        try:
            before = driver.status()["commit_index"]
            forwards = [ForwardPropose(i, put(f"k{i}", f"rid-{i}")) for i in range(20)]
            forwards.append(ForwardPropose(99, put("k3", "rid-3")))  # a resend: its cached row
            # A compare-and-swap that must not swap: its own answer, in the same entry.
            cas = encode_command(KvCas("t", "k0", b"nope", b"x"), "rid-cas", time.time())
            forwards.append(ForwardPropose(100, cas))
            answers = await asyncio.wait_for(
                asyncio.gather(*(driver.serve_forward(f) for f in forwards)), WAIT)
            assert driver.status()["commit_index"] - before == 1  # one entry for all of them
            rows: list[Any] = [unpack_result(a.value) for a in answers]
            assert all(a.error_code == "" for a in answers)
            assert [a.request_id for a in answers] == [f.request_id for f in forwards]
            assert all(ok for ok, _, _ in rows)
            indexes = {value["index"] for _, value, _ in rows[:21]}
            assert len(indexes) == 1 and rows[3] == rows[20]
            assert rows[21][1]["ok"] is False
            entry = driver.queries.kv_get("t", "k19")
            assert entry is not None and entry.value == b"v-k19"

            # A batch of its own and bytes that are no command: entries of their own.
            before = driver.status()["commit_index"]
            batch = cmd_batch([put("b1", "rid-b1"), put("b2", "rid-b2")], "", time.time())
            alone = await asyncio.wait_for(asyncio.gather(
                driver.serve_forward(ForwardPropose(1, batch)),
                driver.serve_forward(ForwardPropose(2, b"\xc1 not msgpack")),
                driver.serve_forward(ForwardPropose(3, put("c", "rid-c"))),
            ), WAIT)
            assert driver.status()["commit_index"] - before == 3
            ok, value, _ = unpack_result(alone[0].value)
            assert ok and [row[0] for row in value] == [True, True]
            ok, _, error = unpack_result(alone[1].value)
            assert not ok and error is not None and "not msgpack" in error
            assert unpack_result(alone[2].value)[0]
        finally:
            await driver.close()

    asyncio.run(run())
