"""Disk full on real agents (root: a small tmpfs holds one node's data dir).

Issue 11, item 3: a full disk used to kill the agent.  Now it stays up, keeps
serving status and reads, raises an alarm, a leader hands off to a healthy
voter, a write is refused with ``disk full on n1: <dir>`` (exit 5) only when
no healthy majority can take it, and Raft resumes by itself once space is
freed.  Every acknowledged write is still there afterwards.

Segments are 1 MiB (``raft.segment_bytes`` from a config file) so a handful
of 100 KiB values fill the preallocated segment and the next one cannot be
created.  The agents' logs and sockets stay off the tmpfs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rootpolicy import enforce_root_policy
from support.wait import wait_until

from meshtui.client import ClientError, call_sync
from meshtui.demo import LocalMesh

# Root (mount) is checked by the tmpfs fixture: the root marker would also demand ip, nft and tc.
pytestmark = pytest.mark.timeout(120)

TMPFS_SIZE = "24m"
VALUE = b"v" * (100 * 1024)


@contextlib.contextmanager
def mounted_tmpfs(base: Path) -> Iterator[Path]:
    enforce_root_policy(("mount", "umount"))
    mnt = base / "fs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "mt-diskfull", str(mnt)],
                   check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path) as mnt:
        yield mnt


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalMesh, Path]]:
    """3 agents, n1's data dir on the tmpfs; each test leaves the tmpfs with room."""
    base = tmp_path_factory.mktemp("three")
    with mounted_tmpfs(base) as mnt:
        mesh = start_mesh(base / "mesh", 3, mnt)
        try:
            assert mesh.wait_ready(20) and mesh.wait_voters(3, 30), log_tail(mesh)
            yield mesh, mnt
        finally:
            mesh.stop()


@contextlib.contextmanager
def filled(directory: Path) -> Iterator[Path]:
    """The filesystem full for the block's duration (the filler may be removed early)."""
    filler = fill(directory)
    try:
        yield filler
    finally:
        with contextlib.suppress(OSError):
            filler.unlink()


