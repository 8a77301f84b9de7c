"""Raft tuning: one frozen dataclass, every field documented with its unit and default.

Timing is expressed in *ticks*; the runtime calls ``RaftNode.tick()`` every
``tick_interval`` seconds.  ``lan()`` gives a 100 ms heartbeat and an election
timeout randomised in [1 s, 2 s); ``local()`` is for loopback demos and tests on
small (2-core) CI boxes: faster, but with elections still >= 0.5 s so a loaded
box does not thrash between candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import ConfigError


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Timing, quorum and batching parameters of one Raft node."""

    tick_interval: float = 0.1
    """Seconds between ``tick()`` calls (default 0.1 s)."""

    heartbeat_ticks: int = 1
    """A leader sends heartbeats every this many ticks (default 1 → 100 ms on the LAN)."""

    election_ticks: int = 10
    """Base election timeout in ticks; each node draws its timeout uniformly from
    [election_ticks, 2·election_ticks) (default 10 → [1 s, 2 s) on the LAN)."""

    pre_vote: bool = True
    """Run a pre-vote round before bumping the term, so a node rejoining from a
    partition cannot depose a healthy leader (default on)."""

    check_quorum: bool = True
    """A leader that has not heard from a quorum within one election timeout steps
    down, and followers that heard from a leader within that time ignore votes
    (leader lease; default on)."""

    max_voters: int = 5
    """At most this many voters; every other member is a non-voting learner (default 5)."""

    max_inflight_msgs: int = 256
    """AppendEntries messages a leader may have unacknowledged per follower in the
    pipelined (replicate) state (default 256)."""

    max_size_per_msg: int = 1024 * 1024
    """Byte budget of the entries batched into one AppendEntries (default 1 MiB; at
    least one entry is always sent)."""

    max_committed_per_ready: int = 4096
    """At most this many committed entries are handed to the application per Ready
    (default 4096), which bounds the work of one loop turn."""

    snapshot_threshold: int = 10_000
    """Take an application snapshot once this many entries were applied since the
    last one (default 10,000); a state larger than those entries defers it, up to
    4x, until the log has grown by as many bytes (``RaftNode.should_snapshot``)."""

    snapshot_trailing: int = 1_000
    """Entries kept in the log behind a snapshot so slightly lagging followers catch
    up with AppendEntries instead of a full InstallSnapshot (default 1,000)."""

    repair_wait: float = 60.0
    """Seconds a node whose storage lost acknowledged entries waits for a leader
    backed by a healthy majority to repair it (``raft/repair.py``) before it
    stops with one line naming the damage and ``mesh-agent recover
    --force-new-cluster`` (default 60 s: longer than a LAN cluster takes to
    restart and elect; ``local``: 20 s)."""

    segment_bytes: int = 64 * 1024 * 1024
    """Bytes of records per WAL segment file (default 64 MiB).  Each segment is
    preallocated to this size when it starts, so appends never grow the file and
    ``fdatasync`` need not journal metadata; so a full disk shows up when a
    segment starts (where the filesystem can preallocate), not mid-record.  Large
    enough that starting one (allocate, write its header, fsync it and the
    directory) is rare; small values (down to 64 KiB) are for tests that fill a
    small tmpfs."""

    @classmethod
    def lan(cls) -> RaftConfig:
        """Heartbeat 100 ms, election timeout randomised in [1 s, 2 s)."""
        return cls()

    @classmethod
    def local(cls) -> RaftConfig:
        """Loopback: 50 ms ticks, heartbeat 50 ms, election timeout in [0.5 s, 1 s)."""
        return cls(tick_interval=0.05, heartbeat_ticks=1, election_ticks=10, repair_wait=20.0)

    @property
    def election_timeout(self) -> float:
        """The base election timeout in seconds."""
        return self.tick_interval * self.election_ticks

    def validate(self) -> RaftConfig:
        """Return self, or raise ``ConfigError(field, reason)`` for the first bad field."""
        if not 0.001 <= self.tick_interval <= 10.0:
            raise ConfigError("raft.tick_interval", f"must be 0.001-10 s, got {self.tick_interval}")
        if self.heartbeat_ticks < 1:
            raise ConfigError("raft.heartbeat_ticks", f"must be >= 1, got {self.heartbeat_ticks}")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError(
                "raft.election_ticks",
                f"must exceed heartbeat_ticks ({self.heartbeat_ticks}), got {self.election_ticks}",
            )
        if not 1 <= self.max_voters <= 9:
            raise ConfigError("raft.max_voters", f"must be 1-9, got {self.max_voters}")
        if self.max_inflight_msgs < 1:
            raise ConfigError("raft.max_inflight_msgs", f"must be >= 1, got {self.max_inflight_msgs}")
        if self.max_size_per_msg < 1:
            raise ConfigError("raft.max_size_per_msg", f"must be >= 1, got {self.max_size_per_msg}")
        if self.max_committed_per_ready < 1:
            raise ConfigError(
                "raft.max_committed_per_ready",
                f"must be >= 1, got {self.max_committed_per_ready}",
            )
        if self.snapshot_threshold < 1:
            raise ConfigError("raft.snapshot_threshold", f"must be >= 1, got {self.snapshot_threshold}")
        if not 1.0 <= self.repair_wait <= 86_400.0:
            raise ConfigError("raft.repair_wait", f"must be 1-86400 s, got {self.repair_wait}")
        if self.snapshot_trailing < 0:
            raise ConfigError("raft.snapshot_trailing", f"must be >= 0, got {self.snapshot_trailing}")
        if not 64 * 1024 <= self.segment_bytes <= 1024**3:
            raise ConfigError(
                "raft.segment_bytes", f"must be 65536-1073741824 bytes, got {self.segment_bytes}"
            )
        return self
