"""The narrow interfaces the runtime's parts see of each other.

Each consumer names what it uses -- as etcd's ``kvServer`` takes a ``RaftKV``,
not the whole server -- so a reader sees at a glance what a control handler,
a status view or the task runtime can touch, and a test can hand it a small
fake.  The composition root (``agent/runtime/agent.py``) passes the real
components, which satisfy these Protocols structurally.

This module imports only the cores and leaf modules, never another runtime
module, so it can sit under everything without creating an import cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from agent.control.pending import Pending
from agent.crypto import KeyInfo
from agent.load import LoadSample
from agent.sched import SchedConfig, TaskView
from agent.state.commands import Command
from agent.state.kv import KvEntry
from agent.state.machine import ApplyResult
from agent.state.proposals import Proposal
from agent.state.tasks import TaskRecord
from agent.swim.members import MemberView

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
"""A control method: params in, result out (or an exception the server maps to a code)."""


# ---------------------------------------------------------------- the replicated state


class KvReads(Protocol):
    """The replicated KV namespaces, read-only (what ``kv.get``/``kv.list`` read)."""

    @property
    def applied_index(self) -> int: ...

    def kv_get(self, ns: str, key: str, now: float | None = ...) -> KvEntry | None: ...

    def kv_list(
        self, ns: str, prefix: str = ..., limit: int = ..., now: float | None = ...
    ) -> list[list[Any]]: ...

    def kv_search(self, ns: str, pattern: str, now: float | None = ...) -> list[list[Any]]: ...

    def kv_due(self, now: float, limit: int) -> dict[str, list[str]]:
        """Keys whose TTL has passed at ``now``, by namespace (the leader expires them)."""
        ...


class ProposalReads(Protocol):
    """Proposals, read-only."""

    def proposal(self, proposal_id: int) -> Proposal | None: ...

    def proposal_rows(self) -> list[dict[str, Any]]: ...


class TaskReads(Protocol):
    """Tasks, read-only (the ``task.*`` methods and task output)."""

    def task_rows(self) -> list[dict[str, Any]]: ...

    def task(self, task_id: str) -> dict[str, Any] | None: ...

    def task_record(self, task_id: str) -> TaskRecord | None: ...


class ControlReads(KvReads, ProposalReads, Protocol):
    """What the control methods read of the state (``task.*`` aside)."""


class StateQueries(ControlReads, TaskReads, Protocol):
    """The replicated state, read-only (``agent.state.queries``; ``ConsensusDriver.queries``).

    Nothing outside the consensus driver changes the state machine: writes are
    commands committed through Raft.  Reads are stale unless the caller ran a
    read barrier first."""

    def vote_participation(self) -> float | None: ...

    def name_of(self, node_id: str) -> str: ...

    def registered_name(self, node_id: str) -> str | None: ...

    def resolve_node(self, id_or_name: str) -> str | None: ...

    def is_draining(self, node_id: str) -> bool: ...

    def tasks_for_node(self, node_id: str) -> list[TaskRecord]: ...

    def status_counts(self) -> dict[str, int]: ...

    def node_load(self) -> dict[str, dict[str, int]]: ...

    def node_perf(self, node_id: str) -> tuple[float, float | None]: ...

    def sched_tasks(self) -> tuple[TaskView, ...]: ...

    def sched_config(self, base: SchedConfig | None = None) -> SchedConfig: ...

    def decision_latencies(self) -> list[float]: ...

    def migration_times(self) -> list[float]: ...


# ---------------------------------------------------------------- consensus


class Proposer(Protocol):
    """Commits commands through Raft from any node (followers forward to the leader)."""

    async def propose(self, command: bytes) -> ApplyResult:
        """Commit ``command``; its apply result (``NoQuorumError`` without a quorum)."""
        ...

    def submit(
        self,
        command: bytes,
        *,
        finish: Callable[[ApplyResult], Any] | None = None,
        decoded: Command | None = None,
    ) -> Pending[Any] | asyncio.Future[Any]:
        """Start committing ``command``; what it returns resolves to ``finish(result)``.

        A ``Pending`` (``agent/control/pending.py``) calls its callbacks directly
        when resolved -- the Raft leader's writes, answered from its apply loop
        with no loop handle per write; a future (a forwarded write's task, a
        PBFT request) through the event loop.  Either may be awaited."""
        ...

    async def read_barrier(self) -> None:
        """Return once the local state reflects every write committed before the call."""
        ...


class Leadership(Protocol):
    """Who leads, who votes, and handing leadership over."""

    def is_leader(self) -> bool: ...

    @property
    def leader_id(self) -> str:
        """The leader this node knows of ("" if none)."""
        ...

    def voters(self) -> tuple[str, ...]: ...

    def transfer_leadership(self, to: str) -> None:
        """Leader only: hand leadership to voter ``to`` (``LocalError`` otherwise)."""
        ...


class ControlConsensus(Proposer, Leadership, Protocol):
    """What the control methods need of consensus: commits, reads and leadership."""


class ConsensusStatus(Protocol):
    """What the status views read of the consensus driver."""

    @property
    def bootstrapped(self) -> bool: ...

    @property
    def elections(self) -> int: ...

    @property
    def commit_latencies(self) -> list[float]: ...

    def status(self) -> dict[str, Any]: ...

    def voters(self) -> tuple[str, ...]: ...

    def wal_stats(self) -> dict[str, Any]: ...

    def alarms(self) -> list[dict[str, Any]]: ...


class TaskConsensus(Protocol):
    """What the task runtime needs of consensus."""

    @property
    def queries(self) -> StateQueries: ...

    def is_leader(self) -> bool: ...

    def has_quorum(self) -> bool: ...

    async def propose(self, command: bytes) -> ApplyResult: ...

    async def propose_local(self, command: bytes) -> ApplyResult: ...


# ---------------------------------------------------------------- membership


class Members(Protocol):
    """SWIM's member list (``MembershipDriver``), read-only."""

    def members(self) -> list[MemberView]: ...

    def member(self, node_id: str) -> MemberView | None: ...


