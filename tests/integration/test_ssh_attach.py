"""SSH attach against a real OpenSSH sshd on loopback (root: sshd needs it).

The test starts sshd on a free port with a generated host key, key-only auth,
a temporary known_hosts and ``AllowStreamLocalForwarding yes``, and a small
Unix-socket echo server of its own (no agent).  ``meshtui.ssh`` must carry
bytes both ways over a direct-streamlocal channel, refuse an untrusted host
key with a clear line, and report a socket it may not open.
"""

from __future__ import annotations

import asyncio
import pwd
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.ports import free_port
from support.sshd import LoopbackSshd, loopback_sshd, ssh_keygen

from meshtui.ssh import SSHAttachError, Target, open_ssh_streams, parse_target

pytestmark = pytest.mark.root(tools=("sshd", "ssh-keygen"))

UNPRIVILEGED = "nobody"

STREAMLOCAL_CONFIG = (
    "AllowStreamLocalForwarding yes",
    # OpenSSH gates direct-streamlocal on AllowTcpForwarding too (local or yes).
    "AllowTcpForwarding local",
    "X11Forwarding no",
    "LogLevel VERBOSE",
)
"""What ``meshtui attach`` needs from a host's sshd, on top of key-only root login."""


@pytest.fixture(scope="module")
def sshd() -> Iterator[LoopbackSshd]:
    # Readable by all: the unprivileged user's sshd child must read authorized_keys.
    with loopback_sshd("mt-sshd-", STREAMLOCAL_CONFIG, readable_by_all=True) as server:
        yield server


@pytest.fixture
def ssh_config(sshd: LoopbackSshd) -> Path:
    """An ssh_config naming the server ``meshbox`` (HostName, Port, User, IdentityFile)."""
    path = sshd.root / "ssh_config"
    path.write_text(
        f"Host meshbox\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
        f"  IdentityFile {sshd.client_key}\n"
    )
    return path


@pytest.fixture
async def echo_socket(sshd: LoopbackSshd) -> AsyncIterator[Path]:
    """A Unix socket echoing every line back, upper-cased (so an echo is not a loopback)."""
    sock_dir = Path(tempfile.mkdtemp(prefix="mt-echo-", dir=sshd.root))
    sock_dir.chmod(0o755)
    path = sock_dir / "agent.sock"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(line.upper())
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path))
    path.chmod(0o666)
    try:
        yield path
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(sock_dir, ignore_errors=True)


def _target(sshd: LoopbackSshd, sock: Path, user: str = "root") -> Target:
    return parse_target(f"ssh://{user}@127.0.0.1:{sshd.port}{sock}")


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"hello mesh\n")
    await writer.drain()
    return await asyncio.wait_for(reader.readline(), 10)


