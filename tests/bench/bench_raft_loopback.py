"""Issue 4's Raft benchmarks on real processes: 3 ``mesh-agent``s on loopback vs PySyncObj.

Run: ``.venv/bin/python tests/bench/bench_raft_loopback.py [--seconds S] [--kills N]
[--only throughput,latency,failover]`` (PySyncObj must be installed in the
bench environment: ``.venv/bin/pip install pysyncobj``; it is not a project
dependency).

Figures, all from one run on this machine, with the load average printed
beside each so a busy box shows:

1. Committed writes/s, 100-byte values, 3 agents whose WAL fsyncs every group
   before anything is acknowledged.  Load comes from asyncio ``ControlClient``s
   over the Unix control socket, each connection with 64 calls in flight, in
   separate client processes (all to the leader, then spread over all three
   nodes so followers forward); each call a ``kv.put`` request and its reply on
   the socket, driven by ``ControlClient.start``'s callbacks (``--client-api
   start``, the default since 2026-12-06's session 6: no coroutine and task
   wake-up per call, about 2 us of client CPU a write less) or by a coroutine
   per call awaiting ``ControlClient.call`` (``--client-api call``, the earlier
   rows).  Beside it: 3 PySyncObj processes on loopback
   with ``journalFile`` and in memory, load generated inside the leader with a
   window of commands in flight (how PySyncObj's own benchmark drives it; it
   has no client protocol, so it pays no client or socket cost).  Beside each
   figure, CPU seconds per committed write from psutil (the 3 agents, the leader
   alone, the client processes; PySyncObj's 3 nodes and its leader, whose load
   generation is included), a cost the box's other load moves less than
   writes/s.  Each run starts a fresh mesh per event loop (``--event-loop both``:
   asyncio, then uvloop when installed) and then PySyncObj, and prints the
   ratio against issue 14's target (>= 2x PySyncObj with its journal).
2. Commit latency p50/p99 with one client doing sequential puts to the leader
   (and through a follower), beside PySyncObj's sequential in-process latency.
3. Leader failover: SIGKILL the leader N times (restarting it each time); the
   time from the kill until a write issued after it is acknowledged (a new
   leader has committed it), on the LAN profile (election timeout 1-2 s) and
   on the local profile (0.5-1 s); on the LAN profile also through the public CLI
   (``meshtui kv put`` to a survivor, retried until it succeeds), and beside it
   etcd's own failover on the same box (``etcd_anchor.py``, when Debian's
   ``etcd-server``/``etcd-client`` are installed: a bench-only install).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)
import etcd_anchor
import psutil

from agent.control.pending import Pending
from agent.runtime.event_loop import uvloop_available
from meshtui.client import ClientError, ControlClient, call_sync
from meshtui.demo import LocalMesh, free_port

PAYLOAD = 100
"""Bytes per written value (the issue's 100-byte payloads)."""

IN_FLIGHT_PER_CONNECTION = 64
"""Calls each control connection keeps in flight (the client's and server's cap)."""

CONNECTIONS_WHY = """The default 8 connections per process x 2 processes x 64 calls keep
1,024 writes in flight to the leader, still fewer than the 2,000 PySyncObj's own
driver keeps (``--window`` below).  With 4 (512 in flight, the rows before
2026-12-07 03:10 UTC) 17-20% of the two cores sat idle during our runs: the
pipeline, not the CPU, was the limit (session 8's helper: 23.3-27.8k/s at 4,
28.3-30.4k/s at 8, the same code).  Each write is still its own kv.put request
and reply."""

WARMUP = 1.0
"""Seconds of load before counting starts."""

FAILOVER_CONNECTIONS = 4
"""Connections per surviving node during a failover (see ``_first_ack_after``)."""

HERE = Path(__file__).resolve().parent


def loadavg() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (threads included) so far: a cost the
    box's other load hardly moves, unlike writes/s (psutil; gone processes count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


# ---------------------------------------------------------------- our cluster


class Mesh:
    """LocalMesh with a chosen profile (``lan`` or ``local``); demo.py is left as it is."""

    def __init__(self, base_dir: Path, profile: str, event_loop: str = "auto") -> None:
        self.mesh = LocalMesh(3, base_dir=base_dir, extra_args=["--event-loop", event_loop])
        for node in self.mesh.nodes:
            node.argv[node.argv.index("--profile") + 1] = profile
        self.profile = profile

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.mesh.nodes if n.proc is not None and n.running]

    def commit_index(self, name: str) -> int:
        st = self.status(name)
        return int(st["consensus"]["commit_index"] or 0) if st else 0

    def start(self, timeout: float = 60.0) -> None:
        self.mesh.start()
        if not self.mesh.wait_ready(timeout) or not self.wait_healthy(timeout):
            raise RuntimeError(f"cluster did not form; logs in {self.mesh.base_dir}")

    def stop(self) -> None:
        self.mesh.stop()

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(call_sync(self.mesh.node(name).socket_path, "status", {}, 1.0))
        except ClientError:
            return None

    def leader(self) -> str | None:
        for node in self.mesh.nodes:
            if not node.running:
                continue
            st = self.status(node.name)
            if st and st["consensus"]["role"] == "leader":
                return str(st["node"])
        return None

    def wait_healthy(self, timeout: float) -> bool:
        """Every node running, 3 voters, one leader every node agrees on, all caught up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = [self.status(n.name) for n in self.mesh.nodes]
            if all(views):
                cons = [v["consensus"] for v in views if v]
                leaders = {c["leader"] for c in cons}
                commits = [c["commit_index"] or 0 for c in cons]
                if (
                    len(leaders) == 1 and None not in leaders
                    and all(len(c["voters"]) == 3 for c in cons)
                    and max(commits) - min(commits) <= 2
                    and all(c["role"] in ("leader", "voter") for c in cons)
                ):
                    return True
            time.sleep(0.1)
        return False

    def socket(self, name: str) -> str:
        return self.mesh.node(name).socket_path


async def _put_worker(
    client: ControlClient, stop_at: float, count_from: float, counts: dict[str, int],
    value: bytes, worker: int,
) -> None:
    loop = asyncio.get_running_loop()
    # A unique idempotency id per write, as a real client sends: a random
    # per-worker prefix plus a counter (uuid4 per call cost the client
    # processes a tenth of their CPU, which the agents share on this box).
    rid_prefix = uuid.uuid4().hex[:20]
    i = 0
    while loop.time() < stop_at:
        i += 1
        try:
            await client.call("kv.put", ns="bench", key=f"w{worker}-{i % 64}", value=value,
                              rid=f"{rid_prefix}{i:x}", timeout=10.0)
            ok = True
            counts["all"] += 1
        except ClientError:
            ok = False
        if loop.time() >= count_from:
            counts["ok" if ok else "failed"] += 1


class _Putter:
    """One in-flight slot of a connection driven by callbacks (``--client-api start``):
    each reply's callback counts it and sends the slot's next ``kv.put`` -- the same
    request, rid and reply as ``_put_worker``'s, over the same socket, without a
    coroutine and a task wake-up per write (``ControlClient.start``)."""

    def __init__(self, client: ControlClient, stop_at: float, count_from: float,
                 counts: dict[str, int], value: bytes, worker: int, done: asyncio.Future[None],
                 running: list[int]) -> None:
        self.client, self.stop_at, self.count_from = client, stop_at, count_from
        self.counts, self.value, self.worker, self.done, self.running = (
            counts, value, worker, done, running)
        self.loop = asyncio.get_running_loop()
        self.rid_prefix = uuid.uuid4().hex[:20]  # as _put_worker: a prefix and a counter
        self.i = 0
        # _put_worker's keys (w{worker}-{i % 64}), made once: the bench's own
        # string building is client CPU that is not the write's.
        self.keys = tuple(f"w{worker}-{j}" for j in range(64))

    def send(self, now: float | None = None) -> None:
        if (self.loop.time() if now is None else now) >= self.stop_at:
            self.running[0] -= 1
            if not self.running[0] and not self.done.done():
                self.done.set_result(None)
            return
        self.i += 1
        i = self.i
        try:
            call = self.client.start("kv.put", {
                "ns": "bench", "key": self.keys[i % 64], "value": self.value,
                "rid": f"{self.rid_prefix}{i:x}"}, timeout=10.0)
        except ClientError:
            if self.loop.time() >= self.count_from:  # lost or busy: count it and go on
                self.counts["failed"] += 1
            self.loop.call_later(0.01, self.send)
            return
        call.then(_Putter.answered, self)

    def answered(self, call: Pending[Any]) -> None:
        ok = call.exception() is None
        if ok:
            self.counts["all"] += 1
        now = self.loop.time()  # one clock read a reply, for the count and the next send
        if now >= self.count_from:
            self.counts["ok" if ok else "failed"] += 1
        self.send(now)


async def _client_load(sockets: list[str], connections: int, seconds: float,
                       api: str = "call") -> dict[str, Any]:
    clients = [await ControlClient.connect_unix(s) for s in sockets for _ in range(connections)]
    loop = asyncio.get_running_loop()
    count_from = loop.time() + WARMUP
    stop_at = count_from + seconds
    counts = {"ok": 0, "failed": 0, "all": 0}
    value = os.urandom(PAYLOAD)
    cpu0 = time.process_time()
    if api == "start":
        done: asyncio.Future[None] = loop.create_future()
        running = [len(clients) * IN_FLIGHT_PER_CONNECTION]
        putters = [
            _Putter(c, stop_at, count_from, counts, value, i * IN_FLIGHT_PER_CONNECTION + j, done,
                    running)
            for i, c in enumerate(clients) for j in range(IN_FLIGHT_PER_CONNECTION)
        ]
        for putter in putters:
            putter.send()
        await done
    else:
        await asyncio.gather(*(
            _put_worker(c, stop_at, count_from, counts, value, i * IN_FLIGHT_PER_CONNECTION + j)
            for i, c in enumerate(clients) for j in range(IN_FLIGHT_PER_CONNECTION)
        ))
    cpu = time.process_time() - cpu0
    for c in clients:
        await c.close()
    return {**counts, "seconds": seconds, "cpu": cpu}


def _client_process(sockets: list[str], connections: int, seconds: float,
                    out: multiprocessing.Queue[dict[str, Any]], loop: str = "asyncio",
                    api: str = "call") -> None:
    from agent.runtime.event_loop import run, tune_gc

    # The agent's GC thresholds (event_loop.tune_gc) in the client processes too:
    # a client keeping 256 calls in flight crosses CPython's default young-
    # generation threshold (700 objects) thousands of times a second.
    tune_gc()
    out.put(run(_client_load(sockets, connections, seconds, api), loop))


@dataclasses.dataclass
class Throughput:
    per_s: float
    agent_cpu: float
    """CPU seconds per acknowledged write, summed over the 3 agents."""
    client_cpu: float
    """CPU seconds per acknowledged write, summed over the client processes."""
    leader_cpu: float
    """The leader's share of ``agent_cpu``."""

    def cpu_text(self) -> str:
        # One decimal: an A/B of two commits differs by a microsecond or two.
        return (f"cpu/write agents {1e6 * self.agent_cpu:5.1f} us (leader "
                f"{1e6 * self.leader_cpu:4.1f}) + clients {1e6 * self.client_cpu:4.1f} us")


