"""Which PBFT role this host plays, and replacing a replica (``meshtui replicas replace``).

``PbftRoles`` is a mixin of ``PbftDriver`` (as ``swim/rules.py`` is of
``SwimNode``): it builds the replica core or the follower for the current
group, switches between them when a replacement takes effect, and offers the
``replicas.*`` control methods their port.

* The group is the genesis one until a replacement; then the stable
  checkpoint's snapshot names it (the core adopts it), and ``<data_dir>/pbft/group``
  keeps it for a host that follows or joined (``PbftStorage.save_group``).
* The replaced replica's core goes quiet (``PbftReplica.retired``): the driver
  makes the host a follower from the seq it executed (the new group sends it
  EXECUTEDs).  A follower that finds itself in the group after a boundary
  becomes a replica with nothing but the group: its core catches up by state
  transfer (a stale replica state from an earlier membership is reset).
* ``replace_replica`` checks what it can locally (one line each, ``ValueError``:
  the control API's ``bad_request``) and submits
  the replace request through the protocol; every correct replica decides it
  the same way (``agent/pbft/reconfig.py``), and the result comes back on f+1
  matching replies.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.errors import NoQuorumError
from agent.identity_key import id_matches_key
from agent.pbft.client import PbftClient, PbftFollower
from agent.pbft.config import PbftConfig
from agent.pbft.core import PbftReplica
from agent.pbft.messages import Genesis, Request, StableCheckpoint
from agent.pbft.reconfig import GroupInfo, decode_replace, encode_replace, split_snapshot
from agent.pbft.viewchange import Group
from agent.runtime.pbft_cluster import PbftCluster
from agent.runtime.pbft_storage import PbftStorage
from agent.state.commands import Command
from agent.state.machine import ApplyResult, StateMachine

log = logging.getLogger("agent.pbft")

Previous = tuple[tuple[str, ...], int] | None
"""The group before the last replacement and the checkpoint it ended at."""


class PbftRoles(abc.ABC):
    """Replica/follower roles and the replica group; :class:`PbftDriver` provides the
    state below and the two hooks."""

    node_id: str
    pbft_config: PbftConfig
    _cluster: PbftCluster
    _storage: PbftStorage
    _state: StateMachine
    _replica: PbftReplica | None
    _client: PbftClient | None
    _follower: PbftFollower | None
    _alive: Callable[[], list[str]]

    @abc.abstractmethod
    def _report_role(self) -> None:
        """Tell the runtime this host's role (replica, follower) after a change."""

    @abc.abstractmethod
    def submit(
        self,
        command: bytes,
        forward: Callable[[str, object], None] | None = None,
        finish: Callable[[ApplyResult], Any] | None = None,
        decoded: Command | None = None,
    ) -> asyncio.Future[Any]:
        """Send ``command`` as a signed request (used here for ``replicas.replace``)."""

    # ------------------------------------------------------------ the group

    def group(self) -> tuple[str, ...]:
        """The replicas as this host knows them now."""
        if self._replica is not None:
            return self._replica.group.replicas
        if self._follower is not None:
            return self._follower.group.replicas
        genesis = self._cluster.genesis
        return genesis.replicas if genesis is not None else ()

    def _build(self, genesis: Genesis) -> None:
        info = self._storage.load_group() or GroupInfo(genesis.replicas)
        previous = (info.previous, info.switched_at) if info.previous else None
        if self.node_id in info.replicas:
            self._become_replica(info.replicas, previous)
        else:
            # A replaced replica restarting: its last stable checkpoint (the switch's, if it
            # went down at once) is handed on until the new group runs past it.
            handoff = self._storage.load().stable
            self._storage.close()
            self._become_follower(info.replicas, previous, applied=0, handoff=handoff)
        retry = max(1, self.pbft_config.view_change_ticks // 2)
        cluster = self._cluster
        # Request ids unique across restarts (replicas answer a known (client, rid) with
        # the reply they stored for it): the wall clock in microseconds.
        first_rid = time.time_ns() // 1000
        self._client = PbftClient(
            cluster.signer, cluster.verifier, info.replicas, retry_ticks=retry, first_rid=first_rid
        )
        self._check_roles()
        self._report_role()

    def _become_replica(self, replicas: tuple[str, ...], previous: Previous) -> None:
        restored = self._storage.load()
        if restored.stable is not None:
            info, app = split_snapshot(restored.stable.snapshot)
            if info is not None and self.node_id not in info.replicas:
                # A replica state from an earlier membership: start over from state transfer.
                self._storage.reset()
                restored = self._storage.load()
            else:
                self._state.restore(app)
        cluster = self._cluster
        self._replica = PbftReplica(
            self.pbft_config, cluster.signer, cluster.verifier, replicas, restored, previous=previous
        )

    def _become_follower(
        self, replicas: tuple[str, ...], previous: Previous, applied: int,
        handoff: StableCheckpoint | None = None,
    ) -> None:
        cluster = self._cluster
        config = self.pbft_config
        self._follower = PbftFollower(
            cluster.signer, cluster.verifier, replicas, config.window,
            interval=config.checkpoint_interval, applied=applied, previous=previous, handoff=handoff,
        )

    def _check_roles(self) -> None:
        """After a replacement took effect here: retire into a follower, or join as a replica."""
        replica, follower = self._replica, self._follower
        if replica is not None and replica.retired:
            prev = replica.membership.previous
            previous = (prev[0].replicas, prev[1]) if prev else None
            self._replica = None
            self._become_follower(
                replica.group.replicas, previous, applied=replica.executed, handoff=replica.stable_checkpoint
            )
            self._save_group(replica.group.replicas, previous)
            log.warning("replaced: this host now follows the PBFT replicas %s", ",".join(self.group()))
        elif follower is not None and self.node_id in follower.group.replicas:
            prev = follower.membership.previous
            previous = (prev[0].replicas, prev[1]) if prev else None
            self._follower = None
            self._become_replica(follower.group.replicas, previous)
            self._save_group(follower.group.replicas, previous)
            log.warning("this host is now a PBFT replica; catching up by state transfer")
        client = self._client
        current = self.group()
        if client is not None and current and client.group.replicas != current:
            client.group = Group(current)
            if self._replica is None and self._follower is not None:
                self._save_group(current, self._follower_previous())

    def _follower_previous(self) -> Previous:
        prev = self._follower.membership.previous if self._follower is not None else None
        return (prev[0].replicas, prev[1]) if prev else None

    def _save_group(self, replicas: tuple[str, ...], previous: Previous) -> None:
        self._storage.save_group(GroupInfo(replicas, *(previous or ((), 0))))

    # ------------------------------------------------------------ executing a replace request

    def _replace_result(self, request: Request) -> ApplyResult:
        """What this replica replies to a replace request (every correct one the same)."""
        r = decode_replace(request.op)
        self.learn_replace_key(request)
        outcome = self._replica.replace_outcome(request) if self._replica is not None else None
        if outcome is None or r is None:
            return ApplyResult(False, None, "not a replace request")
        ok, why, at = outcome
        if not ok:
            return ApplyResult(False, None, why)
        return ApplyResult(True, {"old": r.old, "new": r.new, "effective_after": at}, None)

    def learn_replace_key(self, request: Request) -> None:
        r = decode_replace(request.op)
        if r is not None and id_matches_key(r.new, r.key):
            self._cluster.learn(r.new, r.key)

    # ------------------------------------------------------------ the replicas.* port

    def replica_set(self) -> dict[str, Any]:
        """``meshtui replicas``: the group, who follows, the view and primary, a pending change."""
        group = self.group()
        replica = self._replica
        pending = replica.membership.pending if replica is not None else None
        if pending is None and self._follower is not None:
            pending = self._follower.membership.pending
        alive = set(self._alive())
        change = {"replicas": list(pending[0].replicas), "effective_after": pending[1]} if pending else None
        return {
            "engine": "pbft",
            "replicas": list(group),
            "followers": sorted(alive - set(group)),
            "n": len(group),
            "f": max(0, (len(group) - 1) // 3),
            "pending": change,
            "fingerprints": {n: self._cluster.fingerprint(n) for n in group},
        }

    def check_replace(self, old: str, new: str) -> bytes:
        """The replace request's op, or ``ValueError`` with one line saying why not."""
        if self._client is None:
            raise NoQuorumError("the PBFT cluster is not formed yet")
        group = self.group()
        if old not in group:
            raise ValueError(f"replicas replace: {old} is not a replica")
        if new in group:
            raise ValueError(f"replicas replace: {new} is already a replica")
        if new not in set(self._alive()):
            raise ValueError(f"replicas replace: {new} is not a live member")
        key = self._cluster.keys.get(new)
        if key is None or not id_matches_key(new, key):
            raise ValueError(
                f"replicas replace: {new} has no key-derived id (a PBFT host started on a new data dir)"
            )
        return encode_replace(old, new, key)

    async def replace_replica(self, old: str, new: str) -> dict[str, Any]:
        op = self.check_replace(old, new)
        result: ApplyResult = await self.submit(op)
        if not result.ok:
            raise ValueError(f"replicas replace: {result.error}")
        return dict(result.value or {})

