"""A full Raft disk: the alarm, the pause, and what a paused node still does.

Theory of operation
-------------------
A write of the WAL or of a snapshot that fails with ``ENOSPC`` (or
``EDQUOT``) does not stop the agent.  The Ready loop keeps the Ready it could
not persist (not advanced) and retries it, ``RETRY_FIRST`` doubling up to
``RETRY_MAX`` seconds apart, until it is durable; then it carries on as if
the write had been slow.  Storage makes the retry safe: a failed write rolls
its offset back and a segment that could not be created is removed
(``raft/storage.py``).  Any other storage error still stops the node:
continuing could acknowledge a write that is not durable.

While the WAL alarm is up, Raft on this node is *paused*, as if the process
were stopped, while SWIM, the control socket and forwarding keep running (all
on the event loop, which the retry never blocks):

* the core is neither ticked nor stepped.  Inbound Raft messages are dropped
  (Raft tolerates loss), so nothing the node says -- an append ack, a vote --
  can rest on state that is not on disk: a follower just stops acknowledging
  and no longer counts toward a quorum;
* a leader hands off: it sends ``TimeoutNow`` to its most caught-up active
  voter (safe: any election is), and as it sends no more heartbeats the others
  elect anyway within an election timeout or two if that message is lost.
  Writes it had accepted but not committed fail at once: ``NoQuorumError``
  (retry: another node will lead) or, with no healthy majority left to take
  over, ``DiskFullError``;
* ``DiskFullMode`` keeps what the node still learns from the leader traffic
  it drops: who leads, at which term, when it was last heard.  Writes are
  forwarded to that leader (so are writes other nodes forwarded here while
  it led).  Linearizable reads ask it for a read index and
  are served when this node's (frozen) state is that recent; a single voter
  that leads serves them at once once it has applied an entry of its term;
* only when no other node leads within ``HANDOFF_ELECTIONS`` election
  timeouts (of the pause, or of last hearing a leader) does a write fail with
  ``DiskFullError``: ``disk full on n1: <dir>``, CLI exit 5;
* tasks: ``has_quorum()`` is False, so the watchdog lease lapses and the
  node's tasks are fenced like a cut-off host's (its frozen state machine
  cannot learn that one was moved or cancelled).

When a retry succeeds the alarm clears, the newest heartbeat dropped meanwhile
is stepped (a delayed message: the node learns the new term and leader at
once), and Raft resumes where it stopped.

A snapshot that does not fit (``snapshot`` alarm) pauses nothing: the WAL
still holds every entry it covers.  It is retried on the same backoff until
saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.errors import DiskFullError, NoQuorumError
from agent.raft.core import RaftNode
from agent.raft.messages import (
    AppendEntries,
    Heartbeat,
    InstallSnapshot,
    ReadIndexReq,
    ReadIndexResp,
    Role,
    Snapshot,
    TimeoutNow,
)

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""Errors that mean "no room": retried.  Every other storage error stops the node."""

RETRY_FIRST = 0.1
"""Seconds before the first retry of a write that found the disk full."""

RETRY_MAX = 0.5
"""Seconds between later retries (doubling from ``RETRY_FIRST``): a node resumes
within half a second of space being freed, and a retry costs one failed write."""

HANDOFF_ELECTIONS = 3.0
"""A write reaching a paused node waits at most this many election timeouts (from
the pause, or from last hearing a leader) for another node to lead: TimeoutNow
elects one within a round trip; a lost one costs an election timeout or two and
a pre-vote round."""

_FROM_LEADER = (AppendEntries, Heartbeat, InstallSnapshot)
_WHAT = {"wal": "WAL", "snapshot": "snapshot", "bootstrap": "new cluster's first entries"}


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def fatal_line(exc: BaseException, directory: str) -> str:
    """One line for a storage failure that stops the node."""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        reason = exc.strerror or str(exc)
        return (
            f"storage failure in {directory}{where}: {reason} (errno {exc.errno}); stopping:"
            " continuing could acknowledge writes that are not durable"
        )
    return f"fatal error in the Raft ready loop: {type(exc).__name__}: {exc}; stopping"


@dataclass(slots=True)
class DiskFullAlarm:
    """One write that does not fit: ``what`` is ``wal``, ``snapshot`` or ``bootstrap``."""

    what: str
    directory: str
    error: str
    since: float
    """Unix time of the first failure."""
    retries: int = 0

    def view(self, node: str) -> dict[str, Any]:
        """For ``status``/``report`` (``alarms``) and the TUI's banner."""
        return {
            "kind": "disk_full",
            "node": node,
            "what": self.what,
            "dir": self.directory,
            "since": round(self.since, 3),
            "error": self.error,
            "retries": self.retries,
            "message": f"disk full on {node}: {self.directory}",
        }


def handoff_target(node: RaftNode) -> str | None:
    """The leader's most caught-up voter heard from within an election timeout."""
    best: tuple[int, str] | None = None
    for peer, pr in node.progress_view().items():
        match = pr["match"]
        if peer == node.id or peer not in node.conf.voters or not pr["active"]:
            continue
        if isinstance(match, int) and (best is None or match > best[0]):
            best = (match, peer)
    return best[1] if best else None


