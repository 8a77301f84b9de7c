"""A real ``mesh-agent run`` process: status over its socket, garbage, SIGTERM, CLI weight."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.wait import wait_until

from meshtui.client import ClientError, call_sync
from meshtui.demo import LocalMesh

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def one_agent(tmp_path: Path) -> Iterator[LocalMesh]:
    mesh = LocalMesh(1, base_dir=tmp_path)
    mesh.start()
    try:
        assert mesh.wait_ready(20), (mesh.nodes[0].log_file.read_text()[-3000:])
        yield mesh
    finally:
        mesh.stop()


def meshtui(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "meshtui.cli", *args], capture_output=True, text=True,
        timeout=30, env=env,
    )


def test_status_json_shape(one_agent: LocalMesh) -> None:
    node = one_agent.nodes[0]
    out = meshtui("status", "--json", "-t", node.socket_path)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["node"] == "n1"
    assert {"members", "consensus", "tasks"} <= status.keys()
    (me,) = status["members"]
    assert me["name"] == "n1" and me["state"] == "alive"
    assert me["addr"] == f"127.0.0.1:{node.port}"
    for key in ("id", "cpu", "mem", "caps", "tasks", "role", "rtt_ms"):
        assert key in me
    cons = status["consensus"]
    assert set(cons) >= {"engine", "role", "term", "leader", "commit_index", "voters"}
    assert cons["engine"] == "raft"
    assert set(status["tasks"]) == {"queued", "running", "done", "failed"}


def test_single_agent_becomes_leader(one_agent: LocalMesh) -> None:
    path = one_agent.nodes[0].socket_path
    status = wait_until(
        "the single agent to elect a leader",
        lambda: (s := call_sync(path, "status", {}, 2.0))["consensus"]["leader"] and s, 15, 0.1,
    )
    assert status["consensus"]["leader"] == "n1"
    assert status["consensus"]["voters"] == ["n1"]


def test_survives_garbage_everywhere(one_agent: LocalMesh) -> None:
    node = one_agent.nodes[0]
    # Control socket: random bytes, then an oversized length prefix.
    for junk in (os.urandom(512), b"\xff\xff\xff\xff" + b"x" * 64, b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(node.socket_path)
            s.sendall(junk)
            s.settimeout(2)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                s.recv(4096)
    # Peer port: UDP datagrams and a TCP stream of garbage.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for _ in range(50):
            udp.sendto(os.urandom(200), ("127.0.0.1", node.port))
        udp.sendto(b"", ("127.0.0.1", node.port))
    with socket.create_connection(("127.0.0.1", node.port), timeout=2) as tcp:
        tcp.sendall(b"\x00\x00\x10\x00" + os.urandom(4096))
        tcp.sendall(b"\xff\xff\xff\xff")

    def dropped() -> int:
        seal = call_sync(node.socket_path, "report", {}, 5.0)["transport"]["seal"]
        return sum(v for k, v in seal.items() if k.startswith("dropped"))

    # Every garbage datagram is refused and counted, and the agent is still there.
    wait_until("the 50 garbage datagrams to be counted as dropped", lambda: dropped() >= 50, 10,
               0.1, detail=dropped)
    assert node.running
    status = call_sync(node.socket_path, "status", {}, 5.0)
    assert status["node"] == "n1"


def test_sigterm_exits_cleanly_and_removes_socket(tmp_path: Path) -> None:
    mesh = LocalMesh(1, base_dir=tmp_path)
    mesh.start()
    node = mesh.nodes[0]
    try:
        assert mesh.wait_ready(20)
        assert Path(node.socket_path).exists()
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(timeout=15) == 0
        assert not Path(node.socket_path).exists()
    finally:
        mesh.stop()


def test_agent_refuses_to_start_without_key(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--profile", "local", "--data-dir",
         str(tmp_path), "--port", "0"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "mesh-agent: config error: key_file: no cluster key: pass --key-file "
        "(make one with `mesh-agent keygen`) or --insecure-no-key"
    ]


def test_cli_does_not_import_heavy_modules(one_agent: LocalMesh) -> None:
    """status, kv and submit against a local socket import no textual/asyncssh/zeroconf."""
    path = one_agent.nodes[0].socket_path
    wait_until("the agent to elect a leader",
               lambda: call_sync(path, "status", {}, 2.0)["consensus"]["leader"], 15, 0.1)
    code = (
        "import sys, io, contextlib\n"
        "from meshtui.cli import main\n"
        f"p = {path!r}\n"
        "with contextlib.redirect_stdout(io.TextIOWrapper(io.BytesIO())):\n"
        "    rc = [main(['status', '--json', '-t', p]),\n"
        "          main(['kv', 'put', 'k', 'v', '-t', p]), main(['kv', 'get', 'k', '-t', p]),\n"
        "          main(['submit', '-t', p, '--', 'true'])]\n"
        "heavy = [m for m in ('textual', 'asyncssh', 'zeroconf') if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 0, 0, 0] []"


def test_unreachable_socket_gives_one_line_exit_4(tmp_path: Path) -> None:
    out = meshtui("status", "-t", str(tmp_path / "nope.sock"))
    assert out.returncode == 4
    assert out.stderr.count("\n") == 1 and "no agent is running there" in out.stderr


def test_bad_cli_arguments_exit_2() -> None:
    out = meshtui("submit", "--retries", "x", "--", "true")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    out = meshtui("status", "-t", "ftp://host")
    assert out.returncode == 2 and "unsupported target scheme" in out.stderr


def test_keys_install_reads_the_key_from_a_file(one_agent: LocalMesh, tmp_path: Path) -> None:
    """``keys install --key-file`` keeps the key out of argv; bad uses are one line, exit 2."""
    from agent.crypto import decode_key, generate_key, key_id

    sock = one_agent.nodes[0].socket_path
    key = generate_key()
    key_file = tmp_path / "new.key"
    key_file.touch(mode=0o600)  # a key file others can read is refused
    key_file.write_text(key + "\n")
    out = meshtui("keys", "install", "--key-file", str(key_file), "--json", "-t", sock)
    assert out.returncode == 0, out.stderr
    assert key_id(decode_key(key)).hex() in {k["id"] for k in json.loads(out.stdout)["keys"]}
    both = meshtui("keys", "install", key, "--key-file", str(key_file), "-t", sock)
    missing = meshtui("keys", "install", "--key-file", str(tmp_path / "absent.key"), "-t", sock)
    neither = meshtui("keys", "install", "-t", sock)
    for bad, says in ((both, "not both"), (missing, "absent.key"), (neither, "--key-file")):
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and says in bad.stderr, bad.stderr


SEEDLESS_WATCH = 3.0
"""Seconds of its own uptime each seed-less node is watched for: the local profile's
1.5 s bootstrap grace plus three 0.5 s autopilot rounds."""


def test_nodes_started_before_their_seed_form_one_cluster(tmp_path: Path) -> None:
    """A deploy starts hosts in any order.  n2 and n3 (seeded with n1) come up
    well past the bootstrap grace before n1 does: they must wait for it, not
    found one-voter clusters of their own, which would never merge."""
    from agent.crypto import generate_key

    mesh = LocalMesh(3, base_dir=tmp_path)
    seed = f"127.0.0.1:{mesh.node('n1').port}"
    for name in ("n2", "n3"):  # as a deploy writes it: only the seed host, n1
        argv = mesh.node(name).argv
        joins = [i for i, arg in enumerate(argv) if arg == "--join"]
        for i in reversed(joins):
            del argv[i : i + 2]
        argv += ["--join", seed]
    mesh.base_dir.mkdir(parents=True, exist_ok=True)
    mesh.key_file.write_text(generate_key() + "\n")
    os.chmod(mesh.key_file, 0o600)
    try:
        for name in ("n2", "n3"):
            mesh.node(name).start()
        # Watched until each has run, by its own clock, past the local profile's
        # 1.5 s bootstrap grace and three 0.5 s autopilot rounds: neither founds a
        # cluster.  (A fixed sleep proved less when a loaded box started them late.)
        def past_grace_without_a_cluster() -> bool:
            try:
                views = {n: call_sync(mesh.node(n).socket_path, "status", {}, 5.0) for n in ("n2", "n3")}
            except ClientError:
                return False  # not listening yet
            for name, view in views.items():
                cons = view["consensus"]
                assert cons["voters"] == [] and cons["leader"] is None, (name, cons)
            return all(view["uptime"] >= SEEDLESS_WATCH for view in views.values())

        wait_until("n2 and n3 to run past the bootstrap grace", past_grace_without_a_cluster, 30, 0.2)
        mesh.node("n1").start()

        def one_cluster() -> bool:
            try:
                views = [call_sync(n.socket_path, "status", {}, 5.0)["consensus"] for n in mesh.nodes]
            except ClientError:
                return False  # n1 not listening yet
            leaders = {v["leader"] for v in views}
            return len(leaders) == 1 and None not in leaders and all(
                sorted(v["voters"]) == ["n1", "n2", "n3"] for v in views)

        wait_until("n1, n2 and n3 to form one cluster", one_cluster, 30, 0.1,
                   detail=lambda: [call_sync(n.socket_path, "status", {}, 5.0)["consensus"]
                                   for n in mesh.nodes])
    finally:
        mesh.stop()
