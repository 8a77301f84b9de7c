"""The replicated state machine: committed entries in, state and results out.

Theory of operation: the consensus engine (Raft or PBFT) delivers committed
entries in log order; the runtime calls ``apply(index, data)`` for each, on
every replica.  ``apply`` is deterministic -- no clock, no randomness, no
iteration over unordered sets -- so equal logs give byte-equal ``snapshot()``s.

* An entry that does not decode is applied as a no-op with an error result.
* A command whose ``rid`` was seen before returns the cached result and
  changes nothing (the last ``MAX_RIDS`` rids are kept, oldest evicted first;
  the cache is part of the snapshot so a restored replica agrees).
* A rejected command (stale epoch, unknown task, ...) changes nothing and
  returns ``ok=False`` with a one-line error.

Each result carries events for the control API's subscription topics
(``tasks``, ``migrations`` and one ``consensus`` entry summary per apply).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import msgpack

from agent.errors import ConfigError, MeshError, ProtocolError, StorageError
from agent.sched.config import SchedConfig
from agent.state.commands import (
    Batch,
    Command,
    KvCas,
    KvDelete,
    KvExpire,
    KvPut,
    KvPuts,
    KvPutTtl,
    NodeDrain,
    NodeRegister,
    NodeUndrain,
    ProposalCreate,
    ProposalVote,
    TaskAssign,
    TaskCancel,
    TaskFailNode,
    TaskFinish,
    TaskLost,
    TaskMigrate,
    TaskPlace,
    TaskStart,
    TaskSubmit,
    decode_command,
    put_item,
    usual_put,
)
from agent.state.kv import KvStore
from agent.state.proposals import Proposal, sched_overrides, validate_proposal
from agent.state.queries import Queries
from agent.state.summary import summarize
from agent.state.tasks import TaskTable

MAX_RIDS = 100_000
"""Idempotency ids remembered; the oldest is forgotten first."""
MAX_PROPOSALS = 10_000
"""Proposals kept; beyond it the oldest decided one is dropped."""
SNAPSHOT_VERSION = 1

Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    ok: bool
    value: Any = None
    error: str | None = None
    events: list[Event] = field(default_factory=list)
    placeable: bool = False
    """The entry may have given the leader's scheduler something new to place (a task
    submitted or requeued, a node undrained or registered): it need not wait for
    its next timed round."""


class ValueIfOk:
    """A write's ``finish`` (see ``consensus_requests.submit``): the result's value
    when it is ok, else what ``refused(result)`` returns or raises.  The Raft driver
    answers an ok row of a group commit with its value at once, without making its
    ``ApplyResult`` first (``consensus_requests._split_batch``)."""

    __slots__ = ("refused",)

    def __init__(self, refused: Callable[[ApplyResult], Any]) -> None:
        self.refused = refused

    def __call__(self, result: ApplyResult) -> Any:
        return result.value if result.ok else self.refused(result)


_MAY_PLACE: Final = (TaskSubmit, NodeUndrain, NodeRegister)
"""Ops whose success may make a queued task placeable."""
_MAY_REQUEUE: Final = (TaskFinish, TaskFailNode)
"""Ops that may send a task back to the queue (a ``requeued`` event says so)."""


def _placeable(body: Any, events: list[Event]) -> bool:
    if isinstance(body, _MAY_PLACE):
        return True
    return isinstance(body, _MAY_REQUEUE) and any(
        e["topic"] == "tasks" and e["data"]["kind"] == "requeued" for e in events
    )


_NOT_STR: Final = object()


def rid_table(rows: Iterable[tuple[str, bytes | int]] = ()) -> dict[str, bytes | int]:
    """A rid cache holding ``rows`` (as ``dict(rows)``) whose key table keeps each
    key's hash beside it.  A dict that has only ever held str keys keeps just the
    keys, so every slot a lookup probes costs a read of that key object's hash --
    a cache miss each in a table of ``MAX_RIDS`` rids scattered in memory, on
    every put of every node.  One non-str key, added and removed at once, makes
    CPython keep the hashes for good (growing and evicting keep the table's kind);
    the contents, order and every answer are those of a plain dict."""
    table: dict[Any, bytes | int] = {_NOT_STR: 0}
    del table[_NOT_STR]
    table.update(rows)
    return table


class StateMachine(Queries):
    """KV namespaces, proposals, the node table and tasks, fed by committed entries."""

    def __init__(self) -> None:
        self.applied_index = 0
        self.kv = KvStore()
        self.proposals: dict[int, Proposal] = {}
        self.next_proposal_id = 1
        self.nodes: dict[str, dict[str, Any]] = {}  # id → {"name", "draining"}
        self.tasks = TaskTable(self.name_of)
        # rid → its snapshot row ``[rid, ok, value, error]``, packed, or for the
        # usual put's row ``[rid, True, {"index": i}, None]`` just ``i``: a put
        # caches its int, and the row is packed (and kept packed) only if it is
        # still cached when a snapshot is taken -- most rids are evicted first,
        # so most are never packed -- or when its rid is retried.  A snapshot
        # (every few thousand entries, of up to MAX_RIDS rows) joins the packed
        # rows instead of packing 100k small objects each time.
        self.rids: dict[str, bytes | int] = rid_table()
        self.rid_order: deque[str] = deque()
        self._packer = msgpack.Packer(use_bin_type=True)
        self.sched_overrides: dict[str, Any] = {}
        self.summaries = True
        """Add a ``consensus`` entry event with a one-line summary to each result."""

    # ------------------------------------------------------------ apply

    def apply(
        self,
        index: int,
        data: bytes,
        decoded: Command | None = None,
        parts: Sequence[Command | None] | None = None,
        answer: bool = True,
    ) -> ApplyResult:
        """Apply committed entry ``index``; entries must arrive in increasing index order.

        ``decoded``: what ``data`` decodes to, when the caller knows (the leader
        that encoded it, see ``encode_command_decoded``); saves decoding it again.
        ``parts``: for a ``batch`` entry the leader built, what each of its
        commands decodes to (None where it did not keep one), by position.
        ``answer`` False: nobody waits for the result's value (a follower's
        entry), so a ``kv.puts`` applied without summaries builds no rows (its
        value is None); the state and the rid cache are the same."""
        assert index > self.applied_index, f"entry {index} after {self.applied_index}"
        self.applied_index = index
        if not data:  # a leader's empty entry at the start of its term
            return ApplyResult(True, None, None, [_entry(index, "no-op")])
        if decoded is not None:
            cmd = decoded
        else:
            try:
                cmd = decode_command(data)
            except ProtocolError as exc:
                return ApplyResult(False, None, str(exc), [_entry(index, "invalid command")])
        body = cmd.body
        if type(body) is KvPuts and not self.summaries:
            # A follower's usual kv.puts, and the leader's: its decoded arrays are
            # what a follower decodes, so its parts are not needed to spare a decode.
            return self._apply_puts(index, body, answer)
        if type(body) is Batch or type(body) is KvPuts:
            return self._apply_batch(index, body, parts)
        ok, value, error, events, placeable = self._run(index, cmd)
        return ApplyResult(ok, value, error, events, placeable)

    def _apply_batch(
        self, index: int, batch: Batch | KvPuts, parts: Sequence[Command | None] | None
    ) -> ApplyResult:
        """Each command of ``batch`` as if it were an entry of its own, in order; the
        value is ``[[ok, value, error], ...]``, one row per command (the batch's own rid
        is not used: each command carries its own).  ``parts`` (see ``apply``) must
        have one item per command when given.  A ``kv.puts`` applies as the
        ``batch`` of its puts' own commands would (``put_item``)."""
        item: Callable[[int], Command]
        if isinstance(batch, KvPuts):
            count, item = len(batch.rids), partial(put_item, batch)
        else:
            cmds = batch.cmds
            count, item = len(cmds), lambda i: decode_command(cmds[i])
        rows: list[list[Any]] = []
        events: list[Event] = []
        placeable = False
        if parts is not None and len(parts) != count:
            parts = None
        for i in range(count):
            cmd = parts[i] if parts is not None else None
            if cmd is None:
                try:
                    cmd = item(i)
                except ProtocolError as exc:
                    rows.append([False, None, str(exc)])
                    continue
            if type(cmd.body) is Batch or type(cmd.body) is KvPuts:
                rows.append([False, None, "a batch inside a batch"])
                continue
            ok, value, error, more, may_place = self._run(index, cmd)
            rows.append([ok, value, error])
            if more:
                events += more
            placeable = placeable or may_place
        return ApplyResult(True, rows, None, events, placeable)

    def _apply_puts(self, index: int, puts: KvPuts, answer: bool = True) -> ApplyResult:
        """``_apply_batch`` of a ``kv.puts`` while nobody follows the summaries (no
        events), without a ``Command`` per put: a usual item (``usual_put``) is
        written, or answered from its rid's cached row, as ``_run`` would; any
        other takes ``_run``'s path (``put_item``).  ``answer`` False (nobody
        waits for the rows: see ``apply``): the value is None, no row is built."""
        rows: list[list[Any]] | None = [] if answer else None
        # Every usual put of the entry answers [True, {"index": index}, None]: one
        # row, made once and shared (results are only read: packed into replies).
        written: list[Any] = [True, {"index": index}, None]
        rids, rid_order, put = self.rids, self.rid_order, self.kv.put
        columns = zip(puts.rids, puts.ats, puts.ns, puts.keys, puts.values, strict=True)
        for i, (rid, at, ns, key, value) in enumerate(columns):
            if not usual_put(rid, at, ns, key, value):
                try:
                    ok, result, error, _, _ = self._run(index, put_item(puts, i))
                except ProtocolError as exc:
                    ok, result, error = False, None, str(exc)
                if rows is not None:
                    rows.append([ok, result, error])
                continue
            cached = rids.get(rid) if rid else None
            if cached is not None:
                if rows is not None:
                    rows.append(self._row(rid, cached)[1:])
                continue
            put(ns, key, value, index)
            if rid:  # ``_remember``'s usual row, as its int (see ``__init__``)
                rids[rid] = index
                rid_order.append(rid)
                if len(rids) > MAX_RIDS:
                    del rids[rid_order.popleft()]
            if rows is not None:
                rows.append(written)
        return ApplyResult(True, rows, None, [], False)

    def _remember(self, rid: str, ok: bool, value: Any, error: str | None) -> None:
        """Cache ``rid``'s result row (a retry gets it; at most ``MAX_RIDS`` kept)."""
        if ok and error is None and type(value) is dict and len(value) == 1:
            index = value.get("index")
            if type(index) is int:  # the usual put's row: its int (see ``__init__``)
                self.rids[rid] = index
                self.rid_order.append(rid)
                self._evict()
                return
        self.rids[rid] = self._packer.pack([rid, ok, value, error])
        self.rid_order.append(rid)
        self._evict()

    def _evict(self) -> None:
        """Forget the oldest rids beyond ``MAX_RIDS``."""
        rids, order = self.rids, self.rid_order
        while len(rids) > MAX_RIDS:
            del rids[order.popleft()]

    def _row(self, rid: str, cached: bytes | int) -> list[Any]:
        """``rid``'s cached row ``[rid, ok, value, error]``."""
        if type(cached) is int:
            return [rid, True, {"index": cached}, None]
        return _unpack_row(cached)  # type: ignore[arg-type]

    def _packed_rids(self) -> list[bytes]:
        """Every cached row packed, in order; an int row is packed now and kept
        packed (a later snapshot joins it as it is)."""
        rids, pack = self.rids, self._packer.pack
        rows: list[bytes] = []
        for rid, cached in rids.items():
            if type(cached) is int:
                cached = rids[rid] = pack([rid, True, {"index": cached}, None])
            rows.append(cached)  # type: ignore[arg-type]
        return rows

    def _run(self, index: int, cmd: Command) -> tuple[bool, Any, str | None, list[Event], bool]:
        """One command: ``(ok, value, error, events, placeable)``, an ``ApplyResult``'s
        fields (a batch makes rows of them, not a result object per command)."""
        # The consensus-log summary is only for subscribers: skip it when nobody
        # follows that topic (``summaries``; results and state do not depend on it).
        summary = summarize(cmd, self.name_of) if self.summaries else ""
        rid = cmd.rid
        cached = self.rids.get(rid) if rid else None
        if cached is not None:
            _, ok, value, error = self._row(rid, cached)
            return ok, value, error, self._entries(index, f"{summary} (retry)"), False
        try:
            value, events = self._dispatch(cmd, index)
            ok, error = True, None
            placeable = _placeable(cmd.body, events) if events or type(cmd.body) in _MAY_PLACE else False
            if self.summaries:
                events = [*events, _entry(index, summary)]
        except MeshError as exc:
            ok, value, error, placeable = False, None, str(exc), False
            events = self._entries(index, f"{summary}: {exc}")
        if rid:
            self._remember(rid, ok, value, error)
        return ok, value, error, events, placeable

    def _entries(self, index: int, summary: str) -> list[Event]:
        return [_entry(index, summary)] if self.summaries else []

    def _dispatch(self, cmd: Command, index: int) -> tuple[Any, list[Event]]:
        body, at = cmd.body, cmd.at
        match body:
            case KvPut():
                self.kv.put(body.ns, body.key, body.value, index)
                return {"index": index}, []
            case KvDelete():
                return {"index": index, "deleted": self.kv.delete(body.ns, body.key)}, []
            case KvCas():
                ok = self.kv.cas(body.ns, body.key, body.expected, body.value, index)
                return {"index": index, "ok": ok}, []
            case KvPutTtl() | KvExpire():
                return self._kv_ttl(body, index, at), []
            case ProposalCreate():
                return self._propose(body, at), []
            case ProposalVote():
                return self._vote(body, at), []
            case NodeRegister():
                entry = self.nodes.setdefault(body.node, {"name": body.name, "draining": False})
                entry["name"] = body.name
                return {}, []
            case NodeDrain() | NodeUndrain():
                node_id = self.resolve_node(body.node)
                if node_id is None:
                    raise ConfigError("node", f"unknown node {body.node}")
                self.nodes[node_id]["draining"] = isinstance(body, NodeDrain)
                return {"node": node_id}, []
            case TaskSubmit():
                return self.tasks.submit(body, at)
            case TaskPlace():
                return self.tasks.place(body, at, self.is_draining)
            case TaskAssign():
                return self.tasks.assign(body, at, self.is_draining(body.node))
            case TaskStart():
                return self.tasks.start(body, at)
            case TaskFinish():
                return self.tasks.finish(body, at)
            case TaskCancel():
                return self.tasks.cancel(body.task, at)
            case TaskMigrate():
                return self.tasks.migrate(body, at, self.is_draining(body.to))
            case TaskLost():
                return self.tasks.lost(body.task, body.reason, at)
            case TaskFailNode():
                return self.tasks.fail_node(body, at)
        raise AssertionError(f"unhandled op {cmd.op}")

    def _kv_ttl(self, body: KvPutTtl | KvExpire, index: int, at: float) -> dict[str, Any]:
        """A write with a TTL (it expires ``ttl_ms`` after the command's ``at``), or the
        leader's expiry of keys (only those still due at its ``at``)."""
        if isinstance(body, KvPutTtl):
            expires_at = at + body.ttl_ms / 1000.0
            self.kv.put_ttl(body.ns, body.key, body.value, index, expires_at)
            return {"index": index, "expires_at": expires_at}
        return {"index": index, "expired": self.kv.expire(body.ns, body.keys, at)}

    def _propose(self, body: ProposalCreate, at: float) -> dict[str, Any]:
        proposal = Proposal(
            id=self.next_proposal_id,
            title=body.title,
            body=body.body,
            proposer=body.proposer,
            threshold=body.threshold,
            kind=body.kind,
            eligible=body.eligible or max(1, len(self.nodes)),
            created_at=at,
        )
        reason = validate_proposal(proposal)
        if reason is not None:
            raise ConfigError("proposal", reason)
        self.next_proposal_id += 1
        self.proposals[proposal.id] = proposal
        if len(self.proposals) > MAX_PROPOSALS:
            oldest = next((p for p in self.proposals.values() if p.state != "open"), None)
            if oldest is not None:
                del self.proposals[oldest.id]
        return {"id": proposal.id}

    def _vote(self, body: ProposalVote, at: float) -> dict[str, Any]:
        proposal = self.proposals.get(body.id)
        if proposal is None:
            raise ConfigError("proposal", f"unknown proposal {body.id}")
        if proposal.state != "open":
            raise ConfigError("proposal", f"proposal {body.id} is already {proposal.state}")
        if body.voter in proposal.votes:
            raise ConfigError("vote", f"{self.name_of(body.voter)} already voted")
        proposal.votes[body.voter] = body.approve
        if body.eligible:
            proposal.eligible = max(body.eligible, len(proposal.votes))
        proposal.decide(at)
        if proposal.state == "passed" and proposal.kind == "config":
            try:
                self.sched_overrides.update(sched_overrides(proposal.body, self.sched_config()))
            except ConfigError as exc:  # valid alone, but not on top of earlier changes
                proposal.state = "rejected"
                return {"tally": proposal.tally(), "error": str(exc)}
        return {"tally": proposal.tally()}

    # ------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """The whole state as msgpack; equal states give equal bytes.

        Packed by hand as the map ``packb`` would write, so the rid rows,
        already packed, are joined rather than packed again."""
        pack = self._packer.pack
        parts = [self._packer.pack_map_header(9)]
        for key, value in (
            ("version", SNAPSHOT_VERSION),
            ("applied_index", self.applied_index),
            ("kv", self.kv.dump()),
            ("proposals", [p.dump() for p in self.proposals.values()]),
            ("next_proposal_id", self.next_proposal_id),
            ("nodes", self.nodes),
            ("tasks", self.tasks.dump()),
        ):
            parts += (pack(key), pack(value))
        parts += (pack("rids"), self._packer.pack_array_header(len(self.rids)))
        parts += self._packed_rids()
        parts += (pack("sched_overrides"), pack(self.sched_overrides))
        return b"".join(parts)

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot; raise ``StorageError`` if it is not one."""
        try:
            state = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if state.get("version") != SNAPSHOT_VERSION:
                raise StorageError(f"snapshot version {state.get('version')!r} not supported")
            fresh = StateMachine()
            fresh.applied_index = int(state["applied_index"])
            fresh.kv.load(state["kv"])
            fresh.proposals = {row[0]: Proposal.load(row) for row in state["proposals"]}
            fresh.next_proposal_id = int(state["next_proposal_id"])
            fresh.nodes = {k: dict(v) for k, v in state["nodes"].items()}
            fresh.tasks.load(state["tasks"])
            fresh.rids = rid_table((row[0], fresh._packer.pack(row)) for row in state["rids"])
            fresh.rid_order = deque(fresh.rids)
            fresh.sched_overrides = dict(state["sched_overrides"])
        except StorageError:
            raise
        except Exception as exc:  # any shape error in a corrupt snapshot
            raise StorageError(f"bad state snapshot: {type(exc).__name__}: {exc}") from None
        self.applied_index = fresh.applied_index
        self.kv, self.proposals = fresh.kv, fresh.proposals
        self.next_proposal_id, self.nodes = fresh.next_proposal_id, fresh.nodes
        self.tasks = fresh.tasks
        self.tasks.name_of = self.name_of
        self.rids, self.rid_order = fresh.rids, fresh.rid_order
        self.sched_overrides = fresh.sched_overrides

    def sched_config(self, base: SchedConfig | None = None) -> SchedConfig:
        """``base`` with the overrides of every passed config proposal."""
        return dataclasses.replace(base or SchedConfig(), **self.sched_overrides)


def _unpack_row(row: bytes) -> list[Any]:
    cached: list[Any] = msgpack.unpackb(row, raw=False, strict_map_key=False)
    return cached


def _entry(index: int, summary: str) -> Event:
    return {"topic": "consensus", "data": {"kind": "entry", "index": index, "summary": summary}}
