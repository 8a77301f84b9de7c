"""Issue 20 on real namespace hosts (root): a mesh that routes around broken links.

One lab of 5 hosts for the module, LAN profile, 5 voters, joined through host 0
(no mDNS, so the start is quick and the same every run).  Each cut lasts
``CUT_S`` seconds (10 in CI; ``tests/bench/bench_relay_netns.py`` runs 30):

* a single link, the leader <-> a follower, dropped by nft;
* the bridge: {h0, h1} and {h3, h4} cut from each other, h2 reaching both (the
  hosts renamed so that the leader is on a side, not the bridge);
* the same single link *refused* (nft ``reject with tcp reset``, ICMP for the rest).

During each, every host is sent one write a second (``kv.put`` on its control
socket) and must answer at least 9 of 10 within 3 s; no host may be marked dead
on any host's ``members`` event stream; the cluster's term may move at most once.
After healing, the host whose direct path was broken must show it ``direct``
again within one SWIM probe interval (1 s, plus the status poll's slack), and
send nothing more over a relay.

Load-aware local health is off here, as in test_membership_netns.py: the hosts
share one kernel, so each would read the whole machine's CPU as its own.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.wait import wait_until

from meshtui.rpc import ClientError, call_sync
from netns.agents import LabAgents, MemberEventRecorder, keygen
from netns.harness import NetnsLab

pytestmark = [pytest.mark.root]

HOSTS = range(5)
CUT_S = 10
"""Seconds each cut lasts (and writes issued per host, one a second)."""
WRITE_TIMEOUT = 3.0
"""A write answered later than this was not served."""
MIN_SERVED = 9
"""Writes of ``CUT_S`` each host must serve (9 of 10)."""
HEAL_BOUND = 1.5
"""Seconds from healing to the direct path shown again: one SWIM probe interval
(1 s) plus the 0.1 s status poll and a loaded box's slack."""


# ---------------------------------------------------------------- helpers


def link_rules(lab: NetnsLab, host: int, peer: int, verdict: str) -> str:
    """nft script for ``host``: ``verdict`` every packet to or from ``peer``."""
    addr = lab.addr(peer)
    if verdict == "reject":
        inbound = [f"ip saddr {addr} meta l4proto tcp reject with tcp reset", f"ip saddr {addr} reject"]
        outbound = [f"ip daddr {addr} meta l4proto tcp reject with tcp reset", f"ip daddr {addr} reject"]
    else:
        inbound, outbound = [f"ip saddr {addr} drop"], [f"ip daddr {addr} drop"]
    return "\n".join([
        "table inet mt", "delete table inet mt", "table inet mt {",
        "  chain input { type filter hook input priority -10; policy accept;",
        *(f"    {r}" for r in inbound), "  }",
        "  chain output { type filter hook output priority -10; policy accept;",
        *(f"    {r}" for r in outbound), "  }", "}", ""])


def cut_link(lab: NetnsLab, a: int, b: int, verdict: str = "drop") -> None:
    for host, peer in ((a, b), (b, a)):
        proc = lab.run(host, ["nft", "-f", "-"], input=link_rules(lab, host, peer, verdict))
        assert proc.returncode == 0, proc.stderr


