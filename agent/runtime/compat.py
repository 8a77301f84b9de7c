"""Mixed-version clusters: new command kinds only once every member applies them.

Theory of operation
-------------------
A rolling upgrade (``meshtui upgrade``, one host at a time) runs old and new
agents side by side for minutes.  The replicated state machine must stay the
same on all of them, and an agent applies a command kind it does not know as
a refused no-op (``agent/state/commands.py``: "unknown op").  So a command kind
added in a release may be proposed only once *every* member of the cluster
runs a release that applies it; until then its proposer writes what it means
in the older commands, which every member applies alike.  Consul's and Nomad's
autopilot gate their newer Raft features on every server's version the same
way (etcd on its "cluster version").

==============  =========  ==================================================
command         since      written for an older cluster as
==============  =========  ==================================================
``batch``       0.2.0      each command it carries, proposed one after another
                           in order; the results are put together as the
                           batch's apply would (``[[ok, value, error], ...]``)
``task.place``  0.2.0      one ``task.assign`` per placement, in order; the
                           result is the place's (``{placed, refused}``)
``kv.puts``     0.3.0      the ``batch`` of its puts' own commands (the group
                           commit, ``runtime/consensus_requests.py``, picks
                           the form per entry: it never reaches
                           ``CompatProposer``)
``empty:N``     0.4.0      (not a kind: an entry of a ``task.finish``'s
                           ``replicas``, which every release applies alike)
                           the run's empty streams replicated as items, since
                           older agents read them only from a holder
                           (``runtime/artifacts.py``, ``QUIET_RELEASE``)
==============  =========  ==================================================

A member's release is the ``version`` its SWIM metadata gossips.  Every member
SWIM lists counts, whatever its state (a dead or left host may come back
running its old release), and so does every voter SWIM does not list (its
release is unknown: the older form is used).  The check is cheap (a pass over
the member list) and made per proposal, so the cluster switches to the new
kinds as soon as the last host is upgraded.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import msgpack

from agent.state import builders
from agent.state.commands import Batch, TaskPlace, decode_command
from agent.state.machine import ApplyResult
from agent.swim.members import MemberView

BATCH_RELEASE: Final = (0, 2, 0)
"""The first release whose state machine applies ``batch`` and ``task.place``."""

COMPACT_RELEASE: Final = (0, 3, 0)
"""The first release whose state machine applies ``kv.puts``."""

QUIET_RELEASE: Final = (0, 4, 0)
"""The first release that answers an ``empty:<epoch>`` run's streams from the task's
record (its finish's marker) instead of asking a holder for them."""

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")

_BATCH_MARK: Final[bytes] = msgpack.packb("op") + msgpack.packb(Batch.OP)
"""How an encoded ``batch`` command goes on after its map header: ``encode_command``
writes ``op`` first."""
_PLACE_MARK: Final[bytes] = msgpack.packb("op") + msgpack.packb(TaskPlace.OP)
"""The same for ``task.place``."""

Propose = Callable[[bytes], Awaitable[ApplyResult]]


def is_batch(command: bytes) -> bool:
    """Whether encoded ``command`` is a ``batch`` (without decoding it; a batch
    must not go inside another: the state machine refuses that)."""
    return command[1 : 1 + len(_BATCH_MARK)] == _BATCH_MARK


def _is_newer_kind(command: bytes) -> bool:
    """Whether encoded ``command`` is of a kind the gate applies to (module doc)."""
    after_header = command[1 : 1 + max(len(_BATCH_MARK), len(_PLACE_MARK))]
    return after_header.startswith(_BATCH_MARK) or after_header.startswith(_PLACE_MARK)


def release_of(version: str) -> tuple[int, int, int] | None:
    """``"0.2.0"`` -> ``(0, 2, 0)``; None for what is not ``X.Y.Z`` at its start."""
    match = _VERSION.match(version)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch)


def cluster_applies(versions: Iterable[str | None], release: tuple[int, int, int]) -> bool:
    """Whether every member (``None``: a release not known) runs ``release`` or later."""
    for version in versions:
        found = release_of(version) if version is not None else None
        if found is None or found < release:
            return False
    return True


class ReleaseGate:
    """The gate for ``batch`` and ``task.place`` (called) and for ``kv.puts``
    (``compact()``): every member in ``members()`` (SWIM's list, whatever their
    state) gossips ``BATCH_RELEASE`` (``COMPACT_RELEASE``) or later."""

    def __init__(self, members: Callable[[], Iterable[MemberView]]) -> None:
        self._members = members

    def __call__(self) -> bool:
        return cluster_applies((m.meta.version for m in self._members()), BATCH_RELEASE)

    def compact(self) -> bool:
        return cluster_applies((m.meta.version for m in self._members()), COMPACT_RELEASE)


def quiet_outputs_read(members: Callable[[], Iterable[MemberView]]) -> Callable[[], bool]:
    """Whether every member in ``members()`` reads ``empty:<epoch>`` markers
    (``QUIET_RELEASE``): then a run's empty streams need not be replicated."""
    return lambda: cluster_applies((m.meta.version for m in members()), QUIET_RELEASE)


def batches_applied(members: Callable[[], Iterable[MemberView]]) -> ReleaseGate:
    """The gate of the newer command kinds over ``members()`` (``ReleaseGate``)."""
    return ReleaseGate(members)


class CompatProposer:
    """``propose`` for the state machine's newer command kinds (module doc): passes a
    command through while the cluster applies its kind, writes it in the older
    commands while it does not."""

    def __init__(self, propose: Propose, allowed: Callable[[], bool]) -> None:
        """``allowed()``: whether the cluster applies the newer kinds now
        (``batches_applied``)."""
        self._propose = propose
        self._allowed = allowed
        self.downgraded = 0
        """Commands written in the older form (a counter for tests and reports)."""

    async def __call__(self, command: bytes) -> ApplyResult:
        # Only the newer kinds ask about the cluster: every other command (a report,
        # a single submit) goes straight through.
        if not _is_newer_kind(command) or self._allowed():
            return await self._propose(command)
        decoded = decode_command(command)
        body = decoded.body
        if isinstance(body, Batch):
            self.downgraded += 1
            results = [await self._propose(item) for item in body.cmds]
            return ApplyResult(True, [[r.ok, r.value, r.error] for r in results], None)
        if isinstance(body, TaskPlace):
            self.downgraded += 1
            placed, refused = 0, []
            for task, host, epoch in zip(body.tasks, body.hosts, body.epochs, strict=True):
                one = builders.cmd_task_assign(task, body.nodes[host], epoch, "placed", "", decoded.at)
                result = await self._propose(one)
                if result.ok:
                    placed += 1
                else:
                    refused.append([task, result.error or "refused"])
            return ApplyResult(True, {"placed": placed, "refused": refused}, None)
        return await self._propose(command)
