"""One SSH connection to an inventory host: commands, file writes and uploads.

asyncssh is imported when a connection is opened, not at module import, so
parsing an inventory never pays for it.  Connections honour ``~/.ssh/config``
and ``known_hosts`` like ``ssh`` does; ``ansible_host_key_checking: false``
turns host key checking off for that host (test labs), and
``ansible_ssh_private_key_file`` adds a client key.

Every failure surfaces as ``StepError(step, reason)``: one line naming what
was being done, which deploy reports as ``host: failed: step: reason``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import posixpath
import shlex
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import MeshError
from inventory.hostvars import Host

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
        self, command: str, step: str, *, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> Completed:
        """Run ``command`` with ``sh -c``; non-zero exit raises ``StepError`` when ``check``."""
        import asyncssh

        try:
            result = await self.conn.run(f"sh -c {shlex.quote(command)}", check=False, timeout=timeout)
        except asyncssh.TimeoutError:
            raise StepError(step, f"timed out after {timeout:.0f}s") from None
        except (OSError, asyncssh.Error) as exc:
            raise StepError(step, f"connection lost: {_one_line(exc)}") from None
        done = Completed(
            int(result.exit_status if result.exit_status is not None else 255),
            str(result.stdout or ""),
            str(result.stderr or ""),
        )
        if check and done.exit_status != 0:
            detail = done.stderr.strip() or done.stdout.strip()
            tail = " / ".join(detail.splitlines()[-3:])
            raise StepError(step, f"exit status {done.exit_status}: {tail}")
        return done

    async def write_file(self, path: str, data: bytes, mode: int, step: str) -> None:
        """Write atomically: a temp file beside ``path``, chmod, then rename over it."""
        await self._put_bytes([(path, data, mode)], posixpath.dirname(path), step)

    async def upload(self, files: Iterable[Path], directory: str, step: str) -> None:
        """Copy local ``files`` into remote ``directory`` (created if missing)."""
        import asyncssh

        paths = list(files)
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
                            await sftp.posix_rename(tmp, f"{directory}/{path.name}")

                    await asyncio.gather(*(one(p) for p in paths))
                    return
            except asyncssh.ChannelOpenError:
                self.sftp_ok = False  # no sftp subsystem on this server: stream over exec
            except (OSError, asyncssh.Error) as exc:
                raise StepError(step, f"upload to {directory} failed: {_one_line(exc)}") from None
        for path in paths:
            await self._put_bytes([(f"{directory}/{path.name}", path.read_bytes(), 0o644)], directory, step)

    async def _put_bytes(self, items: list[tuple[str, bytes, int]], directory: str, step: str) -> None:
        import asyncssh

        if self.sftp_ok is not False:
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
            q = shlex.quote
            tmp = q(f"{path}.meshtui-tmp")
            command = (
                f"mkdir -p {q(directory)} && (umask 077; cat > {tmp}) && "
                f"chmod {mode:o} {tmp} && mv -f {tmp} {q(path)}"
            )
            try:
                result = await self.conn.run(
                    f"sh -c {q(command)}",
                    input=data,
                    encoding=None,
                    check=False,
                    timeout=COMMAND_TIMEOUT,
                )
            except (OSError, asyncssh.Error) as exc:
                raise StepError(step, f"cannot write {path}: {_one_line(exc)}") from None
            if result.exit_status != 0:
                err = bytes(result.stderr or b"").decode(errors="replace")
                raise StepError(step, f"cannot write {path}: {err or result.exit_status}")

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


@contextlib.asynccontextmanager
async def connect(host: Host, timeout: float = CONNECT_TIMEOUT) -> AsyncIterator[RemoteHost]:
    """Open an SSH connection; failure raises ``StepError("connect", reason)``."""
    import asyncssh

    options: dict[str, Any] = {"port": host.ssh_port, "connect_timeout": timeout}
    if host.user:
        options["username"] = host.user
    if host.key_file:
        options["client_keys"] = [str(Path(host.key_file).expanduser())]
    if not host.host_key_checking:
        options["known_hosts"] = None
    where = f"{host.address}:{host.ssh_port}"
    try:
        conn = await asyncio.wait_for(asyncssh.connect(host.address, **options), timeout + 5)
    except TimeoutError:
        raise StepError("connect", f"{where}: timed out after {timeout:.0f}s") from None
    except (OSError, asyncssh.Error) as exc:
        raise StepError("connect", f"{where}: {_one_line(exc)}") from None
    try:
        yield RemoteHost(host, conn)
    finally:
        conn.close()
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(conn.wait_closed(), 5)
