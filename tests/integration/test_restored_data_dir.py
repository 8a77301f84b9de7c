"""Real agents on loopback: a node restarted from an older copy of its data dir
is alive to its peers at once, and a copy of a live node's data dir started as
a second process refuses to run (one line, exit 2) while the original runs on.

Before seal version 2 the first case failed: the replay incarnation was a boot
counter in the data dir, so the restored node started *below* what its peers
remembered and they dropped everything it sent as replays for over a minute.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.wait import wait_until

from agent.swim.config import SwimConfig
from meshtui.client import ClientError, call_sync
from meshtui.demo import LocalMesh, free_port

pytestmark = pytest.mark.timeout(120)

PROBE_INTERVAL = SwimConfig.local().probe_interval  # the demo runs --profile local
POLL_SLACK = 0.8
"""Seconds allowed on top of one probe interval for the test's own polling
(three status calls a round) on a loaded 2-core CI box: the old behaviour it
guards against is "dead for over a minute", and quiet runs see n2 alive within
the interval itself."""
KEEP_OUT = shutil.ignore_patterns("agent.sock", "agent.log")


def members(node_socket: str) -> dict[str, dict[str, Any]]:
    """name -> member row, as one node sees the cluster ({} if it does not answer)."""
    try:
        status = call_sync(node_socket, "status", {}, 2.0)
    except (ClientError, OSError):
        return {}
    return {m["name"]: m for m in status["members"]}


def n2_state_on(peers: list[Any]) -> set[str | None]:
    """The states n2 has in ``peers``' views (one element when they agree)."""
    return {members(p.socket_path).get("n2", {}).get("state") for p in peers}


def all_alive(mesh: LocalMesh) -> bool:
    names = set(mesh.names())
    for node in mesh.nodes:
        view = members(node.socket_path)
        if {n for n, m in view.items() if m["state"] == "alive"} != names:
            return False
    return True


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    mesh = LocalMesh(3, base_dir=tmp_path / "mesh")
    mesh.start()
    try:
        assert mesh.wait_ready(30), mesh.nodes[0].log_file.read_text()[-3000:]
        wait_until("every member alive on every node", lambda: all_alive(mesh), 30, 0.2)
        yield mesh
    finally:
        mesh.stop()


def stop(mesh: LocalMesh, name: str) -> None:
    node = mesh.node(name)
    assert node.proc is not None
    node.proc.terminate()
    assert node.proc.wait(timeout=20) == 0


def test_a_node_restored_from_an_older_copy_is_alive_within_one_probe_interval(
        mesh: LocalMesh, tmp_path: Path) -> None:
    n2 = mesh.node("n2")
    peers = [mesh.node("n1"), mesh.node("n3")]
    backup = tmp_path / "n2-backup"
    # A backup taken while n2 is stopped; n2 then runs on (restarted twice, so
    # anything it counts per start is ahead of the copy), and is stopped again.
    stop(mesh, "n2")
    shutil.copytree(n2.data_dir, backup, ignore=KEEP_OUT)
    for _ in range(2):
        n2.start()
        wait_until("the peers to see n2 alive", lambda: n2_state_on(peers) == {"alive"}, 30,
                   detail=lambda: n2_state_on(peers))
        stop(mesh, "n2")
        wait_until("the peers to see n2 left", lambda: n2_state_on(peers) == {"left"}, 10,
                   detail=lambda: n2_state_on(peers))
    # Restore the older copy over n2's data dir and start it.
    for entry in n2.data_dir.iterdir():
        if entry.name != "agent.log":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.copytree(backup, n2.data_dir, dirs_exist_ok=True)
    n2.start()

    def n2_joined() -> bool:  # n2 is up and has merged its peers' view
        view = members(n2.socket_path)
        return all(view.get(p.name, {}).get("state") == "alive" for p in peers)

    wait_until("n2 to see its peers alive", n2_joined, 30,
               detail=lambda: n2.log_file.read_text()[-3000:])
    joined = time.monotonic()
    wait_until("the peers to see n2 alive within one probe interval of its joining",
               lambda: n2_state_on(peers) == {"alive"}, PROBE_INTERVAL + POLL_SLACK, 0.005,
               detail=lambda: (f"{time.monotonic() - joined:.2f} s after it joined",
                               [members(p.socket_path).get("n2") for p in peers]))
    # And it stays alive: its traffic is not being dropped as replays.
    time.sleep(10 * PROBE_INTERVAL)
    for peer in peers:
        assert members(peer.socket_path)["n2"]["state"] == "alive"
        report = call_sync(peer.socket_path, "report", {}, 5.0)
        seal = report["transport"]["seal"]
        assert seal["dropped_tag"] == 0 and seal["dropped_unknown_key"] == 0


def test_a_copy_of_a_live_node_refuses_to_run_and_the_original_keeps_running(
        mesh: LocalMesh, tmp_path: Path) -> None:
    n2 = mesh.node("n2")
    node_id = (n2.data_dir / "node_id").read_text().strip()
    copy = tmp_path / "n2-copy"
    shutil.copytree(n2.data_dir, copy, ignore=KEEP_OUT)  # while n2 runs
    argv = list(n2.argv)
    for flag, value in (("--data-dir", str(copy)), ("--port", str(free_port())),
                        ("--socket", str(copy / "agent.sock"))):
        argv[argv.index(flag) + 1] = value
    started = time.monotonic()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired as exc:  # show what the copy did instead
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else str(exc.stderr)
        views = {n.name: members(n.socket_path).get("n2") for n in mesh.nodes}
        raise AssertionError(f"the copy kept running; peers see n2 as {views}; its log:\n"
                             f"{stderr[-4000:]}") from None
    assert out.returncode == 2, out.stderr[-3000:]
    refusals = [line for line in out.stderr.splitlines() if "already running" in line]
    assert refusals == [
        f"mesh-agent: node id {node_id} is already running at "
        f"127.0.0.1:{n2.port}: {copy} is a copy of a live node's data dir; start this host "
        "with an empty one"
    ], out.stderr[-3000:]
    assert out.stderr.rstrip().splitlines()[-1] == refusals[0]
    assert time.monotonic() - started < 30
    # The original never noticed a thing, beyond a warning in its log.
    assert n2.running
    time.sleep(10 * PROBE_INTERVAL)
    for node in mesh.nodes:
        view = members(node.socket_path)
        assert view["n2"]["state"] == "alive" and view["n2"]["addr"] == f"127.0.0.1:{n2.port}"
    assert "uses our node id" in n2.log_file.read_text()
