"""Benchmark: writes under partial partitions, direct vs relayed (issue 20; root only).

5 namespace hosts, LAN profile, 5 voters joined through h0.  For each shape
(``none`` is the direct anchor: no fault), for ``--seconds`` (default 30): every
host is sent one write a second (``kv.put`` on its control socket) and, to get
enough latency samples, ``--rate`` more writes a second go to the hosts whose
path to the leader is broken by the shape.  Printed per shape: write
availability per host (answered within 3 s), p50/p99 write latency of hosts on
the direct path and of hosts on a relayed path, beside the ``none`` anchor's,
and the box's load average.  Target: relayed p50 within 2x of direct.

Shapes: ``single`` (the leader <-> one follower dropped by nft) and ``bridge``
({h0,h1} and {h3,h4} cut from each other, h2 reaching both; renamed so that the
leader is on a side: ``test_relay_netns.bridge_groups``).

    sudo python tests/bench/bench_relay_netns.py [--seconds 30] [--runs 3] [--rate 4]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)
from netns.agents import LabAgents, keygen
from netns.harness import NetnsLab
from netns.test_relay_netns import bridge_groups, cut_link, link_state
from support.wait import wait_until

from meshtui.rpc import ClientError, call_sync

HOSTS = list(range(5))
WRITE_TIMEOUT = 3.0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def write(agents: LabAgents, host: int, key: str) -> float | None:
    started = time.monotonic()
    try:
        call_sync(agents.socket(host), "kv.put", {"ns": "bench", "key": key, "value": b"x",
                                                  "rid": uuid.uuid4().hex}, timeout=WRITE_TIMEOUT)
    except ClientError:
        return None
    return time.monotonic() - started


def load_phase(agents: LabAgents, seconds: int, rate: int, busy: list[int]) -> dict[int, list[float | None]]:
    """One write a second to every host, plus ``rate`` a second to each of ``busy``."""
    out: dict[int, list[float | None]] = {h: [] for h in HOSTS}
    lock = threading.Lock()

    def client(host: int, per_second: int) -> None:
        start = time.monotonic()
        for i in range(seconds * per_second):
            wait = start + i / per_second - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            result = write(agents, host, f"h{host}-{i}")
            with lock:
                out[host].append(result)

    threads = [threading.Thread(target=client, args=(h, 1 + (rate if h in busy else 0)))
               for h in HOSTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def leader(agents: LabAgents) -> int:
    return int(agents.status(0)["consensus"]["leader"][1:])


def run_once(agents: LabAgents, seconds: int, rate: int) -> dict[str, dict[str, object]]:
    lab = agents.lab
    results: dict[str, dict[str, object]] = {}
    for shape in ("none", "single", "bridge"):
        lab.heal()
        wait_until("links direct", lambda: all(
            link_state(agents, h, p) in ("direct", None) for h in HOSTS for p in HOSTS if h != p),
            timeout=20)
        lead = leader(agents)
        if shape == "single":
            follower = next(h for h in HOSTS if h != lead)
            cut_link(lab, lead, follower)
            relayed = [follower]
        elif shape == "bridge":
            left, right, _bridge = bridge_groups(lead)
            lab.partition([left, right])
            relayed = right
        else:
            relayed = [h for h in HOSTS if h != lead][:1]  # the same load on one follower
        time.sleep(2.0)  # let the break be seen: availability is the CI test's business
        load1 = os.getloadavg()[0]
        lat = load_phase(agents, seconds, rate, relayed)
        served = {h: sum(1 for t in v if t is not None and t <= WRITE_TIMEOUT) for h, v in lat.items()}
        direct_lat = [t for h, v in lat.items() if h not in relayed and h != lead for t in v if t]
        relay_lat = [t for h in relayed for t in lat[h] if t]
        results[shape] = {
            "leader": lead, "relayed_hosts": relayed, "load1": load1,
            "served": {h: f"{served[h]}/{len(lat[h])}" for h in HOSTS},
            "direct_p50": pct(direct_lat, 0.5), "direct_p99": pct(direct_lat, 0.99),
            "relay_p50": pct(relay_lat, 0.5), "relay_p99": pct(relay_lat, 0.99),
        }
    lab.heal()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=4)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mt-bench-relay-"))
    key = keygen(base / "cluster.key")
    ratios: list[float] = []
    with NetnsLab(5) as lab:
        config = base / "agent.toml"
        config.write_text("[swim]\nload_aware_health = false\n")
        agents = LabAgents(lab, key, base, mdns=False, seeds=[0], common_args=["--config", str(config)])
        try:
            for h in HOSTS:
                agents.start(h)
            agents.wait_ready(HOSTS, timeout=30)
            wait_until("5 voters and a leader", lambda: all(
                (s := agents.try_status(h)) is not None and s["consensus"]["leader"]
                and len(s["consensus"]["voters"]) == 5 for h in HOSTS), timeout=90)
            for run in range(1, args.runs + 1):
                results = run_once(agents, args.seconds, args.rate)
                anchor = results["none"]
                print(f"run {run}: direct anchor (no fault): followers p50 {ms(anchor['relay_p50'])} "  # type: ignore[arg-type]
                      f"p99 {ms(anchor['relay_p99'])}; load1 {anchor['load1']:.2f}")  # type: ignore[arg-type]
                for shape in ("single", "bridge"):
                    r = results[shape]
                    p50 = r["relay_p50"]
                    base_p50 = anchor["relay_p50"]
                    both = isinstance(p50, float) and isinstance(base_p50, float)
                    ratio = p50 / base_p50 if both else None  # type: ignore[operator]
                    if ratio is not None:
                        ratios.append(ratio)
                    print(f"  {shape}: leader h{r['leader']}, relayed hosts {r['relayed_hosts']}, "
                          f"served {r['served']}; direct p50 {ms(r['direct_p50'])} p99 "  # type: ignore[arg-type]
                          f"{ms(r['direct_p99'])}; relayed p50 {ms(p50)} p99 "  # type: ignore[arg-type]
                          f"{ms(r['relay_p99'])} ({'-' if ratio is None else f'{ratio:.2f}'}x the anchor; "  # type: ignore[arg-type]
                          f"target <= 2x); load1 {r['load1']:.2f}")
        finally:
            agents.stop_all()
            shutil.rmtree(base, ignore_errors=True)
    if ratios:
        print(f"relayed p50 / direct p50 over all runs: {min(ratios):.2f}-{max(ratios):.2f}x "
              f"(median {statistics.median(ratios):.2f}x)")


if __name__ == "__main__":
    main()
