"""Link-state and relay tunables: every field with its unit, LAN default and why.

``LinkConfig.lan()`` suits hosts on one LAN (round trips well under a
millisecond, SWIM probing once a second); ``LinkConfig.local()`` is the
loopback profile of the demo and the integration tests (about 4x faster,
as ``SwimConfig.local()``).  The agent picks the profile named by its
``profile`` setting; there is no TOML table for these yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import ConfigError


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """Settings of :class:`agent.links.state.LinkTable` and the relay around it."""

    probe_interval: float = 0.25
    """Seconds between two direct-path probes (a ``LinkPing`` datagram) to one
    tracked peer.  A quarter of SWIM's probe interval: a healed link is back on
    the direct path within one SWIM probe interval, and a cut one is seen as
    broken after ``broken_after`` probes, 0.45-0.7 s -- before a follower that
    hears its leader only over that link gives up on it (Raft's election timeout,
    1 s at the least), so relayed heartbeats keep it a follower with a leader.
    Costs 4 datagrams a second each way per tracked peer.  LAN 0.25 s."""

    idle_probe_interval: float = 2.0
    """Seconds between two probes to a peer we exchanged no reliable message with
    for ``idle_after`` seconds (and whose path is not failing): an idle pair needs
    its state known for relay choice, not within a quarter second.  A host with
    10 idle peers sends 5 probes a second (and answers 5), not 40 at the busy rate.
    The first reliable message to or from an idle peer brings its next probe
    within ``probe_interval`` (``LinkTable.note_active``), so a pair that starts
    talking finds a cut link as fast as a busy one; only a cut between two hosts
    that exchange nothing is seen later: after 2.2-4.2 s instead of 1.2-2.2 s
    (``broken_after`` idle probes).  Crash detection is SWIM's and does not read
    this.  LAN 2 s (1 s until 2026-12-07: the idle probes and their answers were
    40 of an idle host's ~75 datagrams a second, the most of its CPU)."""

    idle_after: float = 2.0
    """Seconds after the last reliable message to or from a peer after which it is
    probed every ``idle_probe_interval`` instead of ``probe_interval``.  LAN 2 s."""

    probe_timeout: float = 0.2
    """Seconds a ``LinkPing`` waits for its ``LinkPong`` before it counts as a
    failed direct probe.  Far above a LAN round trip, and above the event-loop
    lag of a busy agent; below ``probe_interval`` so one probe is out at a time.
    LAN 0.2 s."""

    broken_after: int = 2
    """Consecutive failed direct probes before the direct path counts as broken
    and reliable traffic goes over a relay.  2: one lost datagram never moves
    traffic, two in a row on a LAN mean the path is gone.  LAN 2."""

    window: int = 20
    """Probe outcomes kept per peer for its success rate (the reputation's
    first half; the other is the RTT).  20 probes = 5 s at LAN timings."""

    rtt_smoothing: float = 0.3
    """Weight of a new RTT sample in the per-peer moving average.  LAN 0.3."""

    rtt_scale: float = 0.005
    """Seconds: a leg of RTT ``r`` scores ``rtt_scale / (rtt_scale + r)`` of its
    success rate, so a 5 ms leg counts half of a perfect one; LAN round trips
    (0.1-1 ms) barely matter, a congested or remote one does.  LAN 5 ms."""

    track_all_limit: int = 16
    """Clusters with at most this many live members probe every member's direct
    path (so every pair's state is known and any member can be a relay); larger
    ones probe only the peers they exchange reliable messages with.  LAN 16."""

    active_ttl: float = 30.0
    """Seconds a peer stays tracked after the last reliable message to or from
    it, in clusters above ``track_all_limit``.  LAN 30 s."""

    summary_interval: float = 1.0
    """Seconds between two link summaries (``LinkSummary`` datagrams) sent to
    every tracked peer: how each node learns which pairs are broken.  LAN 1 s."""

    summary_refresh: float = 2.0
    """Seconds between two summaries while none of our links changed state (none
    broke, healed or moved to another relay since the last one sent); a change
    goes out at the next ``summary_interval`` tick.  The RTTs and success rates an
    unchanged summary repeats move slowly (a 5 s window), so re-sending them every
    second bought nothing but datagrams: this halves an idle host's summaries
    (10 peers: 10 a second out and 10 in, of about 65).  LAN 2 s."""

    summary_ttl: float = 5.0
    """Seconds a peer's summary is believed without a newer one; after that its
    links count as unknown.  Two and a half ``summary_refresh`` periods, so one
    lost refresh never makes a quiet peer's links unknown.  LAN 5 s."""

    max_summary_entries: int = 12
    """Links one summary carries (broken ones first, then the best known): about
    80 bytes each, so a summary fits a 1400-byte datagram.  LAN 12."""

    relay_retry: float = 5.0
    """Seconds a relay that failed us for a destination (it said it cannot reach
    it, or our leg to it broke) is not chosen again for that destination.  LAN 5 s."""

    relay_queue: int = 256
    """Messages a relay lets wait on its stream to one destination before it
    refuses further frames for it (dropped, counted in ``relay_drops``, and
    answered with a RelayNack so the origin picks another relay).  LAN 256."""

    resend_window: float = 2.0
    """Seconds of reliable messages kept per peer and sent again over a relay
    when that peer's direct path is found broken (what was in flight on the dead
    path; Raft and forwarded writes are idempotent).  LAN 2 s."""

    resend_max: int = 64
    """Messages kept per peer for that resend.  LAN 64."""

    idle_close: float = 60.0
    """Seconds without a message after which an outbound peer stream is closed
    (the next message opens it again, one round trip).  LAN 60 s."""

    max_streams: int = 64
    """Outbound peer streams kept open for gossip, forwarding and relaying; the
    least recently used is closed when a new one would pass it.  The leader's
    replication streams to voters and learners are not counted.  LAN 64: at
    1,000 hosts a host holds at most 64 such streams, not 999."""

    @classmethod
    def lan(cls) -> LinkConfig:
        """The LAN profile (the defaults above)."""
        return cls()

    @classmethod
    def local(cls) -> LinkConfig:
        """Loopback profile: probes about 2.5x, summaries 4x faster than LAN
        (the local Raft election timeout is 0.5 s)."""
        return cls(probe_interval=0.1, probe_timeout=0.08, idle_probe_interval=0.4,
                   idle_after=1.0, summary_interval=0.25, summary_refresh=0.5,
                   summary_ttl=1.25, relay_retry=2.0, resend_window=1.0)

    def validate(self) -> LinkConfig:
        """Return ``self`` if every field is in range, else raise ``ConfigError``."""
        for name in ("probe_interval", "probe_timeout", "rtt_scale", "summary_interval",
                     "summary_refresh",
                     "idle_probe_interval", "idle_after",
                     "summary_ttl", "relay_retry", "active_ttl", "idle_close"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"links.{name}", "must be positive")
        for name in ("broken_after", "window", "max_summary_entries", "relay_queue",
                     "resend_max", "max_streams", "track_all_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"links.{name}", "must be at least 1")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError("links.probe_timeout", "must be below links.probe_interval")
        if self.summary_refresh < self.summary_interval:
            raise ConfigError("links.summary_refresh", "must be at least links.summary_interval")
        if self.summary_ttl <= self.summary_refresh:
            raise ConfigError("links.summary_ttl", "must be above links.summary_refresh")
        if not 0.0 < self.rtt_smoothing <= 1.0:
            raise ConfigError("links.rtt_smoothing", "must be in (0, 1]")
        return self
