"""The TUI's view-model: folds status replies and the event stream into display state.

Theory of operation
-------------------
The agent's control API (docs/internals.md §4) gives two kinds of data: polled
snapshots (``status``, ``members``, ``task.list``, ``proposal.list``) and a
stream of events (topics ``members``, ``consensus``, ``tasks``, ``migrations``,
``metrics``).  Snapshots are authoritative for what they cover; events give
immediacy between polls.  ``MeshModel`` is a plain synchronous object that
folds both into tables the screens render.  It never does I/O and never reads
a clock: every ``apply_*`` takes ``now`` (wall-clock seconds) from its caller,
so recorded streams replay into byte-identical screens.

Every area carries a version counter that increases on each change; screens
remember the last version they drew and skip work when nothing moved.  Every
collection is bounded (log lines, tasks, migrations, CPU history).

Units: the agent sends ``cpu`` and ``mem`` as fractions 0..1 (see
agent/runtime/views.py); the model stores percentages (0-100) because that is
what the screens show.  ``rtt_ms`` is milliseconds, timestamps Unix seconds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from meshtui.model_types import (
    CHANGE_TEXT,
    CPU_HISTORY,
    FINISHED_TASK_STATES,
    KIND_TO_STATE,
    LINK_STATES,
    MAX_CHANGES,
    MAX_LEADER_CHANGES,
    MAX_LOG_LINES,
    MAX_MIGRATIONS,
    MAX_TASKS,
    MEMBER_STATES,
    NODE_ID_RE,
    TOPICS,
    Change,
    ClientLike,
    Connection,
    ConsensusView,
    DemoControls,
    LeaderChange,
    Link,
    LogLine,
    MemberState,
    Migration,
    PeerProgress,
    as_float,
    as_int,
    as_str,
    format_consensus,
    matches_filter,
    natural_key,
    one_line,
)

__all__ = [  # the display types live in model_types; screens import them from here
    "CHANGE_TEXT",
    "CPU_HISTORY",
    "FINISHED_TASK_STATES",
    "KIND_TO_STATE",
    "LINK_STATES",
    "MAX_CHANGES",
    "MAX_LEADER_CHANGES",
    "MAX_LOG_LINES",
    "MAX_MIGRATIONS",
    "MAX_TASKS",
    "MEMBER_STATES",
    "NODE_ID_RE",
    "TOPICS",
    "Change",
    "ClientLike",
    "Connection",
    "ConsensusView",
    "DemoControls",
    "LeaderChange",
    "Link",
    "LogLine",
    "MemberState",
    "Migration",
    "PeerProgress",
    "as_float",
    "as_int",
    "as_str",
    "format_consensus",
    "matches_filter",
    "natural_key",
    "one_line",
]


class MeshModel:
    """Display state folded from snapshots and events (see module docstring)."""

    def __init__(self) -> None:
        self.node: str = ""
        self.members: dict[str, MemberState] = {}
        self.names_by_id: dict[str, str] = {}
        self.consensus = ConsensusView()
        self.task_counts: dict[str, int] = {}
        self.partitioned = False
        self.read_only = False
        self.alarms: list[str] = []
        """One line per alarm of the attached agent (``status.alarms``: a full disk)."""
        self.tasks: dict[str, dict[str, Any]] = {}
        self.log: deque[LogLine] = deque(maxlen=MAX_LOG_LINES)
        self.log_seq = 0
        self.migrations: deque[Migration] = deque(maxlen=MAX_MIGRATIONS)
        self.proposals: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}
        self.cluster_avg_cpu: float | None = None
        self.connection = Connection()
        self.events_seen = 0
        self.links: tuple[Link, ...] | None = None
        """``status.links``; None while the agent sends none (then no links are drawn)."""
        self.entry_high = 0
        """Highest committed index shown in the log: live entries at or below it are duplicates."""
        self.leader_changes: deque[LeaderChange] = deque(maxlen=MAX_LEADER_CHANGES)
        self.changes: deque[Change] = deque(maxlen=MAX_CHANGES)
        self.change_seq = 0
        self.last_now = 0.0
        """The latest ``now`` a caller gave (the model never reads a clock)."""
        self.versions: dict[str, int] = dict.fromkeys(
            ("members", "consensus", "tasks", "migrations", "banner", "proposals", "changes"), 0
        )

    def _bump(self, *areas: str) -> None:
        for area in areas:
            self.versions[area] += 1

    # --- connection -------------------------------------------------------
    def set_connection(self, conn: Connection) -> None:
        if conn != self.connection:
            self.connection = conn
            self._bump("banner")

    # --- snapshots --------------------------------------------------------
    def apply_status(
        self, status: Mapping[str, Any], *, sample_cpu: bool = False, now: float | None = None
    ) -> None:
        """Fold a ``status`` reply; members absent from it are dropped."""
        if now is not None:
            self.last_now = now
        node = as_str(status.get("node")) or self.node
        if node != self.node:
            self.node = node
            self._bump("banner", "members")
        partitioned = bool(status.get("partitioned", False))
        read_only = bool(status.get("read_only", False))
        if (partitioned, read_only) != (self.partitioned, self.read_only):
            self.partitioned, self.read_only = partitioned, read_only
            self._bump("banner")
        self._set_alarms(status.get("alarms"))
        cons = status.get("consensus")
        if isinstance(cons, Mapping):
            self._apply_consensus_snapshot(cons)
        avg = as_float(status.get("cluster_avg_cpu"))
        self.cluster_avg_cpu = None if avg is None else avg * 100.0
        counts = status.get("tasks")
        if isinstance(counts, Mapping):
            self.task_counts = {str(k): as_int(v) or 0 for k, v in counts.items()}
            self._bump("tasks")
        rows = status.get("members")
        if isinstance(rows, list):
            self.apply_members(rows, sample_cpu=sample_cpu, authoritative=True)
        self._apply_links(status.get("links"))

    def _apply_links(self, rows: Any) -> None:
        """Fold ``status.links`` (``[{from, to, state, via, rtt_ms}]``); malformed rows are skipped."""
        if not isinstance(rows, list):
            links = None
        else:
            parsed = []
            for row in rows:
                if not isinstance(row, Mapping):
                    continue
                src = self.display_name(as_str(row.get("from")))
                dst = self.display_name(as_str(row.get("to")))
                state = as_str(row.get("state"))
                if not src or not dst or src == dst or state not in LINK_STATES:
                    continue
                via = self.display_name(as_str(row.get("via"))) if state == "relayed" else ""
                parsed.append(Link(src, dst, state, via, as_float(row.get("rtt_ms"))))
            links = tuple(sorted(parsed, key=lambda link: (link.src, link.dst)))
        if links != self.links:
            self.links = links
            self._bump("members")

    def apply_backfill(self, reply: Any) -> None:
        """Fold a ``consensus.log`` reply: committed entries before the live stream.

        Entries at or below ``entry_high`` are already shown; a jump past it says
        how many entries are not shown (compacted, or beyond the backfill bound).
        """
        if not isinstance(reply, Mapping):
            return
        rows = [r for r in reply.get("entries") or () if isinstance(r, Mapping)]
        rows.sort(key=lambda r: as_int(r.get("index")) or 0)
        first = as_int(reply.get("first_index"))
        fresh = [r for r in rows if (as_int(r.get("index")) or 0) > self.entry_high]
        if fresh:
            start = as_int(fresh[0].get("index")) or 0
            if start > self.entry_high + 1:
                missing = start - self.entry_high - 1
                since = "history" if self.entry_high == 0 else f"#{self.entry_high + 1}..#{start - 1}"
                self._log_line(
                    0.0, "backfill", None, None, f"… {missing} earlier entries not shown ({since})"
                )
        for row in fresh:
            index = as_int(row.get("index")) or 0
            at = as_float(row.get("at"))
            term = as_int(row.get("term"))
            self._log_line(at or 0.0, "entry", term, index, self._names_in(as_str(row.get("summary"))))
            self.entry_high = index
            self.consensus.commit_index = max(self.consensus.commit_index, index)
        commit = as_int(reply.get("commit_index"))
        if commit is not None and first is not None and commit >= self.entry_high:
            self.entry_high = commit
        self._bump("consensus")

    def apply_progress(self, reply: Any) -> None:
        """Fold a ``consensus.progress`` reply (the leader's per-peer replication)."""
        if not isinstance(reply, Mapping):
            return
        peers = []
        for row in reply.get("peers") or ():
            if not isinstance(row, Mapping):
                continue
            peers.append(
                PeerProgress(
                    name=self.display_name(as_str(row.get("name"))),
                    match=as_int(row.get("match")) or 0,
                    lag=as_int(row.get("lag")) or 0,
                    state=as_str(row.get("state")),
                    learner=bool(row.get("learner")),
                    active=bool(row.get("active")),
                    last_contact_s=as_float(row.get("last_contact_s")),
                )
            )
        view = self.consensus
        view.progress = tuple(sorted(peers, key=lambda p: (p.learner, natural_key(p.name))))
        leader = as_str(reply.get("leader"))
        view.progress_from = self.display_name(leader) if leader else None
        view.last_index = as_int(reply.get("last_index")) or view.last_index
        self._bump("consensus")

    def apply_members(
        self,
        rows: Iterable[Any],
        *,
        sample_cpu: bool = True,
        authoritative: bool = True,
    ) -> None:
        """Fold member rows (``members`` or ``status`` reply)."""
        seen: set[str] = set()
        known = bool(self.members)  # the first fill is not news for the changes feed
        for row in rows:
            if isinstance(row, Mapping):
                name = as_str(row.get("name"))
                before = self.members[name].state if name in self.members else None
                member = self._upsert_member(row)
                if member is None:
                    continue
                if known:
                    self._note_state(member, before)
                seen.add(member.name)
                if sample_cpu and member.cpu is not None:
                    member.cpu_history.append(member.cpu)
        if authoritative:
            for gone in set(self.members) - seen:
                del self.members[gone]
        self._bump("members")

    def apply_tasks(self, rows: Iterable[Any]) -> None:
        """Fold a ``task.list`` reply (authoritative for the rows it lists)."""
        fresh: dict[str, dict[str, Any]] = {}
        for row in rows:
            if isinstance(row, Mapping) and row.get("id") is not None:
                tid = as_str(row["id"])
                fresh[tid] = self._named({**self.tasks.get(tid, {}), **row, "id": tid})
        self.tasks = fresh
        self._evict_tasks()
        self._bump("tasks")

    def _named(self, task: dict[str, Any]) -> dict[str, Any]:
        """A task row with its host as a member name (some events carry the node id)."""
        node = task.get("node")
        if isinstance(node, str) and node in self.names_by_id:
            task["node"] = self.names_by_id[node]
        return task

    def apply_proposals(self, rows: Iterable[Any]) -> None:
        self.proposals = [dict(r) for r in rows if isinstance(r, Mapping)]
        self._bump("proposals")

    def _apply_consensus_snapshot(self, cons: Mapping[str, Any]) -> None:
        view = self.consensus
        view.engine = as_str(cons.get("engine")) or view.engine
        view.role = as_str(cons.get("role")) or view.role
        view.term = as_int(cons.get("term")) or view.term
        if "leader" in cons:
            self._set_leader(as_str(cons["leader"]) or None)
        view.commit_index = max(view.commit_index, as_int(cons.get("commit_index")) or 0)
        voters = cons.get("voters")
        if isinstance(voters, list | tuple):
            view.voters = tuple(self.display_name(as_str(v)) for v in voters)
        learners = cons.get("learners")
        if isinstance(learners, list | tuple):
            view.learners = tuple(self.display_name(as_str(v)) for v in learners)
        self._bump("consensus")

    def display_name(self, node: str) -> str:
        """A member name for a node id (events carry ids); anything else unchanged."""
        return self.names_by_id.get(node, node)

    def _names_in(self, text: str) -> str:
        if not self.names_by_id:
            return text
        return NODE_ID_RE.sub(lambda m: self.names_by_id.get(m.group(0), m.group(0)), text)

    def _set_leader(self, leader: str | None) -> None:
        if leader is not None:
            leader = self.display_name(leader)
        if leader != self.consensus.leader:
            previous = self.consensus.leader
            self.consensus.leader = leader
            self._bump("members")  # the member table and topology mark the leader
            term = self.consensus.term
            first = not self.leader_changes  # known on attach: not news for the feed
            self.leader_changes.append(LeaderChange(self.last_now, term, leader))
            if first:
                pass
            elif leader is not None:
                was = f" (was {previous})" if previous else ""
                self.add_change("election", f"{leader} leads term {term}{was}")
            else:
                self.add_change("election", f"no leader (term {term}, was {previous})")

    def add_change(self, kind: str, text: str, at: float | None = None) -> None:
        """One line for the recent-changes feed."""
        self.change_seq += 1
        stamp = self.last_now if at is None else at
        self.changes.append(Change(self.change_seq, stamp, kind, one_line(text)))
        self._bump("changes")

    def _upsert_member(self, row: Mapping[str, Any]) -> MemberState | None:
        name = as_str(row.get("name"))
        if not name:
            return None
        member = self.members.get(name)
        if member is None:
            member = self.members[name] = MemberState(name=name)
        if "id" in row:
            member.id = as_str(row["id"])
            if member.id:
                self.names_by_id[member.id] = name
        if "addr" in row:
            member.addr = as_str(row["addr"])
        state = as_str(row.get("state"))
        if state:
            member.state = state
        if "role" in row:
            member.role = as_str(row["role"])
        for attr in ("cpu", "mem"):
            if attr in row:
                fraction = as_float(row[attr])
                setattr(member, attr, None if fraction is None else fraction * 100.0)
        for attr in ("load1", "rtt_ms"):
            if attr in row:
                setattr(member, attr, as_float(row[attr]))
        for attr in ("slots", "tasks"):
            if attr in row:
                setattr(member, attr, as_int(row[attr]))
        caps = row.get("caps")
        if isinstance(caps, list | tuple):
            member.caps = tuple(as_str(c) for c in caps)
        if "version" in row:
            member.version = as_str(row["version"])
        if "draining" in row:
            member.draining = bool(row["draining"])
        return member

    # --- events -----------------------------------------------------------
    def apply_event(self, event: Mapping[str, Any], now: float) -> None:
        """Fold one ``{"event": topic, "data": {...}}`` item; unknown topics are ignored."""
        topic = event.get("event")
        data = event.get("data")
        if not isinstance(data, Mapping):
            return
        self.events_seen += 1
        stamp = as_float(data.get("at"))  # the agent's (or a recording's) time, when it gives one
        self.last_now = now if stamp is None else stamp
        if topic == "members":
            self._on_member_event(data)
        elif topic == "consensus":
            self._on_consensus_event(data, now)
        elif topic == "tasks":
            self._on_task_event(data)
        elif topic == "migrations":
            self._on_migration_event(data, now)
        elif topic == "metrics":
            self.metrics = dict(data)

    def _on_member_event(self, data: Mapping[str, Any]) -> None:
        kind = as_str(data.get("kind"))
        if kind in ("partitioned", "healed"):
            partitioned = kind == "partitioned"
            if partitioned != self.partitioned:
                self.partitioned = partitioned
                if not partitioned:
                    self.read_only = False
                self._bump("banner")
            return
        row = data.get("member")
        if not isinstance(row, Mapping):
            return
        before = self.members[name].state if (name := as_str(row.get("name"))) in self.members else None
        member = self._upsert_member(row)
        if member is None:
            return
        if kind in KIND_TO_STATE and not row.get("state"):
            member.state = KIND_TO_STATE[kind]
        self._note_state(member, before)
        self._bump("members")

    def _note_state(self, member: MemberState, before: str | None) -> None:
        """A member entering a state (from an event or a poll) goes to the changes feed."""
        if member.state != before and member.state in CHANGE_TEXT:
            self.add_change(member.state, f"{member.name} {CHANGE_TEXT[member.state]}")

    def _on_consensus_event(self, data: Mapping[str, Any], now: float) -> None:
        kind = as_str(data.get("kind"))
        view = self.consensus
        term = as_int(data.get("term"))
        index = as_int(data.get("index"))
        if term is not None and term > view.term:
            view.term = term
        if kind == "entry" and index is not None:
            if index <= self.entry_high:
                return  # already shown by the backfill
            self.entry_high = index
            view.commit_index = max(view.commit_index, index)
        if kind == "role" and data.get("role") is not None:
            view.role = as_str(data.get("role"))
        if kind == "leader" or (kind == "election" and "leader" in data):
            self._set_leader(as_str(data.get("leader")) or None)
        if kind == "alarm":
            self._set_alarms(data.get("alarms"))
        at = as_float(data.get("at"))
        text = self._names_in(format_consensus(data, view.leader))
        self._log_line(now if at is None else at, kind, term, index, text)
        if kind == "entry" and text.startswith(("node.drain", "node.undrain")):
            self.add_change("drain", text, now if at is None else at)
        self._bump("consensus")

    def _log_line(self, at: float, kind: str, term: int | None, index: int | None, text: str) -> None:
        self.log_seq += 1
        self.log.append(
            LogLine(
                seq=self.log_seq,
                at=at,
                kind=kind,
                term=term if term is not None else self.consensus.term,
                index=index,
                text=one_line(text),  # a summary may quote a multi-line command
            )
        )

    def _on_task_event(self, data: Mapping[str, Any]) -> None:
        row = data.get("task")
        if not isinstance(row, Mapping) or row.get("id") is None:
            return
        tid = as_str(row["id"])
        merged = self._named({**self.tasks.pop(tid, {}), **row, "id": tid})
        self.tasks[tid] = merged  # re-insert: most recently changed last
        self._evict_tasks()
        self._bump("tasks")

    def _on_migration_event(self, data: Mapping[str, Any], now: float) -> None:
        at = as_float(data.get("at"))
        mig = Migration(
            at=now if at is None else at,
            task=as_str(data.get("task")),
            src=self.display_name(as_str(data.get("from"))),
            dst=self.display_name(as_str(data.get("to"))),
            reason=as_str(data.get("reason")),
            epoch=as_int(data.get("epoch")) or 0,
        )
        self.migrations.append(mig)
        self.add_change("move", f"{mig.task[:12]} {mig.src or '?'} → {mig.dst or '?'} ({mig.reason})", mig.at)
        task = self.tasks.get(mig.task)
        if task is not None:
            task["node"] = mig.dst
            task["epoch"] = max(as_int(task.get("epoch")) or 0, mig.epoch)
            self._bump("tasks")
        self._bump("migrations")

    def _evict_tasks(self) -> None:
        if len(self.tasks) <= MAX_TASKS:
            return
        finished = [t for t, r in self.tasks.items() if r.get("state") in FINISHED_TASK_STATES]
        for tid in finished[: len(self.tasks) - MAX_TASKS]:
            del self.tasks[tid]
        while len(self.tasks) > MAX_TASKS:
            del self.tasks[next(iter(self.tasks))]

    def _set_alarms(self, rows: Any) -> None:
        """Fold ``alarms`` (from ``status`` or an ``alarm`` event) into banner lines."""
        lines = []
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, Mapping):
                line = as_str(row.get("message")) or as_str(row.get("kind"))
                since = as_float(row.get("since"))
                if since is not None:
                    line += time.strftime(" since %H:%M:%S UTC", time.gmtime(since))
                lines.append(line)
        if lines != self.alarms:
            self.alarms = lines
            self._bump("banner")

    # --- derived ----------------------------------------------------------
    def banner(self) -> tuple[str, str] | None:
        """``(level, text)`` for the top banner, or None when all is well."""
        conn = self.connection
        why = f" ({conn.error})" if conn.error else ""
        if conn.state == "disconnected":
            retry = f"{conn.retry_in:g}s" if conn.retry_in is not None else "a moment"
            return ("error", f"disconnected — reconnecting in {retry}…{why}")
        if conn.state == "reconnecting":
            return ("error", f"disconnected — reconnecting now…{why}")
        if self.alarms:
            # Writes still go to a leader elsewhere; the operator must free space.
            return ("error", "ALARM: " + "; ".join(self.alarms))
        if self.partitioned or self.read_only:
            return ("warning", "NO QUORUM — read-only here")
        if conn.state == "connecting":
            return ("info", "connecting…")
        return None

    def migrations_per_minute(self, now: float) -> int:
        return sum(1 for m in self.migrations if now - m.at <= 60.0)
