"""Peer messages of task output and artifact replication (issue 17).

Items are named ``(task id, epoch, name)`` with ``name`` ``out``, ``err`` or
``a:<artifact path>``.  A holder pushes ``ReplicaChunk`` to each host of the
item's preference list and the host answers ``ReplicaAck`` with how much it
holds; reads go ``ReplicaRead`` -> ``ReplicaData``; ``ReplicaListRequest`` ->
``ReplicaList`` names the items a host holds for a task; ``ReplicaPrune``
asks a host to drop finished items older than a time.  See
``agent/runtime/replication.py`` for the protocol.

Numbers 140-149 (docs/internals.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EmptyItem:
    """An item, complete and empty with no error, carried by another's chunk."""

    task_id: str
    epoch: int
    name: str
    ring_key: str
    finished_at: float


@dataclass(frozen=True, slots=True)
class ItemRef:
    """An item named in an ack."""

    task_id: str
    epoch: int
    name: str


@dataclass(frozen=True, slots=True)
class ReplicaChunk:
    """Holder -> replica: ``data`` at ``offset`` of an item (empty ``data``: a probe).

    ``total`` is the item's full size once it is complete (-1 while it grows),
    ``sha256`` its hex digest once complete; ``error`` is set for an artifact
    that could not be collected (the item is then that one line, no bytes)."""

    task_id: str
    epoch: int
    name: str
    offset: int
    data: bytes
    total: int
    sha256: str
    ring_key: str
    finished_at: float
    error: str
    node: str = ""
    """The sender's node id ("" from an older agent): a chunk with ``total`` set
    comes from a holder of the whole item, so the receiver need not probe it."""
    more: tuple[str, ...] = ()
    """Names of other items of the same run, each complete and empty with no error,
    sent with this one (a short run's ``out`` and ``err`` in one message; an older
    agent ignores them and gets them one by one when they are sent again)."""
    others: tuple[EmptyItem, ...] = ()
    """Other runs' complete, empty items for this target, sent in the same round
    (one message per target and round for a burst of short runs; as ``more``,
    an older agent ignores them)."""


@dataclass(frozen=True, slots=True)
class ReplicaAck:
    """Replica -> holder: the replica holds ``size`` bytes (``complete`` once the
    digest matched); ``error`` is one line when it could not store the chunk."""

    task_id: str
    epoch: int
    name: str
    size: int
    complete: bool
    error: str
    node: str
    """The replica's node id."""
    more: tuple[str, ...] = ()
    """Items of the chunk's ``more`` this replica now holds complete (size 0)."""
    others: tuple[ItemRef, ...] = ()
    """Items of the chunk's ``others`` this replica now holds complete (size 0)."""


@dataclass(frozen=True, slots=True)
class ReplicaRead:
    """Ask a host for up to ``limit`` bytes of an item from ``offset``."""

    request_id: int
    task_id: str
    epoch: int
    name: str
    offset: int
    limit: int


@dataclass(frozen=True, slots=True)
class ReplicaData:
    """Answer to ``ReplicaRead`` (``found`` False: the host has no such item)."""

    request_id: int
    task_id: str
    epoch: int
    name: str
    offset: int
    data: bytes
    size: int
    complete: bool
    found: bool
    sha256: str
    error: str
    live: bool
    """The item is still being written by a run on this host."""


@dataclass(frozen=True, slots=True)
class ReplicaListRequest:
    """Which items does a host hold for ``task_id`` (every epoch)?"""

    request_id: int
    task_id: str


@dataclass(frozen=True, slots=True)
class ReplicaItemInfo:
    epoch: int
    name: str
    size: int
    complete: bool
    sha256: str
    error: str


@dataclass(frozen=True, slots=True)
class ReplicaList:
    request_id: int
    task_id: str
    items: tuple[ReplicaItemInfo, ...]


@dataclass(frozen=True, slots=True)
class ReplicaPrune:
    """Drop finished items whose run finished before ``before`` (unix seconds)."""

    before: float


WIRE_TYPES: dict[int, type] = {
    140: ReplicaChunk,
    141: ReplicaAck,
    142: ReplicaRead,
    143: ReplicaData,
    144: ReplicaListRequest,
    145: ReplicaList,
    146: ReplicaPrune,
}
