"""Crash-to-everyone-knows time in simulation (the netns benchmark's sim twin).

Run: ``.venv/bin/python tests/bench/bench_swim_failure_detection.py [--nodes 5] [--kills 20]``.

A cluster of ``--nodes`` on the LAN profile (UDP delay 0.5-2 ms, no loss); one
random node crashes; we time until every survivor marks it dead.  Repeated
``--kills`` times with different seeds.  Printed beside the median: the
target (median <= 5 s on LAN defaults) and memberlist's derived figure
(5-7 s: a probe round to notice, then the suspicion timeout
``suspicion_mult * max(1, log10(n)) * probe_interval`` = 4 s at n = 5 once
Lifeguard's k confirmations are in).
"""

from __future__ import annotations

import argparse
import os
import statistics

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)
from sim.swimnet import SwimNet

from agent.swim import SwimConfig
from agent.swim.messages import MemberState
from agent.swim.timing import suspicion_timeout


def one_kill(n: int, seed: int) -> float:
    cfg = SwimConfig.lan()
    net = SwimNet(seed, cfg)
    hosts = net.add_nodes(n)
    net.bootstrap(hosts)
    net.run_for(5.0 + net.rng.random() * cfg.probe_interval)
    victim = hosts[net.rng.randrange(n)]
    survivors = [h for h in hosts if h is not victim]
    net.crash(victim.addr)
    start = net.now

    def everyone_knows() -> bool:
        return all(net.state_of(h, victim) == MemberState.DEAD for h in survivors)

    if not net.run_for(120.0, everyone_knows, check_every=0.01):
        raise SystemExit(f"seed {seed}: not everyone marked the crashed node dead in 120 s")
    return net.now - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("MESH_SEED", "1")))
    args = parser.parse_args()
    cfg = SwimConfig.lan()
    times = sorted(one_kill(args.nodes, args.seed + i) for i in range(args.kills))
    floor = suspicion_timeout(cfg.suspicion_mult, args.nodes, cfg.probe_interval)
    print(f"crash -> every survivor marks it dead, {args.nodes} nodes, {args.kills} kills (sim)")
    print(
        f"  median {statistics.median(times):.2f} s, min {times[0]:.2f} s, max {times[-1]:.2f} s"
        f"  | target median <= 5 s; memberlist derived 5-7 s; suspicion floor {floor:.1f} s"
    )


if __name__ == "__main__":
    main()
