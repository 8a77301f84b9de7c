"""Group commit of a leader's client writes (agent/runtime/consensus_requests.py, issue 14):
the writes handed to the leader in one pass of the event loop become one ``batch``
entry; each caller gets its own command's result (through its ``finish``), a
command that does not apply its change answers only its own caller, and a lone
write is an entry of its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from support.wait import wait_until_async

from agent.raft.config import RaftConfig
from agent.runtime.compat import is_batch
from agent.runtime.consensus import ConsensusDriver
from agent.runtime.consensus_requests import MAX_COALESCED
from agent.runtime_config import RuntimeConfig
from agent.state.builders import cmd_batch
from agent.state.commands import KvCas, KvPut, encode_command

WAIT = 5.0
"""Seconds any wait on the driver may take."""


def make_driver(data_dir: Path) -> ConsensusDriver:
    config = SimpleNamespace(raft=RaftConfig.local(), max_voters=5, name="n1",
                             runtime=RuntimeConfig.local())
    driver = ConsensusDriver(config=config, node_id="a" * 32, data_dir=str(data_dir),
                             send=lambda _to, _msg: None)
    driver.connect(publish=lambda _t, _d: None, wants=lambda _t: False,
                   on_applied=lambda _i, _r: None, on_role_change=lambda _r: None)
    return driver


def put(key: str, value: bytes) -> bytes:
    return encode_command(KvPut("t", key, value), f"rid-{key}-{value!r}", time.time())


async def leading(tmp_path: Path) -> ConsensusDriver:
    driver = make_driver(tmp_path)
    driver.bootstrap([driver.node_id])
    driver.start()
    await wait_until_async("n1 to lead", lambda: driver.is_leader(), WAIT)
    # Once this write is in, the new term's no-op is too: entry counts start here.
    await asyncio.wait_for(driver.submit(put("warm", b"up")), WAIT)
    return driver


def test_writes_of_one_pass_commit_as_one_entry_each_with_its_own_result(tmp_path: Path) -> None:
    async def run() -> None:
        driver = await leading(tmp_path)
        try:
            before = driver.status()["commit_index"]
            count = MAX_COALESCED + 3  # two batch entries
            futures = [driver.submit(put(f"k{i}", b"v"), finish=lambda r: ("ok", r.ok, r.value))
                       for i in range(count)]
            # A compare-and-swap that must not swap, in the same pass: its own result.
            bad = driver.submit(encode_command(KvCas("t", "k0", b"nope", b"x"), "rid-cas", time.time()))
            results = await asyncio.wait_for(asyncio.gather(*futures), WAIT)
            assert all(r[0] == "ok" and r[1] for r in results)
            refused = await asyncio.wait_for(bad, WAIT)
            assert refused.ok and refused.value["ok"] is False
            assert driver.queries.kv_get("t", f"k{count - 1}") is not None
            # Two batches (256 + 4 commands), not count + 1 entries.
            assert driver.status()["commit_index"] - before == 2
        finally:
            await driver.close()

    asyncio.run(run())


def test_a_lone_write_is_an_entry_of_its_own(tmp_path: Path) -> None:
    async def run() -> None:
        driver = await leading(tmp_path)
        try:
            before = driver.status()["commit_index"]
            result: Any = await asyncio.wait_for(driver.submit(put("solo", b"v")), WAIT)
            assert result.ok
            assert driver.status()["commit_index"] - before == 1
            entry = driver.queries.kv_get("t", "solo")
            assert entry is not None and entry.value == b"v"
        finally:
            await driver.close()

    asyncio.run(run())


def test_a_retried_command_in_a_batch_is_applied_once(tmp_path: Path) -> None:
    async def run() -> None:
        driver = await leading(tmp_path)
        try:
            same = put("r", b"1")
            first, second = driver.submit(same), driver.submit(same)  # one batch, one rid
            a, b = await asyncio.wait_for(asyncio.gather(first, second), WAIT)
            assert a.ok and b.ok and a.value == b.value
        finally:
            await driver.close()

    asyncio.run(run())


def test_a_batch_goes_alone_and_nothing_is_batched_for_an_older_member(tmp_path: Path) -> None:
    """A command that is itself a batch (the control API's task writes) is never put
    inside another (the state machine refuses that); while a member runs a release
    without batch entries (runtime/compat.py) every write is an entry of its own."""

    async def run() -> None:
        driver = await leading(tmp_path)
        try:
            inner = cmd_batch([put("b1", b"v"), put("b2", b"v")], "", time.time())
            assert is_batch(inner) and not is_batch(put("x", b"v"))
            before = driver.status()["commit_index"]
            futures = [driver.submit(put("p1", b"v")), driver.submit(inner), driver.submit(put("p2", b"v")),
                       driver.submit(put("p3", b"v"))]
            first, batch, *_rest = await asyncio.wait_for(asyncio.gather(*futures), WAIT)
            assert first.ok and batch.ok and [row[0] for row in batch.value] == [True, True]
            # p1 | the batch | p2 + p3: three entries, in the order they came.
            assert driver.status()["commit_index"] - before == 3
            assert driver.queries.kv_get("t", "b2") is not None
            driver.use_batch_gate(lambda: False)
            before = driver.status()["commit_index"]
            writes = [driver.submit(put(f"o{i}", b"v")) for i in range(4)]
            done = await asyncio.wait_for(asyncio.gather(*writes), WAIT)
            assert all(r.ok for r in done) and driver.status()["commit_index"] - before == 4
        finally:
            await driver.close()

    asyncio.run(run())
