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

``MESH_SEED=n`` replays one schedule; a failure names its seed.
"""

from __future__ import annotations

import os
from collections import Counter

from sim.pbft_replace_faults import CrashAroundSwitch

CRASH_SCHEDULES = 40


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
