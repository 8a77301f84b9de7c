"""The agent's control server: msgpack RPC and event streams on a Unix socket.

Theory of operation
-------------------
``ControlServer`` binds one Unix socket (mode 0660) and serves any number of
clients (the TUI, the CLI, SSH-forwarded operators), up to
``MAX_CONNECTIONS``.  Each client gets a ``ControlSession`` with two coroutines:

* the *reader* feeds bytes into a sans-IO ``ControlConnection`` and dispatches
  each ``Request`` to its handler in its own task, so a slow ``kv.get`` never
  holds up a ``status``.  A handler may instead be a plain function that
  checks its params, starts the work and returns an ``asyncio.Future`` or a
  ``Pending`` (``pending.py``; the KV writes do: the Raft leader resolves it
  from its apply loop and calls the session back directly); its reply is
  queued from the done-callback, saving a task and its two steps per
  request (and, for a ``Pending``, a loop handle).  At most ``MAX_IN_FLIGHT`` requests per client run at
  once: a slot is taken before dispatch and given back only once the reply is
  written, so a client that sends without reading stops being read (TCP-style
  back-pressure) instead of growing our memory;
* replies finished in one event-loop iteration are joined and written at its
  end, one send for a whole commit group instead of one per reply;
* the *writer* is the only coroutine that writes to the socket.  It sends
  queued replies first, then events from the client's subscriptions in
  round-robin order.

``publish(topic, data)`` is synchronous and never blocks the agent: it appends
to a bounded queue per subscription.  When a queue is full its oldest event is
dropped and counted; the writer then emits ``{"event": "overflow", "data":
{"dropped": n}}`` in the gap, so a consumer knows it must re-read state.

Idle clients: a client with no request running, no reply pending and no
subscription that sends no complete request for ``idle_timeout`` seconds
(``IDLE_TIMEOUT`` unless the server is built with another) gets a final
``ErrorResponse(id=None, "unavailable", ...)`` and is closed, so clients that
connect and go quiet cannot hold all ``MAX_CONNECTIONS`` slots and lock the
operator out.  A subscriber is never idle: it is waiting for events.

Errors: a handler's exception becomes an error reply with a code
(``error_reply``); an unexpected one is logged with its traceback and answered
``internal``.  Bytes that do not parse get a final ``ErrorResponse(id=None)``
and the connection is closed.  Nothing a client does stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Mapping
from typing import Any, Final

from agent.control.codec import ErrorResponse
from agent.control.session import (
    BUILTIN_METHODS,
    IDLE_TIMEOUT,
    MAX_IN_FLIGHT,
    SUBSCRIBER_QUEUE,
    ControlError,
    ControlSession,
    Handler,
    error_reply,
)
from agent.errors import LocalError

__all__ = [  # the per-client names live in agent.control.session; callers import them here
    "BUILTIN_METHODS",
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_IN_FLIGHT",
    "SUBSCRIBER_QUEUE",
    "ControlError",
    "ControlServer",
    "Handler",
    "error_reply",
]

logger = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 256
"""Simultaneous control clients."""
STALE_PROBE_TIMEOUT: Final = 1.0
"""Seconds to wait when probing whether an existing socket has a listener."""
MAX_UNIX_PATH: Final = 107
"""``sun_path`` holds 108 bytes including the terminating NUL."""
SOCKET_MODE: Final = 0o660


class ControlServer:
    """Serve ``handlers`` and stream ``topics`` on the Unix socket at ``path``."""

    def __init__(
        self,
        path: str,
        handlers: Mapping[str, Handler],
        topics: set[str],
        *,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        clash = BUILTIN_METHODS & set(handlers)
        assert not clash, f"handlers may not override built-in methods {sorted(clash)}"
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 seconds, not {idle_timeout!r}")
        self.path = path
        self.idle_timeout = idle_timeout
        self.handlers: Mapping[str, Handler] = handlers
        self.topics: frozenset[str] = frozenset(topics)
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._peers: dict[ControlSession, asyncio.Task[Any]] = {}
        # Subscriptions per topic, so publishing to a topic nobody follows (the
        # consensus log of every applied write, usually) costs one lookup.
        self._topic_subs: dict[str, int] = {}

    async def start(self) -> None:
        """Bind the socket; ``LocalError`` if another agent already serves it."""
        if len(os.fsencode(self.path)) > MAX_UNIX_PATH:
            raise LocalError(f"control socket path too long (> {MAX_UNIX_PATH} bytes): {self.path}")
        _prepare_dir(os.path.dirname(os.path.abspath(self.path)))
        await _clear_stale(self.path)
        self._server = await asyncio.start_unix_server(self._on_connect, path=self.path)
        os.chmod(self.path, SOCKET_MODE)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        logger.info("control socket listening on %s", self.path)

    async def close(self) -> None:
        """Stop listening, drop every client, remove the socket file (if still ours)."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._peers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._inode is not None:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            self._inode = None

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Fan ``data`` out to subscribers of ``topic``; never blocks.

        Call from the event loop's thread.  ``data`` is shared between
        subscribers and encoded later: do not mutate it after publishing.
        """
        if not self._topic_subs.get(topic):
            assert topic in self.topics, f"publish to undeclared topic {topic!r}"
            return
        for peer in self._peers:
            peer.offer(topic, data)

    def has_subscribers(self, topic: str) -> bool:
        """True if any client listens to ``topic`` (lets callers skip building events)."""
        return self._topic_subs.get(topic, 0) > 0

    def count_topics(self, topics: frozenset[str], delta: int) -> None:
        """A client (un)subscribed ``topics`` (``delta`` +1/-1): keeps ``has_subscribers`` O(1)."""
        for topic in topics:
            self._topic_subs[topic] = self._topic_subs.get(topic, 0) + delta

    @property
    def connection_count(self) -> int:
        return len(self._peers)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = ControlSession(self, reader, writer)
        if len(self._peers) >= MAX_CONNECTIONS:
            frame = peer.conn.send(
                ErrorResponse(None, "unavailable", "too many control connections")
            )
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(frame)
                await writer.drain()
            writer.close()
            return
        # The peer runs in a task of its own: close() cancels that one, never
        # the task asyncio created for this callback (cancelling that makes
        # asyncio 3.11 log a spurious error).
        task = asyncio.create_task(peer.run())
        self._peers[peer] = task
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        finally:
            self._peers.pop(peer, None)
            for sub in peer.subs.values():
                self.count_topics(sub.topics, -1)
            peer.subs.clear()


def _prepare_dir(directory: str) -> None:
    """Create the socket's directory if needed and refuse one another user controls."""
    euid = os.geteuid()
    if not os.path.isdir(directory):
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o750 if euid == 0 else 0o700)
    st = os.stat(directory)
    if euid != 0 and st.st_uid not in (euid, 0):
        raise LocalError(
            f"socket directory {directory} is owned by uid {st.st_uid}, not by us ({euid})"
        )


async def _clear_stale(path: str) -> None:
    """Remove a socket file left by a dead agent; refuse if something listens on it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise LocalError(f"{path} exists and is not a socket")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), STALE_PROBE_TIMEOUT)
    except (ConnectionRefusedError, FileNotFoundError):
        logger.info("removing stale control socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except TimeoutError:
        raise LocalError(f"another agent is running on {path} (not answering)") from None
    except OSError as exc:
        raise LocalError(f"cannot probe existing socket {path}: {exc}") from exc
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
    raise LocalError(f"another agent is running on {path}")
