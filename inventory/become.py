"""Privilege escalation on a host (``ansible_become``): sudo or su, password over the channel.

The login user's command is wrapped so it runs as ``ansible_become_user``::

    sudo -H -S -p <prompt> -u USER -- sh -c 'echo <ok>; exec sh -c COMMAND'
    sudo -H -n -u USER -- sh -c ...           (no password known: fail, never hang)
    su USER -c 'stty raw -echo; echo <ok>; ...'   (in a pty: su reads /dev/tty)

``<prompt>`` and ``<ok>`` carry a random token per command.  Nothing is
written to the command's stdin until either the prompt appears (then the
password, once; a second prompt means it was refused) or the ``<ok>`` line
does (escalation done, no password was asked: NOPASSWD, or su from root).
Only then does the command's own input follow.  So the password travels
only inside the encrypted channel, is never on a command line (``ps`` shows
the prompt token, not the password), and never reaches the command when sudo
did not ask for it.

su needs a terminal, and a terminal mangles bytes and merges the streams,
so under su the command's input is sent base64-encoded after ``stty raw
-echo`` (read with ``head -c N | base64 -d``) and its stderr is kept in a
temporary file and printed after an end marker, to be split off again.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shlex
from dataclasses import dataclass, field
from typing import Any

METHODS = ("sudo", "su")


@dataclass(frozen=True, slots=True)
class Become:
    """How to escalate on one host (``ansible_become_*``)."""

    method: str = "sudo"
    user: str = "root"
    password: str | None = field(default=None, repr=False)
    """Never shown: kept out of ``repr`` so a logged ``Host`` cannot carry it."""


@dataclass(frozen=True, slots=True)
class Wrapped:
    """A command wrapped for escalation, with what the client must watch for."""

    command: str
    """The command line the SSH server runs (no secret in it)."""
    pty: bool
    prompt: str
    """sudo: the exact prompt text; su: empty (any ``...:`` before ``ok`` is the prompt)."""
    ok: str
    """Printed on its own line once the command runs as the become user."""
    end: str
    """su only: separates the command's stdout from its stderr in the pty stream."""
    input_size: int | None
    """su only: base64 bytes the command reads (``head -c``); None = no input."""


