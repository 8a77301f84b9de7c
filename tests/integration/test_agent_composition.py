"""The composition root and the peer router, in process, on loopback.

* ``Agent.start`` builds everything in one ``AsyncExitStack``: when a later
  step fails (here the control socket is already served), what was built is
  closed again -- the data-dir lock is released and the port is free;
* a started agent answers on its control socket and ``stop()`` undoes it all;
* ``PeerRouter`` delivers a routed message by node id, drops and counts what
  does not decode or has no route, and keeps a handler's ``LocalError`` in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ports import free_port
from support.wait import wait_until_async

from agent.config import AgentConfig, default_local
from agent.control.server import ControlServer
from agent.crypto import Keyring
from agent.datadir import lock_data_dir
from agent.errors import LocalError
from agent.runtime.agent import Agent
from agent.runtime.messages import ForwardResult, OutputRequest
from agent.runtime.router import PeerRouter
from meshtui.client import ControlClient

KEY = bytes(range(32))
WAIT = 10.0
"""Seconds any wait in this file may take."""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are short (108 bytes): not under pytest's deep tmp_path.
    with tempfile.TemporaryDirectory(prefix="mt-comp-", dir="/tmp") as directory:
        yield Path(directory)


def config_for(directory: Path, port: int) -> AgentConfig:
    return dataclasses.replace(
        default_local(), name="c1", data_dir=str(directory / "data"), port=port,
        socket=str(directory / "agent.sock"), insecure_no_key=True, slots=1, run_as="",
    )


def port_is_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


async def test_a_failed_start_closes_what_it_built(short_dir: Path) -> None:
    port = free_port()
    config = config_for(short_dir, port)
    squatter = ControlServer(str(short_dir / "agent.sock"), {}, {"members"})
    await squatter.start()
    try:
        with pytest.raises(LocalError, match=r"agent\.sock"):
            await Agent.start(config)
    finally:
        await squatter.close()
    lock = lock_data_dir(str(short_dir / "data"))  # released again
    lock.release()
    assert port_is_free(port)
    assert (short_dir / "data" / "raft").is_dir()  # the WAL was opened, then closed


async def test_start_serves_status_and_stop_undoes_it(short_dir: Path) -> None:
    config = config_for(short_dir, 0)
    agent = await Agent.start(config)
    try:
        async with await ControlClient.connect_unix(str(short_dir / "agent.sock")) as client:
            status = await asyncio.wait_for(client.call("status"), WAIT)
        assert status["node"] == "c1" and status["id"] == agent.node_id
        assert [m["name"] for m in status["members"]] == ["c1"]
    finally:
        await agent.stop()
    assert not (short_dir / "agent.sock").exists()
    lock_data_dir(str(short_dir / "data")).release()


class Directory:
    def __init__(self, addrs: dict[str, str]) -> None:
        self.addrs = addrs
        self.lost: list[str] = []

    def addr_of(self, node_id: str) -> str | None:
        return self.addrs.get(node_id)

    def connection_lost(self, addr: str) -> None:
        self.lost.append(addr)

    def refused(self, addr: str) -> None:
        pass


async def test_the_router_routes_by_class_and_counts_what_it_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = PeerRouter(bind="127.0.0.1", port=0, keyring=Keyring.from_key(KEY), node_id="a" * 32)
    b = PeerRouter(bind="127.0.0.1", port=0, keyring=Keyring.from_key(KEY), node_id="b" * 32)
    await a.start()
    await b.start()
    try:
        a.advertise(f"127.0.0.1:{a.port}")
        b.advertise(f"127.0.0.1:{b.port}")
        got: list[tuple[str, object]] = []
        b.route([ForwardResult], lambda addr, msg: got.append((addr, msg)))
        with pytest.raises(LookupError, match="routed twice"):
            b.route([ForwardResult], lambda addr, msg: None)

        a.send_to_node("b" * 32, ForwardResult(1, "", "", b""))  # no directory yet: nowhere
        a.use_directory(Directory({"b" * 32: f"127.0.0.1:{b.port}"}))
        a.send_to_node("b" * 32, ForwardResult(2, "", "", b""))
        await wait_until_async("the routed message", lambda: got, WAIT)
        assert got == [(f"127.0.0.1:{a.port}", ForwardResult(2, "", "", b""))]

        a.send_to_addr(f"127.0.0.1:{b.port}", OutputRequest(1, "t", 1, "out", 0, 10))  # no route
        await wait_until_async("the unrouted message counted", lambda: b.decode_errors == 1, WAIT)

        def refuse(addr: str, msg: object) -> None:
            raise LocalError("not now")

        b.route([OutputRequest], refuse)
        with caplog.at_level(logging.WARNING, logger="agent.runtime.router"):
            a.send_to_addr(f"127.0.0.1:{b.port}", OutputRequest(2, "t", 1, "out", 0, 10), False)
            await wait_until_async("the refusal logged", lambda: "not now" in caplog.text, WAIT)
        assert b.decode_errors == 1
    finally:
        await a.close()
        await b.close()
