"""``consensus.log`` and ``consensus.progress``: the Raft log and replication as an operator sees it.

``consensus.log`` gives the recent committed entries by index, each with the
one-line summary the live ``consensus`` topic carries (``agent/state/summary.py``)
and the time its leader stamped on it, so a TUI attaching late can show the
history before the live stream: it subscribes first, then asks for the entries
up to the commit index it is told, and drops live ``entry`` events at or below
that index (no gap, no duplicate).  Only entries still in the log are there: a
snapshot compacts the older ones away (``first_index`` says where it starts).

``consensus.progress`` is the leader's view of each voter and learner: match
index, lag behind the leader's last index in entries, seconds since it last
answered (``last_contact_s``: ticks behind the freshest answer, within one
heartbeat of the real figure while any peer answers) and its replication state.
Off the leader the rows are empty and ``leader`` names where to ask.

Both read the driver through ``LogSource`` (``ConsensusDriver.log_view``); a
consensus port without it (a test fake) answers with empty results.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from agent.errors import ProtocolError
from agent.raft.config import RaftConfig
from agent.raft.messages import Entry, EntryKind
from agent.runtime.ports import Handler, NodeNamer
from agent.state.commands import decode_command
from agent.state.summary import summarize

MAX_ENTRIES = 500
"""Entries one ``consensus.log`` call returns at most (default 100): a screenful of
history, and a reply far below the control frame limit (summaries are <= 120 chars)."""
DEFAULT_ENTRIES = 100


@runtime_checkable
class LogSource(Protocol):
    """What these methods read of the consensus driver."""

    @property
    def raft_config(self) -> RaftConfig: ...

    @property
    def node_id(self) -> str: ...

    @property
    def leader_id(self) -> str: ...

    def status(self) -> dict[str, Any]: ...

    def log_view(self, after: int, limit: int) -> tuple[dict[str, dict[str, object]], list[Entry]]: ...


def entry_row(entry: Entry, names: NodeNamer) -> dict[str, Any]:
    """``{index, term, at, summary}`` for one committed entry (``at`` null when unknown)."""
    at: float | None = None
    if entry.kind == EntryKind.EMPTY or (entry.kind == EntryKind.NORMAL and not entry.data):
        summary = "no-op (new leader)"
    elif entry.kind == EntryKind.CONF_CHANGE:
        summary = "membership change"
    else:
        try:
            cmd = decode_command(entry.data)
        except ProtocolError:
            summary = "invalid command"
        else:
            at = cmd.at
            summary = summarize(cmd, lambda node: names.name_of(node) or node)
    return {"index": entry.index, "term": entry.term, "at": at, "summary": summary}


def _int_param(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"parameter {name!r} must be a non-negative integer")
    return value


def handlers(consensus: object, names: NodeNamer) -> dict[str, Handler]:
    source = consensus if isinstance(consensus, LogSource) else None

    async def consensus_log(params: dict[str, Any]) -> Any:
        after = _int_param(params, "after", 0)
        limit = min(_int_param(params, "limit", DEFAULT_ENTRIES), MAX_ENTRIES)
        if source is None:
            return {"entries": [], "commit_index": 0, "first_index": 0}
        _, entries = source.log_view(after, limit)
        status = source.status()
        return {
            "entries": [entry_row(e, names) for e in entries],
            "commit_index": status["commit_index"],
            "first_index": entries[0].index if entries else status["commit_index"] + 1,
        }

    async def consensus_progress(params: dict[str, Any]) -> Any:
        if source is None:
            return {"leader": None, "peers": [], "commit_index": 0, "last_index": 0}
        progress, _ = source.log_view(0, 0)
        status = source.status()
        tick = source.raft_config.tick_interval
        last = max((int(str(row["match"])) for row in progress.values()), default=0)
        peers = []
        for peer, row in progress.items():
            match = int(str(row["match"]))
            peers.append({
                "name": names.name_of(peer) or peer,
                "id": peer,
                "match": match,
                "lag": max(0, last - match),
                "state": "leader" if peer == source.node_id else row["state"],
                "learner": bool(row["learner"]),
                "active": bool(row["active"]),
                "last_contact_s": round(int(str(row["heard_ticks"])) * tick, 3),
            })
        return {
            "leader": names.name_of(source.leader_id or None),
            "peers": peers,
            "commit_index": status["commit_index"],
            "last_index": last,
        }

    return {"consensus.log": consensus_log, "consensus.progress": consensus_progress}