def wrap(become: Become, command: str, input_size: int | None = None,
         token: str | None = None) -> Wrapped:
    """Wrap ``command`` (a ``sh -c`` string) for ``become``; ``input_size`` for su only.

    ``input_size`` is the length of the raw input; under su the command reads
    its base64 form, whose length is computed here.
    """
    if become.method not in METHODS:
        raise ValueError(f"become method {become.method!r} is not one of {', '.join(METHODS)}")
    token = token or secrets.token_hex(8)
    q = shlex.quote
    ok = f"MESHTUI-BECOME-OK-{token}"
    if become.method == "sudo":
        prompt = f"[meshtui-sudo-{token}] password: "
        inner = f"echo {ok}; exec sh -c {q(command)}"
        auth = f"-S -p {q(prompt)}" if become.password is not None else "-n"
        line = f"sudo -H {auth} -u {q(become.user)} -- sh -c {q(inner)}"
        return Wrapped(line, False, prompt, ok, "", None)
    end = f"MESHTUI-BECOME-END-{token}"
    b64 = None if input_size is None else 4 * ((input_size + 2) // 3)
    feed = f"head -c {b64} | base64 -d | " if b64 is not None else ""
    stdin = "" if b64 is not None else " < /dev/null"
    inner = (
        "stty raw -echo 2>/dev/null; e=$(mktemp) || exit 125; "
        f"echo {ok}; {feed}sh -c {q(command)} 2>\"$e\"{stdin}; s=$?; "
        f"printf '\\n%s\\n' {end}; cat \"$e\"; rm -f \"$e\"; exit $s"
    )
    return Wrapped(f"su {q(become.user)} -c {q(inner)}", True, "", ok, end, b64)


def split_su_output(data: bytes, end: str) -> tuple[bytes, bytes]:
    """(stdout, stderr) of a su-wrapped command from the pty stream after the ok line."""
    marker = f"\n{end}\n".encode()
    head, sep, tail = data.rpartition(marker)
    if not sep:
        return data, b""
    return head, tail


def looks_like_prompt(text: str) -> bool:
    """su's password prompt, in any locale: a line ending in a colon (and spaces)."""
    last = text.replace("\r", "\n").rstrip(" ").rsplit("\n", 1)[-1]
    return last.endswith(":") or last.endswith("\uff1a")


BECOME_TIMEOUT = 30.0
"""Seconds for sudo/su to ask for the password and start the command (PAM may delay a refusal)."""


class BecomeError(Exception):
    """Escalation failed on a host; ``str()`` is one line without the password."""


class _Streams:
    """What the wrapped command has printed so far, with an event per arrival."""

    def __init__(self, proc: Any) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.changed = asyncio.Event()
        self.done = 0
        self.tasks = [
            asyncio.ensure_future(self._pump(proc.stdout, self.out)),
            asyncio.ensure_future(self._pump(proc.stderr, self.err)),
        ]

    async def _pump(self, reader: Any, buf: bytearray) -> None:
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf.extend(chunk)
                self.changed.set()
        finally:
            self.done += 1
            self.changed.set()

    async def wait(self) -> None:
        await self.changed.wait()
        self.changed.clear()

    async def finish(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _escalate(proc: Any, streams: _Streams, become: Become, wrapped: Wrapped) -> int:
    """Answer the password prompt once; returns where the command's stdout starts."""
    ok = (wrapped.ok + "\n").encode()
    prompt = wrapped.prompt.encode()
    answered = 0
    who = f"{become.method} to {become.user}"
    while True:
        found = streams.out.find(ok)
        if found >= 0:
            return found + len(ok)
        if wrapped.pty:
            asked = 1 if looks_like_prompt(bytes(streams.out[answered:]).decode(errors="replace")) else 0
        else:
            asked = streams.err.count(prompt) - answered if prompt else 0
        if asked > 0:
            if answered:
                raise BecomeError(f"{who}: the become password was refused")
            if become.password is None:
                raise BecomeError(f"{who} asks for a password; set ansible_become_password or use -K")
            proc.stdin.write((become.password + "\n").encode())
            answered = len(streams.out) if wrapped.pty else 1
            continue
        if streams.done >= 2:
            text = bytes(streams.err or streams.out).decode(errors="replace")
            lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
            prompt_text = wrapped.prompt.strip() or "\0"
            lines = [line for line in lines if prompt_text not in line and not looks_like_prompt(line)]
            reason = " / ".join(lines[-2:]) or "exited before running the command"
            raise BecomeError(f"{who} failed: {reason}")
        await streams.wait()


async def become_exec(
    conn: Any, become: Become, command: str, data: bytes | None, timeout: float
) -> tuple[int, str, str]:
    """Run ``command`` on ``conn`` as ``become.user``; returns (exit status, stdout, stderr).

    Raises ``BecomeError`` when escalation fails (refused password, not allowed,
    no password known) and ``TimeoutError`` past ``timeout``.
    """
    wrapped = wrap(become, command, None if data is None or become.method != "su" else len(data))
    options: dict[str, Any] = {"encoding": None}
    if wrapped.pty:
        options.update(term_type="dumb", request_pty="force")
    proc = await conn.create_process(wrapped.command, **options)
    streams = _Streams(proc)
    try:
        try:
            start = await asyncio.wait_for(_escalate(proc, streams, become, wrapped), BECOME_TIMEOUT)
        except TimeoutError:
            raise BecomeError(
                f"{become.method} to {become.user}: no answer after {BECOME_TIMEOUT:.0f}s"
            ) from None
        if data is not None:
            proc.stdin.write(base64.b64encode(data) if wrapped.pty else data)
        if not wrapped.pty:
            proc.stdin.write_eof()
        await asyncio.wait_for(proc.wait_closed(), timeout)  # TimeoutError: the caller's
        await asyncio.wait_for(streams.finish(), 5)
    finally:
        proc.close()
        for task in streams.tasks:
            task.cancel()
    status = proc.exit_status if proc.exit_status is not None else 255
    out = bytes(streams.out[start:])
    if wrapped.pty:
        out, err = split_su_output(out, wrapped.end)
    else:
        err = bytes(streams.err).replace(wrapped.prompt.encode(), b"")
    return int(status), out.decode(errors="replace"), err.decode(errors="replace")
