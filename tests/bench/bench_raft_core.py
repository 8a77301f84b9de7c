"""In-memory Raft core throughput: 3 nodes, 100-byte payloads, no I/O, no codec.

    python tests/bench/bench_raft_core.py [--seconds 3]

Messages go straight from one core's Ready into the next core's step(); storage
is skipped.  This is the ceiling the runtime can reach, and it shows the core is
not the bottleneck: it is printed beside the end-to-end target of the issue
(1.5 x PySyncObj's 13,400 writes/s with its journal on this box) and beside the
same loop with one proposal per Ready (no batching at all, the worst case).
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)

from agent.raft.config import RaftConfig
from agent.raft.core import RaftNode, bootstrap_state
from agent.raft.messages import RaftMessage, Role

PAYLOAD = b"x" * 100
PYSYNCOBJ_JOURNAL_WRITES_PER_S = 13_400
TARGET = 1.5 * PYSYNCOBJ_JOURNAL_WRITES_PER_S


def make_cluster() -> dict[str, RaftNode]:
    ids = ["n1", "n2", "n3"]
    config = RaftConfig(snapshot_threshold=10**9, max_inflight_msgs=256)
    nodes = {i: RaftNode(config, i, bootstrap_state(ids), random.Random(n)) for n, i in enumerate(ids)}
    return nodes


def pump(nodes: dict[str, RaftNode]) -> int:
    """Run Readys and deliver messages until quiet; returns entries applied on n1."""
    applied = 0
    inbox: deque[RaftMessage] = deque()
    busy = True
    while busy or inbox:
        busy = False
        for node in nodes.values():
            while (rd := node.ready()) is not None:
                busy = True
                inbox.extend(rd.messages)
                if node.id == "n1":
                    applied += len(rd.committed_entries)
                node.advance(rd)
        while inbox:
            msg = inbox.popleft()
            nodes[msg.to].step(msg)
    return applied


def elect(nodes: dict[str, RaftNode]) -> RaftNode:
    leader = nodes["n1"]
    for _ in range(100):
        leader.tick()
        pump(nodes)
        if leader.role == Role.LEADER:
            return leader
    raise SystemExit("no leader")


def run(seconds: float, batch: int) -> float:
    nodes = make_cluster()
    leader = elect(nodes)
    pump(nodes)
    start_commit = leader.commit_index
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(batch):
            leader.propose(PAYLOAD)
        pump(nodes)
    elapsed = time.perf_counter() - started
    return (leader.commit_index - start_commit) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    batched = run(args.seconds, batch=64)
    single = run(args.seconds, batch=1)
    print(f"raft core, 3 nodes, 100 B, in memory, 64 proposals/Ready: {batched:,.0f} commits/s")
    print(f"raft core, same, 1 proposal/Ready (no batching):    {single:,.0f} commits/s")
    peer = PYSYNCOBJ_JOURNAL_WRITES_PER_S
    print(f"end-to-end target (1.5 x PySyncObj journal {peer:,}/s): {TARGET:,.0f} writes/s")
    print(f"core headroom over the target: {batched / TARGET:.1f}x")


if __name__ == "__main__":
    main()
