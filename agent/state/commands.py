"""Commands of the replicated state machine: typed, bounded, msgpack-encoded.

Theory of operation: every committed log entry is one command, a msgpack map
``{"op": str, "rid": str, "at": float, ...op fields}``.  ``rid`` is the
client's idempotency id ("" for none); ``at`` is the leader's wall clock when
it proposed the command -- the state machine never reads a clock, so every
replica computes the same state from the same log.

Each op is a frozen dataclass below; ``encode_command`` turns one into bytes
and ``decode_command`` validates every field against the dataclass's type
hints and its ``check()`` bounds, raising ``ProtocolError`` with one line.
A committed entry that fails validation is applied as a no-op with an error
result, identically on every replica.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from agent.errors import ProtocolError

MAX_COMMAND_BYTES = 4 * 1024 * 1024
"""Largest encoded command accepted."""
MAX_RID_LEN = 128
MAX_NAME_LEN = 256
"""Node ids and names, namespaces, capability tags, task ids, reasons."""
MAX_KEY_LEN = 1024
MAX_VALUE_BYTES = 1024 * 1024
MAX_TITLE_LEN = 200
MAX_BODY_BYTES = 64 * 1024
MAX_ARGV = 1024
MAX_ARG_LEN = 128 * 1024
MAX_ENV = 512
MAX_CAPS = 64
MAX_TARGETS = 100_000
MAX_PRIORITY = 1000
MAX_RETRIES = 100
MAX_TIMEOUT = 30 * 24 * 3600.0
MAX_REPLICAS = 16
STRATEGIES = ("auction", "capability", "hash")
PROPOSAL_KINDS = ("text", "config")


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


@dataclass(frozen=True, slots=True)
class TaskAssign:
    """Place a queued task; ``epoch`` must be the task's epoch + 1 (fences racing plans)."""

    OP: ClassVar[str] = "task.assign"
    task: str
    node: str
    epoch: int
    reason: str = ""


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
    | TaskStart
    | TaskFinish
    | TaskCancel
    | TaskMigrate
    | TaskLost
    | TaskFailNode
)

