"""Benchmark: one idle agent's RSS and CPU with 10 peers (issue 3).

Starts 11 real ``mesh-agent run`` processes on loopback with the LAN profile
(memberlist's timings: probe 1 s, gossip 200 ms, push-pull 30 s), seeds only
(``--no-mdns``: loopback has no multicast route on most boxes), waits until
agent 0 sees 11 alive members and Raft has settled, then samples agent 0's
process with psutil for ``--seconds`` (default 60): CPU time used over wall
time (% of one core) and RSS (max and last).  The figure is printed next to
the issue's targets (<= 60 MB RSS, <= 2 % of one core) and the box's load
average, since a saturated box inflates CPU figures.

    python tests/bench/bench_idle_agent.py [--peers 10] [--seconds 60]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)
import psutil
from support.ports import free_port

from meshtui.client import ClientError, call_sync

ROOT = Path(__file__).resolve().parents[2]
"""The checkout: agents run from it (``python -m agent.cli``)."""

RSS_TARGET_MB = 60.0
CPU_TARGET_PCT = 2.0


def alive_members(sock: str) -> int:
    try:
        status = call_sync(sock, "status", {}, 2.0)
    except ClientError:
        return -1
    return sum(1 for m in status["members"] if m["state"] == "alive")


def raft_role(sock: str) -> str:
    """Agent 0's Raft role: the leader's figure is its own (it heartbeats and probes
    every follower), so a run where agent 0 leads is not an idle follower's."""
    try:
        return str(call_sync(sock, "status", {}, 2.0)["consensus"]["role"])
    except (ClientError, KeyError, TypeError):
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds to let joins, Raft bootstrap and promotions settle")
    args = parser.parse_args()
    total = args.peers + 1
    base = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    key = base / "cluster.key"
    key.write_text(subprocess.run(
        [sys.executable, "-m", "agent.cli", "keygen"], capture_output=True, text=True,
        check=True, cwd=ROOT,
    ).stdout)
    key.chmod(0o600)
    ports = [free_port() for _ in range(total)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(ports):
            d = base / f"n{i}"
            (d / "data").mkdir(parents=True, mode=0o700)
            argv = [
                sys.executable, "-m", "agent.cli", "run", "--name", f"n{i}",
                "--data-dir", str(d / "data"), "--bind", "127.0.0.1", "--advertise", "127.0.0.1",
                "--port", str(port), "--key-file", str(key), "--socket", str(d / "agent.sock"),
                "--profile", "lan", "--no-mdns", "--load-source", "tasks",
                "--log-level", "warning",
            ]
            if i:
                argv += ["--join", f"127.0.0.1:{ports[0]}"]
            with (d / "agent.log").open("wb") as log:
                procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                              cwd=ROOT, start_new_session=True))
        sock0 = str(base / "n0" / "agent.sock")
        deadline = time.monotonic() + 90
        while alive_members(sock0) < total:
            if time.monotonic() > deadline:
                print(f"agent 0 saw only {alive_members(sock0)} of {total} alive in 90 s")
                return 1
            time.sleep(0.5)
        time.sleep(args.settle)
        proc = psutil.Process(procs[0].pid)
        tree = [proc, *proc.children(recursive=True)]
        def cpu_seconds() -> float:
            t = proc.cpu_times()
            return t.user + t.system
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        load0 = os.getloadavg()[0]
        rss_max = 0
        for _ in range(int(args.seconds)):
            rss_max = max(rss_max, proc.memory_info().rss)
            time.sleep(1.0)
        cpu1, wall1 = cpu_seconds(), time.monotonic()
        rss_last = proc.memory_info().rss
        rss_max = max(rss_max, rss_last)
        uss = proc.memory_full_info().uss
        helpers_rss = sum(p.memory_info().rss for p in tree[1:] if p.is_running())
        cpu_pct = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
        members = alive_members(sock0)
        role = raft_role(sock0)
        print(f"idle agent with {args.peers} peers (LAN profile, loopback), "
              f"{wall1 - wall0:.0f} s sample, {members} alive members seen, Raft role {role}")
        print(f"  RSS max {rss_max / 2**20:.1f} MB, last {rss_last / 2**20:.1f} MB, "
              f"USS {uss / 2**20:.1f} MB   (target <= {RSS_TARGET_MB:.0f} MB)")
        print(f"  CPU {cpu_pct:.2f} % of one core   (target <= {CPU_TARGET_PCT:.0f} %)")
        print(f"  child processes (task watchdog): {len(tree) - 1}, "
              f"RSS {helpers_rss / 2**20:.1f} MB (not counted above)")
        print(f"  box load average at start/end: {load0:.2f} / {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} CPUs")
        ok = rss_max / 2**20 <= RSS_TARGET_MB and cpu_pct <= CPU_TARGET_PCT
        print("  within targets" if ok else "  OUTSIDE targets")
        return 0
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        shutil.rmtree(base, ignore_errors=True)  # 11 data dirs, 64 MiB of WAL each


if __name__ == "__main__":
    raise SystemExit(main())
