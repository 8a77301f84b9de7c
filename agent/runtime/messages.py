"""Runtime-level peer messages: forwarding client requests to the leader, and task output.

These belong to the runtime, not to a protocol core: a follower that gets a
write forwards the encoded state-machine command to the leader, which
proposes it and answers once it is applied (or fails fast without quorum).
Task output is pushed to the hash ring's replicas so a dead host's results
can still be read (``meshtui logs`` from any host).

Numbers 110-129 (docs/internals.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ForwardPropose:
    """Follower → leader: propose ``command`` (an encoded state-machine command)."""

    request_id: int
    command: bytes


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """Leader → follower: the outcome of a forwarded proposal.

    ``error_code`` is empty on success, else a control-API code
    (``no_quorum``, ``not_leader``, ``bad_request``, ``internal``).
    ``value`` is the msgpack-encoded apply result.
    """

    request_id: int
    error_code: str
    message: str
    value: bytes


@dataclass(frozen=True, slots=True)
class OutputRequest:
    """Ask a host for a slice of a task's captured output."""

    request_id: int
    task_id: str
    epoch: int
    stream: str
    offset: int
    limit: int


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """Answer to OutputRequest, or a pushed replica chunk (``request_id`` 0)."""

    request_id: int
    task_id: str
    epoch: int
    stream: str
    offset: int
    data: bytes
    eof: bool
    found: bool


WIRE_TYPES: dict[int, type] = {
    110: ForwardPropose,
    111: ForwardResult,
    112: OutputRequest,
    113: OutputChunk,
}
