"""``/metrics`` over HTTP/1.1, served from the agent's own event loop.

Theory of operation
-------------------
``prometheus_client.start_http_server`` would run a second thread reading
the agent's state while the event loop changes it.  Instead this is an
``asyncio.start_server`` on ``metrics.addr``: each connection's requests are
read with bounded buffers and a timeout, and ``GET /metrics`` (or ``HEAD``)
is answered with ``render()`` -- the collector reads the agent's in-memory
figures on the loop, between two of its other callbacks, so it sees one
consistent state and takes no lock (about a millisecond for a few dozen
members).  Only the socket I/O waits, and it waits asynchronously: a slow or
stuck scraper never blocks the loop, and at most ``max_scrapers`` are
served at once (more are closed at once).  Keep-alive is honoured
(Prometheus reuses its connection); an idle connection is closed after
``IDLE_TIMEOUT``.  Anything but ``GET``/``HEAD`` is 405, any other path 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0
"""Seconds a scrape connection may sit idle between requests (Prometheus' default
scrape interval is 15 s or 60 s; it reconnects if we close)."""

MAX_HEAD = 16 << 10
"""Bytes of request line and headers accepted; a longer head is answered 431."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format ``prometheus_client.generate_latest`` writes (every
Prometheus 2.x reads it; newer clients default their constant to 1.0.0)."""

_INDEX = b'<html><body><a href="/metrics">/metrics</a></body></html>\n'


class MetricsHTTPServer:
    """The ``/metrics`` endpoint (module doc)."""

    def __init__(self, host: str, port: int, render: Callable[[], bytes], max_clients: int = 8) -> None:
        self.host, self.port = host, port
        self._render = render
        self._max_clients = max_clients
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.scrapes = 0
        self.refused = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_client, self.host.strip("[]"), self.port, limit=MAX_HEAD, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("serving Prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._clients) >= self._max_clients or task is None:
            self.refused += 1
            writer.close()
            return
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await self._respond(writer, 431, b"request head too large\n", "text/plain", False)
                return
            except asyncio.IncompleteReadError:
                return  # the client closed
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            closing = headers.get("connection", "").lower() == "close"
            keep = len(parts) == 3 and parts[2] == "HTTP/1.1" and not closing
            if len(parts) != 3:
                await self._respond(writer, 400, b"bad request\n", "text/plain", False)
                return
            method, target = parts[0], parts[1].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, ctype = 405, b"method not allowed\n", "text/plain"
            elif target == "/metrics":
                self.scrapes += 1
                status, body, ctype = 200, self._render(), CONTENT_TYPE
            elif target == "/":
                status, body, ctype = 200, _INDEX, "text/html"
            else:
                status, body, ctype = 404, b"not found\n", "text/plain"
            await self._respond(writer, status, body, ctype, keep, head_only=method == "HEAD")
            if not keep:
                return

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str, keep: bool,
        head_only: bool = False,
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large"}[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        ).encode("latin-1")
        writer.write(head if head_only else head + body)
        await writer.drain()