def healthy_majority_without(node: RaftNode) -> bool:
    """Leader: do the active voters other than itself form a majority of the voters?"""
    view = node.progress_view()
    others = sum(
        1 for v in node.conf.voters if v != node.id and v in view and view[v]["active"]
    )
    return others >= len(node.conf.voters) // 2 + 1


class DiskFullMode:
    """The alarms of one ``ConsensusDriver`` and its behaviour while paused.

    The driver hands over what this needs of it, and nothing else: its Raft
    core (``core()``: replaced when the node founds a cluster), sending,
    publishing alarms, its role, failing the writes it holds, the read index
    requests the core answers (``core_reads``: ctx -> future, shared), and its
    applied index."""

    def __init__(
        self,
        *,
        name: str,
        node_id: str,
        directory: str,
        election_timeout: float,
        core: Callable[[], RaftNode],
        send: Callable[[str, object], None],
        publish: Callable[[dict[str, Any]], None],
        role_name: Callable[[], str],
        report_role: Callable[[str], None],
        fail_writes: Callable[[Callable[[], BaseException]], None],
        core_reads: dict[bytes, asyncio.Future[int]],
        applied_index: Callable[[], int],
    ) -> None:
        self._name = name
        self._node_id = node_id
        self._directory = directory
        self._election_timeout = election_timeout
        self._core = core
        self._send = send
        self._publish_event = publish
        self._role_name = role_name
        self._report_role = report_role
        self._fail_writes = fail_writes
        self._core_reads = core_reads
        self._applied_index = applied_index
        self._alarms: dict[str, DiskFullAlarm] = {}
        self.paused = False
        """The WAL alarm is up: Raft is paused here (module doc).  A plain attribute:
        the driver reads it for every inbound message."""
        self._unsaved: Snapshot | None = None
        self._snapshot_retry_at = 0.0
        self._snapshot_delay = RETRY_FIRST
        # What the paused node learns from the leader traffic it drops.
        self.leader = ""
        self.term = 0
        self.heard = float("-inf")
        self._heartbeat: Heartbeat | None = None
        self._deadline = 0.0
        self._changed = asyncio.Event()
        self._reads: dict[bytes, asyncio.Future[int]] = {}

    # ------------------------------------------------------------ alarms

    @property
    def unwritten(self) -> bool:
        """A WAL append failed and was not yet retried successfully."""
        return "wal" in self._alarms or "bootstrap" in self._alarms

    def alarms(self) -> list[dict[str, Any]]:
        return [alarm.view(self._name) for alarm in self._alarms.values()]

    def error(self, detail: str = "") -> DiskFullError:
        return DiskFullError.on(self._name, self._directory, detail)

    def raise_alarm(self, what: str, exc: OSError) -> bool:
        """Record a failed write; True if this is a new alarm (logged once)."""
        reason = exc.strerror or str(exc)
        alarm = self._alarms.get(what)
        if alarm is not None:
            alarm.retries += 1
            alarm.error = reason
            return False
        directory = self._directory
        self._alarms[what] = DiskFullAlarm(what, directory, reason, time.time())
        self.paused = "wal" in self._alarms
        consequence = {
            "wal": "Raft is paused here (no acks, no votes) until space is freed;"
            " writes go to a leader elsewhere if a healthy majority has one",
            "snapshot": "the WAL keeps every entry; the snapshot is retried",
            "bootstrap": "founding the cluster is retried",
        }[what]
        log.warning("disk full on %s: %s (%s, writing the %s); %s",
                    self._name, directory, reason, _WHAT[what], consequence)
        self._publish(f"disk full on {self._name}: {directory} ({what}): {consequence}")
        return True

    def clear_alarm(self, what: str) -> None:
        alarm = self._alarms.pop(what, None)
        self.paused = "wal" in self._alarms
        if alarm is not None:
            took = time.time() - alarm.since
            log.warning("disk space is back on %s: the %s went through after %.1f s (%d retries)",
                        self._name, _WHAT[what], took, alarm.retries)
            self._publish(f"disk space is back on {self._name}: {_WHAT[what]} written after {took:.1f} s")

    def _publish(self, summary: str) -> None:
        node = self._core()
        self._publish_event({
            "kind": "alarm", "term": node.term, "role": self._role_name(),
            "leader": node.leader_id or None, "summary": summary, "alarms": self.alarms(),
        })

    # ------------------------------------------------------------ pause and resume

    def pause(self, exc: OSError) -> None:
        """The WAL write of a Ready failed for lack of space (first time: pause)."""
        if not self.raise_alarm("wal", exc):
            return
        node = self._core()
        now = time.monotonic()
        leading = node.role == Role.LEADER
        self.term = node.term
        self.leader = "" if leading else node.leader_id
        self.heard = now if self.leader and node.has_quorum_contact() else float("-inf")
        self._heartbeat = None
        others = healthy_majority_without(node) if leading else True
        self._deadline = now + self._handoff_wait() if others else now
        if leading:
            target = handoff_target(node) if others else None
            if target is not None:
                log.warning("handing leadership to %s: this node's disk is full", target)
                self._send(target, TimeoutNow(self._node_id, target, node.term))
            if not self.sole_leader():
                self._report_role("voter")
        self._fail_pending(others)

    def _fail_pending(self, others_can_lead: bool) -> None:
        """Writes this leader accepted cannot commit while its core is paused."""
        if others_can_lead:
            self._fail_writes(lambda: NoQuorumError(
                f"leadership is moving off {self._name} (its disk is full) before the write"
                " committed; it may still commit: retry"
            ))
        else:
            self._fail_writes(lambda: self.error(
                "the write is not durable yet: it commits if space is freed before the agent stops"
            ))

    def resume(self) -> None:
        """The paused Ready is durable: Raft goes on (module doc)."""
        if not self.paused:
            return
        self.clear_alarm("wal")
        # Reads waiting on a read index: the core answers them from now on.
        self._core_reads.update(self._reads)
        self._reads.clear()
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            self._core().step(heartbeat)
        self._notify()  # writers waiting for a leader take the normal path now

    def _handoff_wait(self) -> float:
        return float(HANDOFF_ELECTIONS * self._election_timeout)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------ while paused

    def step(self, msg: Any) -> None:
        """An inbound Raft message while paused: learn who leads, then drop it."""
        if isinstance(msg, ReadIndexResp):
            fut = self._reads.pop(msg.ctx, None)
            if fut is not None and not fut.done():
                fut.set_result(msg.index)
            return
        if isinstance(msg, _FROM_LEADER) and msg.frm != self._node_id and msg.term >= self.term:
            changed = (msg.frm, msg.term) != (self.leader, self.term)
            self.leader, self.term = msg.frm, msg.term
            self.heard = time.monotonic()
            if isinstance(msg, Heartbeat):
                self._heartbeat = msg
            if changed:
                self._notify()

    def live_leader(self) -> str | None:
        """Another node heard leading within an election timeout, if any."""
        if self.leader and time.monotonic() - self.heard <= self._election_timeout:
            return self.leader
        return None

    def sole_leader(self) -> bool:
        """This node leads and is the only voter: nobody else can take over."""
        node = self._core()
        return node.role == Role.LEADER and node.conf.voters == (self._node_id,)

    async def leader_elsewhere(self) -> str | None:
        """The leader to forward to; None if Raft resumed meanwhile (take the normal
        path).  ``DiskFullError`` when nobody else leads within the handoff wait."""
        while self.paused:
            now = time.monotonic()
            leader = self.live_leader()
            if leader is not None:
                return leader
            deadline = max(self._deadline, self.heard + self._handoff_wait())
            if now >= deadline:
                raise self.error("no healthy majority elsewhere can take the write;"
                                 " writes resume by themselves once space is freed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - now)
        return None

    async def read_barrier(self, timeout: float) -> bool:
        """A linearizable read while paused: True when the local state may serve it,
        False if Raft resumed meanwhile (take the normal path)."""
        if self.sole_leader():
            # The only voter still leads: nothing commits without it.  Once it has
            # applied an entry of its own term (its no-op, so everything acknowledged
            # before the term), every acknowledged write is applied: writes of this
            # term are acknowledged when applied.
            node = self._core()
            if node.log.term(self._applied_index()) == node.term:
                return True
            raise self.error("it has not applied an entry of its current term yet:"
                             " read with --stale, or once space is freed")
        leader = await self.leader_elsewhere()
        if leader is None:
            return False
        ctx = os.urandom(8)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        self._send(leader, ReadIndexReq(self._node_id, leader, self.term, ctx))
        try:
            index = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise NoQuorumError("read not confirmed by a quorum in time") from None
        finally:
            self._reads.pop(ctx, None)
            self._core_reads.pop(ctx, None)  # handed to the core if Raft resumed meanwhile
        applied = self._applied_index()
        if applied >= index:
            return True
        if not self.paused:
            return False  # resumed meanwhile: the normal path reads again
        raise self.error(
            f"its state stops at index {applied} but the read needs {index}:"
            " read from another node, or with --stale"
        )

    # ------------------------------------------------------------ snapshots

    def snapshot_failed(self, exc: OSError, snap: Snapshot) -> None:
        self.raise_alarm("snapshot", exc)
        self._unsaved = snap
        self._snapshot_retry_at = time.monotonic() + self._snapshot_delay
        self._snapshot_delay = min(RETRY_MAX, self._snapshot_delay * 2)

    def snapshot_saved(self) -> None:
        self._unsaved = None
        self._snapshot_delay = RETRY_FIRST
        self.clear_alarm("snapshot")

    def snapshot_due(self, now: float) -> Snapshot | None:
        """The snapshot to retry now, if one did not fit and its backoff passed."""
        if self._unsaved is not None and now >= self._snapshot_retry_at:
            return self._unsaved
        return None
