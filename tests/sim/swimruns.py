"""The large SWIM simulations, as plain functions of their seed.

``test_swim_sim`` runs them in worker processes, side by side on the machine's
cores (each is CPU-bound for up to a few minutes and shares nothing with the
others).  Each returns its report lines for the test to print; a failed check
raises ``AssertionError``, which the worker hands back to the test.  The tests'
docstrings say what each run shows and why its bounds are what they are.
"""

from __future__ import annotations

import math

from agent.swim import MemberEvent, SwimConfig
from agent.swim.messages import MemberState
from agent.swim.timing import epidemic_rounds, suspicion_timeout
from sim.swimnet import SimHost, SwimNet

LAN = SwimConfig.lan()


class FirstSeen:
    """Records, per observer, when it first reported ``kind`` about ``subject``."""

    def __init__(self, kind: str, subject: str) -> None:
        self.kind = kind
        self.subject = subject
        self.at: dict[str, float] = {}

    def __call__(self, now: float, addr: str, ev: MemberEvent) -> None:
        if ev.kind == self.kind and ev.member.id == self.subject and addr not in self.at:
            self.at[addr] = now

    def reached(self, count: int) -> bool:
        return len(self.at) >= count

    def time_to(self, count: int) -> float:
        return sorted(self.at.values())[count - 1]


