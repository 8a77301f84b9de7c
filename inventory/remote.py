"""One SSH connection to an inventory host: commands, file writes and uploads.

asyncssh is imported when a connection is opened, not at module import, so
parsing an inventory never pays for it.  Connections honour ``~/.ssh/config``
and ``known_hosts`` like ``ssh`` does; ``ansible_host_key_checking: false``
turns host key checking off for that host (test labs), and
``ansible_ssh_private_key_file`` adds a client key.

Further connection settings (``inventory.sshargs``, README "Reaching hosts"):
jump hosts from ``-o ProxyJump``/``-J`` are opened here and chained with
asyncssh's ``tunnel=`` (a ``ProxyJump`` in ``~/.ssh/config`` is asyncssh's
own), ``ansible_password`` serves password and keyboard-interactive auth, and
with ``ansible_become`` every command runs through ``inventory.become``.

Every failure surfaces as ``StepError(step, reason)``: one line naming what
was being done, which deploy reports as ``host: failed: step: reason``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import posixpath
import shlex
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import MeshError
from inventory.become import BECOME_TIMEOUT, BecomeError, become_exec
from inventory.hostvars import Host
from inventory.sshargs import jump_hops

CONNECT_TIMEOUT = 15.0
"""Seconds to establish SSH (TCP + key exchange + auth)."""
COMMAND_TIMEOUT = 600.0
"""Seconds one remote command may take (a venv install is the slowest)."""
UPLOAD_PARALLEL = 4
"""Concurrent SFTP transfers per host."""


class StepError(MeshError):
    """A deployment step failed on a host; ``str()`` is ``step: reason`` on one line."""

    def __init__(self, step: str, reason: str) -> None:
        reason = " / ".join(line.strip() for line in reason.strip().splitlines() if line.strip())
        super().__init__(f"{step}: {reason or 'failed'}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Completed:
    exit_status: int
    stdout: str
    stderr: str


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


class RemoteHost:
    """An open SSH connection to ``host``; use ``async with connect(host) as remote``."""

    def __init__(self, host: Host, conn: Any) -> None:
        self.host = host
        self.conn = conn
        self.sftp_ok: bool | None = None
        """None until tried; False when the server has no sftp subsystem (exec fallback)."""

    async def run(
        self,
        command: str,
        step: str,
        *,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        input: bytes | None = None,
        escalate: bool = True,
    ) -> Completed:
        """Run ``command`` with ``sh -c``; non-zero exit raises ``StepError`` when ``check``.

        With ``ansible_become`` the command runs as the become user (``escalate=False``:
        as the login user); ``input`` is fed to its stdin.
        """
        import asyncssh

        try:
            if self.host.become is not None and escalate:
                done = Completed(*await become_exec(self.conn, self.host.become, command, input, timeout))
            else:
                result = await self.conn.run(
                    f"sh -c {shlex.quote(command)}",
                    input=input,
                    encoding=None,
                    check=False,
                    timeout=timeout,
                )
                done = Completed(
                    int(result.exit_status if result.exit_status is not None else 255),
                    bytes(result.stdout or b"").decode(errors="replace"),
                    bytes(result.stderr or b"").decode(errors="replace"),
                )
        except (asyncssh.TimeoutError, TimeoutError):
            raise StepError(step, f"timed out after {timeout:.0f}s") from None
        except BecomeError as exc:
            raise StepError("become", str(exc)) from None
        except (OSError, asyncssh.Error) as exc:
            raise StepError(step, f"connection lost: {_one_line(exc)}") from None
        if check and done.exit_status != 0:
            detail = done.stderr.strip() or done.stdout.strip()
            tail = " / ".join(detail.splitlines()[-3:])
            raise StepError(step, f"exit status {done.exit_status}: {tail}")
        return done

    async def write_file(self, path: str, data: bytes, mode: int, step: str) -> None:
        """Write atomically: a temp file beside ``path``, chmod, then rename over it."""
        await self._put_bytes([(path, data, mode)], posixpath.dirname(path), step)

    async def upload(self, files: Iterable[Path], directory: str, step: str) -> None:
        """Copy local ``files`` into remote ``directory`` (created if missing).

        With become, the files go by SFTP as the login user into a ``mktemp -d``
        staging directory (0755: only the login user writes there, a non-root
        become user can read), then are copied into place as the become user (so
        they are owned by it); that suits the wheels, which are not secret.
        """
        paths = list(files)
        if self.host.become is None:
            await self._upload_direct(paths, directory, step)
            return
        made = await self.run("mktemp -d", step, escalate=False)
        stage = made.stdout.strip()
        if not stage.startswith("/"):
            raise StepError(step, f"mktemp -d printed {stage!r}")
        q = shlex.quote
        try:
            # Readable by a become user other than root; only the login user can write.
            await self.run(f"chmod 755 {q(stage)}", step, escalate=False)
            await self._upload_direct(paths, stage, step)
            names = " ".join(q(p.name) for p in paths)
            await self.run(
                f"mkdir -p {q(directory)} && cd {q(stage)} && for f in {names}; do "
                f'cp "$f" {q(directory)}/."$f".part && chmod 644 {q(directory)}/."$f".part && '
                f'mv -f {q(directory)}/."$f".part {q(directory)}/"$f" || exit 1; done',
                step,
            )
        finally:
            await self.run(f"rm -rf {q(stage)}", step, check=False, escalate=False)

    async def _upload_direct(self, paths: list[Path], directory: str, step: str) -> None:
        import asyncssh

        if self.sftp_ok is not False:
            try:
                async with self.conn.start_sftp_client() as sftp:
                    self.sftp_ok = True
                    await sftp.makedirs(directory, exist_ok=True)
                    gate = asyncio.Semaphore(UPLOAD_PARALLEL)

                    async def one(path: Path) -> None:
                        async with gate:
                            tmp = f"{directory}/.{path.name}.part"
                            await sftp.put(str(path), tmp)
                            await sftp.chmod(tmp, 0o644)
                            await sftp.posix_rename(tmp, f"{directory}/{path.name}")

                    await asyncio.gather(*(one(p) for p in paths))
                    return
            except asyncssh.ChannelOpenError:
                self.sftp_ok = False  # no sftp subsystem on this server: stream over exec
            except (OSError, asyncssh.Error) as exc:
                raise StepError(step, f"upload to {directory} failed: {_one_line(exc)}") from None
        for path in paths:
            await self._exec_write(f"{directory}/{path.name}", path.read_bytes(), 0o644, step, escalate=False)

    async def _put_bytes(self, items: list[tuple[str, bytes, int]], directory: str, step: str) -> None:
        import asyncssh

        if self.sftp_ok is not False and self.host.become is None:
            try:
                async with self.conn.start_sftp_client() as sftp:
                    self.sftp_ok = True
                    await sftp.makedirs(directory, exist_ok=True)
                    for path, data, mode in items:
                        tmp = f"{path}.meshtui-tmp"
                        # Born with ``mode`` (a key must never sit readable before the chmod).
                        async with sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=mode)) as fh:
                            await fh.write(data)
                        await sftp.chmod(tmp, mode)
                        await sftp.posix_rename(tmp, path)
                    return
            except asyncssh.ChannelOpenError:
                self.sftp_ok = False
            except (OSError, asyncssh.Error) as exc:
                raise StepError(step, f"cannot write {items[0][0]}: {_one_line(exc)}") from None
        for path, data, mode in items:
            await self._exec_write(path, data, mode, step)

    async def _exec_write(
        self, path: str, data: bytes, mode: int, step: str, *, escalate: bool = True
    ) -> None:
        """Write ``data`` through a command's stdin (as the become user, when there is one)."""
        q = shlex.quote
        tmp = q(f"{path}.meshtui-tmp")
        command = (
            f"mkdir -p {q(posixpath.dirname(path))} && (umask 077; cat > {tmp}) && "
            f"chmod {mode:o} {tmp} && mv -f {tmp} {q(path)}"
        )
        done = await self.run(command, step, check=False, input=data, escalate=escalate)
        if done.exit_status != 0:
            raise StepError(step, f"cannot write {path}: {done.stderr.strip() or done.exit_status}")

    async def read_files(self, paths: Iterable[str], step: str) -> dict[str, bytes]:
        """The content of each existing regular file among ``paths`` (as the become user)."""
        found: dict[str, bytes] = {}
        for path in paths:
            q = shlex.quote(path)
            done = await self.run(f"[ -f {q} ] && base64 < {q}", step, check=False)
            if done.exit_status == 0:
                found[path] = base64.b64decode("".join(done.stdout.split()))
        return found

    async def file_hashes(self, paths: Iterable[str], step: str) -> dict[str, str]:
        """sha256 of each existing file among ``paths`` (missing files are absent)."""
        quoted = " ".join(shlex.quote(p) for p in paths)
        done = await self.run(
            f'for f in {quoted}; do if [ -f "$f" ]; then sha256sum "$f"; fi; done',
            step,
        )
        hashes: dict[str, str] = {}
        for line in done.stdout.splitlines():
            digest, _, name = line.partition("  ")
            if name:
                hashes[name] = digest
        return hashes


