"""One PySyncObj node for ``bench_raft_loopback.py`` (the comparison peer).

Run by the benchmark, three at a time on loopback::

    python pysyncobj_node.py --self 127.0.0.1:P1 --partner 127.0.0.1:P2 \
        --partner 127.0.0.1:P3 [--journal FILE] --seconds S --payload 100 \
        --window W --mode throughput|latency [--drive leader|all]

PySyncObj has no client protocol, so load is generated the way its own
``benchmarks/testobj.py`` does: inside the node, calling a ``@replicated``
method with a callback.  A node that drives load keeps ``--window`` commands
in flight (``throughput``) or one at a time (``latency``), counts the callbacks
that report success during ``--seconds`` after a warm-up, prints one JSON line
and then stays up until its stdin closes, so the other nodes can finish.

In throughput mode the driving node first prints ``{"load": true}`` as its
load starts (the benchmark samples the nodes' CPU times then and at the result
line; ``ok_all`` in the result counts every success since, warm-up included).

With ``--journal`` the node uses ``SyncObjConf(journalFile=...)``: PySyncObj's
file journal is an mmap'd file written on every append and never msync'd or
fsync'd while running, so it is durable against a process kill, not against a
power cut; our WAL fsyncs every group before acknowledging.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

WARMUP = 1.0
"""Seconds of load before counting starts (connections, JIT-free Python warm caches)."""


class BenchStore(SyncObj):  # type: ignore[misc]
    """A replicated dict, the same shape of state as our KV namespace."""

    def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_addr, partners, conf)
        self.data: dict[str, bytes] = {}

    @replicated  # type: ignore[misc]
    def put(self, key: str, value: bytes) -> int:
        self.data[key] = value
        return len(self.data)


def wait_leader(store: BenchStore, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store._getLeader() is not None:
            return True
        time.sleep(0.05)
    return False


def drive_throughput(store: BenchStore, seconds: float, payload: bytes, window: int) -> dict[str, float]:
    slots = threading.Semaphore(window)
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0}
    counting = threading.Event()

    def done(result: object, error: int) -> None:
        slots.release()
        if counting.is_set():
            with lock:
                counts["ok" if error == FAIL_REASON.SUCCESS else "failed"] += 1

    # The benchmark samples every node's CPU time when this line arrives and again
    # at the result line, for CPU seconds per write (``ok_all`` counts them all).
    print(json.dumps({"load": True}), flush=True)
    total = [0]

    def done_all(result: object, error: int) -> None:
        if error == FAIL_REASON.SUCCESS:
            with lock:
                total[0] += 1
        done(result, error)

    start = time.monotonic()
    measure_from = start + WARMUP
    end = measure_from + seconds
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= measure_from and not counting.is_set():
            counting.set()
            measure_from = now
        if not slots.acquire(timeout=0.5):
            continue
        i += 1
        store.put(f"k{i % 1000}", payload, callback=done_all)
    elapsed = time.monotonic() - measure_from
    counting.clear()
    return {"ok": counts["ok"], "failed": counts["failed"], "seconds": elapsed,
            "per_s": counts["ok"] / elapsed, "ok_all": total[0]}


def drive_latency(store: BenchStore, seconds: float, payload: bytes) -> dict[str, float]:
    latencies: list[float] = []
    finished = threading.Event()
    outcome: list[int] = []

    def done(result: object, error: int) -> None:
        outcome.append(error)
        finished.set()

    start = time.monotonic()
    end = start + WARMUP + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        finished.clear()
        outcome.clear()
        t0 = time.perf_counter()
        store.put(f"k{i % 1000}", payload, callback=done)
        finished.wait(5.0)
        took = time.perf_counter() - t0
        if outcome and outcome[0] == FAIL_REASON.SUCCESS and time.monotonic() > start + WARMUP:
            latencies.append(took)
    latencies.sort()
    n = len(latencies)
    return {"ok": n, "p50_ms": 1000 * latencies[n // 2] if n else -1.0,
            "p99_ms": 1000 * latencies[min(n - 1, int(0.99 * n))] if n else -1.0}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--self", dest="self_addr", required=True)
    parser.add_argument("--partner", action="append", default=[])
    parser.add_argument("--journal", default="")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--mode", choices=["throughput", "latency"], default="throughput")
    parser.add_argument("--drive", choices=["leader", "all"], default="leader")
    args = parser.parse_args()

    conf = SyncObjConf(
        journalFile=args.journal or None,
        appendEntriesUseBatch=True,
        commandsWaitLeader=True,
        dynamicMembershipChange=False,
    )
    store = BenchStore(args.self_addr, args.partner, conf)
    if not wait_leader(store, 20.0):
        print(json.dumps({"node": args.self_addr, "error": "no leader"}), flush=True)
        return 1
    time.sleep(0.5)  # every node sees the same leader before the driver is chosen
    drives = args.drive == "all" or store._isLeader()
    result: dict[str, object] = {"node": args.self_addr, "drove": drives}
    if drives:
        payload = os.urandom(args.payload)
        if args.mode == "throughput":
            result.update(drive_throughput(store, args.seconds, payload, args.window))
        else:
            result.update(drive_latency(store, args.seconds, payload))
    print(json.dumps(result), flush=True)
    sys.stdin.read()  # stay up (and keep replicating) until the benchmark closes our stdin
    store.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
