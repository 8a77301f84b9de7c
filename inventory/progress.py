"""Progress display and the per-host report of deploy, undeploy, upgrade and keys.

``Progress`` is what the orchestration calls as hosts move through their
steps; ``PlainProgress`` prints one line per event (host, elapsed seconds,
step), which reads well both live in a terminal and in a CI log.  The TUI can
provide its own implementation; nothing here imports Textual.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

CHANGED = "changed"
UNCHANGED = "unchanged"
FAILED = "failed"
REMOVED = "removed"
SKIPPED = "skipped"


class Progress(Protocol):
    def step(self, host: str, message: str) -> None:
        """``host`` started ``message`` (``"uploading 31 wheels"``)."""

    def finished(self, host: str, status: str, detail: str) -> None:
        """``host`` is done: ``status`` is one of changed/unchanged/failed/removed/skipped."""


class PlainProgress:
    """One line per event on ``stream``: ``web01     12.3s  uploading 31 wheels``."""

    def __init__(self, stream: TextIO | None = None, hosts: list[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.width = max((len(h) for h in hosts or []), default=8)
        self.started = time.monotonic()

    def _line(self, host: str, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.stream.write(f"{host:<{self.width}} {elapsed:6.1f}s  {text}\n")
        self.stream.flush()

    def step(self, host: str, message: str) -> None:
        self._line(host, message)

    def finished(self, host: str, status: str, detail: str) -> None:
        self._line(host, f"{status.upper()}" + (f": {detail}" if detail else ""))


class QuietProgress:
    """Records events without printing (``--json`` output, tests)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def step(self, host: str, message: str) -> None:
        self.events.append((host, "step", message))

    def finished(self, host: str, status: str, detail: str) -> None:
        self.events.append((host, status, detail))


@dataclass(frozen=True, slots=True)
class HostOutcome:
    host: str
    status: str
    detail: str = ""
    diff: str = ""
    """``--check --diff``: unified diffs of the files that would change."""

    def line(self) -> str:
        return f"{self.host}: {self.status}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True, slots=True)
class DeployReport:
    """What happened on each host; ``exit_code`` is 1 when any host failed."""

    action: str
    hosts: tuple[HostOutcome, ...]

    @property
    def failed(self) -> tuple[HostOutcome, ...]:
        return tuple(h for h in self.hosts if h.status == FAILED)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def outcome(self, host: str) -> HostOutcome:
        for item in self.hosts:
            if item.host == host:
                return item
        raise KeyError(host)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for item in self.hosts:
            counts[item.status] = counts.get(item.status, 0) + 1
        parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        return f"{self.action}: {len(self.hosts)} hosts: {parts or 'nothing to do'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "exit_code": self.exit_code,
            "hosts": [
                {"host": h.host, "status": h.status, "detail": h.detail}
                | ({"diff": h.diff} if h.diff else {})
                for h in self.hosts
            ],
        }