def sha256_text(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def client_options(host: Host, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
    """asyncssh options for ``host`` (no secrets but the login password, if any).

    ``ansible_port``/``ansible_user`` are already merged with ``-o Port``/``-o User``
    in ``Host``; identity files add to each other; ``ansible_host_key_checking:
    false`` or ``StrictHostKeyChecking=no`` turn checking off, else
    ``UserKnownHostsFile`` replaces ``~/.ssh/known_hosts``.
    """
    options: dict[str, Any] = {
        "port": host.ssh_port,
        "connect_timeout": host.ssh.connect_timeout or timeout,
    }
    if host.user:
        options["username"] = host.user
    keys = [str(Path(k).expanduser()) for k in (host.key_file, *host.ssh.identity_files) if k]
    if keys:
        options["client_keys"] = keys
    if not host.host_key_checking:
        options["known_hosts"] = None
    elif host.ssh.known_hosts_files:
        # A missing file lists no host, as with ssh (asyncssh would fail reading it).
        files = [Path(k).expanduser() for k in host.ssh.known_hosts_files]
        present = [str(f) for f in files if f.is_file()]
        options["known_hosts"] = present or ([], [], [])
    if host.password is not None:
        # Used for "password" and for "keyboard-interactive" password prompts alike.
        options["password"] = host.password
    if host.host_key_checking and host.ssh.accept_new:
        options["client_factory"] = _accept_new_factory(host)
    return options


def known_hosts_file(host: Host) -> Path:
    """Where ``accept-new`` records keys: the first UserKnownHostsFile, else ~/.ssh/known_hosts."""
    files = host.ssh.known_hosts_files
    return Path(files[0]).expanduser() if files else Path("~/.ssh/known_hosts").expanduser()


def _accept_new_factory(host: Host) -> Any:
    """``StrictHostKeyChecking=accept-new``: trust (and record) the key of a host that
    known_hosts does not list at all; a host listed with other keys is still refused."""
    import asyncssh

    path = known_hosts_file(host)

    class AcceptNew(asyncssh.SSHClient):  # type: ignore[misc]
        def validate_host_public_key(self, name: str, addr: str, port: int, key: Any) -> bool:
            lookup = None if port == 22 else port
            known: Any = str(path) if path.is_file() else b""
            if any(asyncssh.match_known_hosts(known, name, addr, lookup)[:3]):
                return False  # listed with other keys (or revoked): a changed key
            pattern = name if port == 22 else f"[{name}]:{port}"
            line = f"{pattern} {key.export_public_key().decode().strip()}\n"
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(path, "a", encoding="ascii") as fh:
                fh.write(line)
            return True

    return AcceptNew


async def _open_jumps(host: Host, options: dict[str, Any], stack: contextlib.AsyncExitStack) -> Any:
    """Connect through each hop of the inventory's ProxyJump; returns the last (or None).

    Each hop uses its own ``user@``/``:port`` when given, else ``~/.ssh/config``
    for that name, and the host's identity files and host-key policy (the login
    password is not offered to jump hosts).  ``ProxyJump=none`` returns None and
    ``tunnel=None`` then also overrides a ProxyJump from ``~/.ssh/config``.
    """
    import asyncssh

    spec = host.ssh.proxy_jump
    if spec is None:
        return ()  # asyncssh's default: ~/.ssh/config may name a ProxyJump
    tunnel: Any = None
    for user, name, port in jump_hops(spec):
        shared = ("client_keys", "known_hosts", "connect_timeout", "client_factory")
        hop = {k: v for k, v in options.items() if k in shared}
        where = f"{name}:{port or 22}"
        try:
            tunnel = await stack.enter_async_context(
                await asyncio.wait_for(
                    asyncssh.connect(
                        name, port or (), username=user or (), tunnel=tunnel or (), **hop
                    ),
                    options["connect_timeout"] + 5,
                )
            )
        except TimeoutError:
            raise StepError("connect", f"jump host {where}: timed out") from None
        except (OSError, asyncssh.Error) as exc:
            raise StepError("connect", f"jump host {where}: {_one_line(exc)}") from None
    return tunnel


@contextlib.asynccontextmanager
async def connect(host: Host, timeout: float = CONNECT_TIMEOUT) -> AsyncIterator[RemoteHost]:
    """Open an SSH connection; failure raises ``StepError("connect", reason)``.

    With ``ansible_become`` the escalation is tried once right away, so a
    refused become password is one ``become: ...`` line for the host before
    anything is done there.
    """
    import asyncssh

    options = client_options(host, timeout)
    wait = options["connect_timeout"] + 5
    where = f"{host.address}:{host.ssh_port}"
    async with contextlib.AsyncExitStack() as stack:
        tunnel = await _open_jumps(host, options, stack)
        if host.ssh.proxy_jump and tunnel:
            where += f" via {host.ssh.proxy_jump}"
        try:
            conn = await asyncio.wait_for(asyncssh.connect(host.address, tunnel=tunnel, **options), wait)
        except TimeoutError:
            raise StepError("connect", f"{where}: timed out after {wait - 5:.0f}s") from None
        except (OSError, asyncssh.Error) as exc:
            raise StepError("connect", f"{where}: {_one_line(exc)}") from None
        try:
            remote = RemoteHost(host, conn)
            if host.become is not None:
                await remote.run("true", "become", timeout=BECOME_TIMEOUT + 5)
            yield remote
        finally:
            conn.close()
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(conn.wait_closed(), 5)