def start_mesh(base: Path, nodes: int, tmpfs: Path) -> LocalMesh:
    """``nodes`` loopback agents; n1's data dir is on the tmpfs, with 1 MiB segments."""
    config = base / "n1.toml"
    base.mkdir(parents=True, exist_ok=True)
    config.write_text("[raft]\nsegment_bytes = 1048576\n")
    mesh = LocalMesh(nodes, base_dir=base)
    n1 = mesh.nodes[0]
    at = n1.argv.index("--data-dir")
    n1.argv[at + 1] = str(tmpfs / "n1")
    n1.argv += ["--config", str(config)]
    mesh.start()
    return mesh


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it."""
    filler = directory / "filler"
    chunk = b"\xff" * (1 << 20)
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 20, 4096):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(chunk[:size])
    with pytest.raises(OSError) as raised:
        (directory / "probe").write_bytes(b"x" * 8192)
    assert raised.value.errno == errno.ENOSPC
    return filler


def meshtui(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshtui.cli", args[0], "-t", sock, *args[1:]],
                          capture_output=True, text=True, timeout=30)


def status(sock: str) -> dict[str, Any]:
    result: dict[str, Any] = call_sync(sock, "status", {}, 5.0)
    return result


def put(sock: str, key: str, value: bytes = VALUE) -> str:
    """"" if acknowledged, else the error code."""
    try:
        call_sync(sock, "kv.put", {"ns": "df", "key": key, "value": value}, 15.0)
    except ClientError as exc:
        return exc.code
    return ""


def check_all(sock: str, acked: dict[str, bytes], stale: bool = False) -> list[str]:
    """Keys whose read (linearizable unless ``stale``) does not give the acknowledged value."""
    bad = []
    for key, value in acked.items():
        try:
            got = call_sync(sock, "kv.get", {"ns": "df", "key": key, "stale": stale}, 10.0)
        except ClientError as exc:
            bad.append(f"{key}: {exc.code} {exc.message}")
            continue
        if got.get("value") != value:
            bad.append(f"{key}: {got.get('value')!r:.40}")
    return bad


def alarms(sock: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = status(sock).get("alarms") or []
    return rows


def log_tail(mesh: LocalMesh) -> str:
    return "\n".join(f"--- {n.name}\n{n.log_file.read_text()[-2500:]}" for n in mesh.nodes)


def test_single_voter_refuses_writes_while_full_and_resumes(tmpfs: Path, tmp_path: Path) -> None:
    mesh = start_mesh(tmp_path / "one", 1, tmpfs)
    filler: Path | None = None
    try:
        assert mesh.wait_ready(20) and mesh.wait_voters(1, 30), log_tail(mesh)
        n1 = mesh.nodes[0]
        sock, raft_dir = n1.socket_path, str(tmpfs / "n1" / "raft")
        acked = {f"before{i}": f"b{i}".encode() for i in range(5)}
        for key, value in acked.items():
            assert put(sock, key, value) == ""
        filler = fill(tmpfs)

        # The current segment's preallocated space takes a few more writes; the
        # write that needs a new segment is refused with the disk-full error.
        codes = []
        for i in range(40):
            code = put(sock, f"fill{i}")
            codes.append(code)
            if code:
                break
            acked[f"fill{i}"] = VALUE
        assert codes[-1] == "disk_full", (codes, log_tail(mesh))

        # Up, answering, alarmed; writes refused at once with exit 5 and one line.
        assert n1.running
        (alarm,) = alarms(sock)
        assert alarm["kind"] == "disk_full" and alarm["dir"] == raft_dir
        assert alarm["message"] == f"disk full on n1: {raft_dir}"
        out = meshtui(sock, "status")
        assert out.returncode == 0 and f"ALARM: disk full on n1: {raft_dir}" in out.stdout, out
        started = time.monotonic()
        out = meshtui(sock, "kv", "put", "-n", "df", "refused", "x")
        assert out.returncode == 5, out
        assert out.stderr.startswith(f"meshtui: disk full on n1: {raft_dir}"), out.stderr
        assert len(out.stderr.splitlines()) == 1 and time.monotonic() - started < 5
        report = json.loads(meshtui(sock, "report", "--json").stdout)
        assert report["alarms"][0]["dir"] == raft_dir
        # Reads keep working: linearizable (the only voter still leads) and stale.
        out = meshtui(sock, "kv", "get", "-n", "df", "before3")
        assert (out.returncode, out.stdout) == (0, "b3\n"), out
        assert meshtui(sock, "kv", "get", "--stale", "-n", "df", "before1").stdout == "b1\n"

        # Stopped and started again while the disk is still full: it comes up with
        # every acknowledged write (the write that did not fit was never promised).
        mesh.stop()
        assert "Traceback" not in n1.log_file.read_text()
        n1.start()
        assert mesh.wait_ready(20), log_tail(mesh)
        assert check_all(sock, acked, stale=True) == []
        wait_until("every acknowledged write to read back", lambda: not check_all(sock, acked), 15,
                   0.1, detail=lambda: check_all(sock, acked))
        wait_until("a write to be refused with disk_full",
                   lambda: put(sock, "refused-again") == "disk_full", 10, 0.1,
                   detail=lambda: log_tail(mesh))

        # Free the space: the alarm clears and writes resume by themselves.
        filler.unlink()
        filler = None
        wait_until("the disk-full alarm to clear", lambda: not alarms(sock), 10, 0.1,
                   detail=lambda: log_tail(mesh))
        assert put(sock, "after", b"a") == ""
        acked["after"] = b"a"
        assert check_all(sock, acked) == []

        # Nothing acknowledged is lost across a restart either.
        mesh.stop()
        n1.start()
        assert mesh.wait_ready(20), log_tail(mesh)
        wait_until("every acknowledged write to read back", lambda: not check_all(sock, acked), 15,
                   0.1, detail=lambda: check_all(sock, acked))
        assert "Traceback" not in n1.log_file.read_text()
    finally:
        if filler is not None:
            with contextlib.suppress(OSError):
                filler.unlink()
        mesh.stop()


def make_leader(mesh: LocalMesh, name: str) -> None:
    s1 = mesh.nodes[0].socket_path
    current = str(status(s1)["consensus"]["leader"])
    if current != name:
        call_sync(mesh.node(current).socket_path, "leader.transfer", {"to": name}, 5.0)
    sock = mesh.node(name).socket_path
    wait_until(f"{name} to lead", lambda: status(sock)["consensus"]["role"] == "leader", 10, 0.1,
               detail=lambda: status(sock))
    wait_until(f"n1 to follow {name}", lambda: status(s1)["consensus"]["leader"] == name, 10, 0.1,
               detail=lambda: status(s1))


def test_full_leader_hands_off_and_writes_go_on(three: tuple[LocalMesh, Path]) -> None:
    mesh, tmpfs = three
    s1, s2, s3 = (n.socket_path for n in mesh.nodes)
    raft_dir = str(tmpfs / "n1" / "raft")
    make_leader(mesh, "n1")  # the node on the tmpfs leads
    acked = {f"lead-before{i}": f"b{i}".encode() for i in range(5)}
    for key, value in acked.items():
        assert put(s1, key, value) == ""
    with filled(tmpfs) as filler:
        # Writes through n1 until its disk is full: the write in flight then may
        # fail (no quorum: leadership is moving, retry) but none is disk_full,
        # and later writes through n1 reach the new leader.
        codes: list[str] = []
        for i in range(60):
            code = put(s1, f"lead-fill{i}")
            codes.append(code)
            if not code:
                acked[f"lead-fill{i}"] = VALUE
            if alarms(s1) and sum(1 for c in codes[-3:] if not c) == 3:
                break
        assert alarms(s1), (codes, log_tail(mesh))
        assert "disk_full" not in codes, codes
        assert mesh.nodes[0].running
        cons = status(s1)["consensus"]
        assert cons["paused"] and cons["role"] != "leader" and cons["leader"] in ("n2", "n3"), cons
        assert status(s2)["consensus"]["leader"] == cons["leader"]
        out = meshtui(s1, "kv", "put", "-n", "df", "lead-via-n1", "yes")
        assert out.returncode == 0, out
        acked["lead-via-n1"] = b"yes"
        assert put(s3, "lead-via-n3", b"3") == ""
        acked["lead-via-n3"] = b"3"
        # n1's state stands still: stale reads serve it; a linearizable read that
        # needs newer writes says why.
        assert meshtui(s1, "kv", "get", "--stale", "-n", "df", "lead-before2").stdout == "b2\n"
        out = meshtui(s1, "kv", "get", "-n", "df", "lead-via-n3")
        assert out.returncode == 5 and f"disk full on n1: {raft_dir}" in out.stderr, out
        assert check_all(s2, acked) == []

        # Free the space: n1 resumes, catches up and serves every acknowledged write.
        filler.unlink()
        wait_until("n1's disk-full alarm to clear", lambda: not alarms(s1), 10, 0.1,
                   detail=lambda: log_tail(mesh))
        wait_until("n1 to serve every acknowledged write", lambda: not check_all(s1, acked), 15,
                   0.1, detail=lambda: check_all(s1, acked))
    assert check_all(s3, acked) == []
    assert put(s1, "lead-after", b"a") == ""
    assert all(n.running for n in mesh.nodes)
    assert "Traceback" not in mesh.nodes[0].log_file.read_text()


def test_full_follower_stops_acking_but_forwards(three: tuple[LocalMesh, Path]) -> None:
    mesh, tmpfs = three
    s1 = mesh.nodes[0].socket_path
    raft_dir = str(tmpfs / "n1" / "raft")
    leader = str(status(s1)["consensus"]["leader"])
    if leader == "n1":
        make_leader(mesh, leader := "n2")
    other = next(n for n in mesh.nodes[1:] if n.name != leader)
    sl = mesh.node(leader).socket_path
    acked = {f"follow-before{i}": f"b{i}".encode() for i in range(3)}
    for key, value in acked.items():
        assert put(s1, key, value) == ""
    with filled(tmpfs) as filler:
        # The leader's writes fill n1's segment; n1 pauses and the others go on.
        for i in range(60):
            assert put(sl, f"follow-fill{i}") == "", log_tail(mesh)
            acked[f"follow-fill{i}"] = VALUE
            if alarms(s1):
                break
        assert alarms(s1), log_tail(mesh)
        cons = status(s1)["consensus"]
        assert cons["paused"] and cons["role"] == "voter" and cons["leader"] == leader, cons
        out = meshtui(s1, "kv", "put", "-n", "df", "follow-via-n1", "yes")  # forwarded
        assert out.returncode == 0, out
        acked["follow-via-n1"] = b"yes"

        # n1 no longer counts toward a quorum: with the third node gone there is no
        # healthy majority, and only then does a write through n1 say "disk full".
        mesh.kill(other.name)
        try:
            wait_until("the leader to lose its quorum", lambda: put(sl, "nq", b"x") == "no_quorum",
                       10, 0.1)
            out = wait_until(
                "a write through n1 to exit 5",
                lambda: (r := meshtui(s1, "kv", "put", "-n", "df", "x", "y")).returncode == 5 and r,
                10, 0.1,
            )
            assert out.stderr == f"meshtui: disk full on n1: {raft_dir} (no healthy majority" \
                " elsewhere can take the write; writes resume by themselves once space is freed)\n", out
        finally:
            mesh.restart(other.name)
        filler.unlink()
        wait_until("n1's disk-full alarm to clear", lambda: not alarms(s1), 10, 0.1,
                   detail=lambda: log_tail(mesh))
    wait_until("a write through n1 to succeed", lambda: put(s1, "follow-after", b"a") == "", 20,
               0.1, detail=lambda: log_tail(mesh))
    acked["follow-after"] = b"a"
    wait_until("n1 to serve every acknowledged write", lambda: not check_all(s1, acked), 15, 0.1,
               detail=lambda: check_all(s1, acked))
    assert "Traceback" not in mesh.nodes[0].log_file.read_text()
