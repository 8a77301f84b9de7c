"""Issue 13's PBFT benchmark, beside Raft, on the same 4 loopback agents' settings in one run.

Run: ``flock /work/shared_notes/heavy.lock .venv/bin/python tests/bench/bench_pbft.py
[--runs 3] [--seconds 5]``.

For each engine (``consensus = "raft"`` with 4 hosts -- Raft's founding rule
makes 3 of them voters and the 4th a learner -- and ``consensus = "pbft"``,
n = 4, f = 1), a fresh cluster of 4 ``mesh-agent`` processes on loopback,
local profile:

1. committed writes/s: 100-byte ``kv.put``s from 4 control connections (one per
   agent) with 32 calls in flight each, for ``--seconds`` after a 1 s warm-up;
2. latency p50/p99 of sequential puts from one client (through the first agent);
3. failover: SIGKILL the leader (Raft) or the primary (PBFT) and time from the
   kill until a write issued after it is acknowledged.

Every figure is printed beside the load average; ``--runs`` repeats the whole
thing (fresh clusters) and the ranges are printed at the end.  PBFT signs and
verifies every message with Ed25519 (``cryptography``), Raft signs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)

from meshtui.client import ClientError, ControlClient, call_sync
from meshtui.demo import LocalMesh

PAYLOAD = 100
IN_FLIGHT = 32
LATENCY_PUTS = 200


def loadavg() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def status(mesh: LocalMesh, name: str) -> dict[str, Any] | None:
    try:
        return dict(call_sync(mesh.node(name).socket_path, "status", {}, 1.0))
    except ClientError:
        return None


def leader(mesh: LocalMesh) -> str | None:
    for node in mesh.nodes:
        st = status(mesh, node.name) if node.running else None
        if st and st["consensus"]["role"] in ("leader", "primary"):
            return str(st["node"])
    return None


def start(engine: str, base: Path) -> LocalMesh:
    cfg = base / "engine.toml"
    cfg.write_text(f'consensus = "{engine}"\n')
    mesh = LocalMesh(4, base_dir=base, extra_args=["--config", str(cfg)])
    mesh.start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if leader(mesh) and writes_ok(mesh):
            return mesh
        time.sleep(0.3)
    mesh.stop()
    raise RuntimeError(f"{engine} cluster did not form; logs in {base}")


def writes_ok(mesh: LocalMesh, names: list[str] | None = None) -> bool:
    for node in mesh.nodes:
        if not node.running or (names is not None and node.name not in names):
            continue
        try:
            call_sync(node.socket_path, "kv.put", {"ns": "b", "key": "probe", "value": b"x"}, 2.0)
            return True
        except ClientError:
            continue
    return False


async def _worker(client: ControlClient, stop_at: float, count_from: float, counts: dict[str, int],
                  value: bytes, worker: int) -> None:
    loop = asyncio.get_running_loop()
    prefix = uuid.uuid4().hex[:16]
    i = 0
    while loop.time() < stop_at:
        i += 1
        try:
            await client.call("kv.put", ns="bench", key=f"w{worker}-{i % 64}", value=value,
                              rid=f"{prefix}{i:x}", timeout=10.0)
            ok = True
        except ClientError:
            ok = False
        if loop.time() >= count_from:
            counts["ok" if ok else "failed"] += 1


async def throughput(mesh: LocalMesh, seconds: float) -> tuple[float, int]:
    clients = [await ControlClient.connect_unix(n.socket_path) for n in mesh.nodes]
    loop = asyncio.get_running_loop()
    count_from = loop.time() + 1.0
    stop_at = count_from + seconds
    counts = {"ok": 0, "failed": 0}
    value = os.urandom(PAYLOAD)
    await asyncio.gather(*[
        _worker(c, stop_at, count_from, counts, value, i * IN_FLIGHT + j)
        for i, c in enumerate(clients) for j in range(IN_FLIGHT)
    ])
    for c in clients:
        await c.close()
    return counts["ok"] / seconds, counts["failed"]


async def latency(mesh: LocalMesh) -> list[float]:
    client = await ControlClient.connect_unix(mesh.nodes[0].socket_path)
    value = os.urandom(PAYLOAD)
    samples = []
    for i in range(LATENCY_PUTS):
        t = time.perf_counter()
        await client.call("kv.put", ns="lat", key=f"k{i % 8}", value=value, timeout=10.0)
        samples.append(time.perf_counter() - t)
    await client.close()
    return samples


def failover(mesh: LocalMesh) -> float:
    victim = leader(mesh)
    assert victim is not None
    others = [n.name for n in mesh.nodes if n.name != victim]
    killed = time.monotonic()
    mesh.kill(victim, signal.SIGKILL)
    while time.monotonic() - killed < 60:
        if writes_ok(mesh, others):
            return time.monotonic() - killed
        time.sleep(0.05)
    return float("inf")


def one_run(engine: str, seconds: float) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix=f"bench-{engine}-"))
    mesh = start(engine, base)
    try:
        rate, failed = asyncio.run(throughput(mesh, seconds))
        print(f"  {engine}: {rate:8.0f} committed writes/s ({failed} failed)   [{loadavg()}]", flush=True)
        lat = asyncio.run(latency(mesh))
        p50, p99 = percentile(lat, 0.5) * 1000, percentile(lat, 0.99) * 1000
        print(f"  {engine}: latency p50 {p50:6.2f} ms  p99 {p99:6.2f} ms   [{loadavg()}]", flush=True)
        took = failover(mesh)
        print(f"  {engine}: SIGKILL of the {'primary' if engine == 'pbft' else 'leader'} -> "
              f"next committed write {took:5.2f} s   [{loadavg()}]", flush=True)
        return {"writes_s": rate, "p50_ms": p50, "p99_ms": p99, "failover_s": took}
    finally:
        mesh.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"raft": [], "pbft": []}
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}  [{loadavg()}]", flush=True)
        for engine in ("raft", "pbft"):
            results[engine].append(one_run(engine, args.seconds))
    print("\nranges over the runs (min-max):")
    for engine, rows in results.items():
        cells = []
        for key in ("writes_s", "p50_ms", "p99_ms", "failover_s"):
            vals = [r[key] for r in rows]
            cells.append(f"{key} {min(vals):.2f}-{max(vals):.2f}")
        print(f"  {engine}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
