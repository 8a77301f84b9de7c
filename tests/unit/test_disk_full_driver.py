"""The Raft driver on a full disk, in process: a single voter over real storage.

The disk is "full" by making ``posix_fallocate`` (what starts a WAL segment)
fail with ENOSPC on demand, below the storage under test; the root test
``tests/integration/test_disk_full.py`` fills a real tmpfs instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.wait import wait_until_async

from agent.errors import DiskFullError
from agent.raft.config import RaftConfig
from agent.raft.storage import Storage
from agent.runtime import consensus as consensus_mod
from agent.runtime.consensus import ConsensusDriver
from agent.runtime_config import RuntimeConfig
from agent.state.commands import KvPut, encode_command

VALUE = b"v" * 16 * 1024
WAIT = 5.0
"""Seconds any wait on the driver's state may take."""
FAILS_AT_ONCE = 2.0
"""Seconds a write refused for a full disk may take.  It fails without waiting; one
that waited would fail only at the 5 s commit timeout.  (0.5 s was tight on a
loaded box.)"""


class Disk:
    """Turns ``posix_fallocate`` (and optionally ``fdatasync``) into failures."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        """No new segment fits (``posix_fallocate`` fails), as on a full tmpfs."""
        self.no_writes = False
        """Not even a write into a segment's preallocated space fits."""
        self.broken = False
        real_fallocate, real_fdatasync, real_pwrite = os.posix_fallocate, os.fdatasync, os.pwrite

        def pwrite(fd: int, data: Any, offset: int) -> int:
            if self.no_writes:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_pwrite(fd, data, offset)

        def fallocate(fd: int, offset: int, length: int) -> None:
            if self.full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fallocate(fd, offset, length)

        def fdatasync(fd: int) -> None:
            if self.broken:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_fdatasync(fd)

        monkeypatch.setattr(os, "posix_fallocate", fallocate)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "pwrite", pwrite)


def make_driver(data_dir: Path, events: list[dict[str, Any]]) -> ConsensusDriver:
    raft = dataclasses.replace(RaftConfig.local(), segment_bytes=64 * 1024)
    config = SimpleNamespace(raft=raft, max_voters=5, name="n1", runtime=RuntimeConfig.local())
    driver = ConsensusDriver(
        config=config, node_id="a" * 32, data_dir=str(data_dir), send=lambda _to, _msg: None,
    )
    driver.connect(
        publish=lambda _topic, data: events.append(data), wants=lambda _topic: True,
        on_applied=lambda _i, _r: None, on_role_change=lambda _role: None,
    )
    return driver


def put(key: str) -> bytes:
    return encode_command(KvPut("t", key, VALUE), key, time.time())


def no_forward(_to: str, _msg: object) -> None:
    raise AssertionError("a single voter forwards nothing")


def test_single_voter_pauses_refuses_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = Disk(monkeypatch)
    events: list[dict[str, Any]] = []
    acked: list[str] = []

    async def run() -> None:
        driver = make_driver(tmp_path, events)
        driver.bootstrap([driver.node_id])
        driver.start()
        try:
            await wait_until_async("n1 to lead", lambda: driver.is_leader(), WAIT)
            disk.full = True
            refused: DiskFullError | None = None
            for i in range(20):  # 64 KiB segments: a few 16 KiB values fill one
                try:
                    await driver.propose(put(f"k{i}"), no_forward)
                except DiskFullError as exc:
                    refused = exc
                    break
                acked.append(f"k{i}")
            assert refused is not None and driver.disk_full.paused
            assert str(refused).startswith(f"disk full on n1: {tmp_path / 'raft'}")
            # Later writes fail at once; reads and status go on.
            started = time.monotonic()
            with pytest.raises(DiskFullError, match="no healthy majority elsewhere"):
                await driver.propose(put("late"), no_forward)
            assert time.monotonic() - started < FAILS_AT_ONCE
            await driver.read_barrier()  # the only voter still leads
            status = driver.status()
            assert status["paused"] and status["role"] == "leader" and status["quorum"]
            (alarm,) = status["alarms"]
            assert alarm["what"] == "wal" and alarm["dir"] == str(tmp_path / "raft")
            assert not driver.has_quorum()  # tasks are fenced meanwhile
            assert any(e.get("kind") == "alarm" for e in events)
            # Space is back: the paused Ready goes through, writes resume.
            disk.full = False
            await wait_until_async("Raft to resume", lambda: not driver.disk_full.paused, WAIT)
            await driver.propose(put("after"), no_forward)
            acked.append("after")
            assert driver.status()["alarms"] == []
            for key in acked:
                assert driver.queries.kv_get("t", key) is not None, key
        finally:
            await driver.close()

    asyncio.run(run())
    restored = Storage.open(tmp_path / "raft", 64 * 1024).load()
    assert not restored.damaged
    assert len(restored.entries) >= len(acked)


