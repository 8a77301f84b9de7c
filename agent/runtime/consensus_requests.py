"""The client side of the Raft driver: writes (on the leader, forwarded from a
follower, or relayed while this node's disk is full) and linearizable reads.

A mixin of ``ConsensusDriver`` (``consensus.py``), as ``swim/rules.py`` is of
``SwimNode``: the driver owns the Raft core, the Ready loop and the state; this
module holds how a client request turns into a proposal or a ReadIndex and how
its answer comes back (see ``consensus.py``'s module doc for the rules: waiting
for a leader up to the request timeout, following leader changes, resending a
forwarded write whose answer does not come, "no quorum" only for a real
minority).

Group commit of client writes: the writes a leader is handed in one pass of the
event loop (the control server dispatches every request of a read before it
yields) are proposed together at the end of that pass (``call_soon``, no timer:
a lone write goes as itself, as quick as before) as one ``batch`` entry of at
most ``MAX_COALESCED`` commands (``agent/state/commands.py``: each is applied
exactly as an entry of its own, with its own rid, result and events).  One log
entry, WAL record, replicated entry and apply step then serve the whole burst
instead of one per write -- on the followers too.  Each caller's future
resolves to its own command's result; if the batch entry fails (leadership
changed, commit timeout) every caller gets that error and may retry on its own
(each command keeps its rid, so a retry is applied at most once).  A burst of
nothing but ``kv.put`` goes as a ``kv.puts`` entry instead (the same commands as
arrays, decoded in one unpack on every follower) once every member applies it
(``runtime/compat.py``, release 0.3.0).  Writes forwarded by followers join
the same group commit (``_forwarded``), decoded once on arrival.

A leader's write is answered by callback: ``submit`` returns a ``Pending``
(``agent/control/pending.py``) that the apply loop resolves directly, so the
control session queues the reply in the same pass, with no event-loop handle
per write; a follower's write is a task (it forwards and waits).
"""

from __future__ import annotations

import abc
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent.control.pending import Pending
from agent.errors import DiskFullError, LocalError, NoQuorumError, NotLeaderError, ProtocolError
from agent.raft.core import RaftNode
from agent.runtime.compat import is_batch
from agent.runtime.diskfull import DiskFullMode
from agent.runtime.forwarding import Forwarder, LeaderRefused, Retarget, result_answer
from agent.runtime.leader_wait import LeaderWait
from agent.runtime.messages import ForwardPropose, ForwardResult
from agent.state.commands import (
    Batch,
    Command,
    KvPut,
    KvPuts,
    PutRow,
    decode_command,
    encode_command,
    encode_command_decoded,
    encode_puts,
    row_command,
)
from agent.state.machine import ApplyResult, StateMachine, ValueIfOk

MAX_COALESCED = 256
"""Client writes one ``batch`` entry carries at most (default 256): bounds an entry
(a KV write is ~150 bytes) and one apply step; more queued writes go as further
batches in the same pass."""

_Queued = tuple[
    "bytes | None", "Callable[[ApplyResult], Any] | None", "Command | PutRow | None", "Pending[Any]"
]
"""A queued write: its bytes (None: not encoded yet, see ``submit_decoded``; its
decoded form is then given), ``finish``, its decoded form (a usual put's may be its
``PutRow``: no ``Command`` is made unless its entry needs one), its caller's Pending."""


def has_rid(command: bytes) -> bool:
    """Does ``command`` carry a client rid (so the apply dedup makes a resend safe)?"""
    try:
        return bool(decode_command(command).rid)
    except ProtocolError:
        return False


@dataclass(slots=True)
class PendingWrite:
    term: int
    future: Pending[Any]
    started: float
    """Loop time of the proposal; the tick sweep fails the write ``commit_timeout`` later."""
    finish: Callable[[ApplyResult], Any] | None
    """Turns the apply result into the future's value (or raises); None: the result itself."""
    decoded: Command | None = None
    """What the proposed bytes decode to, if the proposer knew (spares the apply a decode)."""
    parts: list[Command | None] | None = None
    """For a group-commit batch: what each of its commands decodes to, by position
    (the handlers' ``decoded``), so the leader applies them without decoding."""


