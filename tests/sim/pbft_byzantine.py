"""Byzantine behaviours for simulated PBFT replicas (test harness only).

A Byzantine replica runs the real core; its behaviour rewrites what the core
sends (``mangle``), adds messages when it receives one (``on_receive``) and may
hold everything back (``delay``).  It signs with its own key only: it can lie,
equivocate and replay, but a message it makes in another replica's name
carries a signature that does not verify.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from agent.pbft.messages import (
    Checkpoint,
    Commit,
    NewView,
    Outbound,
    Prepare,
    PrePrepare,
    Reply,
    Request,
)
from agent.pbft.signing import batch_digest, sign


class Behaviour:
    name = "correct"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def mangle(self, net: Any, node: Any, messages: list[Outbound]) -> list[Outbound]:
        return [self._lie(net, node, out) for out in messages]

    def on_receive(self, net: Any, node: Any, msg: Any) -> list[Outbound]:
        return []

    def delay(self, net: Any) -> int:
        return 0

    def _lie(self, net: Any, node: Any, out: Outbound) -> Outbound:
        """Every Byzantine replica answers clients with a wrong result."""
        if isinstance(out.msg, Reply):
            lie = dataclasses.replace(out.msg, result=b'"lie"')
            return Outbound(out.to, sign(net.signers[node.node_id], lie))
        return out

    def _signed(self, net: Any, node: Any, msg: Any) -> Any:
        return sign(net.signers[node.node_id], msg)

    def _to_all(self, net: Any, node: Any, msg: Any) -> list[Outbound]:
        return [Outbound(r, msg) for r in net.replica_ids if r != node.node_id]


class Equivocate(Behaviour):
    """Two pre-prepares for one view and seq (different digests) to two halves of
    the group; PREPAREs and COMMITs with a random digest to some peers."""

    name = "equivocate"

    def mangle(self, net: Any, node: Any, messages: list[Outbound]) -> list[Outbound]:
        out = []
        for m in super().mangle(net, node, messages):
            mine = getattr(m.msg, "frm", None) == node.node_id
            half = mine and m.to in net.replica_ids[: len(net.replica_ids) // 2]
            if isinstance(m.msg, PrePrepare) and half:
                reqs = tuple(reversed(m.msg.requests)) if len(m.msg.requests) > 1 else ()
                if batch_digest(reqs) == m.msg.digest:
                    reqs = ()
                other = dataclasses.replace(m.msg, requests=reqs, digest=batch_digest(reqs))
                out.append(Outbound(m.to, self._signed(net, node, other)))
            elif isinstance(m.msg, Prepare | Commit) and half and self.rng.random() < 0.5:
                other = dataclasses.replace(m.msg, digest=self.rng.randbytes(32))
                out.append(Outbound(m.to, self._signed(net, node, other)))
            else:
                out.append(m)
        return out


class Forge(Behaviour):
    """Messages in other replicas' names (its own signature, or random bytes)."""

    name = "forge"

    def mangle(self, net: Any, node: Any, messages: list[Outbound]) -> list[Outbound]:
        out = super().mangle(net, node, messages)
        others = [r for r in net.replica_ids if r != node.node_id]
        for m in messages[:4]:
            msg = m.msg
            if isinstance(msg, Prepare | Commit | Checkpoint | PrePrepare):
                victim = self.rng.choice(others)
                fake = dataclasses.replace(msg, frm=victim)
                if self.rng.random() < 0.5:
                    fake = dataclasses.replace(fake, sig=net.signers[node.node_id].sign(b"x"))
                else:
                    fake = dataclasses.replace(fake, sig=self.rng.randbytes(len(msg.sig) or 32))
                out.extend(self._to_all(net, node, fake))
        if self.rng.random() < 0.1:
            client = self.rng.choice(net.client_ids)
            req = Request(
                client, 10_000 + self.rng.randrange(1000), b'["put","x","forged"]', self.rng.randbytes(32)
            )
            out.extend(self._to_all(net, node, req))
        if self.rng.random() < 0.05:
            nv = NewView(node.node_id, node.core.view + 1, (), (), b"")
            out.extend(self._to_all(net, node, self._signed(net, node, nv)))
        return out


class Replay(Behaviour):
    """Resends old, validly signed messages (others' and its own) at random."""

    name = "replay"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.seen: list[Any] = []

    def on_receive(self, net: Any, node: Any, msg: Any) -> list[Outbound]:
        if len(self.seen) < 400:
            self.seen.append(msg)
        elif self.rng.random() < 0.2:
            self.seen[self.rng.randrange(len(self.seen))] = msg
        out = []
        if self.seen and self.rng.random() < 0.3:
            old = self.rng.choice(self.seen)
            out.append(Outbound(self.rng.choice(net.replica_ids), old))
        return out


class Silent(Behaviour):
    """Sends nothing at all (a silent primary when it is one)."""

    name = "silent"

    def mangle(self, net: Any, node: Any, messages: list[Outbound]) -> list[Outbound]:
        return []


class Slow(Behaviour):
    """Everything it sends arrives late (a slow primary when it is one)."""

    name = "slow"

    def delay(self, net: Any) -> int:
        return self.rng.randint(8, 20)


class OutOfWindow(Behaviour):
    """Signed protocol messages for sequence numbers outside the watermarks, and
    checkpoints at numbers that are not checkpoint numbers."""

    name = "out-of-window"

    def mangle(self, net: Any, node: Any, messages: list[Outbound]) -> list[Outbound]:
        out = super().mangle(net, node, messages)
        if self.rng.random() < 0.3:
            core = node.core
            seq = self.rng.choice(
                (core.high + self.rng.randint(1, 200), max(0, core.low - self.rng.randint(0, 5)))
            )
            digest = self.rng.randbytes(32)
            for msg in (
                PrePrepare(node.node_id, core.view, seq, batch_digest(()), ()),
                Prepare(node.node_id, core.view, seq, digest),
                Commit(node.node_id, core.view, seq, digest),
                Checkpoint(node.node_id, seq * 3 + 1, digest),
            ):
                out.extend(self._to_all(net, node, self._signed(net, node, msg)))
        return out


class VoteAll(Behaviour):
    """PREPAREs and COMMITs for every digest it hears of, at every seq."""

    name = "vote-all"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.voted: set[tuple[int, int, bytes]] = set()

    def on_receive(self, net: Any, node: Any, msg: Any) -> list[Outbound]:
        if not isinstance(msg, PrePrepare | Prepare | Commit):
            return []
        key = (msg.view, msg.seq, msg.digest)
        if key in self.voted or len(self.voted) > 5000:
            return []
        self.voted.add(key)
        out = []
        for kind in (Prepare, Commit):
            vote = self._signed(net, node, kind(node.node_id, msg.view, msg.seq, msg.digest))
            out.extend(self._to_all(net, node, vote))
        return out


class Mixed(Behaviour):
    """A bit of everything, chosen per message."""

    name = "mixed"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.parts: list[Behaviour] = [
            Equivocate(rng),
            Forge(rng),
            Replay(rng),
            OutOfWindow(rng),
            VoteAll(rng),
        ]

    def mangle(self, net: Any, node: Any, messages: list[Outbound]) -> list[Outbound]:
        return self.rng.choice(self.parts).mangle(net, node, messages)

    def on_receive(self, net: Any, node: Any, msg: Any) -> list[Outbound]:
        return self.rng.choice(self.parts).on_receive(net, node, msg)


BEHAVIOURS: tuple[type[Behaviour], ...] = (
    Equivocate,
    Forge,
    Replay,
    Silent,
    Slow,
    OutOfWindow,
    VoteAll,
    Mixed,
)
