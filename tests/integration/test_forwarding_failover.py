"""Issue 20: a write waits for a leader while the cluster forms or elects, and a write
forwarded to a leader that dies follows the leader change (real agents, loopback).

* Formation: 3 agents started together; as soon as any node reports a leader,
  the first write through every node succeeds (it waits for the leader instead
  of failing with "no quorum").
* Leader death: SIGKILL the leader, then at once a compare-and-set through each
  survivor: each succeeds within 2 s of the kill, and none applies twice (a
  second apply of ``0 -> 1`` would answer ``ok: False`` and the rid dedup is
  what keeps a resent copy from doing so).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.wait import wait_until

from meshtui.demo import LocalMesh
from meshtui.rpc import ClientError, call_sync

pytestmark = pytest.mark.timeout(120)

FAILOVER_BUDGET = 2.0
"""Seconds from the SIGKILL to each survivor's write answered (the issue's bound)."""


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    mesh = LocalMesh(3, base_dir=tmp_path)
    try:
        yield mesh
    finally:
        mesh.stop()


def status_of(sock: str) -> dict[str, Any] | None:
    try:
        return dict(call_sync(sock, "status", {}, 1.0))
    except (ClientError, OSError):
        return None


def any_leader(mesh: LocalMesh) -> str | None:
    for node in mesh.nodes:
        if node.running and (status := status_of(node.socket_path)) is not None:
            leader = status["consensus"]["leader"]
            if leader:
                return str(leader)
    return None


def describe(mesh: LocalMesh) -> str:
    return "; ".join(
        f"{n.name}: {(status_of(n.socket_path) or {}).get('consensus')}" for n in mesh.nodes
    )


def test_first_write_through_every_node_after_formation(mesh: LocalMesh) -> None:
    mesh.start()
    wait_until("a socket on every node", lambda: all(
        status_of(n.socket_path) is not None for n in mesh.nodes), 20, 0.05)
    wait_until("any node to report a leader", lambda: any_leader(mesh) is not None, 30, 0.02,
               detail=lambda: describe(mesh))
    results: dict[str, Any] = {}

    def write(name: str, sock: str) -> None:
        try:
            results[name] = call_sync(
                sock, "kv.put", {"ns": "form", "key": name, "value": b"v", "rid": uuid.uuid4().hex},
                10.0)
        except (ClientError, OSError) as exc:
            results[name] = exc

    threads = [threading.Thread(target=write, args=(n.name, n.socket_path)) for n in mesh.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    failed = {k: v for k, v in results.items() if isinstance(v, BaseException)}
    assert len(results) == 3 and not failed, f"{failed}; {describe(mesh)}"


def test_write_through_survivors_right_after_leader_sigkill(mesh: LocalMesh) -> None:
    mesh.start()
    assert mesh.wait_ready(20)
    assert mesh.wait_voters(3, 30), describe(mesh)
    wait_until("a leader", lambda: any_leader(mesh) is not None, 15, 0.05)
    leader = any_leader(mesh)  # status names the leader by node name
    victim = next((n for n in mesh.nodes if n.name == leader), None)
    assert victim is not None, f"leader {leader} not among {mesh.names()}"
    survivors = [n for n in mesh.nodes if n is not victim]
    for n in survivors:  # through the leader, committed before the kill
        call_sync(victim.socket_path, "kv.put", {"ns": "c", "key": n.name, "value": b"0"}, 5.0)

    answers: dict[str, tuple[float, Any]] = {}

    def cas(name: str, sock: str) -> None:
        params = {"ns": "c", "key": name, "expected": b"0", "value": b"1", "rid": uuid.uuid4().hex}
        try:
            value: Any = call_sync(sock, "kv.cas", params, 10.0)
        except (ClientError, OSError) as exc:
            value = exc
        answers[name] = (time.monotonic(), value)

    mesh.kill(victim.name)
    killed_at = time.monotonic()
    threads = [threading.Thread(target=cas, args=(n.name, n.socket_path)) for n in survivors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(answers) == 2, answers
    for name, (at, value) in answers.items():
        assert not isinstance(value, BaseException), f"{name}: {value}; {describe(mesh)}"
        assert value["ok"] is True, f"{name}: applied twice or lost: {value}"
        assert at - killed_at <= FAILOVER_BUDGET, f"{name} answered {at - killed_at:.2f}s after the kill"
    for n in survivors:  # exactly one apply: the value moved 0 -> 1 once
        got = call_sync(survivors[0].socket_path, "kv.get", {"ns": "c", "key": n.name}, 5.0)
        assert got["value"] == b"1", got
    # The survivors knew from the refused port, not from an election timeout.
    assert any("refuses connections: its process is gone" in n.log_file.read_text()
               for n in survivors), [n.log_file.read_text()[-1500:] for n in survivors]


def test_one_of_three_killed_as_the_leader_appears_leaves_a_working_pair(mesh: LocalMesh) -> None:
    """Formation founds all three as voters at once (never two voters, which
    tolerate no failure): a member SIGKILLed the moment a leader appears leaves
    the other two committing writes."""
    mesh.start()
    wait_until("a socket on every node", lambda: all(
        status_of(n.socket_path) is not None for n in mesh.nodes), 20, 0.05)
    wait_until("any node to report a leader", lambda: any_leader(mesh) is not None, 30, 0.02,
               detail=lambda: describe(mesh))
    leader = any_leader(mesh)
    victim = next(n for n in mesh.nodes if n.name != leader)
    mesh.kill(victim.name)
    founder = next(n for n in mesh.nodes if n.name == leader)
    voters = (status_of(founder.socket_path) or {}).get("consensus", {}).get("voters", [])
    assert len(voters) == 3, f"the cluster was founded with {voters}; {describe(mesh)}"
    for n in mesh.nodes:
        if n is victim:
            continue
        got = call_sync(n.socket_path, "kv.put",
                        {"ns": "pair", "key": n.name, "value": b"v", "rid": uuid.uuid4().hex}, 10.0)
        assert got is not None
