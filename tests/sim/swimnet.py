"""An in-memory network that drives many SwimNodes on a virtual clock.

Deterministic: one seeded ``random.Random`` drives the network faults and
(through per-node generators derived from it) every node, so a failing seed
replays exactly (``MESH_SEED=<seed>``).  Nothing here touches a socket or the
real clock.

Efficiency: a single heap of timed events.  Each node is ticked only at its
own ``next_deadline()`` (rescheduled after every tick or delivery), so 1,000
nodes cost what their protocol traffic costs, not 1,000 wake-ups per
millisecond.

Faults:

* UDP (``reliable=False``): loss probability, uniform delay in
  ``[min_delay, max_delay]`` (which also reorders), duplication probability;
* TCP (``reliable=True``): never lost at random, fixed ``tcp_delay``; with
  ``tcp_rto`` set, each segment the UDP ``loss`` would have dropped is instead
  retransmitted after an exponentially growing timeout (as the kernel does,
  200 ms minimum RTO on Linux), so a lossy link makes TCP late, not lossy; a TCP
  message that cannot be delivered (cut, isolated, crashed receiver) is
  reported back to the sender with ``unreachable()``, as the runtime does;
* ``cut(groups)``: only nodes in the same group talk; ``heal()`` undoes it;
* ``isolate(addr)``: the node talks to nobody;
* ``crash(addr)``: the node stops (no ticks, everything to it is dropped);
* ``pause(addr)`` / ``resume(addr)``: SIGSTOP: nothing runs, messages queue in
  the kernel and are all delivered at resume;
* ``extra_delay[addr]``: added one-way latency for that node's traffic.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.swim import MemberEvent, SwimConfig, SwimNode
from agent.swim.messages import MemberState, NodeMeta, PushPull, PushPullState
from agent.swim.sizing import message_size

_TICK = 0
_DELIVER = 1
_UNREACHABLE = 2


def sim_seed(default: int) -> int:
    """The seed to use: ``MESH_SEED`` from the environment, else ``default``."""
    value = os.environ.get("MESH_SEED")
    return int(value) if value else default


@contextlib.contextmanager
def replay_hint(seed: int) -> Iterator[None]:
    """Print how to replay a failing simulation."""
    try:
        yield
    except BaseException:
        print(f"\nsimulation failed with seed {seed}; replay with MESH_SEED={seed}", file=sys.stderr)
        raise


@dataclass(slots=True)
class SimHost:
    addr: str
    node: SwimNode
    running: bool = True
    paused: bool = False
    scheduled: float | None = None
    backlog: list[tuple[str, object, bool]] = field(default_factory=list)


class SwimNet:
    """Many SwimNodes, one virtual clock, one seeded RNG."""

    def __init__(
        self,
        seed: int,
        config: SwimConfig,
        *,
        loss: float = 0.0,
        min_delay: float = 0.0005,
        max_delay: float = 0.002,
        duplicate: float = 0.0,
        tcp_delay: float = 0.002,
        tcp_rto: float = 0.0,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config
        self.loss = loss
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.duplicate = duplicate
        self.tcp_delay = tcp_delay
        self.tcp_rto = tcp_rto
        self.now = 0.0
        self.hosts: dict[str, SimHost] = {}
        self.extra_delay: dict[str, float] = {}
        self._groups: dict[str, int] | None = None
        self._isolated: set[str] = set()
        self._heap: list[tuple[float, int, int, str, object]] = []
        self._seq = 0
        self.on_event: Callable[[float, str, MemberEvent], None] | None = None
        self.sent = 0
        self.dropped = 0
        self.max_udp_size = 0
        self.size_check_every = 1  # check every Nth datagram against the payload bound
        self._udp_count = 0

    # ------------------------------------------------------------------ building

    def add_node(self, name: str | None = None, config: SwimConfig | None = None) -> SimHost:
        index = len(self.hosts)
        addr = f"198.18.{index // 250}.{index % 250 + 1}:7900"
        node_id = f"{self.rng.getrandbits(128):032x}"
        meta = NodeMeta(name or f"n{index + 1}", addr, (), 1, "test", "none")
        node = SwimNode(
            config or self.config, node_id, meta, random.Random(self.rng.getrandbits(64)), self.now
        )
        host = SimHost(addr, node)
        self.hosts[addr] = host
        self._reschedule(host)
        return host

    def add_nodes(self, count: int) -> list[SimHost]:
        return [self.add_node() for _ in range(count)]

    def bootstrap(self, hosts: list[SimHost]) -> None:
        """Give every host the full membership of ``hosts`` through the admission path:
        a PushPull reply carrying everyone's state, as if each had just joined."""
        states = tuple(
            PushPullState(h.node.node_id, h.addr, 0, MemberState.ALIVE, h.node.table.self_member.meta)
            for h in hosts
        )
        seed_host = hosts[0]
        # Millions of long-lived records: keep the cyclic GC from rescanning them.
        gc.disable()
        for host in hosts:
            source = seed_host if host is not seed_host else hosts[1]
            msg = PushPull(source.node.node_id, source.addr, join=False, reply=True, states=states)
            host.node.step(self.now, source.addr, msg)
            self._flush(host)
        gc.freeze()
        gc.enable()

    # ------------------------------------------------------------------ faults

    def cut(self, *groups: list[str] | set[str]) -> None:
        """Partition: only hosts in the same group can talk (others: alone)."""
        self._groups = {}
        for gid, group in enumerate(groups):
            for addr in group:
                self._groups[addr] = gid

    def heal(self) -> None:
        self._groups = None
        self._isolated.clear()

    def isolate(self, addr: str) -> None:
        self._isolated.add(addr)

    def crash(self, addr: str) -> None:
        self.hosts[addr].running = False

    def restart(self, addr: str) -> SimHost:
        """The process comes back with its persisted id but fresh state (incarnation 0,
        empty member table), as after a reboot; it must join again."""
        old = self.hosts[addr]
        me = old.node.table.self_member
        node = SwimNode(old.node.config, me.node, me.meta, random.Random(self.rng.getrandbits(64)), self.now)
        host = SimHost(addr, node)
        self.hosts[addr] = host
        self._reschedule(host)
        return host

    def pause(self, addr: str) -> None:
        self.hosts[addr].paused = True

    def resume(self, addr: str) -> None:
        host = self.hosts[addr]
        host.paused = False
        backlog, host.backlog = host.backlog, []
        for src, msg, _reliable in backlog:
            host.node.step(self.now, src, msg)
        host.node.tick(self.now)
        self._flush(host)

    def connected(self, a: str, b: str) -> bool:
        if a in self._isolated or b in self._isolated:
            return False
        if self._groups is not None and a != b:
            ga = self._groups.get(a)
            return ga is not None and ga == self._groups.get(b)
        return True

    # ------------------------------------------------------------------ running

    def run_until(self, t: float, stop: Callable[[], bool] | None = None, check_every: float = 0.05) -> bool:
        """Advance virtual time to ``t``; with ``stop``, return True as soon as it holds
        (checked every ``check_every`` virtual seconds).

        The cyclic garbage collector is paused meanwhile: a run allocates millions
        of short-lived, acyclic messages (reference counting frees them), and every
        full collection rescanned the millions of long-lived member records, a
        quarter of the wall time of a 1,000-node partition.  Whatever cycles a run
        does leave are collected once it returns."""
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run_until(t, stop, check_every)
        finally:
            if was_enabled:
                gc.enable()

    def _run_until(self, t: float, stop: Callable[[], bool] | None, check_every: float) -> bool:
        heap = self._heap
        next_check = self.now + check_every
        while heap and heap[0][0] <= t:
            when, _seq, kind, addr, payload = heapq.heappop(heap)
            self.now = when
            if stop is not None and when >= next_check:
                next_check = when + check_every
                if stop():
                    return True
            host = self.hosts[addr]
            if kind == _DELIVER:
                delivery: tuple[Any, ...] = payload  # type: ignore[assignment]
                src, msg, reliable = delivery[0], delivery[1], delivery[2]
                if not host.running or not self._reachable(src, addr, reliable):
                    if reliable and host.running and self._redeliver(when, addr, delivery):
                        continue
                    self.dropped += 1
                    if reliable:
                        self._push(when + self.tcp_delay, _UNREACHABLE, src, addr)
                    continue
                if host.paused:
                    host.backlog.append((src, msg, reliable))
                    continue
                host.node.step(when, src, msg)
            elif not host.running:
                continue
            elif kind == _TICK:
                if host.scheduled != when or host.paused:
                    continue
                host.scheduled = None
                host.node.tick(when)
            else:
                if host.paused:
                    continue
                host.node.unreachable(when, payload)  # type: ignore[arg-type]
            self._flush(host)
        self.now = max(self.now, t)
        return stop() if stop is not None else False

    def _reachable(self, src: str, dst: str, reliable: bool) -> bool:
        """Whether a message from ``src`` arrives at ``dst`` now (a subclass may let
        reliable ones take another path)."""
        return self.connected(src, dst)

    def _redeliver(self, when: float, dst: str, payload: tuple[Any, ...]) -> bool:
        """An undeliverable reliable message: True if it was queued again instead of
        being dropped (here never)."""
        return False

    def run_for(self, dt: float, stop: Callable[[], bool] | None = None, check_every: float = 0.05) -> bool:
        return self.run_until(self.now + dt, stop, check_every)

    def _push(self, when: float, kind: int, addr: str, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, addr, payload))

    def _reschedule(self, host: SimHost) -> None:
        due = max(host.node.next_deadline(), self.now + 1e-6)
        if host.scheduled is None or due < host.scheduled:
            host.scheduled = due
            self._push(due, _TICK, host.addr, None)

    def _flush(self, host: SimHost) -> None:
        node = host.node
        ready = node.ready()
        if ready is not None:
            for out in ready.outbound:
                self._transmit(host.addr, out.to, out.msg, out.reliable)
            if self.on_event is not None:
                for ev in ready.events:
                    self.on_event(self.now, host.addr, ev)
            node.advance(ready)
        self._reschedule(host)

    def _transmit(self, src: str, dst: str, msg: object, reliable: bool) -> None:
        self.sent += 1
        if dst not in self.hosts:
            self.dropped += 1
            if reliable:
                self._push(self.now + self.tcp_delay, _UNREACHABLE, src, dst)
            return
        extra = self.extra_delay.get(src, 0.0) + self.extra_delay.get(dst, 0.0)
        if reliable:
            retransmits = 0.0
            if self.tcp_rto and self.loss:
                backoff = self.tcp_rto
                while self.rng.random() < self.loss and backoff < 64 * self.tcp_rto:
                    retransmits += backoff
                    backoff *= 2
            self._push(self.now + self.tcp_delay + extra + retransmits, _DELIVER, dst, (src, msg, True))
            return
        self._udp_count += 1
        if self._udp_count % self.size_check_every == 0:
            size = message_size(msg)
            limit = self.config.max_datagram_payload
            assert size <= limit, f"datagram of {size} bytes: {msg!r:.200}"
            self.max_udp_size = max(self.max_udp_size, size)
        copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            delay = self.rng.uniform(self.min_delay, self.max_delay) + extra
            self._push(self.now + delay, _DELIVER, dst, (src, msg, False))

    # ------------------------------------------------------------------ observing

    def running_hosts(self) -> list[SimHost]:
        return [h for h in self.hosts.values() if h.running]

    def state_of(self, observer: SimHost, subject: SimHost) -> MemberState | None:
        if observer is subject:
            return observer.node.table.self_member.state
        member = observer.node.table.get(subject.node.node_id)
        return member.state if member is not None else None

    def join(self, host: SimHost, addrs: list[str]) -> None:
        """``host`` asks the candidates at ``addrs`` to admit it (runtime's join)."""
        host.node.join(self.now, addrs)
        self._flush(host)

    def leave(self, host: SimHost) -> None:
        host.node.leave(self.now)
        self._flush(host)

    def poke(self, host: SimHost) -> None:
        """Collect what ``host`` produced after a direct call (update_load, ...)."""
        self._flush(host)
