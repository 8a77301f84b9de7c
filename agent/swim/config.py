"""SWIM + Lifeguard tunables, documented like hashicorp/memberlist's config.go.

Every field states its unit, its LAN default and, where it feeds a formula, the
formula (see :mod:`agent.swim.timing`).  ``SwimConfig.lan()`` is memberlist's
``DefaultLANConfig``; ``SwimConfig.local()`` is a faster profile for agents that
all live on one host's loopback (demo, integration tests), where round trips are
tens of microseconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from agent.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SwimConfig:
    """Membership protocol settings.  Construct with :meth:`lan` or :meth:`local`."""

    probe_interval: float = 1.0
    """Seconds between failure-detector probes (one member per interval, round-robin
    over a shuffled list).  Scaled by the local health multiplier:
    ``probe_interval * (health_score + 1)``.  LAN 1.0 s."""

    probe_timeout: float = 0.5
    """Seconds to wait for a direct Ack before asking ``indirect_checks`` members to
    probe on our behalf (and sending the TCP fallback ping).  Should be about the
    99th percentile RTT; also scaled by the health multiplier.  LAN 0.5 s."""

    indirect_checks: int = 3
    """Members asked to ping a target that missed its direct Ack (SWIM's k).  A member
    is suspected only when neither we nor any of them reach it: the quorum
    confirmation of a failure.  LAN 3."""

    tcp_fallback_probe: bool = True
    """Also send a reliable (TCP) Ping when the direct probe times out, which tells
    a dead host from a lossy UDP path.  LAN true."""

    gossip_interval: float = 0.2
    """Seconds between gossip rounds; each round sends queued broadcasts to
    ``gossip_nodes`` random members, on a fixed grid as memberlist's ticker (a node
    with nothing queued skips its rounds without waking up).  LAN 0.2 s."""

    gossip_nodes: int = 3
    """Fanout: members sent to per gossip round.  LAN 3."""

    gossip_to_the_dead_time: float = 30.0
    """Seconds after a member is declared dead during which it is still a gossip
    target, so it learns that it was declared dead and can refute.  LAN 30 s."""

    retransmit_mult: int = 4
    """Each broadcast is sent ``retransmit_mult * ceil(log10(n + 1))`` times, n the
    number of members.  LAN 4."""

    suspicion_mult: int = 4
    """Suspicion timeout floor: ``suspicion_mult * max(1, log10(max(1, n))) *
    probe_interval``.  Lifeguard expects ``suspicion_mult - 2`` independent
    confirmations before the floor applies.  LAN 4."""

    suspicion_max_timeout_mult: int = 6
    """Suspicion timeout ceiling = floor * this.  A fresh suspicion starts at the
    ceiling and shrinks logarithmically with each confirmation.  LAN 6."""

    awareness_max_multiplier: int = 8
    """Lifeguard local-health ceiling: the health score is kept in
    ``[0, awareness_max_multiplier - 1]`` and probe interval and timeout are scaled
    by ``score + 1``.  LAN 8."""

    load_aware_health: bool = True
    """Let the host's own CPU saturation and event-loop lag raise the health score
    (:meth:`SwimNode.note_local_health`), so a busy host slows its probing and
    widens its timeouts instead of falsely accusing others.  Default true."""

    busy_cpu_saturation: float = 0.9
    """CPU saturation (0..1) above which the host counts as saturated for load-aware
    health; saturation alone adds at most 1 to the score (event-loop lag may add
    up to the maximum).  Default 0.9."""

    push_pull_interval: float = 30.0
    """Seconds between anti-entropy full-state exchanges (PushPull over TCP) with a
    random live member.  LAN 30 s."""

    reconnect_interval: float = 30.0
    """Seconds between PushPull attempts to a random *dead* member's address (Serf's
    reconnect), so both halves of a healed partition find each other without an
    operator.  LAN 30 s."""

    reconnect_timeout: float = 86400.0
    """Seconds a dead member is remembered (and retried) before it is forgotten.
    LAN 24 h, as Serf."""

    tombstone_timeout: float = 86400.0
    """Seconds a member that left gracefully is remembered before it is forgotten.
    LAN 24 h, as Serf."""

    dead_node_reclaim_time: float = 0.0
    """Seconds after which a dead or left member's id may come back at a different
    address.  0 means at once.  An alive or suspect member never changes address
    through gossip (a conflict is ignored).  Default 0 s."""

    max_datagram_payload: int = 1400
    """Upper bound in bytes on an encoded UDP message before sealing (the transport
    adds its AES-GCM envelope on top).  Piggybacked broadcasts are packed up to this
    bound using a conservative size estimate (:mod:`agent.swim.sizing`).  Default
    1400 (``agent.wire.MAX_DATAGRAM_SIZE``)."""

    max_queued_broadcasts: int = 4096
    """Bound of the retransmit queue; beyond it the most-sent broadcasts are dropped
    first.  At most one membership broadcast per member is queued, so this covers
    clusters of a few thousand members.  Default 4096."""

    partition_window: int = 16
    """Number of recent probe outcomes kept for the ``reach`` metric (fraction of our
    probes answered by any path).  The ``partitioned`` flag itself comes from the
    member view (:mod:`agent.swim.partition`).  Default 16."""

    rtt_smoothing: float = 0.125
    """EWMA weight of a new RTT sample (TCP's SRTT alpha).  Default 0.125."""

    load_broadcast_interval: float = 5.0
    """Seconds between load broadcasts when load barely changes; a significant change
    (CPU +-0.1, memory +-5 points, queued/running changed) is broadcast at most every
    ``load_broadcast_interval / 5``.  Load also rides on every Ping and Ack.
    Default 5 s."""

    pushsum_interval: float = 0.5
    """Seconds between push-sum rounds (Kempe et al.): each round a node keeps half
    its (sum, weight) mass and sends the other half to a random member.  0 disables
    aggregation.  LAN 0.5 s."""

    pushsum_epoch: float = 10.0
    """Seconds per push-sum epoch.  Each epoch restarts the aggregation from current
    values (so the average tracks a changing load); the previous epoch's estimate is
    the published cluster average.  LAN 10 s (20 rounds)."""

    @classmethod
    def lan(cls) -> SwimConfig:
        """memberlist's LAN profile (the defaults above)."""
        return cls()

    @classmethod
    def local(cls) -> SwimConfig:
        """Loopback profile: everything about 5x faster than LAN."""
        return cls(
            probe_interval=0.2,
            probe_timeout=0.1,
            gossip_interval=0.05,
            gossip_to_the_dead_time=6.0,
            push_pull_interval=5.0,
            reconnect_interval=2.0,
            load_broadcast_interval=2.0,
            pushsum_interval=0.1,
            pushsum_epoch=2.0,
        )

    def validate(self) -> SwimConfig:
        """Return ``self`` if every field is in range, else raise ``ConfigError``."""
        positive = (
            "probe_interval",
            "probe_timeout",
            "gossip_interval",
            "push_pull_interval",
            "reconnect_interval",
            "load_broadcast_interval",
            "pushsum_epoch",
        )
        for name in positive:
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"swim.{name}", f"must be > 0, got {value!r}")
        non_negative = (
            "gossip_to_the_dead_time",
            "reconnect_timeout",
            "tombstone_timeout",
            "dead_node_reclaim_time",
            "pushsum_interval",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(f"swim.{name}", f"must be >= 0, got {value!r}")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError(
                "swim.probe_timeout",
                f"must be below probe_interval ({self.probe_interval}), got {self.probe_timeout}",
            )
        at_least = {
            "indirect_checks": 0,
            "gossip_nodes": 1,
            "retransmit_mult": 1,
            "suspicion_mult": 1,
            "suspicion_max_timeout_mult": 1,
            "awareness_max_multiplier": 1,
            "max_queued_broadcasts": 16,
            "partition_window": 2,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if value < low:
                raise ConfigError(f"swim.{name}", f"must be >= {low}, got {value!r}")
        if not 256 <= self.max_datagram_payload <= 65000:
            raise ConfigError(
                "swim.max_datagram_payload",
                f"must be within 256..65000 bytes, got {self.max_datagram_payload}",
            )
        if not 0.0 < self.busy_cpu_saturation <= 1.0:
            raise ConfigError(
                "swim.busy_cpu_saturation", f"must be in (0, 1], got {self.busy_cpu_saturation}"
            )
        if not 0.0 < self.rtt_smoothing <= 1.0:
            raise ConfigError("swim.rtt_smoothing", f"must be in (0, 1], got {self.rtt_smoothing}")
        return self

    def replace(self, **changes: object) -> SwimConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes).validate()  # type: ignore[arg-type]