class ClientRequests(abc.ABC):
    """Writes and reads; expects the driver's attributes declared below."""

    node_id: str
    disk_full: DiskFullMode
    _node: RaftNode
    _state: StateMachine
    _send: Callable[[str, object], None]
    _leader_wait: LeaderWait
    _forwarder: Forwarder
    _known_leader: str
    _pending: dict[int, PendingWrite]
    _reads: dict[bytes, asyncio.Future[int]]
    _apply_waiters: list[tuple[int, asyncio.Future[None]]]
    _read_timeout: float
    _loop: asyncio.AbstractEventLoop | None
    _queued_writes: list[_Queued]
    _batches_allowed: Callable[[], bool]
    _compact_allowed: Callable[[], bool]
    _applied_at: float
    commit_latencies: list[float]

    @abc.abstractmethod
    def wake(self) -> None:
        """Run the Ready loop soon."""

    # ------------------------------------------------------------ writes

    def has_quorum(self) -> bool:
        # Paused on a full disk: this node cannot apply what the cluster decides,
        # so its tasks are fenced like a cut-off host's (the lease lapses).
        return self._node.has_quorum_contact() and not self.disk_full.paused

    async def propose(
        self, command: bytes, forward: Callable[[str, object], None] | None = None
    ) -> ApplyResult:
        """Commit ``command`` and return its apply result (from any node); a follower
        sends it to the leader with ``forward`` (default: this driver's ``send``)."""
        result: ApplyResult = await self.submit(command, forward)
        return result

    def submit(
        self,
        command: bytes,
        forward: Callable[[str, object], None] | None = None,
        finish: Callable[[ApplyResult], Any] | None = None,
        decoded: Command | None = None,
    ) -> Pending[Any] | asyncio.Future[Any]:
        """Start committing ``command``; what it returns resolves once it is applied,
        to ``finish(result)`` (or what ``finish`` raises), or fails with ``NoQuorumError``.

        On the leader a ``Pending`` resolved straight from the apply loop, whose
        callbacks run there: no task or loop handle per write (the control server
        queues the reply from its callback).  On a
        follower a task forwards the command (``forward``, default: this driver's
        ``send``) and waits for the leader's answer, following leader changes; with
        no leader known it waits for one (see the module doc).  A real minority:
        ``NoQuorumError`` at once."""
        forward = forward or self._send
        if self.disk_full.paused:
            return asyncio.ensure_future(self._submit_paused(command, forward, finish))
        node = self._node
        if node.is_leader():
            if not node.has_quorum_contact():
                raise NoQuorumError()
            return self._queue_write(command, finish, decoded)
        leader = node.leader_id if node.has_quorum_contact() else ""
        if not leader and self._leader_wait.minority():
            raise NoQuorumError("fewer than a majority of the voters heard from")
        return asyncio.ensure_future(self._write_via_leader(leader, command, forward, finish, decoded))

    def submit_decoded(
        self, decoded: Command | PutRow, finish: Callable[[ApplyResult], Any] | None = None
    ) -> Pending[Any] | asyncio.Future[Any]:
        """``submit`` of a validated command not yet encoded (a ``kv.put``:
        ``commands.put_command``, or a usual put's ``PutRow``): a leader's write
        queued for the group commit is encoded only if its entry needs its bytes --
        a ``kv.puts`` entry does not, nor its ``Command`` -- and any other path
        encodes it first (``encode_command``: the bytes the handler would have made)."""
        node = self._node
        if node.is_leader() and node.has_quorum_contact() and not self.disk_full.paused:
            return self._queue_write(None, finish, decoded)
        return self.submit(_encoded(None, decoded), finish=finish, decoded=_command(decoded))

    async def _write_via_leader(
        self,
        leader: str,
        command: bytes,
        forward: Callable[[str, object], None],
        finish: Callable[[ApplyResult], Any] | None,
        decoded: Command | None,
    ) -> Any:
        """Forward ``command`` to ``leader`` ("": wait for one), following leader
        changes until the request timeout (see the module doc)."""
        deadline = self._leader_wait.deadline()
        refused = ""  # a node that answered it is not a working leader: wait for another
        while True:
            if not leader:
                leader = await self._leader_wait.wait(deadline, refused)
            if leader == self.node_id:
                return await self._propose_future(command, finish, decoded)
            try:
                result = await self._forwarder.forward(
                    leader, command, forward, resendable=has_rid(command)
                )
            except Retarget:
                if not has_rid(command):
                    raise NoQuorumError("the leader changed before answering; retry") from None
                if asyncio.get_running_loop().time() >= deadline:
                    raise NoQuorumError("the leader did not answer within the request timeout") from None
                leader, refused = "", ""
                continue
            except LeaderRefused:
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                leader, refused = "", leader
                continue
            return result if finish is None else finish(result)

    def _leader_changed(self, leader: str) -> None:
        """The core names a new leader ("" while electing): wake the writes waiting
        for one, and resend those forwarded to another node."""
        self._known_leader = leader
        if leader:
            self._leader_wait.changed()
            self._forwarder.retarget(leader)

    async def _forward_finish(
        self,
        leader: str,
        command: bytes,
        forward: Callable[[str, object], None],
        finish: Callable[[ApplyResult], Any] | None,
    ) -> Any:
        result = await self._forward(leader, command, forward)
        return result if finish is None else finish(result)

    async def _submit_paused(
        self,
        command: bytes,
        forward: Callable[[str, object], None],
        finish: Callable[[ApplyResult], Any] | None,
    ) -> Any:
        """A write while paused: to the leader elsewhere, or ``DiskFullError``."""
        leader = await self.disk_full.leader_elsewhere()
        if leader is None:  # resumed meanwhile
            return await self.submit(command, forward, finish)
        return await self._forward_finish(leader, command, forward, finish)

    async def propose_local(self, command: bytes) -> ApplyResult:
        if self.disk_full.paused:
            raise self.disk_full.error("this node cannot append to its log")
        result: ApplyResult = await self._propose_future(command, None)
        return result

    def _propose_future(
        self,
        command: bytes,
        finish: Callable[[ApplyResult], Any] | None,
        decoded: Command | None = None,
        fut: Pending[Any] | None = None,
        parts: list[Command | None] | None = None,
    ) -> Pending[Any]:
        """Append ``command``; ``fut`` (a new future if None) resolves once it is applied
        (``parts``: see ``PendingWrite``)."""
        loop = self._loop or asyncio.get_running_loop()
        try:
            index, term = self._node.propose(command)
        except NotLeaderError:
            raise
        except LocalError as exc:
            raise NoQuorumError(str(exc)) from None
        if fut is None:
            fut = Pending()
        stale = self._pending.pop(index, None)
        if stale is not None and not stale.future.done():
            # A new term reused this index: the old entry was overwritten.
            stale.future.set_exception(
                NoQuorumError("leadership changed before the write committed; retry")
            )
        # The tick sweep (_expire_waiters) fails the future after commit_timeout.
        self._pending[index] = PendingWrite(term, fut, loop.time(), finish, decoded, parts)
        self.wake()
        return fut

    def _queue_write(
        self,
        command: bytes | None,
        finish: Callable[[ApplyResult], Any] | None,
        decoded: Command | PutRow | None,
    ) -> Pending[Any]:
        """Queue a leader's client write for this pass's group commit (module doc)."""
        fut: Pending[Any] = Pending()
        if not self._queued_writes:
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._flush_writes)
        self._queued_writes.append((command, finish, decoded, fut))
        return fut

    def _flush_writes(self) -> None:
        queued, self._queued_writes = self._queued_writes, []
        compact: bool | None = None  # asked once a pass, when a batch is made
        for chunk in _group(queued, self._batches_allowed()):
            try:
                if len(chunk) == 1:
                    command, finish, decoded, fut = chunk[0]
                    if not fut.done():  # the caller's own future waits for the entry
                        self._propose_future(
                            _encoded(command, decoded), finish, _command(decoded), fut
                        )
                    continue
                rows = [d for _, _, d, _ in chunk]
                if compact is None:
                    compact = self._compact_allowed()
                if compact and all(_is_put(d) for d in rows):
                    # The leader applies its decoded arrays (as a follower does; its
                    # parts are made by put_item only if someone reads summaries).
                    data, whole = encode_puts(rows, time.time())  # type: ignore[arg-type]
                    batch = self._propose_future(data, None, whole)
                else:
                    # Its decoded form too: the leader applies the batch without decoding it.
                    parts = [_command(d) for d in rows]
                    data, decoded_batch = encode_command_decoded(
                        Batch(tuple([_encoded(c, d) for c, _, d, _ in chunk])), "", time.time()
                    )
                    batch = self._propose_future(
                        data, None, decoded_batch, parts=parts if any(parts) else None
                    )
            except (NoQuorumError, NotLeaderError) as exc:
                for _, _, _, waiting in chunk:
                    if not waiting.done():
                        waiting.set_exception(exc)
                continue
            batch.then(_split_batch, chunk)

    async def _forward(
        self, leader: str, command: bytes, forward: Callable[[str, object], None]
    ) -> ApplyResult:
        """One forward, no following of leader changes (the disk-full relays)."""
        try:
            return await self._forwarder.forward(leader, command, forward)
        except Retarget:
            raise NoQuorumError("the leader changed before answering; retry") from None

    async def serve_forward(self, msg: ForwardPropose) -> ForwardResult:
        """Leader side of ForwardPropose (paused: relayed to the leader elsewhere)."""
        try:
            if self.disk_full.paused:
                leader = await self.disk_full.leader_elsewhere()
                if leader is not None:
                    result = await self._forward(leader, msg.command, self._send)
                    return result_answer(msg.request_id, result)
            if not self._node.is_leader():
                raise NoQuorumError("forwarded to a node that is no longer the leader")
            if not self._node.has_quorum_contact():
                raise NoQuorumError()
            result = await self._forwarded(msg.command)
        except NoQuorumError as exc:
            return ForwardResult(msg.request_id, "no_quorum", str(exc), b"")
        except NotLeaderError as exc:
            return ForwardResult(msg.request_id, "no_quorum", str(exc), b"")
        except DiskFullError as exc:
            return ForwardResult(msg.request_id, "disk_full", str(exc), b"")
        except LocalError as exc:  # a relayed write the leader elsewhere refused
            return ForwardResult(msg.request_id, "refused", str(exc), b"")
        return result_answer(msg.request_id, result)

    def _forwarded(self, command: bytes) -> Awaitable[ApplyResult]:
        """A follower's forwarded write, joining this pass's group commit like the
        leader's own (module doc): decoded once here, so its batch is applied
        without decoding it and a burst of ``kv.put`` goes as ``kv.puts``.  What
        may not go inside a batch -- a batch or ``kv.puts`` of its own, or bytes
        that are no command (the apply refuses them) -- is an entry of its own."""
        if self.disk_full.paused:
            return self.propose_local(command)
        try:
            decoded = decode_command(command)
        except ProtocolError:
            return self._propose_future(command, None)
        if type(decoded.body) is Batch or type(decoded.body) is KvPuts:
            return self._propose_future(command, None, decoded)
        return self._queue_write(command, None, decoded)

    def on_forward_result(self, from_addr: str, msg: ForwardResult) -> None:
        """The leader's answer to a write we forwarded (the router's route)."""
        self.forward_result(msg)

    def forward_result(self, msg: ForwardResult) -> None:
        self._forwarder.answer(msg)

    # ------------------------------------------------------------ reads

    async def read_barrier(self) -> None:
        """Return once this node's state reflects every write committed before the call."""
        if self.disk_full.paused and await self.disk_full.read_barrier(self._read_timeout):
            return
        if not self._node.has_quorum_contact():
            # Forming or electing: wait for a leader like a write does (module doc).
            if self._leader_wait.minority():
                raise NoQuorumError()
            await self._leader_wait.wait(self._leader_wait.deadline())
        ctx = os.urandom(8)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        self._node.read_index(ctx)
        self.wake()
        try:
            index = await asyncio.wait_for(fut, self._read_timeout)
        except TimeoutError:
            raise NoQuorumError("read not confirmed by a quorum in time") from None
        finally:
            self._reads.pop(ctx, None)
        await self.wait_applied(index)

    async def wait_applied(self, index: int) -> None:
        if self._state.applied_index >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._apply_waiters.append((index, fut))
        await asyncio.wait_for(fut, self._read_timeout)

    def _resolve(self, pending: PendingWrite, result: ApplyResult) -> None:
        """Answer a write whose entry was applied: its latency counted, its future
        given the result (or what ``finish`` makes of it)."""
        latencies = self.commit_latencies
        latencies.append(self._applied_at - pending.started)
        if len(latencies) > 10_000:
            del latencies[:5_000]
        if pending.finish is None:
            pending.future.set_result(result)
            return
        try:
            value = pending.finish(result)
        except Exception as exc:
            pending.future.set_exception(exc)
        else:
            pending.future.set_result(value)

    def _release_apply_waiters(self) -> None:
        applied = self._state.applied_index
        keep = []
        for index, fut in self._apply_waiters:
            if fut.done():
                continue
            if applied >= index:
                fut.set_result(None)
            else:
                keep.append((index, fut))
        self._apply_waiters = keep


