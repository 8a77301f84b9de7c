"""Replica replacement under faults (``sim/pbft_replace_faults.py``), seeded.

Limit 1 of the replacement notes: a crash in the middle of the switch.  One
host -- OLD, NEW, the primary or another replica -- crashes at one of four
moments (just after the replace request was sent; when the first replica
executed it, between commit and boundary; when the first replica switched,
others still before it; shortly after every one switched), half the time
tearing a Ready (written, not synced), stays down 0-250 steps and restarts
from its durable state, with the role the runtime would build from its
group file.  Safety on every Ready; every acknowledged write kept; one group
everywhere; a write commits after healing, and again with another member down.

Limit 2: a host cut off through two successive replacements (a replica of
both new groups, or the first one's OLD), then healed.  The group it knows
shares fewer than 2f+1 replicas with the one that signs the state now; the
state comes with the chain of switches (``GroupLink``: each proven by 2f+1 of
the group before it), which it checks link by link.  It must reach the group
and every acknowledged write; a replica must vote again (with one other member
down, a write needs it).  A link that fails its proof is refused.

Limit 3: a replica restarted from its stable checkpoint, or a replacement's NEW
that reached it by state transfer, is sent again a request executed in the K
seqs before that state: it starts no view change (all views stay), and nobody
executes the request again (the checkpoint state carries those requests'
digests); then a write commits with another member down.

``MESH_SEED=n`` replays one schedule; a failure names its seed.  Sweeps:
``python tests/sim/pbft_replace_sweep.py``.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter

from agent.pbft.messages import GroupLink, StableCheckpoint
from agent.pbft.reconfig import GroupInfo, link_of, recent_of, split_snapshot, wrap_snapshot
from agent.pbft.signing import GROUP_MAGIC, headed_digest, state_digest
from sim.pbft_replace_faults import CrashAroundSwitch, ExecutedAgain, MissedTwoReplacements

CRASH_SCHEDULES = 40
LAGGING_SCHEDULES = 10
AGAIN_SCHEDULES = 8


def _seeds(count: int, base: int) -> list[int]:
    forced = os.environ.get("MESH_SEED")
    return [int(forced)] if forced else list(range(base, base + count))


def test_a_crash_around_the_switch_loses_nothing_and_the_group_converges() -> None:
    seen: Counter[str] = Counter()
    for seed in _seeds(CRASH_SCHEDULES, 60_000):
        stats = CrashAroundSwitch(seed).run()
        seen[f"{stats['victim']}@{stats['phase']}"] += 1
        seen["torn"] += int(stats["torn"])
        seen["alone"] += stats["alone"]
    print(dict(seen))


def test_a_host_that_missed_two_replacements_catches_up_through_the_chain() -> None:
    steps = []
    for seed in _seeds(LAGGING_SCHEDULES, 70_000):
        steps.append(MissedTwoReplacements(seed).run()["steps"])
    for seed in _seeds(LAGGING_SCHEDULES // 2, 71_000):
        steps.append(MissedTwoReplacements(seed, replaced=True).run()["steps"])
    print(f"{len(steps)} lagging hosts caught up, steps up to {max(steps)}")


def test_a_chain_link_that_fails_its_proof_is_refused() -> None:
    scenario = MissedTwoReplacements(3, replaced=False)
    scenario.run()
    holder = next(r.core for r in scenario.live_replicas() if len(r.core.membership.links) >= 2)
    chain = tuple(holder.membership.links)
    stranger = scenario.net.replicas[scenario.net.replica_ids[0]].core
    genesis = type(holder.membership)(scenario.net.replica_ids, holder.config.checkpoint_interval)
    top = chain[-1].seq
    group, used = genesis.chain_signers(stranger.checker, chain, top + 8)
    assert group is not None and group.replicas == holder.group.replicas and len(used) == 2
    forged_head = chain[0].head.replace(b'"r', b'"x', 1)
    forged = (GroupLink(chain[0].seq, forged_head, chain[0].app_digest, chain[0].proof), *chain[1:])
    assert genesis.chain_signers(stranger.checker, forged, top + 8) == (None, [])
    short = (GroupLink(chain[0].seq, chain[0].head, chain[0].app_digest, chain[0].proof[:-1]), *chain[1:])
    assert genesis.chain_signers(stranger.checker, short, top + 8) == (None, [])


def test_a_request_executed_before_the_restored_state_is_not_taken_for_new() -> None:
    for seed in _seeds(AGAIN_SCHEDULES, 80_000):
        ExecutedAgain(seed).run()
        ExecutedAgain(seed, joined=True).run()


def test_a_crash_around_the_switch_with_seven_replicas() -> None:
    for seed in _seeds(4, 62_000):
        CrashAroundSwitch(seed, n=7).run()


def test_the_checkpoint_state_carries_group_and_recent_requests_and_a_switch_proves_apart() -> None:
    info = GroupInfo(("a", "b", "c", "e"), ("a", "b", "c", "d"), 16)
    recent = ((9, (b"1" * 16, b"2" * 16)), (16, (b"3" * 16,)))
    snapshot = wrap_snapshot(info, b"app state", recent)
    assert split_snapshot(snapshot) == (info, b"app state")
    assert recent_of(snapshot) == recent
    plain = wrap_snapshot(info, b"app")
    assert recent_of(plain) == () and split_snapshot(plain)[1] == b"app"
    head, _, body = snapshot[len(GROUP_MAGIC) :].partition(b"\n")
    assert state_digest(snapshot) == headed_digest(head, hashlib.sha256(body).digest())
    assert state_digest(b"bare") == hashlib.sha256(b"bare").digest()
    link = link_of(StableCheckpoint(16, state_digest(snapshot), snapshot, ()))
    assert link is not None and link.seq == 16
    assert headed_digest(link.head, link.app_digest) == state_digest(snapshot)
    assert link_of(StableCheckpoint(24, b"", snapshot, ())) is None  # not the switch's checkpoint