@dataclass
class Writes:
    """One write a second to each host for ``CUT_S`` seconds, on threads."""

    agents: LabAgents
    latencies: dict[int, list[float | None]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def run(self, hosts: range = HOSTS) -> None:
        def one(host: int, i: int) -> float | None:
            started = time.monotonic()
            try:
                call_sync(self.agents.socket(host), "kv.put", {
                    "ns": "relay", "key": f"h{host}-{i}", "value": b"x",
                    "rid": uuid.uuid4().hex}, timeout=WRITE_TIMEOUT)
            except ClientError as exc:
                self.errors.append(f"h{host} #{i} after {time.monotonic() - started:.2f} s: {exc}")
                return None
            return time.monotonic() - started

        with ThreadPoolExecutor(max_workers=len(hosts) * 4) as pool:
            futures = []
            start = time.monotonic()
            for i in range(CUT_S):
                wait = start + i - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # one write a second per host is the test's load
                futures += [(h, pool.submit(one, h, i)) for h in hosts]
            for host, future in futures:
                self.latencies.setdefault(host, []).append(future.result())

    def served(self, host: int) -> int:
        return sum(1 for t in self.latencies[host] if t is not None and t <= WRITE_TIMEOUT)

    def summary(self) -> str:
        served = ", ".join(f"h{h}: {self.served(h)}/{len(v)}" for h, v in sorted(self.latencies.items()))
        return served + "".join(f"\n  {e}" for e in self.errors)


class Terms:
    """The terms any host reports a leader in, polled on a thread while a cut lasts."""

    def __init__(self, agents: LabAgents) -> None:
        self.agents = agents
        self.seen: set[tuple[int, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Terms:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            for host in HOSTS:
                status = self.agents.try_status(host, timeout=1.0)
                if status is not None and status["consensus"]["leader"]:
                    self.seen.add((status["consensus"]["term"], status["consensus"]["leader"]))

    @property
    def changes(self) -> int:
        return max(0, len({term for term, _ in self.seen}) - 1)


def link_state(agents: LabAgents, host: int, peer: int) -> str | None:
    status = agents.try_status(host, timeout=1.0)
    if status is None:
        return None
    rows = [r for r in status.get("links", []) if (r["from"], r["to"]) == (f"h{host}", f"h{peer}")]
    return rows[0]["state"] if rows else None


def relayed(agents: LabAgents, host: int) -> int:
    counters: dict[str, Any] = agents.call(host, "report", {}, timeout=3.0)["links"]
    return int(counters["relayed_messages"])


def bridge_groups(lead: int) -> tuple[list[int], list[int], int]:
    """The bridge with the leader on one side, never the bridge itself (that would
    relay nothing): h2 bridges {h0,h1} and {h3,h4} -- the issue's shape -- unless h2
    leads; then h1 bridges {h2,h3} and {h0,h4}."""
    bridge = 2 if lead != 2 else 1
    rest = [h for h in HOSTS if h not in (lead, bridge)]
    partner = min(rest, key=lambda h: abs(h - lead))
    return sorted([lead, partner]), [h for h in rest if h != partner], bridge


def leader_and_follower(agents: LabAgents) -> tuple[int, int]:
    leader = agents.status(0)["consensus"]["leader"]
    lead = int(leader[1:])
    return lead, next(h for h in HOSTS if h != lead)


# ---------------------------------------------------------------- the lab


@pytest.fixture(scope="module")
def mesh() -> Iterator[LabAgents]:
    from rootpolicy import enforce_root_policy

    enforce_root_policy()
    base = Path(tempfile.mkdtemp(prefix="mt-relay-"))
    key = keygen(base / "cluster.key")
    with NetnsLab(5) as lab:
        config = base / "agent.toml"
        config.write_text("[swim]\nload_aware_health = false\n")
        agents = LabAgents(lab, key, base, mdns=False, seeds=[0], common_args=["--config", str(config)])
        try:
            for host in HOSTS:
                agents.start(host)
            agents.wait_ready(HOSTS, timeout=30)

            def formed() -> bool:
                for host in HOSTS:
                    status = agents.try_status(host)
                    if status is None or not status["consensus"]["leader"]:
                        return False
                    if len(status["consensus"]["voters"]) != 5:
                        return False
                return True

            wait_until("5 voters and a leader seen by every host", formed, timeout=60)
            yield agents
        finally:
            agents.stop_all()
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def healthy(mesh: LabAgents) -> LabAgents:
    mesh.lab.heal()
    mesh.wait_all_members(HOSTS, mesh.expect_all(HOSTS), 30.0)
    wait_until("every link direct", lambda: all(
        link_state(mesh, h, p) in ("direct", None) for h in HOSTS for p in HOSTS if h != p), timeout=10)
    return mesh


def deaths(recorder: MemberEventRecorder) -> list[str]:
    return [f"h{e.host} saw {e.member} dead" for e in recorder.events(kinds=("dead",))]


def heal_and_check_direct(agents: LabAgents, host: int, peer: int) -> float:
    """Heal; seconds until ``host`` shows its path to ``peer`` direct again."""
    agents.lab.heal()
    healed = time.monotonic()
    wait_until(f"h{host} -> h{peer} direct again",
               lambda: link_state(agents, host, peer) == "direct", timeout=10, interval=0.1)
    return time.monotonic() - healed


# ---------------------------------------------------------------- tests


@pytest.mark.timeout(120)
def test_one_link_cut_leader_to_follower_every_host_served(healthy: LabAgents) -> None:
    agents = healthy
    lead, follower = leader_and_follower(agents)
    writes = Writes(agents)
    with MemberEventRecorder(agents, HOSTS).start() as recorder, Terms(agents) as terms:
        cut_link(agents.lab, lead, follower)
        writes.run()
        assert link_state(agents, follower, lead) in ("relayed", "down")
        sent_over_relays = relayed(agents, follower)
        took = heal_and_check_direct(agents, follower, lead)
        time.sleep(1.0)  # a few heartbeats on the healed path
        after = relayed(agents, follower)
        call_sync(agents.socket(follower), "kv.put", {"ns": "relay", "key": "after", "value": b"y",
                                                      "rid": uuid.uuid4().hex}, timeout=WRITE_TIMEOUT)
        assert relayed(agents, follower) == after, "still relaying after the path healed"
    print(f"single link h{lead}<->h{follower}: {writes.summary()}; relayed {sent_over_relays}; "
          f"direct again {took:.2f} s after healing; terms {sorted(terms.seen)}")
    assert sent_over_relays > 0
    assert deaths(recorder) == []
    assert terms.changes <= 1, sorted(terms.seen)
    for host in HOSTS:
        assert writes.served(host) >= MIN_SERVED, writes.summary() + "\n" + agents.logs([host, lead])
    assert took <= HEAL_BOUND


@pytest.mark.timeout(120)
def test_bridge_every_host_served(healthy: LabAgents) -> None:
    agents = healthy
    lead, _follower = leader_and_follower(agents)
    left, right, bridge = bridge_groups(lead)
    writes = Writes(agents)
    with MemberEventRecorder(agents, HOSTS).start() as recorder, Terms(agents) as terms:
        agents.lab.partition([left, right])  # the bridge host reaches both sides
        writes.run()
        assert link_state(agents, right[0], lead) in ("relayed", "down")
        took = heal_and_check_direct(agents, right[0], lead)
    print(f"bridge {left} | {right} over h{bridge}, leader h{lead}: {writes.summary()}; "
          f"direct again {took:.2f} s after healing; terms {sorted(terms.seen)}")
    assert deaths(recorder) == []
    assert terms.changes <= 1, sorted(terms.seen)
    for host in HOSTS:
        assert writes.served(host) >= MIN_SERVED, writes.summary() + "\n" + agents.logs()


@pytest.mark.timeout(120)
def test_a_refused_link_kills_no_one_and_elects_no_one(healthy: LabAgents) -> None:
    agents = healthy
    lead, follower = leader_and_follower(agents)
    writes = Writes(agents)
    with MemberEventRecorder(agents, HOSTS).start() as recorder, Terms(agents) as terms:
        cut_link(agents.lab, lead, follower, verdict="reject")
        writes.run(range(follower, follower + 1))
        agents.lab.heal()
    print(f"rejected link h{lead}<->h{follower}: {writes.summary()}; terms {sorted(terms.seen)}")
    assert deaths(recorder) == []
    assert terms.changes == 0, sorted(terms.seen)
    assert writes.served(follower) >= MIN_SERVED, writes.summary()