def ours_throughput(mesh: Mesh, leader: str, sockets: list[str], procs: int, connections: int,
                    seconds: float, profile: str = "", client_loop: str = "asyncio",
                    api: str = "call") -> Throughput:
    """Writes/s acknowledged in ``seconds`` after a warm-up, and the CPU each cost: the
    agents' and the clients' CPU over the whole load / writes acknowledged meanwhile
    (warm-up included)."""
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[dict[str, Any]] = ctx.Queue()
    workers = [
        ctx.Process(target=_client_process,
                    args=(sockets, connections, seconds, out, client_loop, api))
        for _ in range(procs)
    ]
    spies: list[subprocess.Popen[bytes]] = []
    if profile:
        # The leader to PROFILE, each follower to PROFILE with its name before
        # the suffix: a follower's share (decode, WAL, background loops) is
        # half the mesh's CPU.
        for node in mesh.mesh.nodes:
            if node.proc is None or not node.running:
                continue
            out_path = profile if node.name == leader else profile.replace(".txt", f"-{node.name}.txt")
            spies.append(subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                 str(node.proc.pid), "--format", "raw", "-o", out_path, "-r", "200"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    pids = mesh.pids()
    lead_pids = [mesh.mesh.node(leader).proc.pid]  # type: ignore[union-attr]
    cpu0, lead0 = cpu_seconds(pids), cpu_seconds(lead_pids)
    for w in workers:
        w.start()
    results = [out.get(timeout=seconds + 60) for _ in workers]
    cpu1, lead1 = cpu_seconds(pids), cpu_seconds(lead_pids)
    for w in workers:
        w.join(10)
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(30)
    ok = sum(r["ok"] for r in results)
    failed = sum(r["failed"] for r in results)
    if failed:
        print(f"    ({failed} writes failed)")
    acked = sum(r["all"] for r in results)  # the clients' CPU covers the warm-up too
    # Per acknowledged write, not per entry: a leader commits a burst of client
    # writes as one batch entry (consensus_requests.py).
    writes = max(1, acked)
    return Throughput(ok / seconds, (cpu1 - cpu0) / writes,
                      sum(r["cpu"] for r in results) / writes, (lead1 - lead0) / writes)


async def _latency(sock: str, seconds: float) -> list[float]:
    client = await ControlClient.connect_unix(sock)
    value = os.urandom(PAYLOAD)
    samples: list[float] = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < WARMUP + seconds:
        i += 1
        t0 = time.perf_counter()
        await client.call("kv.put", ns="lat", key=f"k{i % 64}", value=value, rid=uuid.uuid4().hex)
        if t0 - start >= WARMUP:
            samples.append(time.perf_counter() - t0)
    await client.close()
    return samples


def fsync_floor(directory: Path, count: int = 300) -> tuple[float, float]:
    """p50/p99 seconds of one 100-byte entry appended and synced with our WAL
    (``agent.raft.storage``) on the disk the agents use: a commit needs the
    leader's and a follower's, partly overlapped."""
    from agent.raft.messages import Entry, EntryKind, HardState
    from agent.raft.storage import Storage

    storage = Storage.open(directory / "fsync-probe")
    storage.append([], HardState(1, "", 0))
    storage.sync()
    samples = []
    try:
        for index in range(1, count + 1):
            t0 = time.perf_counter()
            storage.append([Entry(1, index, EntryKind.NORMAL, b"x" * PAYLOAD)])
            storage.sync()
            samples.append(time.perf_counter() - t0)
    finally:
        storage.close()
        shutil.rmtree(directory / "fsync-probe", ignore_errors=True)
    return percentile(samples, 0.5), percentile(samples, 0.99)


# ---------------------------------------------------------------- failover


async def _first_ack_after(sockets: list[str], kill_at: float, limit: float) -> float:
    """Issue a put to every surviving node every 20 ms; seconds from the kill to the first ack.

    Puts forwarded to the dead leader hang until their timeout, so each node gets
    several connections used in turn and their in-flight caps never fill."""
    connections = []
    for sock in sockets:
        for _ in range(FAILOVER_CONNECTIONS):
            with contextlib.suppress(ClientError):
                connections.append(await ControlClient.connect_unix(sock))
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def one(client: ControlClient) -> None:
        try:
            await client.call("kv.put", ns="failover", key="k", value=b"x" * PAYLOAD,
                              rid=uuid.uuid4().hex, timeout=limit)
        except ClientError:
            return
        if not done.done():
            done.set_result(time.monotonic() - kill_at)

    tasks: list[asyncio.Task[None]] = []
    rounds = 0
    try:
        while not done.done() and time.monotonic() - kill_at < limit:
            rounds += 1
            turn = [c for i, c in enumerate(connections)
                    if i % FAILOVER_CONNECTIONS == rounds % FAILOVER_CONNECTIONS]
            tasks += [asyncio.create_task(one(c)) for c in turn]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), 0.02)
        return done.result() if done.done() else float("inf")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in connections:
            await c.close()


