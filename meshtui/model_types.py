"""The TUI model's display types and pure helpers: rows, links, changes, filters.

Split from :mod:`meshtui.model` (which holds ``MeshModel``, the fold of snapshots
and events into these); see its docstring for the theory of operation and units.
Everything here is plain data or a pure function: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

TOPICS: tuple[str, ...] = ("members", "consensus", "tasks", "migrations", "metrics")

CPU_HISTORY = 30
"""Samples kept per member for the CPU sparkline."""
MAX_LOG_LINES = 10_000
"""Consensus log lines kept (oldest dropped first)."""
MAX_TASKS = 5_000
"""Task rows kept; the oldest finished tasks are evicted first."""
MAX_MIGRATIONS = 1_000
"""Migration records kept."""

MEMBER_STATES = ("alive", "suspect", "dead", "left")
FINISHED_TASK_STATES = frozenset({"succeeded", "failed", "cancelled", "lost"})

# What the changes feed says when a member enters a state.
CHANGE_TEXT = {"alive": "joined / alive", "suspect": "suspect", "dead": "dead", "left": "left"}
# members-topic event kinds that imply a state when the row itself omits one.
KIND_TO_STATE = {
    "join": "alive",
    "alive": "alive",
    "suspect": "suspect",
    "dead": "dead",
    "leave": "left",
}


class ClientLike(Protocol):
    """What the TUI needs from a control client (the real one is ``meshtui.client``)."""

    async def call(self, method: str, **params: Any) -> Any:
        """One RPC; raises on transport loss or an error reply."""
        ...

    def subscribe(self, topics: list[str]) -> AsyncIterator[dict[str, Any]]:
        """Stream of ``{"event": topic, "data": {...}}`` until the connection drops."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class DemoControls(Protocol):
    """Hooks ``meshtui demo`` gives the TUI to kill and restart its local agents."""

    def names(self) -> Sequence[str]:
        """Names of the agents the demo started."""
        ...

    def kill(self, name: str) -> Awaitable[None] | None:
        """Kill agent ``name`` (SIGKILL)."""
        ...

    def restart(self, name: str) -> Awaitable[None] | None:
        """Start agent ``name`` again with its old data dir."""
        ...


@dataclass(slots=True)
class MemberState:
    """One member row as shown; mutable because polls and events refine it."""

    name: str
    id: str = ""
    addr: str = ""
    state: str = "alive"
    role: str = ""
    cpu: float | None = None
    mem: float | None = None
    load1: float | None = None
    slots: int | None = None
    tasks: int | None = None
    caps: tuple[str, ...] = ()
    rtt_ms: float | None = None
    version: str = ""
    draining: bool = False
    cpu_history: deque[float] = field(default_factory=lambda: deque(maxlen=CPU_HISTORY))


@dataclass(slots=True)
class ConsensusView:
    engine: str = ""
    role: str = ""
    term: int = 0
    leader: str | None = None
    commit_index: int = 0
    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    progress: tuple[PeerProgress, ...] = ()
    """The leader's replication view (empty when not attached to the leader)."""
    progress_from: str | None = None
    """Which leader ``progress`` came from; None when this agent could not say."""
    last_index: int = 0


@dataclass(frozen=True, slots=True)
class LogLine:
    """One consensus-log line; ``seq`` increases by one per line ever added."""

    seq: int
    at: float
    kind: str
    term: int
    index: int | None
    text: str


@dataclass(frozen=True, slots=True)
class Migration:
    at: float
    task: str
    src: str
    dst: str
    reason: str
    epoch: int


LINK_STATES = ("direct", "relayed", "down")


@dataclass(frozen=True, slots=True)
class Link:
    """One host-to-host link from ``status.links`` (names, not ids)."""

    src: str
    dst: str
    state: str
    """``direct``, ``relayed`` (through ``via``) or ``down``."""
    via: str = ""
    rtt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class PeerProgress:
    """One voter's or learner's replication, from the leader (``consensus.progress``)."""

    name: str
    match: int
    lag: int
    state: str
    learner: bool
    active: bool
    last_contact_s: float | None


@dataclass(frozen=True, slots=True)
class LeaderChange:
    at: float
    term: int
    leader: str | None


@dataclass(frozen=True, slots=True)
class Change:
    """One line of the recent-changes feed (joins, deaths, elections, moves, drains)."""

    seq: int
    at: float
    kind: str
    text: str


MAX_CHANGES = 500
"""Recent-change lines kept."""
MAX_LEADER_CHANGES = 50
"""Leader changes kept for the Consensus screen's timeline."""
_NUM = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key where digit runs compare as numbers: ``t2 < t10``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower()) for part in _NUM.split(text) if part)


def one_line(text: str) -> str:
    """``text`` on one line: newlines as ``⏎``, tabs as spaces, other control characters dropped."""
    if text.isprintable():
        return text
    out = text.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎").replace("\t", " ")
    return "".join(ch for ch in out if ch.isprintable())


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the link to the agent stands: connecting, connected, disconnected, reconnecting."""

    state: str = "connecting"
    retry_in: float | None = None
    error: str = ""


def as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def as_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def format_consensus(data: Mapping[str, Any], leader: str | None = None) -> str:
    """One human line for a ``consensus`` event (without term/index prefix).

    The agent's ``summary`` is used when it has one; ``leader`` is the leader's
    display name (the event carries a node id).
    """
    kind = as_str(data.get("kind"))
    summary = as_str(data.get("summary"))
    if kind == "leader":
        raw = as_str(data.get("leader"))
        if summary and raw and raw in summary:
            return summary
        line = f"leader is {leader or raw or 'none'}"
        return f"{line} ({summary})" if summary else line
    if summary:
        return summary
    if kind == "role":
        return f"role → {as_str(data.get('role'))}"
    if kind == "term":
        return f"term → {as_int(data.get('term')) or 0}"
    return kind


NODE_ID_RE = re.compile(r"\b[0-9a-f]{32}\b")
"""A node id (16 random bytes, hex) inside agent-written text."""


def matches_filter(text: str, query: str) -> bool:
    """Case-insensitive; every space-separated word of ``query`` must occur in ``text``."""
    if not query:
        return True
    low = text.lower()
    return all(word in low for word in query.lower().split())
