"""The namespace lab itself: reachability, partitions, netem, multicast, sshd, cleanup."""

from __future__ import annotations

import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.sshd import ssh_keygen
from support.wait import wait_until

from netns.harness import OWNER_DIR, NetnsLab, cleanup_stale, list_namespaces

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture
def lab3() -> Iterator[NetnsLab]:
    with NetnsLab(3) as lab:
        yield lab


def reachable(lab: NetnsLab, src: int, dst: int) -> bool:
    return lab.ping(src, dst, count=1, timeout=0.5)[0] is not None


def udp_delivered(lab: NetnsLab, src: int, dst: int, port: int = 9999) -> bool:
    """Send one datagram src -> dst; True if dst received it within 0.5 s."""
    receiver = lab.socket(dst, socket.AF_INET, socket.SOCK_DGRAM)
    sender = lab.socket(src, socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.bind((lab.addr(dst), port))
        receiver.settimeout(0.5)
        token = os.urandom(8)
        try:
            sender.sendto(token, (lab.addr(dst), port))
        except OSError:
            return False  # dropped by an output rule
        try:
            return receiver.recv(64) == token
        except TimeoutError:
            return False


def test_hosts_ping_each_other(lab3: NetnsLab) -> None:
    assert [lab3.addr(h) for h in lab3.hosts] == ["198.18.0.10", "198.18.0.11", "198.18.0.12"]
    for src in lab3.hosts:
        for dst in lab3.hosts:
            assert reachable(lab3, src, dst), (src, dst)
    names = list_namespaces()
    assert lab3.lab_ns in names and all(lab3.ns(h) in names for h in lab3.hosts)
    # nothing was added to the root namespace
    assert lab3.bridge not in subprocess.run(
        ["ip", "link"], capture_output=True, text=True, check=True
    ).stdout


def test_partition_and_heal() -> None:
    with NetnsLab(4) as lab:
        lab.partition([[0, 1], [2, 3]])
        assert reachable(lab, 0, 1) and reachable(lab, 2, 3)
        for a, b in [(0, 2), (2, 0), (1, 3), (3, 1), (0, 3)]:
            assert not reachable(lab, a, b), (a, b)
            assert not udp_delivered(lab, a, b), (a, b)
        lab.heal()
        for a, b in [(0, 2), (2, 0), (1, 3), (3, 1)]:
            assert reachable(lab, a, b), (a, b)


def test_one_way(lab3: NetnsLab) -> None:
    lab3.one_way(0, 1)
    assert not udp_delivered(lab3, 0, 1)
    assert udp_delivered(lab3, 1, 0)
    assert udp_delivered(lab3, 0, 2)
    lab3.heal()
    assert udp_delivered(lab3, 0, 1)


@pytest.mark.parametrize("backend", [None, "relay"], ids=["auto", "relay"])
def test_netem_adds_measurable_delay_and_loss(backend: str | None) -> None:
    with NetnsLab(3, netem_backend=backend) as lab:
        check_netem(lab)


UNIMPAIRED_RTT = 0.04
"""Seconds: the median RTT bound of a path without netem.  Idle it is well under
1 ms; a loaded 2-core box (and the relay backend's userspace hop) can add tens
of ms.  The bound only has to tell "no delay" from the >= 75 ms an 80 ms netem
delay shows, so it sits about halfway."""


def check_netem(lab3: NetnsLab) -> None:
    lab3.ping(0, 1, count=1)  # resolve ARP first
    base = [r for r in lab3.ping(0, 1, count=5) if r is not None]
    assert len(base) == 5 and statistics.median(base) < UNIMPAIRED_RTT, base

    lab3.netem(1, delay_ms=80)
    lab3.ping(0, 1, count=1, timeout=2)
    delayed = [r for r in lab3.ping(0, 1, count=5, timeout=2) if r is not None]
    assert len(delayed) == 5
    assert 0.075 <= statistics.median(delayed) < 0.5, (lab3.netem_backend, delayed)

    lab3.netem(1, delay_ms=50, jitter_ms=40)
    jittered = [r for r in lab3.ping(0, 1, count=20, timeout=2) if r is not None]
    assert max(jittered) - min(jittered) > 0.02, (lab3.netem_backend, jittered)

    lab3.netem(1, loss_pct=50)
    results = lab3.ping(0, 1, count=20, timeout=0.3)
    lost = results.count(None)
    assert 0 < lost < 20, (lab3.netem_backend, results)

    lab3.clear_netem(1)
    lab3.ping(0, 1, count=1, timeout=1)  # the bridge relearns the host's port
    restored = lab3.ping(0, 1, count=10, timeout=1)
    assert None not in restored, restored
    assert statistics.median(r for r in restored if r is not None) < UNIMPAIRED_RTT, restored
    # the other hosts were never impaired
    others = lab3.ping(0, 2, count=3)
    assert None not in others and statistics.median(r for r in others if r) < UNIMPAIRED_RTT, others


def multicast_delivered(lab: NetnsLab, src: int, dsts: list[int]) -> list[bool]:
    group, port = "224.0.0.251", 5353
    receivers = []
    for dst in dsts:
        sock = lab.socket(dst, socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", port))
        mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(lab.addr(dst)))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.settimeout(1.0)
        receivers.append(sock)
    sender = lab.socket(src, socket.AF_INET, socket.SOCK_DGRAM)
    token = os.urandom(12)
    with sender:
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        sender.sendto(token, (group, port))  # no IP_MULTICAST_IF: the 224/4 route picks eth0
    seen = []
    for sock in receivers:
        with sock:
            try:
                got = []
                for _ in range(10):  # bounded: skip unrelated mDNS chatter
                    data, (addr, _) = sock.recvfrom(2048)
                    got.append(data == token and addr == lab.addr(src))
                    if got[-1]:
                        break
                seen.append(any(got))
            except TimeoutError:
                seen.append(False)
    return seen


def test_multicast_crosses_the_bridge(lab3: NetnsLab) -> None:
    assert multicast_delivered(lab3, 0, [1, 2]) == [True, True]
    lab3.partition([[0, 1], [2]])
    assert multicast_delivered(lab3, 0, [1, 2]) == [True, False]
    lab3.heal()
    assert multicast_delivered(lab3, 2, [0]) == [True]


def test_zeroconf_between_namespaces(lab3: NetnsLab) -> None:
    pytest.importorskip("zeroconf")
    register = textwrap.dedent(
        f"""
        import socket, time
        from zeroconf import IPVersion, ServiceInfo, Zeroconf
        zc = Zeroconf(interfaces=["{lab3.addr(0)}"], ip_version=IPVersion.V4Only)
        info = ServiceInfo("_mesh-agent._tcp.local.", "mt-probe._mesh-agent._tcp.local.",
                           addresses=[socket.inet_aton("{lab3.addr(0)}")], port=7900,
                           properties={{"id": "abc"}})
        zc.register_service(info)
        print("registered", flush=True)
        time.sleep(30)
        """
    )
    browse = textwrap.dedent(
        f"""
        import time
        from zeroconf import IPVersion, ServiceBrowser, Zeroconf
        found = []
        class Listener:
            def add_service(self, zc, type_, name):
                info = zc.get_service_info(type_, name, timeout=3000)
                if info: found.append((name, info.parsed_addresses(), info.port))
            def update_service(self, *a): pass
            def remove_service(self, *a): pass
        zc = Zeroconf(interfaces=["{lab3.addr(1)}"], ip_version=IPVersion.V4Only)
        ServiceBrowser(zc, "_mesh-agent._tcp.local.", Listener())
        for _ in range(100):
            if found: break
            time.sleep(0.1)
        print(found)
        zc.close()
        """
    )
    server = lab3.popen(0, [sys.executable, "-c", register], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "registered"
    result = lab3.run(1, [sys.executable, "-c", browse], timeout=30)
    assert "mt-probe._mesh-agent._tcp.local." in result.stdout, result.stderr
    assert "198.18.0.10" in result.stdout and "7900" in result.stdout


@pytest.mark.root(tools=("sshd", "ssh", "ssh-keygen"))
def test_sshd_accepts_key(lab3: NetnsLab, tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    other = tmp_path / "other_ed25519"
    for path in (key, other):
        ssh_keygen(path)
    pub = key.with_suffix(".pub").read_text()
    port = lab3.start_sshd(0, pub, tmp_path / "hostkeys")
    assert port == 22
    assert (tmp_path / "hostkeys" / "ssh_host_ed25519_key").exists()

    def ssh(identity: Path) -> subprocess.CompletedProcess[str]:
        return lab3.run(1, ["ssh", "-i", str(identity), "-o", "BatchMode=yes",
                            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "ConnectTimeout=5", "-p", str(port),
                            f"root@{lab3.addr(0)}", "echo", "ok-from-$(hostname -I)"])

    good = ssh(key)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip().startswith("ok-from-198.18.0.10")
    bad = ssh(other)
    assert bad.returncode == 255 and "Permission denied" in bad.stderr


def test_cleanup_leaves_no_namespaces() -> None:
    lab = NetnsLab(2)
    with lab:
        sleeper = lab.popen(1, ["sleep", "300"])
        names = [lab.lab_ns, lab.ns(0), lab.ns(1)]
        suffix = lab.suffix
    assert sleeper.poll() is not None
    remaining = [n for n in list_namespaces() if n.startswith("mt-")]
    assert not [n for n in remaining if suffix in n], remaining
    assert not set(names) & set(remaining)
    assert not (OWNER_DIR / suffix).exists()


def run_lab_script(body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter with ``NetnsLab`` imported (tests/ on its PYTHONPATH)."""
    script = "import os, signal, subprocess\nfrom netns.harness import NetnsLab\n" + body
    tests_dir = str(Path(__file__).resolve().parents[1])
    inherited = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, inherited]))}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False, env=env)


def test_atexit_and_stale_cleanup() -> None:
    # A lab never closed by its owner is removed by the atexit hook.
    proc = run_lab_script("lab = NetnsLab(2); lab.start(); print(lab.suffix)")
    assert proc.returncode == 0, proc.stderr
    suffix = proc.stdout.strip()
    assert not [n for n in list_namespaces() if suffix in n]
    # A SIGKILLed owner leaves namespaces behind; cleanup_stale removes them,
    # while a live lab (ours) is kept.
    proc = run_lab_script(
        "lab = NetnsLab(2); lab.start(); print(lab.suffix, flush=True)\n"
        "lab.popen(0, ['sleep', '300'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    suffix = proc.stdout.strip()
    leftovers = [n for n in list_namespaces() if suffix in n]
    assert len(leftovers) == 3, (proc.stderr, leftovers)
    assert list(Path(tempfile.gettempdir()).glob(f"mt-lab{suffix}-*"))  # its work dir, too
    with NetnsLab(1, clean_stale=False) as live:
        removed = cleanup_stale()
        assert set(leftovers) <= set(removed)
        assert not list(Path(tempfile.gettempdir()).glob(f"mt-lab{suffix}-*"))
        assert live.lab_ns not in removed and live.lab_ns in list_namespaces()
    wait_until(f"the namespaces of lab {suffix} to be gone",
               lambda: not [n for n in list_namespaces() if suffix in n], 5,
               detail=lambda: [n for n in list_namespaces() if suffix in n])


def test_relay_carries_tcp_bulk_intact() -> None:
    """GSO super-frames and partial checksums survive the userspace wire."""
    import threading

    with NetnsLab(2, netem_backend="relay") as lab:
        lab.netem(0, delay_ms=10, jitter_ms=2, loss_pct=1)
        payload = os.urandom(4 << 20)
        received: list[bytes] = []
        server = lab.socket(1)
        server.bind((lab.addr(1), 7000))
        server.listen()
        server.settimeout(20)

        def serve() -> None:
            conn, _ = server.accept()
            conn.settimeout(20)
            chunks = []
            with conn:
                for _ in range(100_000):  # bounded read loop
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
            received.append(b"".join(chunks))

        thread = threading.Thread(target=serve)
        thread.start()
        client = lab.socket(0)
        client.settimeout(20)
        client.connect((lab.addr(1), 7000))
        client.sendall(payload)
        client.close()
        thread.join(30)
        server.close()
        assert received and received[0] == payload


def test_netns_lab_fixture(netns_lab: Callable[..., NetnsLab]) -> None:
    first = netns_lab(2)
    second = netns_lab(2)
    assert first.suffix != second.suffix
    # same addresses, separate wires: the labs cannot see each other
    assert first.addr(0) == second.addr(0)
    assert reachable(first, 0, 1) and reachable(second, 1, 0)


@pytest.mark.root(tools=("sshd", "ssh-keygen"))
async def test_sshd_forwards_to_a_unix_socket(tmp_path: Path) -> None:
    """The lab's sshd config allows what meshtui attach does: direct-streamlocal."""
    import asyncio

    asyncssh = pytest.importorskip("asyncssh")
    key = tmp_path / "id_ed25519"
    ssh_keygen(key)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo:" + await reader.readline())
        await writer.drain()
        writer.close()

    # A Unix socket lives in the shared filesystem, not in a network namespace.
    agent_sock = tmp_path / "agent.sock"
    server = await asyncio.start_unix_server(echo, path=str(agent_sock))
    with NetnsLab(2) as lab:
        port = lab.start_sshd(0, key.with_suffix(".pub").read_text(), tmp_path / "hostkeys")
        sock = lab.socket(1)  # the client dials from host 1's namespace
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (lab.addr(0), port))
        async with asyncssh.connect(
            lab.addr(0), port, sock=sock, username="root", client_keys=[str(key)],
            known_hosts=None, agent_path=None,
        ) as conn:
            reader, writer = await conn.open_unix_connection(str(agent_sock))
            writer.write(b"hello\n")
            reply = await asyncio.wait_for(reader.read(), 10)
            assert reply == b"echo:hello\n"
    server.close()
    await server.wait_closed()
