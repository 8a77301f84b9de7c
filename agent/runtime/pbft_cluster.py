"""Forming a PBFT cluster: whose key is whose, and which hosts are the replicas.

Keys.  Every PBFT agent sends KEY-ANNOUNCE (its raw Ed25519 public key, signed
by that key) to every alive member every ``ANNOUNCE_EVERY`` seconds.  A key is
believed only for the id it derives (``identity_key.id_matches_key``): the
shared cluster key lets a member claim any sender, but not own another's id.

Replicas.  Once ``replicas`` alive members have known keys, the founder (the
bootstrap gate's choice: the smallest id, ``runtime/bootstrap.py``) signs a
GENESIS naming the first ``replicas`` of them in id order, with their keys,
and every agent that has none adopts it (checking each key against its id and
the founder's signature) and keeps it in its data dir.  Formation trusts the
founder as Raft's bootstrap does; after it, the replica set changes only
through the protocol.  Fewer hosts than ``replicas``: the founder waits and
says so in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.identity_key import NodeKey, fingerprint, id_matches_key
from agent.pbft.messages import Genesis, KeyAnnounce
from agent.pbft.signing import Ed25519Signer, Ed25519Verifier, payload, sign

log = logging.getLogger("agent.pbft")

ANNOUNCE_EVERY = 2.0
"""Seconds between KEY-ANNOUNCEs (and GENESIS gossip) to the alive members."""


class PbftCluster:
    """Known keys and the genesis; sans-IO apart from the ``send`` callable."""

    def __init__(self, node_id: str, key: NodeKey, replicas: int, genesis: Genesis | None) -> None:
        self.node_id = node_id
        self.signer = Ed25519Signer(node_id, key.private)
        self.verifier = Ed25519Verifier({node_id: key.public})
        self.keys: dict[str, bytes] = {node_id: key.public}
        self.replica_count = replicas
        self.genesis = genesis
        self._announce = sign(self.signer, KeyAnnounce(node_id, key.public))
        self._waiting_said = 0
        if genesis is not None:
            self._learn_genesis_keys(genesis)

    def _learn_genesis_keys(self, genesis: Genesis) -> None:
        for node, public in zip(genesis.replicas, genesis.keys, strict=True):
            self._learn(node, public)

    def _learn(self, node: str, public: bytes) -> None:
        if node not in self.keys:
            self.keys[node] = public
            self.verifier.add(node, public)

    def learn(self, node: str, public: bytes) -> bool:
        """A key named by a replace request the replicas ordered: believed only for the
        id it derives (as an announce)."""
        if node in self.keys or not id_matches_key(node, public):
            return False
        self._learn(node, public)
        return True

    def on_announce(self, msg: KeyAnnounce) -> bool:
        """A peer's key: True if it is new and checks out."""
        if msg.frm in self.keys or not id_matches_key(msg.frm, msg.public):
            return False
        probe = Ed25519Verifier({msg.frm: msg.public})
        if not probe.verify(msg.frm, payload(msg), msg.sig):
            return False
        self._learn(msg.frm, msg.public)
        return True

    def on_genesis(self, msg: Genesis) -> bool:
        """True if this node had no genesis and adopts ``msg``."""
        if self.genesis is not None or not self.valid_genesis(msg):
            return False
        self.genesis = msg
        self._learn_genesis_keys(msg)
        return True

    def valid_genesis(self, msg: Genesis) -> bool:
        if len(msg.replicas) != len(msg.keys) or len(msg.replicas) < 4 or msg.frm not in msg.replicas:
            return False
        if len(set(msg.replicas)) != len(msg.replicas):
            return False
        if not all(id_matches_key(n, k) for n, k in zip(msg.replicas, msg.keys, strict=True)):
            return False
        founder = msg.keys[msg.replicas.index(msg.frm)]
        return Ed25519Verifier({msg.frm: founder}).verify(msg.frm, payload(msg), msg.sig)

    def found(self, alive: set[str]) -> Genesis | None:
        """The founder's GENESIS once ``replicas`` alive members have known keys."""
        if self.genesis is not None:
            return None
        ready = sorted(n for n in alive | {self.node_id} if n in self.keys)
        if len(ready) < self.replica_count:
            if len(ready) != self._waiting_said:
                self._waiting_said = len(ready)
                log.warning(
                    "PBFT needs %d hosts to form a cluster; %d with known keys so far: waiting",
                    self.replica_count,
                    len(ready),
                )
            return None
        chosen = tuple(ready[: self.replica_count])
        if self.node_id not in chosen:
            return None
        genesis = sign(self.signer, Genesis(self.node_id, chosen, tuple(self.keys[n] for n in chosen)))
        self.genesis = genesis
        return genesis

    def fingerprint(self, node: str) -> str | None:
        public = self.keys.get(node)
        return fingerprint(public) if public is not None else None

    def gossip(self, alive: list[str], send: Callable[[str, object], None]) -> None:
        """Announce our key (and the genesis, once known) to every alive member."""
        for node in alive:
            if node == self.node_id:
                continue
            send(node, self._announce)
            if self.genesis is not None:
                send(node, self.genesis)