def _first_cli_put_after(sockets: list[str], kill_at: float, limit: float) -> float:
    """The public CLI's view: ``meshtui kv put`` to one survivor, retried at once
    until it exits 0; seconds from the kill to that exit (as an operator sees it)."""
    sock = sockets[0]
    while time.monotonic() - kill_at < limit:
        out = subprocess.run(
            [sys.executable, "-m", "meshtui.cli", "kv", "put", "-t", sock, "--namespace", "failover",
             "cli", "x"],
            capture_output=True, timeout=limit,
        )
        if out.returncode == 0:
            return time.monotonic() - kill_at
    return float("inf")


def failover(base: Path, profile: str, kills: int, cli: bool = False) -> list[float]:
    mesh = Mesh(base / f"failover-{profile}", profile)
    mesh.start()
    times: list[float] = []
    # A restarted voter grants no vote for one election timeout (raft/repair.py:
    # it might run on a restored copy of its data dir); each kill is made on a
    # steady cluster, where every node has been up for longer than that.
    settle = 2.0 if profile == "lan" else 1.0
    restarted_at = 0.0
    try:
        for k in range(kills):
            time.sleep(max(0.0, restarted_at + settle - time.monotonic()))
            if not mesh.wait_healthy(60):
                print(f"    cluster not healthy before kill {k + 1}; stopping here")
                break
            leader = mesh.leader()
            if leader is None:
                continue
            # Load on the cluster while the kill happens, like a real one.
            survivors = [mesh.socket(n.name) for n in mesh.mesh.nodes if n.name != leader]
            kill_at = time.monotonic()
            mesh.mesh.kill(leader)
            if cli:
                took = _first_cli_put_after(survivors, kill_at, 30.0)
            else:
                took = asyncio.run(_first_ack_after(survivors, kill_at, 30.0))
            times.append(took)
            mesh.mesh.restart(leader)
            restarted_at = time.monotonic()
        return times
    finally:
        mesh.stop()


