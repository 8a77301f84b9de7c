"""Replacing a PBFT replica through the protocol (``meshtui replicas replace OLD NEW``).

Theory of operation
-------------------
The replica set changes only by a request ordered like any other: its ``op``
is ``encode_replace(old, new, key)``.  Every correct replica executes it at
the same sequence number s and decides the same way (``decide``): refused
while another replacement is pending, when OLD is not a replica or NEW
already is one; otherwise the change is *pending* and takes effect at the
boundary c, the first checkpoint at or after s (c = ceil(s / K) * K).

* Nothing above c is executed under the old group: a replica with a pending
  change stops executing at c, the primary assigns nothing above c and a
  backup accepts no pre-prepare above c.
* The checkpoint at c is signed by the old group, and its snapshot (the
  application's, wrapped by ``wrap_snapshot``) names the group for the
  sequence numbers after it, with the group before it.  So a replica that
  reaches c by state transfer learns the group from the state itself.
* Once c is stable a replica switches (``PbftReplica._make_stable``): it
  drops every slot above c (ordered under the old group, so never executed
  anywhere), and the new group starts the next view (a view change), whose
  primary is computed from the new group.  The removed replica stops voting
  (``retired``) and follows; the new one catches up by state transfer.
* A checkpoint proof at seq x is checked against the group that signed it:
  the group before the last switch for x <= its boundary, else the current
  one (``Membership.signers``).

A replacement is 1-for-1 (NEW takes OLD's position), so n stays 3f+1 and the
two groups share n-1 >= 2f+1 replicas.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from agent.pbft.messages import GroupLink, StableCheckpoint
from agent.pbft.signing import GROUP_MAGIC as GROUP_MAGIC
from agent.pbft.signing import CheckedVerifier, headed_digest
from agent.pbft.viewchange import Group, valid_proof

REPLACE_MAGIC = b"\x00pbft.replace\x00"
"""Prefix of a replace request's op (no state-machine command starts with a zero byte)."""

MAX_LINKS = 8
"""Switches a replica keeps proofs of (``Membership.links``), so a host that missed up
to this many replacements can still check the state it is sent."""


@dataclass(frozen=True, slots=True)
class Replace:
    old: str
    new: str
    key: bytes
    """NEW's public key (the runtime learns it if NEW's id derives from it)."""


def encode_replace(old: str, new: str, key: bytes = b"") -> bytes:
    return REPLACE_MAGIC + json.dumps([old, new, key.hex()]).encode()


def decode_replace(op: bytes) -> Replace | None:
    """The replacement ``op`` asks for, or None if it is not one (or malformed)."""
    if not op.startswith(REPLACE_MAGIC):
        return None
    try:
        old, new, key = json.loads(op[len(REPLACE_MAGIC) :])
        return Replace(str(old), str(new), bytes.fromhex(str(key)))
    except (ValueError, TypeError):
        return None


def is_replace(op: bytes) -> bool:
    return op.startswith(REPLACE_MAGIC)