def test_restarted_while_full_serves_stale_reads_until_its_term_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)

    async def fill_and_stop() -> None:
        driver = make_driver(tmp_path, [])
        driver.bootstrap([driver.node_id])
        driver.start()
        try:
            await wait_until_async("n1 to lead", lambda: driver.is_leader(), WAIT)
            for i in range(3):
                await driver.propose(put(f"k{i}"), no_forward)
            disk.full = True
            with pytest.raises(DiskFullError):
                for i in range(20):
                    await driver.propose(put(f"more{i}"), no_forward)
        finally:
            await driver.close()  # paused: no clean-stop ack slot for the unwritten write
            if driver._storage._fd >= 0:  # (a failed rotation already closed it)
                os.close(driver._storage._fd)

    async def restart() -> None:
        disk.no_writes = True  # not even the new term's no-op fits
        driver = make_driver(tmp_path, [])
        assert not driver.storage_damage
        driver.start()
        try:
            await wait_until_async("Raft to pause", lambda: driver.disk_full.paused, WAIT)
            assert driver.is_leader() and driver.queries.kv_get("t", "k2") is not None
            with pytest.raises(DiskFullError, match="not applied an entry of its current term"):
                await driver.read_barrier()
            disk.no_writes = disk.full = False
            await wait_until_async("Raft to resume", lambda: not driver.disk_full.paused, WAIT)
            await driver.read_barrier()
            await driver.propose(put("after"), no_forward)
        finally:
            await driver.close()

    asyncio.run(fill_and_stop())
    asyncio.run(restart())


def test_other_storage_errors_stop_the_node_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    disk = Disk(monkeypatch)
    exits: list[int] = []
    monkeypatch.setattr(consensus_mod.os, "_exit", exits.append)

    async def run() -> None:
        driver = make_driver(tmp_path, [])
        driver.bootstrap([driver.node_id])
        driver.start()
        try:
            await wait_until_async("n1 to lead", lambda: driver.is_leader(), WAIT)
            disk.broken = True
            write = driver.submit(put("k"), no_forward)
            await wait_until_async("the driver to ask to exit", lambda: bool(exits), WAIT)
        finally:
            disk.broken = False
            await driver.close()
        assert write.done() and write.exception() is not None  # never acknowledged

    with caplog.at_level(logging.INFO, logger="agent.runtime.consensus"):
        asyncio.run(run())
    assert exits == [70]
    (line,) = [r for r in caplog.records if r.levelno >= logging.CRITICAL]
    assert line.exc_info is None
    assert line.getMessage().startswith(f"storage failure in {tmp_path / 'raft'}: Input/output error")


def test_disk_full_error_maps_to_its_code_exit_status_and_banner() -> None:
    from agent.control.server import error_reply
    from meshtui.model import MeshModel
    from meshtui.rpc import ClientError

    exc = DiskFullError.on("n1", "/var/lib/mesh-agent/raft")
    assert error_reply(exc) == ("disk_full", "disk full on n1: /var/lib/mesh-agent/raft")
    assert ClientError("disk_full", str(exc)).exit_code == 5
    model = MeshModel()
    alarm = {"kind": "disk_full", "message": str(exc), "since": 0.0}
    model.apply_status({"node": "n1", "alarms": [alarm]})
    assert model.banner() == ("error", "ALARM: disk full on n1: /var/lib/mesh-agent/raft since 00:00:00 UTC")
    model.apply_event({"event": "consensus", "data": {"kind": "alarm", "alarms": []}}, 1.0)
    assert model.alarms == [] and model.banner() == ("info", "connecting…")  # no alarm left
