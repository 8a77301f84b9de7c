"""Seeded PBFT schedules: crash faults (up to f), Byzantine replicas (f), loss,
duplication, reordering and partitions; safety, liveness after healing, the log
bound and linearizability asserted (``sim/pbft_schedules.py``).  f+1 Byzantine
replicas are run and *recorded* (printed), not asserted: PBFT promises nothing there.

``MESH_SEED=n`` replays one schedule (``MESH_SEED_REAL=1`` with real Ed25519).
"""

from __future__ import annotations

import os
import time
from collections import Counter

from sim.pbft_schedules import run_schedule, seeds
from sim.pbftnet import InvariantViolation

STANDIN_SCHEDULES = 290
REAL_SCHEDULES = 24


def _run_many(seed_list: list[int], real: bool) -> dict[str, int]:
    totals: Counter[str] = Counter()
    started = time.perf_counter()
    for seed in seed_list:
        try:
            stats = run_schedule(seed, real_signatures=real)
        except Exception as exc:
            how = "MESH_SEED_REAL=1 " if real else ""
            raise AssertionError(f"schedule failed; replay with {how}MESH_SEED={seed}: {exc}") from exc
        totals["schedules"] += 1
        totals.update(stats)
    totals["ms"] = int((time.perf_counter() - started) * 1000)
    print(dict(totals))
    return dict(totals)


def _real_replay() -> bool:
    return bool(os.environ.get("MESH_SEED")) and os.environ.get("MESH_SEED_REAL") == "1"


def test_schedules_with_standin_signatures() -> None:
    if _real_replay():
        return
    totals = _run_many(seeds(STANDIN_SCHEDULES, 0), real=False)
    if not os.environ.get("MESH_SEED"):
        assert totals["ops"] > totals["schedules"] * 10, "schedules made too little progress"
        assert totals["view_changes"] > 0, "no view change happened"
        assert totals["byzantine_runs"] > totals["schedules"] // 4
        assert totals["evidence"] > 0, "no equivocation was caught"
        assert totals["rejected_sigs"] > 0, "no forged signature was seen"


def test_schedules_with_ed25519() -> None:
    if os.environ.get("MESH_SEED") and not _real_replay():
        return
    totals = _run_many(seeds(REAL_SCHEDULES, 10_000), real=True)
    if not os.environ.get("MESH_SEED"):
        assert totals["schedules"] >= 20


def test_a_schedule_is_deterministic() -> None:
    assert run_schedule(7) == run_schedule(7)


def test_f_plus_one_byzantine_is_recorded() -> None:
    """With f+1 Byzantine replicas PBFT's guarantees are gone; record what breaks."""
    outcomes: Counter[str] = Counter()
    for seed in seeds(12, 20_000):
        try:
            run_schedule(seed, over=True)
            outcomes["held"] += 1
        except InvariantViolation as exc:
            text = str(exc)
            if "did not" in text:
                outcomes["liveness lost"] += 1
            elif "linearizable" in text:
                outcomes["linearizability lost"] += 1
            else:
                outcomes["safety lost"] += 1
    print(f"f+1 Byzantine replicas, {sum(outcomes.values())} schedules: {dict(outcomes)}")
