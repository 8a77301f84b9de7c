"""Two live processes with one node id (a data dir copied to a second host): the
newcomer finds the incumbent and stops; restarts, restores on the same address
and aliases of our own address are not mistaken for one (agent.swim.identity)."""

from __future__ import annotations

import random

from agent.swim import Outbound, SwimConfig, SwimNode
from agent.swim.identity import IDENTITY_SEQ
from agent.swim.messages import EMPTY_PIGGYBACK, MemberState, NodeMeta, Ping, PushPull, PushPullState

CFG = SwimConfig.lan()
NODE = "a" * 32
PEER = "b" * 32
A1, A2, P = "198.18.0.1:7900", "198.18.0.2:7900", "198.18.0.3:7900"


def meta(name: str, addr: str) -> NodeMeta:
    return NodeMeta(name, addr, (), 1, "test", "none")


def node(node_id: str, addr: str, seed: int) -> SwimNode:
    return SwimNode(CFG, node_id, meta(node_id[:2], addr), random.Random(seed), 0.0)


class Net:
    """Delivers what the nodes send, by address (``aliases`` maps extra names)."""

    def __init__(self, *nodes: SwimNode, aliases: dict[str, str] | None = None) -> None:
        self.by_addr = {n.table.self_member.addr: n for n in nodes}
        self.aliases = aliases or {}
        self.sent: list[tuple[str, Outbound]] = []

    def run(self, now: float, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for addr, n in list(self.by_addr.items()):
                ready = n.ready()
                if ready is None:
                    continue
                n.advance(ready)
                for out in ready.outbound:
                    moved = True
                    self.sent.append((addr, out))
                    target = self.by_addr.get(self.aliases.get(out.to, out.to))
                    if target is not None:
                        target.step(now, addr, out.msg)
            if not moved:
                return


def cluster() -> tuple[SwimNode, SwimNode, Net]:
    """An incumbent NODE at A1 and a peer at P that know each other."""
    incumbent, peer = node(NODE, A1, 1), node(PEER, P, 2)
    net = Net(incumbent, peer)
    incumbent.join(0.0, [P])
    net.run(0.0)
    assert peer.member(NODE) is not None and peer.member(NODE).state == "alive"  # type: ignore[union-attr]
    return incumbent, peer, net


def test_a_newcomer_joining_through_a_peer_finds_the_incumbent_and_it_keeps_running() -> None:
    incumbent, peer, net = cluster()
    newcomer = node(NODE, A2, 3)
    net.by_addr[A2] = newcomer
    newcomer.join(0.1, [P])
    net.run(0.1)
    assert newcomer.identity.conflict == A1
    assert incumbent.identity.conflict is None
    assert incumbent.identity.claimed_at == A2
    # The peer still has the incumbent at its own address, alive.
    view = peer.member(NODE)
    assert view is not None and view.addr == A1 and view.state == "alive"
    # The checks were bare pings as ourselves: nothing of the newcomer's gossip
    # reached the incumbent with them.
    checks = [out for src, out in net.sent
              if src == A2 and isinstance(out.msg, Ping) and out.msg.seq >= IDENTITY_SEQ]
    assert {out.reliable for out in checks} == {False, True}
    assert all(out.to == A1 and out.msg.gossip == EMPTY_PIGGYBACK for out in checks)  # type: ignore[attr-defined]


def test_a_newcomer_whose_seed_is_the_incumbent_finds_it_too() -> None:
    incumbent, _peer, net = cluster()
    newcomer = node(NODE, A2, 3)
    net.by_addr[A2] = newcomer
    newcomer.join(0.1, [A1])
    net.run(0.1)
    assert newcomer.identity.conflict == A1
    assert incumbent.identity.conflict is None


def test_a_restart_at_a_new_address_after_the_old_process_died_is_no_conflict() -> None:
    _incumbent, _peer, net = cluster()
    del net.by_addr[A1]  # the old process is gone (its record lingers at the peer)
    moved = node(NODE, A2, 3)
    net.by_addr[A2] = moved
    moved.join(0.1, [P])
    net.run(0.1)
    assert moved.identity.conflict is None
    assert moved.identity.checks_sent == 1
    moved.tick(0.1 + 3 * CFG.probe_interval)  # the check expires unanswered
    assert moved.identity.conflict is None and moved.stats["refutes"] >= 1


def test_a_restore_on_the_same_address_sends_no_check() -> None:
    _incumbent, peer, net = cluster()
    restored = node(NODE, A1, 4)  # a new process from an older copy, same address
    net.by_addr[A1] = restored
    restored.join(0.2, [P])
    net.run(0.2)
    assert restored.identity.checks_sent == 0 and restored.identity.conflict is None
    view = peer.member(NODE)
    assert view is not None and view.state == "alive"


def test_our_own_check_reaching_us_under_an_alias_is_no_conflict() -> None:
    me = node(NODE, A1, 1)
    net = Net(me, aliases={"127.0.0.1:7900": A1})
    # Someone tells us we are alive at 127.0.0.1:7900, which is ourselves.
    state = PushPullState(NODE, "127.0.0.1:7900", 5, MemberState.ALIVE, meta("aa", A1))
    me.step(0.0, P, PushPull(PEER, P, False, True, (state,)))
    net.run(0.0)
    assert me.identity.checks_sent == 1
    assert me.identity.conflict is None and me.identity.claimed_at is None


def test_checks_are_rate_limited_per_address() -> None:
    me = node(NODE, A1, 1)
    alive_elsewhere = PushPullState(NODE, A2, 5, MemberState.ALIVE, meta("aa", A2))
    for i in range(5):
        me.step(i * 0.1 * CFG.probe_interval, P,
                PushPull(PEER, P, False, True, (alive_elsewhere,)))
    assert me.identity.checks_sent == 1
    me.step(2 * CFG.probe_interval, P, PushPull(PEER, P, False, True, (alive_elsewhere,)))
    assert me.identity.checks_sent == 2
