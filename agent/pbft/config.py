"""PBFT tuning: one frozen dataclass, every field documented with its unit and default.

Timing is in *ticks*, as in ``agent/raft/config.py``: the runtime calls
``PbftReplica.tick()`` every ``tick_interval`` seconds.  ``lan()`` gives a 2 s
base view-change timeout (doubling per consecutive failed view change, up to
16 s); ``local()`` is for loopback demos and loaded CI boxes.

The log window: a replica accepts protocol messages only for sequence numbers
``low < seq <= low + window`` (the low and high watermarks), where ``low`` is
the last stable checkpoint.  A checkpoint is taken every
``checkpoint_interval`` (K) executed sequence numbers and the window is
L = 2K, as in Castro & Liskov: the primary can keep assigning numbers while
the previous checkpoint collects its 2f+1 signatures.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import ConfigError


@dataclass(frozen=True, slots=True)
class PbftConfig:
    """Timing, window and batching parameters of one PBFT replica."""

    tick_interval: float = 0.1
    """Seconds between ``tick()`` calls (default 0.1 s)."""

    checkpoint_interval: int = 64
    """K: sequence numbers between checkpoints (default 64).  Smaller bounds the
    log tighter and makes state transfer finer, but every checkpoint costs a
    snapshot of the application state and n signed messages."""

    window_factor: int = 2
    """L = window_factor * K: how far above the last stable checkpoint a sequence
    number may be (default 2, the paper's L = 2K)."""

    view_change_ticks: int = 20
    """Base view-change timeout in ticks (default 20 -> 2 s on the LAN): how long a
    backup waits for a request it knows of to execute before suspecting the
    primary, and how long it waits for the NEW-VIEW after a VIEW-CHANGE.  Well
    above a commit round (a few ms on a LAN) so a slow primary is not deposed by
    a loaded box."""

    max_backoff: int = 8
    """The view-change timeout doubles with each consecutive view change that did
    not execute anything, up to this multiple of ``view_change_ticks`` (default 8
    -> 16 s): a partition does not spin through views, and the timeout returns to
    base once a request executes."""

    resend_ticks: int = 5
    """Every this many ticks a replica broadcasts a signed STATUS and resends its
    messages for slots not yet executed (default 5 -> 500 ms): PBFT over a lossy
    network makes progress through retransmission."""

    max_batch: int = 64
    """Requests the primary puts into one pre-prepare at most (default 64)."""

    max_inflight: int = 4
    """Sequence numbers the primary keeps assigned but not yet executed (default 4).
    Requests that arrive while that many are in flight wait and leave together as
    one batch: under load batches grow (up to ``max_batch``) instead of every
    request paying three signed rounds of its own; idle, a request goes at once."""

    max_pending: int = 10_000
    """Requests a replica remembers while they wait to execute (default 10,000);
    beyond it new ones are dropped (the client retransmits)."""

    max_replies: int = 10_000
    """Signed replies kept for retransmission to clients that missed them (default 10,000)."""

    @classmethod
    def lan(cls) -> PbftConfig:
        """100 ms ticks, view-change timeout 2 s doubling up to 16 s, K = 64."""
        return cls()

    @classmethod
    def local(cls) -> PbftConfig:
        """Loopback: 50 ms ticks, view-change timeout 1 s, K = 32."""
        return cls(tick_interval=0.05, checkpoint_interval=32)

    @property
    def window(self) -> int:
        """L, the distance between the low and high watermarks."""
        return self.window_factor * self.checkpoint_interval

    def validate(self) -> PbftConfig:
        """Return self, or raise ``ConfigError(field, reason)`` for the first bad field."""
        if not 0.001 <= self.tick_interval <= 10.0:
            raise ConfigError("pbft.tick_interval", f"must be 0.001-10 s, got {self.tick_interval}")
        if not 1 <= self.checkpoint_interval <= 100_000:
            raise ConfigError("pbft.checkpoint_interval", f"must be 1-100000, got {self.checkpoint_interval}")
        if not 2 <= self.window_factor <= 16:
            raise ConfigError("pbft.window_factor", f"must be 2-16, got {self.window_factor}")
        if self.view_change_ticks <= self.resend_ticks:
            raise ConfigError(
                "pbft.view_change_ticks",
                f"must exceed resend_ticks ({self.resend_ticks}), got {self.view_change_ticks}",
            )
        if not 1 <= self.max_backoff <= 1024:
            raise ConfigError("pbft.max_backoff", f"must be 1-1024, got {self.max_backoff}")
        if self.resend_ticks < 1:
            raise ConfigError("pbft.resend_ticks", f"must be >= 1, got {self.resend_ticks}")
        if not 1 <= self.max_batch <= 10_000:
            raise ConfigError("pbft.max_batch", f"must be 1-10000, got {self.max_batch}")
        if self.max_inflight < 1:
            raise ConfigError("pbft.max_inflight", f"must be >= 1, got {self.max_inflight}")
        if self.max_pending < 1:
            raise ConfigError("pbft.max_pending", f"must be >= 1, got {self.max_pending}")
        if self.max_replies < 1:
            raise ConfigError("pbft.max_replies", f"must be >= 1, got {self.max_replies}")
        return self


def fault_bound(n: int) -> int:
    """f: the Byzantine replicas ``n`` replicas tolerate (n >= 3f + 1)."""
    return (n - 1) // 3