def join_and_failure(seed: int, n: int = 1000) -> str:
    """A join, then a crash, each spreading to 99.9% of ``n`` nodes (see the test)."""
    report: list[str] = []
    net = SwimNet(seed, LAN)
    net.size_check_every = 25  # every datagram is sized by construction; sample the check
    hosts = net.add_nodes(n)
    members, joiner = hosts[:-1], hosts[-1]
    net.bootstrap(members)
    net.run_for(2.0)

    rounds = epidemic_rounds(n, LAN.gossip_nodes, 0.999)
    bound = (rounds + 2) * LAN.gossip_interval
    need = math.ceil(0.999 * len(members))

    joined = FirstSeen("join", joiner.node.node_id)
    net.on_event = joined
    net.join(joiner, [members[0].addr])
    assert net.run_for(10.0, lambda: joined.reached(need), check_every=0.02), (
        f"join reached only {len(joined.at)}/{len(members)}"
    )
    born = min(joined.at.values())
    spread = joined.time_to(need) - born
    report.append(f"join: 99.9% after {spread:.2f} s (model {rounds} rounds, bound {bound:.2f} s)")
    assert spread <= bound, f"join took {spread:.2f} s > bound {bound:.2f} s"
    net.run_for(3.0)

    victim = hosts[len(hosts) // 2]
    survivors = [h for h in hosts if h is not victim]
    died = FirstSeen("dead", victim.node.node_id)
    net.on_event = died
    crashed_at = net.now
    net.crash(victim.addr)
    need = math.ceil(0.999 * len(survivors))
    lo = suspicion_timeout(LAN.suspicion_mult, n, LAN.probe_interval)
    assert net.run_for(lo * 6 + 10.0, lambda: died.reached(need), check_every=0.02), (
        f"death reached only {len(died.at)}/{len(survivors)}"
    )
    born = min(died.at.values())
    spread = died.time_to(need) - born
    detection = born - crashed_at
    report.append(
        f"failure: first dead after {detection:.2f} s (suspicion floor {lo:.1f} s), "
        f"99.9% {spread:.2f} s later (bound {bound:.2f} s)"
    )
    assert spread <= bound, f"death took {spread:.2f} s > bound {bound:.2f} s"
    # Detection: a probe round to notice, the suspicion floor once k confirmations
    # are in (at most a few probe intervals more), never the ceiling.
    assert detection <= lo + 4 * LAN.probe_interval, f"detection {detection:.2f} s"
    return "\n".join(report)


def lossy_network(seed: int, nodes: int, rounds: int) -> str:
    """``nodes`` nodes, 10% loss each way, for ``rounds`` probe intervals (see the test)."""
    report: list[str] = []
    net = SwimNet(seed, LAN, loss=0.10, min_delay=0.001, max_delay=0.02, duplicate=0.01, tcp_rto=0.2)
    net.size_check_every = 25 if nodes >= 1000 else 1
    hosts = net.add_nodes(nodes)
    net.bootstrap(hosts)
    kinds: dict[str, int] = {}

    def count(now: float, addr: str, ev: MemberEvent) -> None:
        kinds[ev.kind] = kinds.get(ev.kind, 0) + 1

    net.on_event = count
    net.run_for(rounds * LAN.probe_interval)
    probes = sum(h.node.stats["probes"] for h in hosts)
    report.append(f"probes {probes}, events {kinds}, dropped {net.dropped}/{net.sent}")
    assert probes >= 0.95 * nodes * rounds
    assert kinds.get("suspect", 0) > 0, "no probe ever failed: the test shows nothing"
    assert kinds.get("dead", 0) == 0, f"false deaths: {kinds}"
    for h in hosts:
        assert (
            h.node.table.count(MemberState.ALIVE) + h.node.table.count(MemberState.SUSPECT) == len(hosts) - 1
        )
        assert not h.node.partitioned
    return "\n".join(report)


def partition_30_70(seed: int, n: int, cross_dead: float, detect_limit: float) -> str:
    """Cut ``n`` nodes 30 | 70.  Detected: every minority node reports partitioned,
    no majority node does, and at least ``cross_dead`` of the (observer, subject)
    pairs across the cut hold the subject dead, on each side.  Then heal, with no
    command: every node sees all ``n`` alive and nobody is partitioned (reconnect
    PushPull to dead members, remote deaths merged as suspicions, refutation)."""
    report: list[str] = []
    net = SwimNet(seed, LAN)
    net.size_check_every = 25
    hosts = net.add_nodes(n)
    net.bootstrap(hosts)
    net.run_for(2.0)
    minority, majority = hosts[: n * 3 // 10], hosts[n * 3 // 10 :]
    net.cut([h.addr for h in minority], [h.addr for h in majority])

    def dead_fraction(observers: list[SimHost], subjects: list[SimHost]) -> float:
        dead = sum(net.state_of(o, s) == MemberState.DEAD for o in observers for s in subjects)
        return dead / (len(observers) * len(subjects))

    def may_reach(observers: list[SimHost], subjects: list[SimHost]) -> bool:
        # Every dead mark counts, on either side: an O(observers) upper bound of
        # dead_fraction that spares the O(observers x subjects) count until it can pass.
        dead = sum(o.node.table.count(MemberState.DEAD) for o in observers)
        return dead >= cross_dead * len(observers) * len(subjects)

    def detected() -> bool:
        return (
            all(h.node.partitioned for h in minority)
            and not any(h.node.partitioned for h in majority)
            and may_reach(majority, minority)
            and may_reach(minority, majority)
            and dead_fraction(majority, minority) >= cross_dead
            and dead_fraction(minority, majority) >= cross_dead
        )

    cut_at = net.now
    assert net.run_for(60.0, lambda: all(h.node.partitioned for h in minority), check_every=0.5), (
        "minority never reported partitioned"
    )
    flagged = net.now - cut_at
    assert not any(h.node.partitioned for h in majority)
    # Dead marks take Lifeguard's suspicion timeout: the floor where enough
    # members confirm, up to the ceiling (6x) on the minority side.
    assert net.run_for(detect_limit, detected, check_every=1.0), (
        f"partition not detected: majority holds {dead_fraction(majority, minority):.4f} of the "
        f"minority dead, minority {dead_fraction(minority, majority):.4f} of the majority"
    )
    report.append(
        f"{n} nodes: minority flagged partitioned after {flagged:.1f} s; "
        f"{cross_dead:.1%} of cross-cut views dead after {net.now - cut_at:.1f} s"
    )
    net.run_for(5.0)  # and the majority stays unpartitioned
    assert not any(h.node.partitioned for h in majority)
    net.heal()
    healed_at = net.now

    def one_membership() -> bool:
        return all(not h.node.partitioned and h.node.table.count(MemberState.ALIVE) == n - 1 for h in hosts)

    limit = 4 * LAN.reconnect_interval + 60.0
    assert net.run_for(limit, one_membership, check_every=1.0), (
        f"not healed after {limit:.0f} s: "
        f"{sum(h.node.partitioned for h in hosts)} partitioned, alive counts "
        f"{sorted({h.node.table.count(MemberState.ALIVE) for h in hosts})}"
    )
    report.append(f"healed to one membership {net.now - healed_at:.1f} s after the cut was lifted")
    return "\n".join(report)
