"""The ops of the replicated state machine: one frozen dataclass per command kind.

A committed log entry is one ``Command``: an op (below), the client's ``rid`` and
the leader's clock ``at``.  How they are encoded, decoded and bounded is
``agent.state.commands`` (which re-exports every name here); how each is applied
is ``agent.state.machine``.  Fields are only ever appended, with defaults, so an
older replica decodes a newer command's known fields; a new op kind needs the
compat gate (``agent/runtime/compat.py``) before a leader may propose it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class KvPut:
    OP: ClassVar[str] = "kv.put"
    ns: str
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class KvDelete:
    OP: ClassVar[str] = "kv.delete"
    ns: str
    key: str


@dataclass(frozen=True, slots=True)
class KvCas:
    """Set ``value`` only if the current value is ``expected`` (None: key absent)."""

    OP: ClassVar[str] = "kv.cas"
    ns: str
    key: str
    expected: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class KvPutTtl:
    """Set ``value`` that expires ``ttl_ms`` after the command's ``at`` (the proposer's
    clock, the same instant on every replica); the leader commits a ``KvExpire`` then."""

    OP: ClassVar[str] = "kv.put_ttl"
    ns: str
    key: str
    value: bytes
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class KvExpire:
    """The leader's clock passed these keys' expiry: remove those still due at ``at``."""

    OP: ClassVar[str] = "kv.expire"
    ns: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProposalCreate:
    OP: ClassVar[str] = "proposal.create"
    title: str
    body: str
    proposer: str
    threshold: float = 0.67
    kind: str = "text"
    eligible: int = 0
    """Voting members when proposed; 0: the number of registered nodes."""


@dataclass(frozen=True, slots=True)
class ProposalVote:
    OP: ClassVar[str] = "proposal.vote"
    id: int
    voter: str
    approve: bool
    eligible: int = 0
    """Voting members now; 0 keeps the proposal's count."""


@dataclass(frozen=True, slots=True)
class NodeRegister:
    OP: ClassVar[str] = "node.register"
    node: str
    name: str


@dataclass(frozen=True, slots=True)
class NodeDrain:
    OP: ClassVar[str] = "node.drain"
    node: str
    """Node id or name."""


@dataclass(frozen=True, slots=True)
class NodeUndrain:
    OP: ClassVar[str] = "node.undrain"
    node: str


@dataclass(frozen=True, slots=True)
class TaskSubmit:
    """A new task.  Exactly one of ``argv`` and ``shell`` is set."""

    OP: ClassVar[str] = "task.submit"
    argv: tuple[str, ...] | None = None
    shell: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    caps: tuple[str, ...] = ()
    key: str | None = None
    strategy: str = "auction"
    priority: int = 0
    retries: int = 2
    """Extra attempts after the first (a failed run or a lost host each use one)."""
    timeout: float | None = None
    restartable: bool = False
    submitter: str = ""
    mem: int = 0
    """Memory limit of the run's cgroup, bytes; 0 = none.  A host without the
    memory controller refuses the task rather than run it unlimited."""
    pids: int = 0
    """Process (and thread) limit of the run's cgroup; 0 = none.  Same refusal."""
    artifacts: tuple[str, ...] = ()
    """Files collected from the run's working directory when it ends (relative
    paths; ``agent/output_store.py``'s ``artifact_refusal`` says what is refused)."""


