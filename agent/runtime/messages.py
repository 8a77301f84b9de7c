"""Runtime-level peer messages: forwarding client requests to the leader, and task output.

These belong to the runtime, not to a protocol core: a follower that gets a
write forwards the encoded state-machine command to the leader, which
proposes it and answers once it is applied (or fails fast without quorum).
Task output is pushed to the hash ring's replicas so a dead host's results
can still be read (``meshtui logs`` from any host).

Link state and relays (issue 20, ``agent/links/``, ``agent/runtime/relay.py``):
``LinkPing``/``LinkPong`` probe one direct path, ``LinkSummary`` tells the
peers which of our links are broken, ``RelayFrame`` carries a packet sealed by
its origin for its destination over one relay, ``RelayNack`` tells the origin
that relay could not pass it on.

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


@dataclass(frozen=True, slots=True)
class LinkPing:
    """A direct-path probe (datagram); answered with a LinkPong of the same ``seq``."""

    seq: int
    source: str


@dataclass(frozen=True, slots=True)
class LinkPong:
    """The answer to a LinkPing, from ``source`` (the probed node)."""

    seq: int
    source: str


@dataclass(frozen=True, slots=True)
class LinkEntry:
    """One link of a summary: the reporter's direct path to ``peer``.

    ``state`` is 0 direct, 1 relayed (then ``via`` names the relay), 2 down;
    ``success`` the probe success rate over the window (0..1)."""

    peer: str
    state: int
    via: str
    rtt_ms: float
    success: float


@dataclass(frozen=True, slots=True)
class LinkSummary:
    """``origin``'s links as it sees them; a higher ``version`` replaces a lower one."""

    origin: str
    version: int
    links: tuple[LinkEntry, ...]


@dataclass(frozen=True, slots=True)
class RelayFrame:
    """A packet sealed by ``origin`` for ``dest`` (end to end), on its way over one relay.

    ``hop`` is 0 from the origin to the relay, 1 from the relay to ``dest``; a
    relay passes on only hop-0 frames and a destination takes only hop-1 ones,
    so a frame crosses at most one relay and cannot loop."""

    origin: str
    dest: str
    hop: int
    packet: bytes


@dataclass(frozen=True, slots=True)
class RelayNack:
    """Relay → origin: the frame for ``dest`` was not passed on (``reason``:
    ``no_path``, ``queue_full``, ``hop``)."""

    dest: str
    reason: str


WIRE_TYPES: dict[int, type] = {
    110: ForwardPropose,
    111: ForwardResult,
    112: OutputRequest,
    113: OutputChunk,
    114: LinkPing,
    115: LinkPong,
    116: LinkSummary,
    117: RelayFrame,
    118: RelayNack,
}
