"""Typed errors for the whole agent.

One base, ``MeshError``, split h11-style into errors caused by *us* (local:
bad config, a full queue, no quorum here) and errors caused by *a peer or a
client* (remote: a malformed frame, a bad signature).  A broken internal
invariant is an ``AssertionError``, never one of these.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base of every error meshtui raises on purpose."""


class LocalError(MeshError):
    """Something on this host is wrong or cannot be done here."""


class RemoteError(MeshError):
    """A peer or a client sent something we refuse."""


class ProtocolError(RemoteError):
    """Malformed, oversized or unknown bytes on the wire or the control socket."""


class AuthError(RemoteError):
    """A sealed packet failed its tag check, used an unknown key, or was replayed."""


class ConfigError(LocalError):
    """A config file or flag is invalid.  ``field`` names it; ``str()`` is one line."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NoQuorumError(LocalError):
    """This node cannot reach a quorum: the cluster is read-only here."""

    def __init__(self, detail: str = "") -> None:
        msg = "no quorum: cluster is read-only here"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class NotLeaderError(LocalError):
    """A request needing the leader reached a follower that could not forward it."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader is {leader or 'unknown'})")
        self.leader = leader


class DiskFullError(LocalError):
    """A write cannot be taken because a node's Raft disk is full and no healthy
    majority could take it instead; control code ``disk_full``, CLI exit 5.

    ``str()`` starts ``disk full on <node>: <dir>``; ``on()`` builds it.  A
    message relayed from another node (a forwarded write) is kept verbatim."""

    @classmethod
    def on(cls, node: str, directory: str, detail: str = "") -> DiskFullError:
        message = f"disk full on {node}: {directory}"
        return cls(f"{message} ({detail})" if detail else message)


class StorageError(LocalError):
    """The WAL or a snapshot is corrupt; the message names the file and offset."""


class SchedulingError(LocalError):
    """No host can take a task (no eligible host, all draining, ...)."""


class TaskError(LocalError):
    """A task operation failed (unknown id, already finished, ...)."""
