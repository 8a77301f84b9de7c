"""Issue 11 against real agents: a voter whose disk lost acknowledged writes.

* one voter of three loses its WAL tail (zeroed, as a disk that drops synced
  writes leaves it) after a clean stop, or after SIGKILL (a lost fsync): it is
  repaired by the others and no acknowledged write is lost;
* the only voter loses its tail: it refuses to start with one line naming the
  file, the offset and ``mesh-agent recover --force-new-cluster``, which then
  brings it back as a new one-voter cluster;
* a deleted snapshot: one line, no traceback.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.wait import wait_until

from agent.raft.walformat import HEADER, RECORDS_START
from meshtui.client import ClientError, call_sync
from meshtui.demo import DemoNode, LocalMesh

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]


def status(node: DemoNode) -> dict[str, object] | None:
    try:
        return dict(call_sync(node.socket_path, "status", {}, 2.0)["consensus"])
    except ClientError:
        return None


def put_many(node: DemoNode, first: int, count: int) -> None:
    for i in range(first, first + count):
        call_sync(node.socket_path, "kv.put", {"ns": "d", "key": f"k{i}", "value": f"v{i}".encode()}, 10.0)


def caught_up(follower: DemoNode, leader: DemoNode, role: str | None = None) -> bool:
    """Has ``follower`` applied the leader's commit index (and, if given, got ``role``)?"""
    mine, theirs = status(follower) or {}, status(leader) or {}
    if role is not None and mine.get("role") != role:
        return False
    return bool(mine.get("applied_index", 0) >= theirs.get("commit_index", 1))  # type: ignore[operator]


def stop_cleanly(mesh: LocalMesh, node: DemoNode) -> None:
    """SIGTERM and wait for the exit: the WAL's clean close writes its last ack slot."""
    mesh.kill(node.name, signal.SIGTERM)
    assert node.proc is not None
    node.proc.wait(timeout=20)


def leader_and_follower(mesh: LocalMesh) -> tuple[DemoNode, DemoNode]:
    leader = follower = None
    for node in mesh.nodes:
        cons = status(node)
        if cons is not None and cons["role"] == "leader":
            leader = node
        elif cons is not None and cons["role"] == "voter":
            follower = node
    assert leader is not None and follower is not None
    return leader, follower


def record_offsets(seg: Path) -> list[int]:
    """Where each record of a v2 segment starts, and (last) where the records end."""
    data = seg.read_bytes()
    off, offsets = RECORDS_START, [RECORDS_START]
    while off + HEADER.size <= len(data):
        length, _ = HEADER.unpack_from(data, off)
        if length == 0:
            break
        off += HEADER.size + length
        offsets.append(off)
    return offsets


def records_end(seg: Path) -> int:
    return record_offsets(seg)[-1]


def zero_wal_tail(data_dir: Path, size: int = 4096) -> Path:
    """``dd if=/dev/zero conv=notrunc`` over the last ``size`` bytes of valid records."""
    seg = sorted((data_dir / "raft" / "wal").glob("*.seg"))[-1]
    end = records_end(seg)
    start = max(RECORDS_START, end - size)
    assert end - start > 200, f"too little in {seg} to zero ({end - start} bytes)"
    with seg.open("r+b") as f:
        f.seek(start)
        f.write(bytes(end - start))
    return seg


