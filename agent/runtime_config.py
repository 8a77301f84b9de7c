"""Runtime timings: one frozen dataclass, every field with its unit, LAN default and why.

These are the asyncio runtime's own waits and periods (the protocol cores have
theirs in ``swim/config.py``, ``raft/config.py`` and ``sched/config.py``).
``lan()`` is for real networks; ``local()`` for the loopback demo and tests on
small CI boxes.  Set any of them in the ``[runtime]`` table of the agent's TOML
file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from agent.errors import ConfigError


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    task_lease: float = 10.0
    """Seconds a host's watchdog lets its tasks run without hearing that the agent
    is in contact with a quorum, and how long the leader waits after a host's death
    before placing its tasks elsewhere (default 10 s LAN, 3 s local): longer than a
    leader election plus a SWIM detection, so a cut-off host has killed its copies
    before another host may start them (no task runs twice at once)."""

    sched_interval: float = 0.5
    """Seconds between the leader's scheduling rounds when nothing wakes it earlier
    (default 0.5 s LAN, 0.2 s local): placement latency for a quiet cluster against
    the cost of an idle round."""

    bid_timeout: float = 0.1
    """Seconds the leader waits for auction bids before it places with the gossiped
    load instead (default 0.1 s LAN, 0.05 s local): a few LAN round trips."""

    bootstrap_grace: float = 5.0
    """Seconds the set of alive members must stay the same before a node with an
    empty log may found a new cluster (default 5 s LAN, 1.5 s local): long enough
    for mDNS and seeds to show an existing cluster (runtime/bootstrap.py)."""

    commit_timeout: float = 5.0
    """Seconds a write waits to be applied before it fails with "no quorum"
    (default 5 s): several election timeouts, so a leader change does not fail it."""

    forward_resend: float = 1.0
    """Seconds a follower waits for the leader's answer to a forwarded write before
    it sends the same command again, to the leader it knows then (default 1 s LAN,
    0.5 s local).  Covers a frame lost with a broken connection or a relay that
    failed while the leader stayed: the command's request id makes the copy a no-op
    if the first one was applied, and a command without one is never resent.  Well
    above a commit's round trip, so a slow but healthy leader is not flooded."""

    leader_lost_spread: float = 0.3
    """Seconds: a follower that finds its leader's port refusing connections (the
    leader's process is gone; runtime/leader_loss.py) campaigns after a random
    delay of up to this (default 0.3 s LAN, 0.15 s local) instead of a whole
    election timeout.  Spread so that followers that saw the same death rarely
    campaign in the same round trip and split the vote; short against the
    election timeout (1-2 s LAN) it replaces."""

    read_timeout: float = 3.0
    """Seconds a linearizable read waits for the leader's confirmation (default 3 s)."""

    output_timeout: float = 3.0
    """Seconds ``task.logs`` waits for a chunk of output from another host
    (default 3 s) before trying the next replica."""

    report_retry_delay: float = 0.5
    """Seconds before a task result that could not be committed is sent again
    (default 0.5 s): results wait in a bounded queue while there is no quorum."""

    control_idle_timeout: float = 60.0
    """Seconds a control-socket client may stay idle (no request in flight, no
    subscription) before it is closed (default 60 s), so idle clients cannot use
    up the connection limit."""

    @classmethod
    def lan(cls) -> RuntimeConfig:
        return cls()

    @classmethod
    def local(cls) -> RuntimeConfig:
        return cls(
            task_lease=3.0, sched_interval=0.2, bid_timeout=0.05, bootstrap_grace=1.5, forward_resend=0.5,
            leader_lost_spread=0.15,
        )

    def validate(self) -> RuntimeConfig:
        """Return self, or raise ``ConfigError`` naming the first field out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.001 <= value <= 86_400.0:
                raise ConfigError(f"runtime.{f.name}", f"must be 0.001-86400 s, got {value}")
        if self.bid_timeout >= self.sched_interval:
            raise ConfigError(
                "runtime.bid_timeout", f"must be shorter than sched_interval ({self.sched_interval} s)"
            )
        return self