OPS: dict[str, type[Any]] = {
    cls.OP: cls
    for cls in (
        KvPut, KvDelete, KvCas, ProposalCreate, ProposalVote, NodeRegister, NodeDrain,
        NodeUndrain, TaskSubmit, TaskAssign, TaskStart, TaskFinish, TaskCancel, TaskMigrate,
        TaskLost, TaskFailNode,
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


# ---------------------------------------------------------------- encoding


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def encode_command(body: Op, rid: str, at: float) -> bytes:
    """The bytes to propose.  Validates first, so a bad command fails at the caller."""
    mapping = {"op": body.OP, "rid": rid, "at": float(at), **_plain(body)}
    data: bytes = msgpack.packb(mapping, use_bin_type=True)
    decode_command(data)
    return data


# ---------------------------------------------------------------- decoding


def _bad(name: str, reason: str) -> ProtocolError:
    return ProtocolError(f"bad command field {name}: {reason}")


def _convert(name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(name, inner, value)
    if origin is tuple:
        if not isinstance(value, list):
            raise _bad(name, "expected a list")
        item = typing.get_args(hint)[0]
        return tuple(_convert(f"{name}[]", item, v) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(name, "expected a map")
        key_hint, item_hint = typing.get_args(hint)
        return {
            _convert(f"{name} key", key_hint, k): _convert(f"{name}.{k}", item_hint, v)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _bad(name, "expected a map")
        return _build(name, typing.cast(type[Any], hint), value)
    if hint is float and type(value) is int:
        value = float(value)
    if hint is float and type(value) is float:
        if not math.isfinite(value):
            raise _bad(name, "must be finite")
        return value
    if hint in (int, str, bool, bytes) and type(value) is hint:
        return value
    raise _bad(name, f"expected {getattr(hint, '__name__', hint)}, got {type(value).__name__}")


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _build(prefix: str, cls: type[Any], mapping: dict[Any, Any]) -> Any:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = {
            k: v
            for k, v in typing.get_type_hints(cls).items()
            if typing.get_origin(v) is not ClassVar
        }
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in mapping:
            values[f.name] = _convert(f"{prefix}{f.name}", hints[f.name], mapping[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _bad(f"{prefix}{f.name}", "missing")
    unknown = set(mapping) - set(hints)
    if unknown:
        raise _bad(prefix + sorted(map(str, unknown))[0], "unknown field")
    return cls(**values)


def decode_command(data: bytes) -> Command:
    """Validate and decode one committed entry; raise ``ProtocolError`` if it is not a command."""
    if len(data) > MAX_COMMAND_BYTES:
        raise ProtocolError(f"command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        mapping = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"command is not msgpack: {type(exc).__name__}") from None
    if not isinstance(mapping, dict):
        raise ProtocolError("command is not a map")
    fields_ = dict(mapping)
    op = fields_.pop("op", None)
    rid = fields_.pop("rid", "")
    at = fields_.pop("at", None)
    if not isinstance(op, str) or op not in OPS:
        raise _bad("op", f"unknown op {op!r}")
    if not isinstance(rid, str) or len(rid) > MAX_RID_LEN:
        raise _bad("rid", f"must be a string of at most {MAX_RID_LEN} characters")
    at = _convert("at", float, at)
    body = _build("", OPS[op], fields_)
    reason = check(body)
    if reason is not None:
        raise ProtocolError(f"bad {op}: {reason}")
    return Command(body, rid, at)


# ---------------------------------------------------------------- bounds


def _name_ok(value: str) -> bool:
    return 0 < len(value) <= MAX_NAME_LEN


def check(body: Op) -> str | None:
    """Bounds and cross-field rules of one op; a reason, or None when it is valid."""
    match body:
        case KvPut() | KvDelete() | KvCas():
            if not _name_ok(body.ns):
                return f"namespace must be 1-{MAX_NAME_LEN} characters"
            if not 0 < len(body.key) <= MAX_KEY_LEN:
                return f"key must be 1-{MAX_KEY_LEN} characters"
            values = [getattr(body, "value", b""), getattr(body, "expected", None) or b""]
            if any(len(v) > MAX_VALUE_BYTES for v in values):
                return f"value exceeds {MAX_VALUE_BYTES} bytes"
        case ProposalCreate():
            if not 0.0 < body.threshold <= 1.0:
                return "threshold must be in (0, 1]"
            if len(body.title) > MAX_TITLE_LEN or len(body.body.encode()) > MAX_BODY_BYTES:
                return "title or body too long"
            if body.kind not in PROPOSAL_KINDS or body.eligible < 0:
                return f"kind must be one of {', '.join(PROPOSAL_KINDS)}; eligible >= 0"
        case ProposalVote():
            if body.id < 0 or body.eligible < 0 or not _name_ok(body.voter):
                return "proposal id and eligible must be >= 0, voter non-empty"
        case NodeRegister():
            if not _name_ok(body.node) or len(body.name) > MAX_NAME_LEN:
                return "node id must be non-empty and names bounded"
        case NodeDrain() | NodeUndrain() | TaskCancel() | TaskLost():
            ident = body.task if isinstance(body, TaskCancel | TaskLost) else body.node
            if not _name_ok(ident):
                return f"id must be 1-{MAX_NAME_LEN} characters"
            if isinstance(body, TaskLost) and len(body.reason) > MAX_NAME_LEN:
                return f"reason exceeds {MAX_NAME_LEN} characters"
        case TaskSubmit():
            return _check_submit(body)
        case TaskAssign() | TaskStart() | TaskFinish() | TaskMigrate():
            node = body.to if isinstance(body, TaskMigrate) else body.node
            if not (_name_ok(body.task) and _name_ok(node)):
                return "task and node ids must be 1-256 characters"
            epoch = body.epoch if body.epoch is not None else 0
            if epoch < 0:
                return "epoch must be >= 0"
            if isinstance(body, TaskAssign | TaskMigrate) and len(body.reason) > MAX_NAME_LEN:
                return f"reason exceeds {MAX_NAME_LEN} characters"
            if isinstance(body, TaskFinish):
                if len(body.replicas) > MAX_REPLICAS or body.stats.peak_rss < 0:
                    return "too many replicas or negative peak_rss"
                if body.stats.duration < 0 or body.stats.cpu_time < 0:
                    return "durations must be >= 0"
        case TaskFailNode():
            if not _name_ok(body.node) or len(body.targets) > MAX_TARGETS:
                return "node id must be non-empty; targets bounded"
    return None


def _check_submit(s: TaskSubmit) -> str | None:
    if (s.argv is None) == (s.shell is None):
        return "exactly one of argv and shell must be given"
    if s.argv is not None and not 0 < len(s.argv) <= MAX_ARGV:
        return f"argv must have 1-{MAX_ARGV} items"
    if s.argv is not None and any(len(a) > MAX_ARG_LEN for a in s.argv):
        return f"an argument exceeds {MAX_ARG_LEN} characters"
    if s.shell is not None and not 0 < len(s.shell) <= MAX_ARG_LEN:
        return f"shell command must be 1-{MAX_ARG_LEN} characters"
    if len(s.env) > MAX_ENV or any(not k or "=" in k or "\0" in k for k in s.env):
        return "env names must be non-empty without '=' or NUL, at most 512 of them"
    if len(s.caps) > MAX_CAPS or not all(_name_ok(c) for c in s.caps):
        return f"at most {MAX_CAPS} capabilities, each 1-{MAX_NAME_LEN} characters"
    if s.key is not None and not 0 < len(s.key) <= MAX_KEY_LEN:
        return f"key must be 1-{MAX_KEY_LEN} characters"
    if s.strategy not in STRATEGIES:
        return f"strategy must be one of {', '.join(STRATEGIES)}"
    if not -MAX_PRIORITY <= s.priority <= MAX_PRIORITY:
        return f"priority must be in [-{MAX_PRIORITY}, {MAX_PRIORITY}]"
    if not 0 <= s.retries <= MAX_RETRIES:
        return f"retries must be in [0, {MAX_RETRIES}]"
    if s.timeout is not None and not 0.0 < s.timeout <= MAX_TIMEOUT:
        return "timeout must be positive and at most 30 days"
    if len(s.submitter) > MAX_NAME_LEN or (s.cwd is not None and len(s.cwd) > 4096):
        return "submitter or cwd too long"
    return None
