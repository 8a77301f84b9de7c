"""Issue 14: a real 3-agent mesh on uvloop (``event_loop = "uvloop"``).

The rest of the suite runs its agents on the standard asyncio loop
(``tests/conftest.py`` pins ``MESH_EVENT_LOOP=asyncio``); this module runs
one mesh with ``--event-loop uvloop`` and checks what uvloop could break: the
Unix control socket under pipelined load, the sealed TCP streams between
agents (writes through the leader and forwarded by a follower), linearizable
reads, a task run (the executor waits on a pidfd with ``add_reader``), and a
SIGKILLed leader replaced.  Skipped, with the reason, where uvloop is not
installed (the ``test`` extra does not pull it: ``pip install 'meshtui[fast]'``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.wait import wait_until

from agent.runtime.event_loop import uvloop_available
from meshtui.client import ClientError, ControlClient, call_sync
from meshtui.demo import LocalMesh

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not uvloop_available(), reason="uvloop not installed (pip install 'meshtui[fast]')"),
]

WRITES = 600
"""Puts per node in the pipelined load (64 in flight per connection)."""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    mesh = LocalMesh(3, base_dir=tmp_path_factory.mktemp("uvloop-mesh"),
                     extra_args=["--event-loop", "uvloop"])
    mesh.start()
    try:
        assert mesh.wait_ready(30), "agents did not open their sockets"
        assert mesh.wait_voters(3, 60), "mesh never reached 3 voters"
        yield mesh
    finally:
        mesh.stop()


def consensus(sock: str) -> dict[str, Any]:
    return dict(call_sync(sock, "status", {}, 2.0)["consensus"])


def leader_name(mesh: LocalMesh) -> str:
    for node in mesh.nodes:
        if node.running:
            try:
                if consensus(node.socket_path)["role"] == "leader":
                    return node.name
            except ClientError:
                continue
    return ""


async def pipelined_puts(sock: str, ns: str, count: int) -> list[bytes]:
    """``count`` puts over one connection, 64 in flight; the values written in order per key."""
    client = await ControlClient.connect_unix(sock)
    try:
        values = [f"{ns}-{i}".encode() for i in range(count)]
        window = asyncio.Semaphore(64)

        async def put(i: int) -> None:
            async with window:
                await client.call("kv.put", ns=ns, key=f"k{i}", value=values[i],
                                  rid=uuid.uuid4().hex, timeout=30.0)

        await asyncio.gather(*(put(i) for i in range(count)))
        return values
    finally:
        await client.close()


def test_every_agent_runs_on_uvloop(mesh: LocalMesh) -> None:
    for node in mesh.nodes:
        assert node.proc is not None
        maps = Path(f"/proc/{node.proc.pid}/maps").read_text()
        assert "uvloop" in maps, f"{node.name} has not loaded uvloop"
        assert "event loop: uvloop" in node.log_file.read_text(), node.name


def test_pipelined_writes_through_leader_and_follower_commit_and_read_back(mesh: LocalMesh) -> None:
    wait_until("a leader", lambda: bool(leader_name(mesh)), 30, 0.2)
    leader = leader_name(mesh)
    follower = next(n.name for n in mesh.nodes if n.name != leader)

    async def load() -> list[list[bytes]]:
        return list(await asyncio.gather(
            pipelined_puts(mesh.node(leader).socket_path, "lead", WRITES),
            pipelined_puts(mesh.node(follower).socket_path, "fwd", WRITES),
        ))

    lead_values, fwd_values = asyncio.run(load())
    for node in mesh.nodes:  # linearizable reads from every node see both loads
        for ns, values in (("lead", lead_values), ("fwd", fwd_values)):
            for i in (0, WRITES // 2, WRITES - 1):
                got = call_sync(node.socket_path, "kv.get", {"ns": ns, "key": f"k{i}"}, 10.0)
                assert got["found"] and got["value"] == values[i], (node.name, ns, i, got)


def test_a_task_runs_to_success(mesh: LocalMesh) -> None:
    sock = mesh.nodes[0].socket_path
    out = subprocess.run([sys.executable, "-m", "meshtui.cli", "submit", "-t", sock, "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    waited = subprocess.run([sys.executable, "-m", "meshtui.cli", "wait", "-t", sock, out.stdout.strip()],
                            capture_output=True, text=True, timeout=120)
    assert waited.returncode == 0, waited.stderr


def test_a_killed_leader_is_replaced_and_catches_up(mesh: LocalMesh) -> None:
    wait_until("a leader", lambda: bool(leader_name(mesh)), 30, 0.2)
    old = leader_name(mesh)
    mesh.kill(old)
    survivor = next(n for n in mesh.nodes if n.name != old)

    def survivor_commits() -> bool:
        try:
            call_sync(survivor.socket_path, "kv.put",
                      {"ns": "after", "key": "k", "value": b"v", "rid": uuid.uuid4().hex}, 5.0)
            return True
        except ClientError:
            return False

    wait_until("a write through a survivor after the kill", survivor_commits, 60, 0.2)
    mesh.restart(old)
    sock = mesh.node(old).socket_path

    def restarted_reads_it() -> bool:
        try:
            got = call_sync(sock, "kv.get", {"ns": "after", "key": "k"}, 5.0)
        except (ClientError, OSError):
            return False
        return bool(got["found"]) and got["value"] == b"v"

    wait_until("the restarted node to read the new write", restarted_reads_it, 60, 0.3)
    proc = mesh.node(old).proc
    assert proc is not None and "uvloop" in Path(f"/proc/{proc.pid}/maps").read_text()