async def test_round_trip_over_direct_streamlocal(sshd: LoopbackSshd, echo_socket: Path) -> None:
    reader, writer, conn = await open_ssh_streams(
        _target(sshd, echo_socket),
        known_hosts=str(sshd.known_hosts),
        client_keys=[str(sshd.client_key)],
        config=[],
    )
    try:
        assert await _round_trip(reader, writer) == b"HELLO MESH\n"
        # A second request on the same channel: the stream stays open.
        writer.write(b"again\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 10) == b"AGAIN\n"
    finally:
        conn.close()
        await conn.wait_closed()


async def test_ssh_config_host_alias_is_honoured(
    sshd: LoopbackSshd, ssh_config: Path, echo_socket: Path
) -> None:
    reader, writer, conn = await open_ssh_streams(
        parse_target(f"ssh://meshbox{echo_socket}"),
        known_hosts=str(sshd.known_hosts),
        config=[str(ssh_config)],
    )
    try:
        assert await _round_trip(reader, writer) == b"HELLO MESH\n"
    finally:
        conn.close()


async def test_wrong_host_key_is_refused_with_a_clear_error(
    sshd: LoopbackSshd, echo_socket: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other_ed25519"
    other_pub = ssh_keygen(other)
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other_pub}\n")
    with pytest.raises(SSHAttachError) as info:
        await open_ssh_streams(
            _target(sshd, echo_socket),
            known_hosts=str(wrong),
            client_keys=[str(sshd.client_key)],
            config=[],
        )
    message = str(info.value)
    assert message.startswith("host key for 127.0.0.1 is not trusted (known_hosts ")
    assert str(wrong) in message
    assert "\n" not in message


async def test_unknown_host_key_is_refused(sshd: LoopbackSshd, echo_socket: Path, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(SSHAttachError, match=r"^host key for 127\.0\.0\.1 is not trusted"):
        await open_ssh_streams(
            _target(sshd, echo_socket),
            known_hosts=str(empty),
            client_keys=[str(sshd.client_key)],
            config=[],
        )


def _unprivileged_can_login() -> bool:
    try:
        pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        return False
    return True


async def test_socket_without_permission_gives_a_clear_error(sshd: LoopbackSshd, echo_socket: Path) -> None:
    if not _unprivileged_can_login():
        pytest.skip(f"no {UNPRIVILEGED!r} user to log in as")
    target = _target(sshd, echo_socket, user=UNPRIVILEGED)
    opts = {
        "known_hosts": str(sshd.known_hosts),
        "client_keys": [str(sshd.client_key)],
        "config": [],
    }
    # Control: the unprivileged user can use the socket while it is open to all...
    reader, writer, conn = await open_ssh_streams(target, **opts)  # type: ignore[arg-type]
    try:
        assert await _round_trip(reader, writer) == b"HELLO MESH\n"
    finally:
        conn.close()
    # ...and is refused once it is not.
    echo_socket.chmod(0o000)
    with pytest.raises(SSHAttachError) as info:
        await open_ssh_streams(target, **opts)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(f"cannot open {echo_socket} on 127.0.0.1: permission denied")
    assert "\n" not in message


async def test_missing_socket_gives_a_clear_error(sshd: LoopbackSshd, tmp_path: Path) -> None:
    missing = sshd.root / "no-such-dir" / "agent.sock"
    with pytest.raises(SSHAttachError, match=rf"^cannot open {missing} on 127\.0\.0\.1: "):
        await open_ssh_streams(
            _target(sshd, missing),
            known_hosts=str(sshd.known_hosts),
            client_keys=[str(sshd.client_key)],
            config=[],
        )


async def test_nothing_listening_gives_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(SSHAttachError, match=rf"^cannot reach root@127\.0\.0\.1:{port}: "):
        await open_ssh_streams(
            parse_target(f"ssh://root@127.0.0.1:{port}"),
            known_hosts=str(tmp_path / "kh"),
            config=[],
            timeout=5,
        )


def test_parse_target_forms() -> None:
    t = parse_target("ssh://ops@web1:2222/var/run/a.sock")
    assert (t.kind, t.user, t.host, t.port, t.socket_path) == (
        "ssh",
        "ops",
        "web1",
        2222,
        "/var/run/a.sock",
    )
    d = parse_target("ssh://web1")
    assert (d.user, d.port, d.socket_path) == (None, None, "/run/mesh-agent/agent.sock")
    assert parse_target("ssh://[::1]:22").host == "::1"
    assert parse_target("/tmp/x.sock") == Target("unix", socket_path="/tmp/x.sock")
    assert parse_target("web1") == Target("name", host="web1")
    for bad in ("", "http://x", "ssh://", "ssh://@h", "ssh://h:99999", "ssh://h:x", "a b"):
        with pytest.raises(SSHAttachError):
            parse_target(bad)


async def test_control_rpc_and_events_over_ssh(sshd: LoopbackSshd, tmp_path: Path) -> None:
    """The real msgpack control stack (server + ControlClient) through the SSH channel."""
    from agent.control.server import ControlServer
    from meshtui.client import ControlClient

    sock_dir = Path(tempfile.mkdtemp(prefix="mt-rpc-", dir=sshd.root))
    sock_dir.chmod(0o755)
    path = sock_dir / "agent.sock"

    async def status(params: dict[str, object]) -> dict[str, object]:
        return {"node": "sshbox", "members": [], "partitioned": False}

    server = ControlServer(str(path), {"status": status}, {"members"})
    await server.start()
    reader, writer, conn = await open_ssh_streams(
        _target(sshd, path),
        known_hosts=str(sshd.known_hosts),
        client_keys=[str(sshd.client_key)],
        config=[],
    )
    client = await ControlClient.from_streams(reader, writer)
    try:
        assert (await client.call("status"))["node"] == "sshbox"
        events = await client.subscribe(["members"])
        server.publish("members", {"kind": "join", "member": {"name": "n9"}})
        event = await asyncio.wait_for(events.__anext__(), 10)
        assert event == {"event": "members", "data": {"kind": "join", "member": {"name": "n9"}}}
    finally:
        await client.close()
        conn.close()
        await server.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
