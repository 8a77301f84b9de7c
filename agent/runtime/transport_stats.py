"""The sealed transport's counters (``meshtui report`` → ``transport``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from agent.crypto import SealStats


@dataclass(slots=True)
class TransportStats:
    """Counters for ``meshtui report`` (mutable; bytes are on-the-wire bytes)."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    datagram_bytes_in: int = 0
    datagram_bytes_out: int = 0
    stream_msgs_in: int = 0
    stream_msgs_out: int = 0
    stream_frames_in: int = 0
    stream_frames_out: int = 0
    stream_bytes_in: int = 0
    stream_bytes_out: int = 0
    connects: int = 0
    connect_failures: int = 0
    connections_in: int = 0
    dropped_oversize: int = 0
    dropped_queue_full: int = 0
    dropped_bad_addr: int = 0
    dropped_send_error: int = 0
    dropped_bad_frame: int = 0
    dropped_no_hello: int = 0
    dropped_too_many_connections: int = 0
    closed_bad_peer: int = 0
    bad_challenges: int = 0
    """Outbound connections whose peer sent no valid challenge frame."""
    grants_out: int = 0
    """Cookie grants sent, answering refused datagrams (agent.envelope)."""
    grants_in: int = 0
    grants_suppressed: int = 0
    """Refused datagrams not answered: the grant rate limit (agent.runtime.cookies)."""
    datagrams_resent: int = 0
    """First-contact datagrams sent again once the receiver's grant came."""
    callback_errors: int = 0
    streams_evicted: int = 0
    """Outbound streams closed to stay within the stream cap (least recently used)."""
    streams_idle_closed: int = 0
    """Outbound streams closed after the idle time (agent/links/config.py idle_close)."""
    seal: SealStats = field(default_factory=SealStats)

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        return asdict(self)
