"""How soon ``meshtui demo``'s own workload shows its first steal and first hot→cold move.

Runs the demo's mesh and workload headless (real agents, ``meshtui.demo``), listens
to the ``migrations`` topic on the first agent, and prints the seconds from start
to the first move of each reason, beside the issue-18 anchor (both within 90 s,
no key pressed) and the load average.  Heavy (N agents): run under the lock::

    flock /work/shared_notes/heavy.lock .venv/bin/python tests/bench/bench_demo_moves.py [NODES] [RUNS]
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from meshtui.client import ControlClient
from meshtui.demo import DEMO_SLOTS, LocalMesh, Workload

ANCHOR = 90.0


async def first_moves(mesh: LocalMesh, started: float, limit: float) -> dict[str, float]:
    client = await ControlClient.connect_unix(mesh.nodes[0].socket_path)
    seen: dict[str, float] = {}
    try:
        sub = await client.subscribe(["migrations"])

        async def listen() -> None:
            async for event in sub:
                reason = str(event.get("data", {}).get("reason", ""))
                seen.setdefault(reason, time.monotonic() - started)
                if "steal" in seen and "hot-cold" in seen:
                    return

        await asyncio.wait_for(listen(), limit)
    except TimeoutError:
        pass
    finally:
        await client.close()
    return seen


def one_run(nodes: int) -> dict[str, float]:
    mesh = LocalMesh(nodes, slots=DEMO_SLOTS)
    started = time.monotonic()
    mesh.start()
    load = Workload(mesh)
    try:
        assert mesh.wait_ready(30), "agents did not start"
        load.start()
        return asyncio.run(first_moves(mesh, started, ANCHOR + 30))
    finally:
        load.stopping.set()
        mesh.stop()


def main() -> None:
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for n in range(runs):
        seen = one_run(nodes)
        load1 = os.getloadavg()[0]
        shown = "  ".join(f"{reason} {at:5.1f}s" for reason, at in sorted(seen.items(), key=lambda kv: kv[1]))
        print(f"run {n + 1}/{runs} ({nodes} agents): first {shown or 'no move'}  (anchor: steal and "
              f"hot-cold within {ANCHOR:g} s)  load1 {load1:.2f}", flush=True)


if __name__ == "__main__":
    main()