def run_agent_once(node: DemoNode, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(node.argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def start_three(tmp_path: Path) -> LocalMesh:
    mesh = LocalMesh(3, base_dir=tmp_path)
    mesh.start()
    assert mesh.wait_ready(30)
    assert mesh.wait_voters(3, 40), "never reached 3 voters"
    return mesh


@pytest.mark.parametrize("stop", ["clean", "sigkill"])
def test_a_voter_that_lost_its_wal_tail_is_repaired_and_no_acked_write_is_lost(
    tmp_path: Path, stop: str
) -> None:
    mesh = start_three(tmp_path)
    try:
        leader, follower = leader_and_follower(mesh)
        put_many(leader, 0, 150)
        wait_until("the follower to apply every write", lambda: caught_up(follower, leader), 20)
        if stop == "clean":
            stop_cleanly(mesh, follower)
        else:
            mesh.kill(follower.name, signal.SIGKILL)
        zero_wal_tail(follower.data_dir)
        mesh.restart(follower.name)
        # Writes keep going while it is repaired: the other two are a healthy majority.
        put_many(leader, 150, 30)
        wait_until(
            "the damaged voter to be repaired and promoted again",
            lambda: caught_up(follower, leader, role="voter"),
            90,
        )
        log = follower.log_file.read_text()
        if stop == "clean":
            assert "storage damaged" in log and "acknowledged up to index" in log, log[-3000:]
            assert "repair granted" in log, log[-3000:]
        for i in range(180):
            got = call_sync(follower.socket_path, "kv.get", {"ns": "d", "key": f"k{i}", "stale": True}, 5.0)
            assert got["found"] and got["value"] == f"v{i}".encode(), f"k{i} lost on {follower.name}"
        got = call_sync(follower.socket_path, "kv.get", {"ns": "d", "key": "k179"}, 10.0)
        assert got["value"] == b"v179"
    finally:
        mesh.stop()


def test_the_only_voter_refuses_with_one_line_and_recover_forces_a_new_cluster(tmp_path: Path) -> None:
    mesh = LocalMesh(1, base_dir=tmp_path)
    mesh.start()
    node = mesh.nodes[0]
    try:
        assert mesh.wait_voters(1, 40)
        put_many(node, 0, 120)
        stop_cleanly(mesh, node)
        seg = zero_wal_tail(node.data_dir)
        refused = run_agent_once(node)
        assert refused.returncode == 2, refused.stderr
        lines = [ln for ln in refused.stderr.splitlines() if ln.startswith("mesh-agent:")]
        assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert str(seg) in lines[0] and "byte offset" in lines[0]
        assert f"mesh-agent recover --force-new-cluster --data-dir {node.data_dir}" in lines[0]
        argv = [sys.executable, "-m", "agent.cli", "recover", "--force-new-cluster"]
        forced = subprocess.run(
            [*argv, "--data-dir", str(node.data_dir)], capture_output=True, text=True, timeout=60, cwd=REPO
        )
        assert forced.returncode == 0, forced.stderr
        assert "new one-voter cluster" in forced.stdout and "may be lost" in forced.stdout
        mesh.restart(node.name)
        assert mesh.wait_voters(1, 40)
        got = call_sync(node.socket_path, "kv.get", {"ns": "d", "key": "k0"}, 10.0)
        assert got["value"] == b"v0"
        put_many(node, 1000, 5)
    finally:
        mesh.stop()


def test_a_deleted_snapshot_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    # repair_wait: the lone voter waits that long for a leader to repair it before
    # it refuses (20 s by default; the refusal's line is what this test reads).
    config.write_text(
        "[raft]\nsnapshot_threshold = 30\nsnapshot_trailing = 5\nrepair_wait = 2.0\n"
    )
    mesh = LocalMesh(1, base_dir=tmp_path / "mesh", extra_args=["--config", str(config)])
    mesh.start()
    node = mesh.nodes[0]
    try:
        assert mesh.wait_voters(1, 40)
        put_many(node, 0, 100)
        stop_cleanly(mesh, node)
        snaps = list((node.data_dir / "raft" / "snap").glob("*.snap"))
        assert snaps, "no snapshot was taken"
        for snap in snaps:
            snap.unlink()
        refused = run_agent_once(node)
        assert refused.returncode == 2, refused.stderr
        assert "Traceback" not in refused.stderr and "AssertionError" not in refused.stderr
        lines = [ln for ln in refused.stderr.splitlines() if ln.startswith("mesh-agent:")]
        assert len(lines) == 1 and snaps[0].name in lines[0] and "is missing" in lines[0], refused.stderr
    finally:
        mesh.stop()


def test_a_damaged_voter_with_no_healthy_majority_stops_after_repair_wait(tmp_path: Path) -> None:
    mesh = start_three(tmp_path / "mesh")
    try:
        leader, follower = leader_and_follower(mesh)
        put_many(leader, 0, 150)
        wait_until("the follower to apply every write", lambda: caught_up(follower, leader), 20)
    finally:
        mesh.stop()
    zero_wal_tail(follower.data_dir)
    config = tmp_path / "agent.toml"
    config.write_text("[raft]\nrepair_wait = 2.0\n")
    started = time.monotonic()
    alone = subprocess.run(
        [*follower.argv, "--config", str(config)], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert alone.returncode == 2, alone.stderr[-2000:]
    lines = [ln for ln in alone.stderr.splitlines() if ln.startswith("mesh-agent:")]
    assert len(lines) == 1, alone.stderr[-2000:]
    assert "no leader backed by a healthy majority repaired this node within 2 s" in lines[0]
    assert "recover --force-new-cluster" in lines[0] and "byte offset" in lines[0]
    assert time.monotonic() - started < 30


def test_a_voter_whose_sealed_middle_segment_lost_its_end_is_repaired(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[raft]\nsegment_bytes = 65536\n")
    mesh = LocalMesh(3, base_dir=tmp_path / "mesh", extra_args=["--config", str(config)])
    mesh.start()
    try:
        assert mesh.wait_ready(30) and mesh.wait_voters(3, 40)
        leader, follower = leader_and_follower(mesh)
        put_many(leader, 0, 1200)
        wait_until("the follower to apply every write", lambda: caught_up(follower, leader), 30)
        stop_cleanly(mesh, follower)
        segments = sorted((follower.data_dir / "raft" / "wal").glob("*.seg"))
        assert len(segments) >= 3, segments
        middle = segments[len(segments) // 2 - 1]
        offsets = record_offsets(middle)
        start = max(o for o in offsets if o <= offsets[-1] - 4096)  # whole records, seal included
        with middle.open("r+b") as f:
            f.seek(start)
            f.write(bytes(offsets[-1] - start))
        mesh.restart(follower.name)
        wait_until(
            "the damaged voter to be repaired and promoted again",
            lambda: caught_up(follower, leader, role="voter"),
            90,
        )
        log = follower.log_file.read_text()
        assert f"{middle}: sealed segment ends at byte offset" in log, log[-3000:]
        for i in range(0, 1200, 7):
            got = call_sync(follower.socket_path, "kv.get", {"ns": "d", "key": f"k{i}", "stale": True}, 5.0)
            assert got["found"] and got["value"] == f"v{i}".encode(), f"k{i} lost on {follower.name}"
    finally:
        mesh.stop()
