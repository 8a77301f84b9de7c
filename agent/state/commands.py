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
import threading
import typing
from collections.abc import Callable
from typing import Any, Final

import msgpack

from agent.errors import ProtocolError
from agent.state.convert import DataclassConverter, bad_field, compile_converter, converter_for
from agent.state.limits import (  # re-exported (``__all__``): callers import them from here
    MAX_ARG_LEN,
    MAX_ARGV,
    MAX_ARTIFACTS,
    MAX_BATCH,
    MAX_BODY_BYTES,
    MAX_CAPS,
    MAX_COMMAND_BYTES,
    MAX_ENV,
    MAX_EXPIRE_KEYS,
    MAX_KEY_LEN,
    MAX_NAME_LEN,
    MAX_PLACEMENTS,
    MAX_PRIORITY,
    MAX_REPLICAS,
    MAX_RETRIES,
    MAX_RID_LEN,
    MAX_TARGETS,
    MAX_TASK_MEM,
    MAX_TASK_PIDS,
    MAX_TIMEOUT,
    MAX_TITLE_LEN,
    MAX_TTL_MS,
    MAX_VALUE_BYTES,
    MIN_TASK_MEM,
    PROPOSAL_KINDS,
    STRATEGIES,
    name_ok,
)
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
from agent.state.submit_rules import check_submit, submit_decodes_to_itself, usual_submit

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
    "submit_decodes_to_itself",
    "usual_put",
]



# ---------------------------------------------------------------- encoding

_AT: Final = compile_converter("at", float)
_isfinite: Final = math.isfinite
# Compiled once at import: per-entry reflection was most of the apply cost.
_BY_CLASS: Final[dict[type[Any], DataclassConverter]] = {
    cls: converter_for(cls) for cls in OPS.values()
}
_SUBMIT_CONV: Final = _BY_CLASS[TaskSubmit]
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
    body = usual_submit(mapping) if conv is _SUBMIT_CONV else None
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


def check(body: Op) -> str | None:
    """Bounds and cross-field rules of one op; a reason, or None when it is valid."""
    rules = _RULES.get(type(body))
    return rules(body) if rules is not None else None


def _check_kv(body: KvPut | KvDelete | KvCas) -> str | None:
    if not name_ok(body.ns):
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
    if not name_ok(body.ns):
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
    if body.id < 0 or body.eligible < 0 or not name_ok(body.voter):
        return "proposal id and eligible must be >= 0, voter non-empty"
    return None


def _check_node_register(body: NodeRegister) -> str | None:
    if not name_ok(body.node) or len(body.name) > MAX_NAME_LEN:
        return "node id must be non-empty and names bounded"
    return None


def _check_one_id(body: NodeDrain | NodeUndrain | TaskCancel | TaskLost) -> str | None:
    ident = body.task if isinstance(body, TaskCancel | TaskLost) else body.node
    if not name_ok(ident):
        return f"id must be 1-{MAX_NAME_LEN} characters"
    if isinstance(body, TaskLost) and len(body.reason) > MAX_NAME_LEN:
        return f"reason exceeds {MAX_NAME_LEN} characters"
    return None


def _check_task_move(body: TaskAssign | TaskStart | TaskFinish | TaskMigrate) -> str | None:
    node = body.to if isinstance(body, TaskMigrate) else body.node
    if not (name_ok(body.task) and name_ok(node)):
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
    if not 0 < nodes <= MAX_TARGETS or not all(name_ok(n) for n in body.nodes):
        return "node ids must be 1-256 characters"
    if not all(name_ok(t) for t in body.tasks):
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
    if not name_ok(body.node) or len(body.targets) > MAX_TARGETS:
        return "node id must be non-empty; targets bounded"
    return None


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
    TaskSubmit: check_submit,
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