def boundary(seq: int, interval: int) -> int:
    """The first checkpoint at or after ``seq``."""
    return -(-seq // interval) * interval


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """What a checkpoint snapshot says about the group: the replicas for the
    sequence numbers after it, and the group before the last switch with that
    switch's checkpoint (so its proof can be checked)."""

    replicas: tuple[str, ...]
    previous: tuple[str, ...] = ()
    switched_at: int = 0


RECENT_MAGIC = b"\x00pbft.recent\x00"
"""Prefix of the executed-requests part between a snapshot's group header and the
application's state (``wrap_snapshot``)."""

SHORT = 16
"""Bytes of a request digest kept in ``Recent`` (a collision only makes one replica
ignore a retransmission of a request it took for executed)."""

Recent = tuple[tuple[int, tuple[bytes, ...]], ...]
"""(seq, the first ``SHORT`` bytes of the digest of each request executed at it), for
the seqs of the last checkpoint interval that held requests, oldest first."""


def wrap_snapshot(info: GroupInfo, app: bytes, recent: Recent = ()) -> bytes:
    """The checkpoint state: group header, then (if any) the requests executed in the
    K seqs up to it -- so a replica that restarts from it, or reaches it by state
    transfer, knows a retransmitted request is done, as Castro & Liskov keep the last
    replies in the state -- then the application's snapshot."""
    head = json.dumps([list(info.replicas), list(info.previous), info.switched_at]).encode()
    if recent:
        blob = b"".join(
            seq.to_bytes(8, "big") + len(ds).to_bytes(2, "big") + b"".join(ds) for seq, ds in recent
        )
        app = RECENT_MAGIC + len(blob).to_bytes(4, "big") + blob + app
    return GROUP_MAGIC + head + b"\n" + app


def _split_recent(body: bytes) -> tuple[Recent, bytes]:
    if not body.startswith(RECENT_MAGIC):
        return (), body
    at = len(RECENT_MAGIC) + 4
    size = int.from_bytes(body[at - 4 : at], "big")
    blob, out, i = body[at : at + size], [], 0
    while i + 10 <= len(blob):
        seq, count = int.from_bytes(blob[i : i + 8], "big"), int.from_bytes(blob[i + 8 : i + 10], "big")
        i += 10
        out.append((seq, tuple(blob[i + SHORT * k : i + SHORT * (k + 1)] for k in range(count))))
        i += SHORT * count
    if i != size or len(blob) != size:
        return (), body  # malformed: taken as application state (its digest still binds it)
    return tuple(out), body[at + size :]


def split_snapshot(snapshot: bytes) -> tuple[GroupInfo | None, bytes]:
    """(the group the snapshot names, or None for a bare one; the application's snapshot)."""
    if not snapshot.startswith(GROUP_MAGIC):
        return None, snapshot
    head, _, body = snapshot[len(GROUP_MAGIC) :].partition(b"\n")
    info = parse_head(head)
    return (info, _split_recent(body)[1]) if info is not None else (None, snapshot)


def recent_of(snapshot: bytes) -> Recent:
    """The requests a checkpoint state says were executed in its last K seqs."""
    if not snapshot.startswith(GROUP_MAGIC):
        return ()
    return _split_recent(snapshot[len(GROUP_MAGIC) :].partition(b"\n")[2])[0]


def parse_head(head: bytes) -> GroupInfo | None:
    try:
        replicas, previous, switched_at = json.loads(head)
        return GroupInfo(tuple(map(str, replicas)), tuple(map(str, previous)), int(switched_at))
    except (ValueError, TypeError):
        return None


def link_of(stable: StableCheckpoint) -> GroupLink | None:
    """The proof of a switch, if ``stable`` is the checkpoint a replacement took effect at."""
    if not stable.snapshot.startswith(GROUP_MAGIC):
        return None
    head, _, app = stable.snapshot[len(GROUP_MAGIC) :].partition(b"\n")
    info = parse_head(head)
    if info is None or info.switched_at != stable.seq or not info.previous:
        return None
    return GroupLink(stable.seq, head, hashlib.sha256(app).digest(), stable.proof)


def app_snapshot(snapshot: bytes) -> bytes:
    """The application's part of a (possibly wrapped) checkpoint snapshot."""
    return split_snapshot(snapshot)[1]


class Membership:
    """The replica group over time: current, pending (decided, not yet in
    effect) and the one before the last switch.  Shared by replicas and followers,
    so both decide every replace request the same way."""

    def __init__(self, replicas: tuple[str, ...], interval: int) -> None:
        self.group = Group(tuple(replicas))
        self.interval = interval
        self.pending: tuple[Group, int] | None = None
        """(the new group, the checkpoint it takes effect after)."""
        self.previous: tuple[Group, int] | None = None
        """(the group before the last switch, the checkpoint it ended at)."""
        self.links: list[GroupLink] = []
        """Proofs of the last ``MAX_LINKS`` switches, oldest first (sent with the state)."""

    @property
    def fence(self) -> int | None:
        """Nothing above this seq runs under the current group (a change is pending)."""
        return self.pending[1] if self.pending is not None else None

    def pending_status(self) -> dict[str, Any] | None:
        """The pending replacement as ``status`` shows it: the new group and the
        checkpoint it takes effect after, or None."""
        if self.pending is None:
            return None
        return {"replicas": list(self.pending[0].replicas), "at": self.pending[1]}

    def decide(self, seq: int, op: bytes) -> tuple[bool, str, int]:
        """A replace request executed at ``seq``: (accepted, why not, the boundary)."""
        r = decode_replace(op)
        if r is None:
            return False, "malformed replace request", 0
        if self.pending is not None:
            return False, f"a replacement is already pending (effective after {self.pending[1]})", 0
        replicas = self.group.replicas
        if r.old not in replicas:
            return False, f"{r.old} is not a replica", 0
        if r.new in replicas:
            return False, f"{r.new} is already a replica", 0
        at = boundary(seq, self.interval)
        self.pending = (Group(tuple(r.new if x == r.old else x for x in replicas)), at)
        return True, "", at

    def group_after(self, seq: int) -> GroupInfo:
        """What the checkpoint snapshot at ``seq`` records."""
        if self.pending is not None and self.pending[1] == seq:
            return GroupInfo(self.pending[0].replicas, self.group.replicas, seq)
        if self.previous is not None:
            return GroupInfo(self.group.replicas, self.previous[0].replicas, self.previous[1])
        return GroupInfo(self.group.replicas)

    def reach(self, seq: int) -> bool:
        """A follower applied ``seq``: switch if it is the pending boundary."""
        if self.pending is None or self.pending[1] != seq:
            return False
        self.previous = (self.group, seq)
        self.group, self.pending = self.pending[0], None
        return True

    def adopt(self, info: GroupInfo | None, seq: int) -> bool:
        """A stable checkpoint at ``seq`` names ``info``: True if the group changed."""
        self.pending = None if self.pending is None or self.pending[1] <= seq else self.pending
        if info is None:
            return False
        if info.previous and info.switched_at:
            self.previous = (Group(info.previous), info.switched_at)
        if info.replicas == self.group.replicas:
            return False
        if not info.previous:
            self.previous = (self.group, seq)
        self.group = Group(info.replicas)
        return True

    def signers(self, seq: int) -> Group:
        """The group whose 2f+1 CHECKPOINTs prove a checkpoint at ``seq``."""
        if self.pending is not None and seq > self.pending[1]:
            return self.pending[0]
        if self.previous is not None and seq <= self.previous[1]:
            return self.previous[0]
        return self.group

    def note_link(self, link: GroupLink) -> None:
        if any(held.seq == link.seq for held in self.links):
            return
        self.links = sorted([*self.links, link], key=lambda held: held.seq)[-MAX_LINKS:]

    def chain_signers(
        self, checker: CheckedVerifier, chain: tuple[GroupLink, ...], seq: int
    ) -> tuple[Group | None, list[GroupLink]]:
        """The group whose CHECKPOINTs prove the state at ``seq``, reached from the group
        known here through ``chain`` -- the switches this host missed, each proven by
        2f+1 of the group before it -- and the links that got there; (None, []) if a
        link fails its proof."""
        group = self.pending[0] if self.pending is not None and seq > self.pending[1] else self.group
        known = max(self.previous[1] if self.previous else 0, self.pending[1] if self.pending else 0)
        used: list[GroupLink] = []
        for link in sorted(chain, key=lambda held: held.seq):
            info = parse_head(link.head)
            if link.seq <= known or link.seq > seq or info is None or info.switched_at != link.seq:
                continue
            if info.previous != group.replicas:
                continue  # does not start from the group we reached
            digest = headed_digest(link.head, link.app_digest)
            if not valid_proof(checker, group, link.seq, digest, link.proof):
                return None, []
            used.append(link)
            if link.seq == seq:
                break  # the state at a switch is proven by the group before it
            group = Group(info.replicas)
        return group, used
