"""Issue 4 through the CLI on 3 real agents: kv get/put/del/list, proposals, no quorum, events."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.wait import wait_until

from meshtui.client import ControlClient
from meshtui.demo import LocalMesh
from meshtui.rpc import call_sync

pytestmark = pytest.mark.timeout(180)


def cli(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshtui.cli", args[0], "-t", sock, *args[1:]],
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    mesh = LocalMesh(3, base_dir=tmp_path_factory.mktemp("kv"))
    mesh.start()
    try:
        assert mesh.wait_ready(20)
        assert mesh.wait_voters(3, 30)
        yield mesh
    finally:
        mesh.stop()


def test_kv_round_trip_from_every_node(mesh: LocalMesh) -> None:
    s1, s2, s3 = (n.socket_path for n in mesh.nodes)
    assert cli(s2, "kv", "put", "-n", "app", "color", "blue").returncode == 0
    for sock in (s1, s2, s3):  # linearizable reads: every node sees the write at once
        out = cli(sock, "kv", "get", "-n", "app", "color")
        assert (out.returncode, out.stdout) == (0, "blue\n")
    assert cli(s3, "kv", "get", "--stale", "-n", "app", "color").returncode == 0
    cli(s1, "kv", "put", "-n", "app", "size", "xl")
    listing = cli(s3, "kv", "list", "-n", "app")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines() == ["color\tblue", "size\txl"]
    assert cli(s1, "kv", "del", "-n", "app", "color").returncode == 0
    missing = cli(s2, "kv", "get", "-n", "app", "color")
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert cli(s2, "kv", "del", "-n", "app", "color").returncode == 1
    # Namespaces are separate.
    assert cli(s1, "kv", "get", "-n", "other", "size").returncode == 1


def test_retried_request_applies_once(mesh: LocalMesh) -> None:
    sock = mesh.nodes[1].socket_path
    params = {"ns": "idem", "key": "k", "value": b"1", "rid": "same-rid"}
    first = call_sync(sock, "kv.put", params, 5)
    call_sync(sock, "kv.put", {"ns": "idem", "key": "k", "value": b"2", "rid": "other"}, 5)
    again = call_sync(sock, "kv.put", params, 5)  # a retry of the first request
    assert again == first
    assert call_sync(sock, "kv.get", {"ns": "idem", "key": "k"}, 5)["value"] == b"2"


def test_proposal_passes_at_threshold(mesh: LocalMesh) -> None:
    s1, s2, s3 = (n.socket_path for n in mesh.nodes)
    out = cli(s1, "propose", "upgrade to 0.2", "--threshold", "0.67")
    assert out.returncode == 0, out.stderr
    pid = out.stdout.strip()
    assert cli(s1, "vote", pid, "yes").returncode == 0
    rows = json.loads(cli(s2, "proposals", "--json").stdout)
    (row,) = [r for r in rows if str(r["id"]) == pid]
    assert row["state"] == "open" and row["yes"] == 1
    assert cli(s2, "vote", pid, "yes").returncode == 0  # 2 of 3 = 0.667 < 0.67: still open
    rows = json.loads(cli(s3, "proposals", "--json").stdout)
    (row,) = [r for r in rows if str(r["id"]) == pid]
    assert row["state"] == "open" and row["yes"] == 2
    again = cli(s2, "vote", pid, "no")
    assert again.returncode != 0 and "already voted" in again.stderr
    assert cli(s3, "vote", pid, "yes").returncode == 0
    rows = json.loads(cli(s3, "proposals", "--json").stdout)
    (row,) = [r for r in rows if str(r["id"]) == pid]
    assert row["state"] == "passed", row
    report = call_sync(s1, "report", {}, 5)
    assert report["vote_participation"] is not None and report["vote_participation"] > 0


def test_committed_entries_stream_to_subscribers(mesh: LocalMesh) -> None:
    async def watch() -> list[dict[str, object]]:
        client = await ControlClient.connect_unix(mesh.nodes[2].socket_path)
        seen: list[dict[str, object]] = []
        try:
            sub = await client.subscribe(["consensus"])  # subscribed once awaited
            it = sub.__aiter__()
            await client.call("kv.put", ns="ev", key="x", value=b"1")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                event = await asyncio.wait_for(it.__anext__(), 10)
                seen.append(event["data"])
                if any("ev" in str(e.get("summary", "")) for e in seen):
                    break
        finally:
            await client.close()
        return seen

    events = asyncio.run(watch())
    entries = [e for e in events if e.get("kind") == "entry"]
    assert entries and all(isinstance(e.get("index"), int) for e in entries)


def test_minority_write_fails_fast_with_exit_3(tmp_path: Path) -> None:
    mesh = LocalMesh(3, base_dir=tmp_path)
    mesh.start()
    try:
        assert mesh.wait_ready(20)
        assert mesh.wait_voters(3, 30)
        mesh.kill("n2")
        mesh.kill("n3")
        # Past an election timeout no leader can be heard: n1 says it is read-only.
        wait_until("n1 to see it has no quorum",
                   lambda: call_sync(mesh.nodes[0].socket_path, "status", {}, 5)["read_only"], 15, 0.1)
        started = time.monotonic()
        out = cli(mesh.nodes[0].socket_path, "kv", "put", "k", "v")
        assert out.returncode == 3
        assert out.stderr.startswith("meshtui: no quorum: cluster is read-only here")
        assert time.monotonic() - started < 8
        # A stale read still answers from the local copy.
        assert cli(mesh.nodes[0].socket_path, "kv", "get", "--stale", "k").returncode == 1
    finally:
        mesh.stop()
