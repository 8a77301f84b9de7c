"""A ClientLike that replays a recorded agent: status snapshots plus a JSON-lines event stream.

Used by the TUI tests and the TUI benchmark (a fake below the thing under test:
the app, model and screens are real).  A recording is a directory with
``snapshots.json`` (a list of ``{"status": ..., "members": ..., "task.list": ...,
"proposal.list": ...}``, oldest first), ``events.jsonl`` (one
``{"event": topic, "data": {...}}`` per line) and optionally ``logs.json``
(``{task_id: {"stdout": str, "stderr": str}}``).

Each ``status`` call advances to the next snapshot; after the last one the
client repeats it, starts over (``cycle=True``), or (``hold_last=True``, for
deterministic screenshots) holds the call open forever so the app's poll stops
adding samples.

A recorded snapshot may say where it sat in the stream (``_events_before``: the
events seen before it, written by ``record_mesh.py``).  With ``ordered=True``
(screenshots: the app must poll fast) the stream is then gated: while the
app holds snapshot k it gets only the events recorded before snapshot k+1,
and ``status`` hands out snapshot k+1 only after those were delivered, so
snapshots and events arrive in the order they were recorded.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent.errors import MeshError

RECORDINGS = Path(__file__).parent / "recordings"


class ReplayError(MeshError):
    """An error reply, shaped like meshtui.client.ClientError (code + message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ReplayClient:
    def __init__(
        self,
        snapshots: list[dict[str, Any]],
        events: list[dict[str, Any]] | None = None,
        logs: dict[str, dict[str, str]] | None = None,
        *,
        hold_last: bool = False,
        cycle: bool = False,
        events_per_second: float | None = None,
        log_chunk: int = 64,
        ordered: bool = False,
    ) -> None:
        assert snapshots, "a recording needs at least one snapshot"
        self.snapshots = snapshots
        self.logs = logs or {}
        self.hold_last = hold_last
        self.cycle = cycle
        self.events_per_second = events_per_second
        self.log_chunk = log_chunk
        self.queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        for event in events or []:
            self.queue.put_nowait(event)
        self.cursor = -1
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.replies: dict[str, Any] = {}
        self.connects = 0
        self.closed = 0
        self.fail_connects = 0
        self.delivered = 0
        self.subscribed = asyncio.Event()
        marks = [s.get("_events_before") for s in snapshots]
        gated = ordered and all(isinstance(m, int) for m in marks)
        self.marks: list[int] | None = [int(m) for m in marks] if gated else None
        self._progress = asyncio.Event()

    @classmethod
    def load(cls, name: str, **kwargs: Any) -> ReplayClient:
        root = RECORDINGS / name
        snapshots = json.loads((root / "snapshots.json").read_text())
        events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
        logs_path = root / "logs.json"
        logs = json.loads(logs_path.read_text()) if logs_path.exists() else None
        return cls(snapshots, events, logs, **kwargs)

    # --- what the app's client_factory calls -----------------------------
    async def factory(self) -> ReplayClient:
        self.connects += 1
        if self.fail_connects > 0:
            self.fail_connects -= 1
            raise ConnectionRefusedError("replay: agent not reachable")
        return self

    # --- ClientLike ------------------------------------------------------
    async def call(self, method: str, **params: Any) -> Any:
        self.calls.append((method, params))
        if method == "status":
            if self.cursor + 1 < len(self.snapshots):
                if self.marks is not None:
                    while self.delivered < self.marks[self.cursor + 1]:
                        self._progress.clear()
                        await self._progress.wait()
                self.cursor += 1
                self._progress.set()
            elif self.cycle:
                self.cursor = 0
            elif self.hold_last and self.cursor >= 0:
                await asyncio.Event().wait()
            self.cursor = max(self.cursor, 0)
        if method == "task.logs":
            return self._logs(params)
        if method in self.replies:
            return copy.deepcopy(self.replies[method])
        snap = self.snapshots[max(self.cursor, 0)]
        if method in snap:
            return copy.deepcopy(snap[method])
        if method in {
            "task.submit",
            "task.cancel",
            "node.drain",
            "node.undrain",
            "leader.transfer",
        }:
            return {"id": "t-new"} if method == "task.submit" else {}
        raise ReplayError("bad_request", f"unknown method {method}")

    def _logs(self, params: dict[str, Any]) -> dict[str, Any]:
        task = self.logs.get(str(params["id"]))
        if task is None:
            raise ReplayError("not_found", f"no task {params['id']}")
        data = task.get(str(params.get("stream", "stdout")), "").encode()
        offset = int(params.get("offset", 0))
        chunk = data[offset : offset + self.log_chunk]
        end = offset + len(chunk)
        return {"data": chunk, "offset": end, "eof": end >= len(data)}

    async def subscribe(self, topics: list[str]) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(("subscribe", {"topics": topics}))
        self.subscribed.set()
        interval = 1.0 / self.events_per_second if self.events_per_second else 0.0
        while True:
            while self.marks is not None and not self._released():
                self._progress.clear()
                await self._progress.wait()
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            self.delivered += 1
            self._progress.set()
            yield item
            if interval:
                await asyncio.sleep(interval)

    def _released(self) -> bool:
        """Gated stream: may the next event go out while the app holds snapshot ``cursor``?"""
        assert self.marks is not None
        if self.cursor < 0:
            return False  # not even the first snapshot yet
        following = self.cursor + 1
        return following >= len(self.marks) or self.delivered < self.marks[following]

    async def close(self) -> None:
        self.closed += 1

    # --- test controls ---------------------------------------------------
    def feed(self, *events: dict[str, Any]) -> None:
        for event in events:
            self.queue.put_nowait(event)

    def drop(self, exc: BaseException | None = None) -> None:
        """Make the current subscription fail as if the link dropped."""
        self.queue.put_nowait(exc or ConnectionResetError("replay: connection reset"))