# ---------------------------------------------------------------- PySyncObj


def pysyncobj_run(base: Path, journal: bool, mode: str, seconds: float,
                  window: int = 2000) -> dict[str, Any]:
    ports = [free_port() for _ in range(3)]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    run_dir = Path(tempfile.mkdtemp(prefix="pso-", dir=base))
    procs = []
    for i, addr in enumerate(addrs):
        argv = [sys.executable, str(HERE / "pysyncobj_node.py"), "--self", addr,
                "--seconds", str(seconds), "--payload", str(PAYLOAD), "--window", str(window),
                "--mode", mode]
        for other in addrs:
            if other != addr:
                argv += ["--partner", other]
        if journal:
            argv += ["--journal", str(run_dir / f"journal{i}.bin")]
        procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True))
    results = []
    cpu_from: float | None = None
    cpu_to = lead_from = lead_to = 0.0
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line and json.loads(line).get("load"):
                cpu_from, lead_from = cpu_seconds([q.pid for q in procs]), cpu_seconds([p.pid])
                line = p.stdout.readline()
                cpu_to, lead_to = cpu_seconds([q.pid for q in procs]), cpu_seconds([p.pid])
            results.append(json.loads(line) if line else {"error": "no output"})
    finally:
        for p in procs:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert p.stdin is not None
                p.stdin.close()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(run_dir, ignore_errors=True)
    drivers = [r for r in results if r.get("drove")]
    if len(drivers) != 1:
        raise RuntimeError(f"PySyncObj run had {len(drivers)} drivers: {results}")
    result = dict(drivers[0])
    if cpu_from is not None and result.get("ok_all"):
        # Its load is generated inside the leader, so this includes the "client".
        result["cpu_per_write"] = (cpu_to - cpu_from) / result["ok_all"]
        result["leader_cpu_per_write"] = (lead_to - lead_from) / result["ok_all"]
    return result


