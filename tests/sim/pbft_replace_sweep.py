"""Long seed sweeps of the replacement-under-faults sims (not collected by pytest).

    nice -n 15 .venv/bin/python tests/sim/pbft_replace_sweep.py crash 60000 300
    nice -n 15 .venv/bin/python tests/sim/pbft_replace_sweep.py lagging 70000 100
    nice -n 15 .venv/bin/python tests/sim/pbft_replace_sweep.py lagging-replaced 70000 100
    nice -n 15 .venv/bin/python tests/sim/pbft_replace_sweep.py again 80000 200
    nice -n 15 .venv/bin/python tests/sim/pbft_replace_sweep.py again-joined 80000 200

Prints every failing seed (replay one with ``MESH_SEED=n`` on the test) and a tally.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim import pbft_replace_faults as faults

KINDS: dict[str, Any] = {
    "crash": faults.CrashAroundSwitch,
    "crash7": lambda seed: faults.CrashAroundSwitch(seed, n=7),
    "lagging": faults.MissedTwoReplacements,
    "lagging-replaced": lambda seed: faults.MissedTwoReplacements(seed, replaced=True),
    "again": faults.ExecutedAgain,
    "again-joined": lambda seed: faults.ExecutedAgain(seed, joined=True),
}


def main(kind: str, first: int, count: int) -> int:
    scenario = KINDS[kind]
    tally: Counter[str] = Counter()
    bad: list[int] = []
    started = time.perf_counter()
    for seed in range(first, first + count):
        try:
            stats = scenario(seed).run()
        except AssertionError as exc:
            bad.append(seed)
            print(f"MESH_SEED={seed}: {str(exc)[:300]}")
            continue
        tally["ok"] += 1
        tally["alone"] += int(stats.get("alone", 0))
    print(f"{kind}: {count} seeds from {first}, {len(bad)} failed {bad}, {dict(tally)}, "
          f"{time.perf_counter() - started:.1f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
