"""Commands of the replicated state machine: typed, bounded, msgpack-encoded.

Theory of operation: every committed log entry is one command, a msgpack map
``{"op": str, "rid": str, "at": float, ...op fields}``.  ``rid`` is the
client's idempotency id ("" for none); ``at`` is the leader's wall clock when
it proposed the command -- the state machine never reads a clock, so every
replica computes the same state from the same log.

Each op is a frozen dataclass below; ``encode_command`` validates its fields
and turns it into bytes, and ``decode_command`` validates every field against
the dataclass's type hints and its ``check()`` bounds, raising
``ProtocolError`` with one line.  Both use converters compiled once per class
(``agent.state.convert``); encoding checks the inputs instead of decoding
what it just encoded.
A committed entry that fails validation is applied as a no-op with an error
result, identically on every replica.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import threading
import typing
from collections.abc import Callable
from typing import Any, Final

import msgpack

from agent.errors import ProtocolError
from agent.output_store import artifact_refusal
from agent.state.convert import DataclassConverter, bad_field, compile_converter, converter_for
from agent.state.ops import (  # the op dataclasses; re-exported: callers import them from here
    OPS,
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
    Op,
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
    TaskStats,
    TaskSubmit,
)

__all__ = [
    "MAX_ARGV",
    "MAX_ARG_LEN",
    "MAX_ARTIFACTS",
    "MAX_BATCH",
    "MAX_BODY_BYTES",
    "MAX_CAPS",
    "MAX_COMMAND_BYTES",
    "MAX_ENV",
    "MAX_EXPIRE_KEYS",
    "MAX_KEY_LEN",
    "MAX_NAME_LEN",
    "MAX_PLACEMENTS",
    "MAX_PRIORITY",
    "MAX_REPLICAS",
    "MAX_RETRIES",
    "MAX_RID_LEN",
    "MAX_TARGETS",
    "MAX_TASK_MEM",
    "MAX_TASK_PIDS",
    "MAX_TIMEOUT",
    "MAX_TITLE_LEN",
    "MAX_TTL_MS",
    "MAX_VALUE_BYTES",
    "MIN_TASK_MEM",
    "OPS",
    "PROPOSAL_KINDS",
    "STRATEGIES",
    "Batch",
    "Command",
    "KvCas",
    "KvDelete",
    "KvExpire",
    "KvPut",
    "KvPutTtl",
    "KvPuts",
    "NodeDrain",
    "NodeRegister",
    "NodeUndrain",
    "Op",
    "ProposalCreate",
    "ProposalVote",
    "PutRow",
    "TaskAssign",
    "TaskCancel",
    "TaskFailNode",
    "TaskFinish",
    "TaskLost",
    "TaskMigrate",
    "TaskPlace",
    "TaskStart",
    "TaskStats",
    "TaskSubmit",
    "check",
    "decode_command",
    "encode_command",
    "encode_command_decoded",
    "encode_puts",
    "put_item",
    "row_command",
    "usual_put",
]

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
MAX_BATCH = 1024
"""Commands one ``batch`` entry may carry."""
MAX_PLACEMENTS = 4096
"""Placements one ``task.place`` entry may carry (a scheduling round proposes at
most ``MAX_DECISIONS_PER_ROUND``, 1024, of them)."""
MAX_PRIORITY = 1000
MAX_RETRIES = 100
MAX_TIMEOUT = 30 * 24 * 3600.0
MAX_REPLICAS = 16
MAX_ARTIFACTS = 32
"""Artifact paths one task may name."""
MIN_TASK_MEM = 1 << 20
"""Smallest memory limit a task may ask for (bytes): below it nothing starts."""
MAX_TASK_MEM = 1 << 60
"""Largest memory limit (bytes); cgroup files take up to 2**63 - 1."""
MAX_TASK_PIDS = 4 * 1024 * 1024
"""Largest pids limit (the kernel's PID_MAX_LIMIT)."""
MAX_TTL_MS = 365 * 24 * 3600 * 1000
"""Longest KV TTL (milliseconds): a year; longer lived keys need no TTL."""
MAX_EXPIRE_KEYS = 1000
"""Keys one ``kv.expire`` entry may remove (the leader batches what is due)."""
STRATEGIES = ("auction", "capability", "hash")
PROPOSAL_KINDS = ("text", "config")


# ---------------------------------------------------------------- encoding

_AT: Final = compile_converter("at", float)
_isfinite: Final = math.isfinite
# Compiled once at import: per-entry reflection was most of the apply cost.
_BY_CLASS: Final[dict[type[Any], DataclassConverter]] = {
    cls: converter_for(cls) for cls in OPS.values()
}
_BY_OP: Final[dict[str, DataclassConverter]] = {op: _BY_CLASS[cls] for op, cls in OPS.items()}


_PACKER: Final = msgpack.Packer(use_bin_type=True)
"""``encode_command``'s packer on the thread that imported this module (the event
loop's): ``msgpack.packb`` builds a Packer per call (~0.4 us a write); a Packer
resets its buffer when a pack fails.  Other threads use ``packb``."""
_PACKER_THREAD: Final = threading.get_ident()


def _check_rid(rid: Any) -> None:
    if type(rid) is not str or len(rid) > MAX_RID_LEN:
        raise bad_field("rid", f"must be a string of at most {MAX_RID_LEN} characters")


def encode_command(body: Op, rid: str, at: float) -> bytes:
    """The bytes to propose.  Validates the inputs first (the same field converters
    and ``check`` bounds ``decode_command`` applies), so a bad command fails at the
    caller and what is appended always decodes."""
    conv = _BY_CLASS.get(type(body))
    if conv is None:
        raise ProtocolError(f"not a command: {type(body).__name__}")
    _check_rid(rid)
    if type(at) is not float or not _isfinite(at):  # the usual float needs no converter call
        at = _AT(float(at))
    conv.validate(body)
    reason = check(body)
    if reason is not None:
        raise ProtocolError(f"bad {body.OP}: {reason}")
    mapping = conv.to_plain(body, {"op": body.OP, "rid": rid, "at": at})
    if threading.get_ident() == _PACKER_THREAD:  # see _PACKER
        data: bytes = _PACKER.pack(mapping)
    else:
        data = msgpack.packb(mapping, use_bin_type=True)
    if len(data) > MAX_COMMAND_BYTES:
        raise ProtocolError(f"command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}")
    return data


def _decodes_to_itself(cls: type[Any]) -> bool:
    """Do all fields hold scalars that decoding returns unchanged (no float from an
    int, no tuple from a list, no nested map)?  Then a validated body is exactly
    what ``decode_command`` would rebuild from its bytes."""
    exact = (str, bytes, int, bool, str | None, bytes | None, int | None)
    hints = typing.get_type_hints(cls)
    return all(hints[f.name] in exact for f in dataclasses.fields(cls))


_EXACT: Final = frozenset(cls for cls in OPS.values() if _decodes_to_itself(cls))


def encode_command_decoded(body: Op, rid: str, at: float) -> tuple[bytes, Command | None]:
    """``encode_command`` plus, for ops whose fields decode to themselves (the KV
    writes, and a ``batch`` whose ``cmds`` is a tuple: its list decodes to an equal
    tuple of the same bytes), the ``Command`` its bytes decode to: the proposing
    leader applies that instead of decoding the entry it just encoded."""
    data = encode_command(body, rid, at)
    exact = type(body) in _EXACT or (type(body) is Batch and type(body.cmds) is tuple)
    return data, Command(body, rid, float(at)) if exact else None


PutRow = tuple[str, float, str, str, bytes]
"""A usual put (``usual_put``) as its fields ``(rid, at, ns, key, value)``: one row
of a ``kv.puts`` entry's columns, without its ``KvPut`` and ``Command`` objects
(a leader's ``kv.put`` is queued as one; ``row_command`` makes its ``Command``)."""


def row_command(row: PutRow) -> Command:
    """The ``Command`` a put row stands for (``put_item``'s for that row)."""
    rid, at, ns, key, value = row
    return Command(KvPut(ns, key, value), rid, at)


def encode_puts(parts: typing.Sequence[Command | PutRow], at: float) -> tuple[bytes, Command]:
    """A ``kv.puts`` entry carrying ``parts`` (each a ``KvPut`` command, as the
    handlers decoded it, or a usual put's ``PutRow``) and the ``Command`` it decodes
    to: the compact form of a ``batch`` of those commands' bytes (``KvPuts``)."""
    rows = [
        p if type(p) is tuple
        else (p.rid, p.at, p.body.ns, p.body.key, p.body.value)  # type: ignore[union-attr]
        for p in parts
    ]
    columns = tuple(zip(*rows, strict=True)) or ((), (), (), (), ())  # in one pass
    body = KvPuts(*columns)
    return encode_command(body, "", at), Command(body, "", float(at))


def put_command(ns: str, key: str, value: bytes, rid: str, at: float) -> Command:
    """What ``encode_command_decoded(KvPut(ns, key, value), rid, at)`` returns as its
    ``Command``, without packing the bytes: a leader's ``kv.put`` that goes out in a
    ``kv.puts`` entry never needs its own (``encode_command(c.body, c.rid, c.at)``
    makes them, the same bytes, when it does).  A usual put (``usual_put``) is
    valid as it is; any other takes ``encode_command``'s checks: the same refusals."""
    if usual_put(rid, at, ns, key, value):
        return Command(KvPut(ns, key, value), rid, at)
    decoded = encode_command_decoded(KvPut(ns, key, value), rid, at)[1]
    assert decoded is not None  # a KvPut decodes to itself (_EXACT)
    return decoded


def usual_put(rid: Any, at: Any, ns: Any, key: Any, value: Any) -> bool:
    """Whether a ``kv.puts`` item is the usual one: every value of its exact type and
    inside its bounds (``_check_kv``'s), so it is ``KvPut(ns, key, value)`` with
    ``rid`` and ``at`` as they are (``put_item`` decodes any other)."""
    return (
        type(rid) is str
        and len(rid) <= MAX_RID_LEN
        and type(at) is float
        and _isfinite(at)
        and type(ns) is str
        and 0 < len(ns) <= MAX_NAME_LEN
        and type(key) is str
        and 0 < len(key) <= MAX_KEY_LEN
        and type(value) is bytes
        and len(value) <= MAX_VALUE_BYTES
    )


def put_item(body: KvPuts, i: int) -> Command:
    """Item ``i`` of a ``kv.puts`` entry as the ``Command`` a ``batch`` item's bytes
    would decode to, or ``ProtocolError`` with the text decoding those bytes gives."""
    rid, at, ns, key, value = body.rids[i], body.ats[i], body.ns[i], body.keys[i], body.values[i]
    if usual_put(rid, at, ns, key, value):
        return Command(KvPut(ns, key, value), rid, at)
    # Otherwise decode the item as the command of its own it stands for: the same
    # conversions (an int at) and the same refusal text as inside a ``batch``.
    item = {"op": KvPut.OP, "rid": rid, "at": at, "ns": ns, "key": key, "value": value}
    return decode_command(msgpack.packb(item, use_bin_type=True))


# ---------------------------------------------------------------- decoding


def decode_command(data: bytes) -> Command:
    """Validate and decode one committed entry; raise ``ProtocolError`` if it is not a command."""
    if len(data) > MAX_COMMAND_BYTES:
        raise ProtocolError(f"command of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        mapping = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"command is not msgpack: {type(exc).__name__}") from None
    if type(mapping) is not dict:
        raise ProtocolError("command is not a map")
    # The map is ours to consume: msgpack built it for this call alone.
    op = mapping.pop("op", None)
    rid = mapping.pop("rid", "")
    at = mapping.pop("at", None)
    conv = _BY_OP.get(op) if type(op) is str else None
    if conv is None:
        raise bad_field("op", f"unknown op {op!r}")
    if type(rid) is not str or len(rid) > MAX_RID_LEN:
        _check_rid(rid)
    if type(at) is not float or not _isfinite(at):
        at = _AT(at)  # an int becomes a float; anything else is refused
    body = _usual_submit(mapping) if conv is _SUBMIT_CONV else None
    if body is None:
        body = conv.build(mapping)
    reason = check(body)
    if reason is not None:
        raise ProtocolError(f"bad {op}: {reason}")
    return Command(body, rid, at)


# ---------------------------------------------------------------- bounds
# One rule function per op, looked up by the body's exact class (``_RULES``): a
# dict lookup instead of walking a ``match`` of sixteen class patterns, and each
# op's rules read on their own.


def _name_ok(value: str) -> bool:
    return 0 < len(value) <= MAX_NAME_LEN


def check(body: Op) -> str | None:
    """Bounds and cross-field rules of one op; a reason, or None when it is valid."""
    rules = _RULES.get(type(body))
    return rules(body) if rules is not None else None


def _check_kv(body: KvPut | KvDelete | KvCas) -> str | None:
    if not _name_ok(body.ns):
        return f"namespace must be 1-{MAX_NAME_LEN} characters"
    if not 0 < len(body.key) <= MAX_KEY_LEN:
        return f"key must be 1-{MAX_KEY_LEN} characters"
    # Plain comparisons: this runs for every KV write on every node.
    if not isinstance(body, KvDelete) and len(body.value) > MAX_VALUE_BYTES:
        return f"value exceeds {MAX_VALUE_BYTES} bytes"
    if isinstance(body, KvCas) and len(body.expected or b"") > MAX_VALUE_BYTES:
        return f"value exceeds {MAX_VALUE_BYTES} bytes"
    return None


def _check_kv_ttl(body: KvPutTtl) -> str | None:
    if not 0 < body.ttl_ms <= MAX_TTL_MS:
        return f"ttl must be 1 ms to {MAX_TTL_MS // 86_400_000} days"
    return _check_kv(KvPut(body.ns, body.key, body.value))


def _check_kv_expire(body: KvExpire) -> str | None:
    if not _name_ok(body.ns):
        return f"namespace must be 1-{MAX_NAME_LEN} characters"
    if not 0 < len(body.keys) <= MAX_EXPIRE_KEYS:
        return f"1-{MAX_EXPIRE_KEYS} keys per expire"
    if not all(0 < len(k) <= MAX_KEY_LEN for k in body.keys):
        return f"key must be 1-{MAX_KEY_LEN} characters"
    return None


def _check_proposal_create(body: ProposalCreate) -> str | None:
    if not 0.0 < body.threshold <= 1.0:
        return "threshold must be in (0, 1]"
    if len(body.title) > MAX_TITLE_LEN or len(body.body.encode()) > MAX_BODY_BYTES:
        return "title or body too long"
    if body.kind not in PROPOSAL_KINDS or body.eligible < 0:
        return f"kind must be one of {', '.join(PROPOSAL_KINDS)}; eligible >= 0"
    return None


def _check_proposal_vote(body: ProposalVote) -> str | None:
    if body.id < 0 or body.eligible < 0 or not _name_ok(body.voter):
        return "proposal id and eligible must be >= 0, voter non-empty"
    return None


def _check_node_register(body: NodeRegister) -> str | None:
    if not _name_ok(body.node) or len(body.name) > MAX_NAME_LEN:
        return "node id must be non-empty and names bounded"
    return None


def _check_one_id(body: NodeDrain | NodeUndrain | TaskCancel | TaskLost) -> str | None:
    ident = body.task if isinstance(body, TaskCancel | TaskLost) else body.node
    if not _name_ok(ident):
        return f"id must be 1-{MAX_NAME_LEN} characters"
    if isinstance(body, TaskLost) and len(body.reason) > MAX_NAME_LEN:
        return f"reason exceeds {MAX_NAME_LEN} characters"
    return None


def _check_task_move(body: TaskAssign | TaskStart | TaskFinish | TaskMigrate) -> str | None:
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
    return None


def _check_place(body: TaskPlace) -> str | None:
    count, nodes = len(body.tasks), len(body.nodes)
    if not 0 < count <= MAX_PLACEMENTS or len(body.hosts) != count or len(body.epochs) != count:
        return f"1-{MAX_PLACEMENTS} placements, as many hosts and epochs as tasks"
    if not 0 < nodes <= MAX_TARGETS or not all(_name_ok(n) for n in body.nodes):
        return "node ids must be 1-256 characters"
    if not all(_name_ok(t) for t in body.tasks):
        return "task ids must be 1-256 characters"
    if min(body.hosts) < 0 or max(body.hosts) >= nodes or min(body.epochs) < 0:
        return "host indexes must name a node; epochs must be >= 0"
    return None


def _check_batch(body: Batch) -> str | None:
    if not 0 < len(body.cmds) <= MAX_BATCH:
        return f"1-{MAX_BATCH} commands per batch"
    return None


def _check_puts(body: KvPuts) -> str | None:
    count = len(body.rids)
    if not 0 < count <= MAX_BATCH:
        return f"1-{MAX_BATCH} puts per kv.puts"
    if not len(body.ats) == len(body.ns) == len(body.keys) == len(body.values) == count:
        return "as many ats, namespaces, keys and values as rids"
    return None


def _check_fail_node(body: TaskFailNode) -> str | None:
    if not _name_ok(body.node) or len(body.targets) > MAX_TARGETS:
        return "node id must be non-empty; targets bounded"
    return None


_SUBMIT_RULES: Final[tuple[tuple[Callable[[TaskSubmit], bool], str], ...]] = (
    # (is broken, why), checked in order: the first broken rule is the reason.
    (lambda s: (s.argv is None) == (s.shell is None),
     "exactly one of argv and shell must be given"),
    (lambda s: s.argv is not None and not 0 < len(s.argv) <= MAX_ARGV,
     f"argv must have 1-{MAX_ARGV} items"),
    (lambda s: s.argv is not None and any(len(a) > MAX_ARG_LEN for a in s.argv),
     f"an argument exceeds {MAX_ARG_LEN} characters"),
    (lambda s: s.shell is not None and not 0 < len(s.shell) <= MAX_ARG_LEN,
     f"shell command must be 1-{MAX_ARG_LEN} characters"),
    (lambda s: len(s.env) > MAX_ENV or any(not k or "=" in k or "\0" in k for k in s.env),
     "env names must be non-empty without '=' or NUL, at most 512 of them"),
    (lambda s: len(s.caps) > MAX_CAPS or not all(_name_ok(c) for c in s.caps),
     f"at most {MAX_CAPS} capabilities, each 1-{MAX_NAME_LEN} characters"),
    (lambda s: s.key is not None and not 0 < len(s.key) <= MAX_KEY_LEN,
     f"key must be 1-{MAX_KEY_LEN} characters"),
    (lambda s: s.strategy not in STRATEGIES,
     f"strategy must be one of {', '.join(STRATEGIES)}"),
    (lambda s: not -MAX_PRIORITY <= s.priority <= MAX_PRIORITY,
     f"priority must be in [-{MAX_PRIORITY}, {MAX_PRIORITY}]"),
    (lambda s: not 0 <= s.retries <= MAX_RETRIES,
     f"retries must be in [0, {MAX_RETRIES}]"),
    (lambda s: s.timeout is not None and not 0.0 < s.timeout <= MAX_TIMEOUT,
     "timeout must be positive and at most 30 days"),
    (lambda s: len(s.submitter) > MAX_NAME_LEN or (s.cwd is not None and len(s.cwd) > 4096),
     "submitter or cwd too long"),
    (lambda s: s.mem != 0 and not MIN_TASK_MEM <= s.mem <= MAX_TASK_MEM,
     f"mem must be 0 (no limit) or {MIN_TASK_MEM} to {MAX_TASK_MEM} bytes"),
    (lambda s: not 0 <= s.pids <= MAX_TASK_PIDS,
     f"pids must be 0 (no limit) to {MAX_TASK_PIDS}"),
    (lambda s: len(s.artifacts) > MAX_ARTIFACTS,
     f"at most {MAX_ARTIFACTS} artifacts"),
)  # fmt: skip


def _submit_ok(s: TaskSubmit) -> bool:
    """No rule of ``_SUBMIT_RULES`` broken and no artifact to check: the usual submit,
    in one pass (every node checks every submit; the rules' loop costs a call per
    rule).  False says nothing: the rules decide, and name the reason."""
    argv, shell = s.argv, s.shell
    if argv is not None:
        if shell is not None or not 0 < len(argv) <= MAX_ARGV or max(map(len, argv)) > MAX_ARG_LEN:
            return False
    elif shell is None or not 0 < len(shell) <= MAX_ARG_LEN:
        return False
    return _submit_texts_ok(s) and _submit_numbers_ok(s)


def _submit_texts_ok(s: TaskSubmit) -> bool:
    env, caps, key, cwd = s.env, s.caps, s.key, s.cwd
    return (
        (not env or (len(env) <= MAX_ENV and all(k and "=" not in k and "\0" not in k for k in env)))
        and (not caps or (len(caps) <= MAX_CAPS and all(0 < len(c) <= MAX_NAME_LEN for c in caps)))
        and (key is None or 0 < len(key) <= MAX_KEY_LEN)
        and s.strategy in STRATEGIES
        and len(s.submitter) <= MAX_NAME_LEN
        and (cwd is None or len(cwd) <= 4096)
        and not s.artifacts
    )


def _submit_numbers_ok(s: TaskSubmit) -> bool:
    timeout, mem = s.timeout, s.mem
    return (
        -MAX_PRIORITY <= s.priority <= MAX_PRIORITY
        and 0 <= s.retries <= MAX_RETRIES
        and (timeout is None or 0.0 < timeout <= MAX_TIMEOUT)
        and (mem == 0 or MIN_TASK_MEM <= mem <= MAX_TASK_MEM)
        and 0 <= s.pids <= MAX_TASK_PIDS
    )


def _check_submit(s: TaskSubmit) -> str | None:
    return None if _submit_ok(s) else _rules_refusal(s)


def _rules_refusal(s: TaskSubmit) -> str | None:
    """The first of ``_SUBMIT_RULES`` (then the artifact names) ``s`` breaks: the rule
    walk that names the reason, which ``_submit_ok`` skips for a usual submit."""
    for broken, reason in _SUBMIT_RULES:
        if broken(s):
            return reason
    for name in s.artifacts:
        refusal = artifact_refusal(name)
        if refusal is not None:
            return refusal
    return None


def _strs(items: Any) -> bool:
    return type(items) is tuple and all(type(item) is str for item in items)


def _str_or_none(value: Any) -> bool:
    return value is None or type(value) is str


def submit_decodes_to_itself(s: TaskSubmit) -> bool:
    """Is ``s`` exactly what ``decode_command`` rebuilds from its bytes: every field
    of its declared type exactly (a tuple of str, a dict of str to str, a float
    timeout, a bool, ints), so the leader that encoded it may apply ``s`` itself
    instead of decoding its entry, and its state (and snapshots) stay byte for byte
    the followers'.  ``==`` cannot decide this: ``1 == 1.0 == True``, and a str
    subclass equals its str.  Valid only for a body ``encode_command`` accepted."""
    return (
        (s.argv is None or _strs(s.argv))
        and _str_or_none(s.shell)
        and type(s.env) is dict
        and all(type(k) is str and type(v) is str for k, v in s.env.items())
        and _str_or_none(s.cwd)
        and _strs(s.caps)
        and _str_or_none(s.key)
        and type(s.strategy) is str
        and type(s.priority) is int
        and type(s.retries) is int
        and (s.timeout is None or type(s.timeout) is float)
        and type(s.restartable) is bool
        and type(s.submitter) is str
        and type(s.mem) is int
        and type(s.pids) is int
        and _strs(s.artifacts)
    )


_SUBMIT_FIELDS: Final = (
    "argv", "shell", "env", "cwd", "caps", "key", "strategy", "priority", "retries",
    "timeout", "restartable", "submitter", "mem", "pids", "artifacts",
)  # fmt: skip
"""The fields ``submit_decodes_to_itself`` checks (a new field must be added there)."""
if tuple(f.name for f in dataclasses.fields(TaskSubmit)) != _SUBMIT_FIELDS:
    raise RuntimeError("TaskSubmit's fields changed: update submit_decodes_to_itself")

_SUBMIT_CONV: Final = _BY_CLASS[TaskSubmit]
_submit_values: Final = operator.itemgetter(*_SUBMIT_FIELDS)


def _wire_strs(
    argv: Any, shell: Any, cwd: Any, key: Any, strategy: Any, submitter: Any,
    env: Any, caps: Any, artifacts: Any,
) -> bool:
    """``_usual_submit``'s texts: each of its usual wire type."""
    return (
        (argv is None or (type(argv) is list and all(type(a) is str for a in argv)))
        and (shell is None or type(shell) is str)
        and (cwd is None or type(cwd) is str)
        and (key is None or type(key) is str)
        and type(strategy) is str
        and type(submitter) is str
        and type(env) is dict
        and all(type(k) is str and type(v) is str for k, v in env.items())
        and _str_list(caps)
        and _str_list(artifacts)
    )


def _str_list(items: Any) -> bool:
    return type(items) is list and all(type(item) is str for item in items)


def _usual_submit(m: dict[Any, Any]) -> TaskSubmit | None:
    """The ``TaskSubmit`` a decoded map of its fields stands for when every value has
    its usual wire type (str or None, lists of str, a map of str to str, ints, a
    bool, a finite float or None): what ``_SUBMIT_CONV.build`` makes of it, without
    a converter call per field (every node decodes every submit).  None: the
    converters decide, and name what is wrong."""
    if len(m) != len(_SUBMIT_FIELDS):
        return None
    try:
        (argv, shell, env, cwd, caps, key, strategy, priority, retries, timeout,
         restartable, submitter, mem, pids, artifacts) = _submit_values(m)  # fmt: skip
    except KeyError:
        return None
    if not (
        _wire_strs(argv, shell, cwd, key, strategy, submitter, env, caps, artifacts)
        and type(priority) is int
        and type(retries) is int
        and (timeout is None or (type(timeout) is float and _isfinite(timeout)))
        and type(restartable) is bool
        and type(mem) is int
        and type(pids) is int
    ):
        return None
    return TaskSubmit(
        None if argv is None else tuple(argv), shell, env, cwd, tuple(caps), key, strategy,
        priority, retries, timeout, restartable, submitter, mem, pids, tuple(artifacts),
    )


_RULES: Final[dict[type[Any], Callable[[Any], str | None]]] = {
    KvPut: _check_kv,
    KvDelete: _check_kv,
    KvCas: _check_kv,
    ProposalCreate: _check_proposal_create,
    ProposalVote: _check_proposal_vote,
    NodeRegister: _check_node_register,
    NodeDrain: _check_one_id,
    NodeUndrain: _check_one_id,
    TaskCancel: _check_one_id,
    TaskLost: _check_one_id,
    TaskSubmit: _check_submit,
    TaskAssign: _check_task_move,
    TaskPlace: _check_place,
    Batch: _check_batch,
    KvPuts: _check_puts,
    TaskStart: _check_task_move,
    TaskFinish: _check_task_move,
    TaskMigrate: _check_task_move,
    TaskFailNode: _check_fail_node,
    KvPutTtl: _check_kv_ttl,
    KvExpire: _check_kv_expire,
}
"""Each op's rule function; every class of ``OPS`` has one (checked at import)."""
if set(_RULES) != set(OPS.values()):  # a new op without rules would pass unchecked
    raise RuntimeError(f"ops without bounds rules: {set(OPS.values()) - set(_RULES)}")