# ---------------------------------------------------------------- main

TARGET_RATIO = 2.0
"""Issue 14: committed writes/s at least twice PySyncObj's (with its journal), same run."""


def throughput(base: Path, args: argparse.Namespace, loops: list[str]) -> None:
    """Figure 1, ``--repeat`` runs; each run starts a fresh mesh per event loop and
    then PySyncObj, so every ratio compares figures of one run (one box load)."""
    print(f"\n1. committed writes/s, 3 nodes, WAL fsync'd ({args.procs} client procs x "
          f"{args.connections} conns x {IN_FLIGHT_PER_CONNECTION} in flight per socket; "
          f"clients on {'the agents' if args.client_loop == 'same' else 'the asyncio'} loop with the "
          f"agent's GC thresholds, ControlClient.{args.client_api}; each write a kv.put call "
          f"acknowledged over the control socket)")
    best: dict[str, list[float]] = {loop: [] for loop in loops}
    for r in range(args.repeat):
        lead: dict[str, Throughput] = {}
        for loop in loops:
            mesh = Mesh(base / f"mesh-{loop}-{r}", "local", loop)
            mesh.start()
            try:
                leader = mesh.leader()
                assert leader is not None
                profile = f"{args.profile}-{loop}.txt" if args.profile and r == 0 else ""
                clients = loop if args.client_loop == "same" else "asyncio"
                lead[loop] = t = ours_throughput(mesh, leader, [mesh.socket(leader)], args.procs,
                                                 args.connections, args.seconds, profile, clients,
                                                 args.client_api)
                print(f"   meshtui {loop:7}, clients -> leader : {t.per_s:9,.0f}/s  "
                      f"{t.cpu_text()}  ({loadavg()})")
                socks = [mesh.socket(n.name) for n in mesh.mesh.nodes]
                t = ours_throughput(mesh, leader, socks, args.procs, max(1, args.connections // 2),
                                    args.seconds, client_loop=clients, api=args.client_api)
                print(f"   meshtui {loop:7}, clients -> all 3  : {t.per_s:9,.0f}/s  "
                      f"{t.cpu_text()}  ({loadavg()})")
            finally:
                mesh.stop()
        pj = pysyncobj_run(base, True, "throughput", args.seconds)
        pj_cpu = pj.get("cpu_per_write", 0.0)
        print(f"   PySyncObj, journalFile             : {pj['per_s']:9,.0f}/s  cpu/write "
              f"{1e6 * pj_cpu:4.0f} us (leader {1e6 * pj.get('leader_cpu_per_write', 0.0):3.0f}; "
              f"its 3 nodes, load generated in the leader)  ({loadavg()})")
        if args.memory:
            pm = pysyncobj_run(base, False, "throughput", args.seconds)
            print(f"   PySyncObj, in memory               : {pm['per_s']:9,.0f}/s  ({loadavg()})")
        for loop, t in lead.items():
            ratio = t.per_s / pj["per_s"]
            best[loop].append(ratio)
            cpu = (f", cpu/write PySyncObj/meshtui(agents+clients) = "
                   f"{pj_cpu / (t.agent_cpu + t.client_cpu):.2f}x") if pj_cpu else ""
            print(f"   run {r + 1} {loop:7}: meshtui/PySyncObj(journal) = {ratio:.2f}x  "
                  f"(target >= {TARGET_RATIO:g}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'}){cpu}")
    for loop, ratios in best.items():
        print(f"   {loop:7}: ratio {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} runs; "
              f"target >= {TARGET_RATIO:g}x met in {sum(x >= TARGET_RATIO for x in ratios)}")


def latency(base: Path, args: argparse.Namespace, loops: list[str]) -> None:
    """Figure 2: sequential puts, to the leader and through a follower, per event loop."""
    print("\n2. commit latency, one client, sequential puts")
    for loop in loops:
        mesh = Mesh(base / f"lat-{loop}", "local", loop)
        mesh.start()
        try:
            leader = mesh.leader()
            assert leader is not None
            follower = next(n.name for n in mesh.mesh.nodes if n.name != leader)
            for sock, label in ((mesh.socket(leader), "leader"),
                                (mesh.socket(follower), "follower (forwarded)")):
                lat = asyncio.run(_latency(sock, args.seconds))
                print(f"   meshtui {loop:7} via {label:21}: p50 {1000 * percentile(lat, 0.5):6.2f} ms"
                      f"  p99 {1000 * percentile(lat, 0.99):6.2f} ms  n={len(lat)}  ({loadavg()})")
        finally:
            mesh.stop()
    pl = pysyncobj_run(base, True, "latency", args.seconds)
    print(f"   PySyncObj journal, in-process          : p50 {pl['p50_ms']:6.2f} ms"
          f"  p99 {pl['p99_ms']:6.2f} ms  n={pl['ok']}  ({loadavg()})")
    f50, f99 = fsync_floor(base)
    print(f"   one WAL append+sync, 100 B:               p50 {1000 * f50:6.2f} ms  "
          f"p99 {1000 * f99:6.2f} ms")
    print("   target: p50 <= 2 ms")



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per figure")
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs for the LAN failover")
    parser.add_argument("--local-kills", type=int, default=20, help="SIGKILLs on the local profile")
    parser.add_argument("--etcd-kills", type=int, default=12,
                        help="SIGKILLs of etcd's leader for the anchor (if etcd is installed)")
    parser.add_argument("--cli-kills", type=int, default=12,
                        help="SIGKILLs on the LAN profile timed through `meshtui kv put`")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--connections", type=int, default=8,
                        help="connections per socket per process (8 since 2026-12-07's session 8, "
                             "4 before: see CONNECTIONS_WHY)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each throughput figure")
    parser.add_argument("--only", default="throughput,latency,failover")
    parser.add_argument("--event-loop", dest="event_loop", default="both",
                        choices=["both", "asyncio", "uvloop"],
                        help="the agents' loop; both: asyncio, then uvloop if installed")
    parser.add_argument("--client-loop", dest="client_loop", default="asyncio",
                        choices=["asyncio", "same"],
                        help="the client processes' loop: asyncio (default), or the agents' (same)")
    parser.add_argument("--client-api", dest="client_api", default="start", choices=["call", "start"],
                        help="how the clients drive their calls: a coroutine per call awaiting "
                             "ControlClient.call (call), or ControlClient.start's callbacks (start)")
    parser.add_argument("--memory", action="store_true",
                        help="also run PySyncObj without its journal (in memory)")
    parser.add_argument("--profile", default="",
                        help="py-spy raw profiles in run 1: the leader to PREFIX-LOOP.txt, "
                             "each follower to PREFIX-LOOP-NAME.txt")
    args = parser.parse_args()
    only = set(args.only.split(","))
    loops = (["asyncio", "uvloop"] if uvloop_available() else ["asyncio"]) \
        if args.event_loop == "both" else [args.event_loop]
    base = Path(tempfile.mkdtemp(prefix="mt-raftbench-", dir="/tmp"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    print(f"bench_raft_loopback: {os.cpu_count()} CPUs, {loadavg()}, "
          f"payload {PAYLOAD} B, {args.seconds:g} s per figure")
    try:
        if "throughput" in only:
            throughput(base, args, loops)
        if "latency" in only:
            latency(base, args, loops)
        if "failover" in only:
            print("\n3. leader failover: SIGKILL the leader, time until a new leader commits a write")
            runs = (("lan", args.kills, False), ("lan", args.cli_kills, True),
                    ("local", args.local_kills, False))
            for profile, kills, cli in runs:
                if kills <= 0:
                    continue
                times = failover(base, profile, kills, cli)
                finite = [t for t in times if t != float("inf")] or [float("inf")]
                how = "meshtui kv put" if cli else "bench client  "
                print(f"   {profile:5} profile, {how}, {len(times)} kills: median "
                      f"{statistics.median(finite):.3f} s  p90 {percentile(finite, 0.9):.3f} s  "
                      f"min {min(finite):.3f} s  max {max(finite):.3f} s  "
                      f"unrecovered {len(times) - len(finite)}  ({loadavg()})")
            if args.etcd_kills > 0 and etcd_anchor.available():
                et = etcd_anchor.failover(args.etcd_kills)
                ef = [t for t in et if t != float("inf")] or [float("inf")]
                print(f"   anchor: etcd x3, etcdctl put --command-timeout 0.5s, {len(et)} kills: median "
                      f"{statistics.median(ef):.3f} s  p90 {percentile(ef, 0.9):.3f} s  "
                      f"min {min(ef):.3f} s  max {max(ef):.3f} s  unrecovered {len(et) - len(ef)}  "
                      f"({loadavg()})")
            elif args.etcd_kills > 0:
                print("   anchor: etcd not installed (apt-get install etcd-server etcd-client); skipped")
            print("   target (issue 14): median <= 0.5 s, p90 <= 1.0 s on the LAN profile, both ways"
                  " (election timeout 1-2 s)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