@dataclass(frozen=True, slots=True)
class TaskAssign:
    """Place a queued task; ``epoch`` must be the task's epoch + 1 (fences racing plans)."""

    OP: ClassVar[str] = "task.assign"
    task: str
    node: str
    epoch: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TaskPlace:
    """A scheduling round's placements in one entry: ``tasks[i]`` goes to
    ``nodes[hosts[i]]`` at epoch ``epochs[i]``.  Each item is applied as a
    ``task.assign`` of its own would be (fenced on the task's epoch + 1, refused
    for a draining host); a refused item leaves the others applied.  One entry
    instead of one per decision: one Raft append, one fsync share, one decode
    and one apply pass for the whole round, and the node ids written once."""

    OP: ClassVar[str] = "task.place"
    nodes: tuple[str, ...]
    tasks: tuple[str, ...]
    hosts: tuple[int, ...]
    """Index into ``nodes``, per task."""
    epochs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """Several encoded commands in one entry (the control API's task writes that
    arrive together, ``runtime/sched_submit.py``): each is applied exactly as an
    entry of its own would be -- its own rid, result and events -- in order; one
    Raft append, fsync share and replication message for all of them.  A batch
    inside a batch is refused (as that item's result)."""

    OP: ClassVar[str] = "batch"
    cmds: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class KvPuts:
    """A group-commit batch of ``kv.put`` commands as arrays (release 0.3.0): item
    ``i`` is ``Command(KvPut(ns[i], keys[i], values[i]), rids[i], ats[i])``, applied
    exactly as a ``batch`` carrying that command's own bytes would apply it -- its
    own rid, result row and refusal -- but decoded in one unpack, without a map
    and a ``Command`` per put.  The items are checked one by one when applied (a
    bad one is refused as that item's row, with the error its own entry would
    get), so the fields hold any value here; only the arrays' shape is the
    entry's.  Proposed only by the leader's group commit, once every member
    applies it (``runtime/compat.py``)."""

    OP: ClassVar[str] = "kv.puts"
    rids: tuple[Any, ...]
    ats: tuple[Any, ...]
    ns: tuple[Any, ...]
    keys: tuple[Any, ...]
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class TaskStart:
    OP: ClassVar[str] = "task.start"
    task: str
    node: str
    epoch: int


@dataclass(frozen=True, slots=True)
class TaskStats:
    """What the executor measured (psutil)."""

    duration: float = 0.0
    """Wall-clock seconds the process ran."""
    cpu_time: float = 0.0
    """User + system CPU seconds of the process group."""
    peak_rss: int = 0
    """Bytes."""
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class TaskFinish:
    OP: ClassVar[str] = "task.finish"
    task: str
    node: str
    epoch: int
    exit_code: int
    stats: TaskStats = field(default_factory=TaskStats)
    replicas: tuple[str, ...] = ()
    """Node ids holding a copy of the output."""


@dataclass(frozen=True, slots=True)
class TaskCancel:
    OP: ClassVar[str] = "task.cancel"
    task: str


@dataclass(frozen=True, slots=True)
class TaskMigrate:
    """Move a task (queued, assigned, or running if restartable) to ``to`` with epoch + 1."""

    OP: ClassVar[str] = "task.migrate"
    task: str
    to: str
    reason: str
    epoch: int | None = None
    """The epoch the move was planned against; a different current epoch → "stale epoch"."""


@dataclass(frozen=True, slots=True)
class TaskLost:
    OP: ClassVar[str] = "task.lost"
    task: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TaskFailNode:
    """A host is confirmed dead: its tasks go to ``targets`` (task → node) with epoch + 1,
    or back to the queue, or are lost when their attempts are used up."""

    OP: ClassVar[str] = "task.fail_node"
    node: str
    targets: dict[str, str] = field(default_factory=dict)


Op = (
    KvPut
    | KvDelete
    | KvCas
    | ProposalCreate
    | ProposalVote
    | NodeRegister
    | NodeDrain
    | NodeUndrain
    | TaskSubmit
    | TaskAssign
    | TaskPlace
    | Batch
    | KvPuts
    | TaskStart
    | TaskFinish
    | TaskCancel
    | TaskMigrate
    | TaskLost
    | TaskFailNode
    | KvPutTtl
    | KvExpire
)

OPS: dict[str, type[Any]] = {
    cls.OP: cls
    for cls in (
        KvPut, KvDelete, KvCas, ProposalCreate, ProposalVote, NodeRegister, NodeDrain,
        NodeUndrain, TaskSubmit, TaskAssign, TaskStart, TaskFinish, TaskCancel, TaskMigrate,
        TaskLost, TaskFailNode, KvPutTtl, KvExpire, TaskPlace, Batch, KvPuts,
    )
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Command:
    """A decoded command: the op, its idempotency id and the leader's time."""

    body: Op
    rid: str
    at: float

    @property
    def op(self) -> str:
        return self.body.OP