def _group(queued: list[_Queued], batches: bool) -> list[list[_Queued]]:
    """A pass's writes as the entries to propose, in order: runs of up to
    ``MAX_COALESCED`` writes (one batch entry each), but a write that is itself a
    batch (``runtime/sched_submit.py``'s) goes alone, as does every write while
    ``batches`` is False (a member that does not apply them: ``runtime/compat.py``)."""
    chunks: list[list[_Queued]] = []
    run: list[_Queued] = []
    for item in queued:
        if batches and (item[0] is None or not is_batch(item[0])):
            run.append(item)
            if len(run) == MAX_COALESCED:
                chunks.append(run)
                run = []
            continue
        if run:
            chunks.append(run)
            run = []
        chunks.append([item])
    if run:
        chunks.append(run)
    return chunks


def _encoded(command: bytes | None, decoded: Command | PutRow | None) -> bytes:
    """A queued write's bytes: ``command``, or ``decoded`` encoded (``submit_decoded``)."""
    if command is not None:
        return command
    whole = _command(decoded)
    assert whole is not None  # submit_decoded queues its decoded command
    return encode_command(whole.body, whole.rid, whole.at)


def _is_put(decoded: Command | PutRow | None) -> bool:
    """Is a queued write a ``kv.put`` (a put row, or a command whose body is a KvPut)?"""
    return type(decoded) is tuple or (type(decoded) is Command and type(decoded.body) is KvPut)