class LocalLoad(Protocol):
    """This host's own load figures, as the membership driver last sampled them."""

    @property
    def latest_load(self) -> LoadSample | None: ...

    @property
    def cpu_now(self) -> float:
        """The CPU figure this node gossips (host or task CPU, ``load_source``)."""
        ...


class TaskMembers(Members, LocalLoad, Protocol):
    """What the task runtime reads of membership."""


class MembershipStatus(Members, LocalLoad, Protocol):
    """What the status views read of membership."""

    @property
    def partitioned(self) -> bool: ...

    @property
    def health_score(self) -> int: ...

    @property
    def cluster_avg_cpu(self) -> float | None: ...

    @property
    def last_recovery_s(self) -> float | None: ...

    def loop_lag_p99(self) -> float:
        """The event loop's 99th-percentile lag over its window, seconds."""
        ...


class NodeNamer(Protocol):
    """Node ids <-> names (``agent.runtime.names.NodeNames``)."""

    def name_of(self, node_id: str | None) -> str | None: ...

    def resolve(self, id_or_name: str) -> str:
        """The node id meant by ``id_or_name``; ``TaskError`` if none."""
        ...


# ---------------------------------------------------------------- peers


class PeerSender(Protocol):
    """Sending to peers (``PeerRouter``): by node id, or back to an address."""

    def send_to_node(self, node_id: str, msg: object) -> None: ...

    def send_to_addr(self, addr: str, msg: object, reliable: bool = True) -> None: ...


class PeerDirectory(Protocol):
    """Where node ids live, and who hears of lost connections (the membership driver)."""

    def addr_of(self, node_id: str) -> str | None: ...

    def connection_lost(self, addr: str) -> None: ...

    def refused(self, addr: str) -> None:
        """A connect to ``addr`` was refused after its connection ended."""
        ...


class TrafficStats(Protocol):
    """The transport's counters, as the report shows them."""

    @property
    def datagrams_in(self) -> int: ...

    @property
    def stream_msgs_in(self) -> int: ...

    def as_dict(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------- keys and tasks


class KeyringPort(Protocol):
    """The cluster keyring (``agent.crypto.Keyring``) as the ``keys.*`` methods use it."""

    def list(self) -> list[KeyInfo]: ...

    def install(self, key: bytes) -> str: ...

    def use(self, kid: str) -> None: ...

    def remove(self, kid: str) -> None: ...


class TaskFigures(Protocol):
    """Task figures for the report (``TaskRuntime``)."""

    def decision_latencies(self) -> list[float]: ...

    def hotspots(self) -> list[str]: ...


class TaskHandlers(Protocol):
    """The ``task.*`` control methods (``TaskRuntime.handlers``)."""

    def compatible(
        self, propose: Callable[[bytes], Awaitable[ApplyResult]]
    ) -> Callable[[bytes], Awaitable[ApplyResult]]:
        """``propose`` that writes newer command kinds in older ones while the
        cluster runs mixed releases (``runtime/compat.py``)."""
        ...

    def handlers(
        self,
        commit: Callable[[bytes], Awaitable[ApplyResult]],
        read: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> dict[str, Handler]: ...