def _command(decoded: Command | PutRow | None) -> Command | None:
    """A queued write's decoded form as a ``Command`` (a put row's is made now)."""
    return row_command(decoded) if type(decoded) is tuple else decoded  # type: ignore[arg-type,return-value]


def _split_batch(chunk: list[_Queued], done: Pending[Any]) -> None:
    """A batch entry was applied (or failed): each caller gets its own command's
    result through its ``finish``, or the batch's error."""
    error = done.exception()
    if error is None:
        batch: ApplyResult = done.result()
        rows = batch.value if batch.ok and isinstance(batch.value, list) else None
        if rows is None or len(rows) != len(chunk):
            refused = ApplyResult(False, None, batch.error or "batch refused")
            rows = [[refused.ok, refused.value, refused.error]] * len(chunk)
        for (_, finish, _, fut), (ok, value, err) in zip(chunk, rows, strict=True):
            if fut.done():
                continue
            if ok and type(finish) is ValueIfOk:  # its value, without an ApplyResult
                fut.set_result(value)
                continue
            result = ApplyResult(bool(ok), value, err)
            if finish is None:
                fut.set_result(result)
                continue
            try:
                fut.set_result(finish(result))
            except Exception as exc:
                fut.set_exception(exc)
        return
    for _, _, _, fut in chunk:
        if not fut.done():
            fut.set_exception(error)
