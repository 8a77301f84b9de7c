"""Tasks at run time: the leader's placement loop and this host's executor (output: ``output.py``).

Leader (every ``sched_interval``): build a ``ClusterSnapshot`` from SWIM
(liveness, capabilities, slots, load) and the replicated state (tasks, drain
flags, per-host history); ask every live host for a bid (one round for all
queued tasks; bids that miss ``bid_timeout`` fall back to gossiped figures);
then propose, as committed entries: assignments, failover of hosts dead for
longer than ``task_lease``, drain moves, work steals and hot→cold moves.

Every host: after each applied batch, reconcile the executor with the state:
start what is assigned to us at the current epoch (and nothing else), kill
any local run whose task now has a newer epoch, another host, or was
cancelled (fencing).  Executor events become ``task.start``/``task.finish``
proposals; a report that cannot be committed (no quorum) is retried until it
is, so results from a minority are committed after the partition heals.

Fencing against hung agents: see ``agent.watchdog``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from agent import watchdog
from agent.errors import MeshError, TaskError
from agent.executor import ExecEvent, Executor
from agent.runtime.output import TaskOutput
from agent.sched import (
    Bid,
    BidRequest,
    ClusterSnapshot,
    HeatState,
    NodeView,
    place_many,
    plan_drain,
    plan_failover,
    plan_rebalance,
    plan_steals,
    settle_heat,
    update_heat,
)
from agent.state import builders
from agent.state.commands import TaskStats
from agent.state.machine import ApplyResult
from agent.swim.members import MemberView

if TYPE_CHECKING:
    from agent.runtime.agent import Agent

log = logging.getLogger(__name__)

SCHED_INTERVAL = {"lan": 0.5, "local": 0.2}
"""Seconds between leader placement rounds."""
BID_TIMEOUT = {"lan": 0.1, "local": 0.05}
"""Seconds the leader waits for bids before using gossiped load."""
TASK_LEASE = {"lan": 10.0, "local": 3.0}
"""Seconds a host's tasks survive without quorum contact; the leader waits at least
this long after a host is confirmed dead before running its tasks elsewhere."""
MAX_REPORTS_PER_BATCH = 256
"""Bound on executor reports proposed at once."""
MAX_PROPOSALS_PER_ROUND = 1024
"""Bound on decisions proposed per leader round."""
MAX_INFLIGHT_DECISIONS = 4096
"""Bound on leader decisions proposed and not yet committed (rounds overlap)."""


@dataclass(frozen=True, slots=True)
class _Report:
    """A ``task.start``/``task.finish`` command waiting to be committed."""

    task: str
    epoch: int
    kind: str
    cmd: bytes


class TaskRuntime:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        profile = agent.config.profile
        self.sched_interval = SCHED_INTERVAL.get(profile, 0.5)
        self.bid_timeout = BID_TIMEOUT.get(profile, 0.1)
        self.lease = TASK_LEASE.get(profile, 10.0)
        data_dir = Path(agent.config.data_dir)
        run_as = agent.config.run_as if os.geteuid() == 0 else None
        self.executor = Executor(
            data_dir, agent.config.effective_slots(), run_as or None, self._on_exec_event,
            node_id=agent.node_id,
        )
        self.output = TaskOutput(agent, self.executor, data_dir / "replicas")
        self.heat = HeatState()
        self._dead_since: dict[str, float] = {}
        self._reports: list[_Report] = []
        self._inflight: set[str] = set()
        """Task ids (and dead node ids) with a leader decision proposed, not yet committed."""
        self._proposals: set[asyncio.Task[None]] = set()
        self._started: dict[str, int] = {}
        """Task id -> epoch of the latest run this agent started (running or finished)."""
        self._reconcile_needed = asyncio.Event()
        self._report_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._bids: dict[int, dict[str, Bid]] = {}
        self._bid_ids = itertools.count(1)
        self._cpu_prev: dict[int, float] = {}
        self._cpu_at = time.monotonic()
        self._cpu_wall = time.time()
        self._task_cpu = 0.0
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._registered: dict[str, int] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        # Its own session: a signal to the agent's process group (a kill of
        # the agent and its helpers) must not take the watchdog with it.
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "agent.watchdog"], stdin=subprocess.PIPE, close_fds=True,
            start_new_session=True,
        )
        self._watchdog_send(f"lease {self.lease}")
        self._tasks = [
            asyncio.create_task(self._leader_loop(), name="sched"),
            asyncio.create_task(self._reconcile_loop(), name="reconcile"),
            asyncio.create_task(self._report_loop(), name="reports"),
            asyncio.create_task(self._lease_loop(), name="lease"),
        ]

    async def close(self) -> None:
        for task in [*self._tasks, *self._proposals]:
            task.cancel()
        for task in [*self._tasks, *self._proposals]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.executor.shutdown()
        if self._watchdog is not None and self._watchdog.stdin is not None:
            self._watchdog.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(timeout=2)

    def _watchdog_send(self, line: str) -> None:
        if self._watchdog is None or self._watchdog.stdin is None:
            return
        try:
            self._watchdog.stdin.write(line.encode() + b"\n")
            self._watchdog.stdin.flush()
        except (BrokenPipeError, OSError):
            log.error("task watchdog is gone; tasks are no longer lease-fenced")
            self._watchdog = None

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.lease / 4))
            if self.agent.consensus.has_quorum():
                self._watchdog_send("beat")

    # ------------------------------------------------------------ load

    def load_figures(self) -> tuple[float, int, int]:
        """(CPU used by our task processes as a fraction of all cores, queued, running)."""
        now = time.monotonic()
        total = 0.0
        seen: dict[int, float] = {}
        for pid in self._registered.values():
            try:
                proc = psutil.Process(pid)
                procs = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                # children_* holds CPU of exited, reaped children (a shell's
                # short-lived commands), which would otherwise go unseen.
                cpu = t.user + t.system + t.children_user + t.children_system
                seen[p.pid] = cpu
                total += max(0.0, cpu - self._cpu_prev.get(p.pid, self._baseline(p, cpu)))
        dt = max(1e-3, now - self._cpu_at)
        self._cpu_prev, self._cpu_at, self._cpu_wall = seen, now, time.time()
        cores = os.cpu_count() or 1
        # Each task is charged against the host's slots, not its cores, so a
        # host full of busy tasks reads as 1.0 whatever the core count.
        denom = max(1, min(cores, self.executor.slots))
        self._task_cpu = min(1.0, total / dt / denom)
        state = self.agent.consensus.state
        mine = state.node_load().get(self.agent.node_id, {})
        return self._task_cpu, int(mine.get("queued", 0)), len(self.executor.running())

    def _baseline(self, proc: psutil.Process, cpu: float) -> float:
        """CPU time to charge a process first seen now from: 0 if it started since the
        last sample (else a host whose tasks turn over reads idle for a sample, and
        tasks shorter than a sample never count), its current total otherwise."""
        try:
            born_since_last_sample = proc.create_time() >= self._cpu_wall - 0.02
        except psutil.Error:
            return cpu
        return 0.0 if born_since_last_sample else cpu

    def decision_latencies(self) -> list[float]:
        return self.agent.consensus.state.decision_latencies()

    def hotspots(self) -> list[str]:
        now = time.time()
        return [
            self.agent.consensus.state.name_of(n)
            for n in sorted(self.heat.hot)
            if self.heat.hot_for(n, now) > 0
        ]

    # ------------------------------------------------------------ apply side

    def on_applied(self, index: int, result: ApplyResult) -> None:
        if any(e.get("topic") in ("tasks", "migrations") for e in result.events):
            self._reconcile_needed.set()

    def on_member_down(self, node_id: str) -> None:
        self._dead_since.setdefault(node_id, time.time())

    async def _reconcile_loop(self) -> None:
        while True:
            await self._reconcile_needed.wait()
            self._reconcile_needed.clear()
            try:
                await self._reconcile()
            except Exception:
                log.exception("task reconcile failed")

    async def _reconcile(self) -> None:
        state = self.agent.consensus.state
        me = self.agent.node_id
        running = self.executor.running()
        for task_id, epoch in list(running.items()):
            rec = state.task_record(task_id)
            if rec is None or rec.node != me or rec.epoch != epoch or rec.terminal:
                reason = "cancelled" if rec is not None and rec.state == "cancelled" else "stale"
                log.info("killing %s epoch %d (%s)", task_id, epoch, reason)
                if reason == "cancelled":
                    await self.executor.cancel(task_id)
                else:
                    await self.executor.kill_stale(task_id, epoch + 1)
        # Forget runs the state has moved past (finished, moved away, newer epoch).
        for task_id, epoch in list(self._started.items()):
            rec = state.task_record(task_id)
            if rec is None or rec.terminal or rec.node != me or rec.epoch != epoch:
                del self._started[task_id]
        for rec in state.tasks_for_node(me):
            if rec.state != "assigned" or rec.id in self.executor.running():
                continue
            if self._started.get(rec.id) == rec.epoch:
                # Already ran here at this epoch; its reports are not committed
                # yet.  Starting it again would run the task twice.
                continue
            if self.executor.free_slots <= 0:
                break
            cmd: list[str] | str = rec.argv if rec.argv else (rec.shell or "")
            try:
                await self.executor.start(rec.id, rec.epoch, cmd, rec.env, rec.cwd, rec.timeout,
                                          rec.mem, rec.pids)
            except TaskError as exc:
                # A slot was free, so the command itself cannot start (missing
                # binary, permission): report it as exit 127, as a shell would,
                # so the task is retried elsewhere or fails instead of hanging.
                log.warning("cannot start %s: %s", rec.id, exc)
                self._started[rec.id] = rec.epoch
                self._queue_report(_Report(rec.id, rec.epoch, "finish", builders.cmd_task_finish(
                    rec.id, me, rec.epoch, 127, TaskStats(), "", time.time()
                )))

    def _on_exec_event(self, event: ExecEvent) -> None:
        now = time.time()
        me = self.agent.node_id
        if event.kind == "started":
            self._registered[event.task_id] = event.pid
            self._started[event.task_id] = event.epoch
            for line in watchdog.registration(event.pid, event.cgroups, event.reaper):
                self._watchdog_send(line)  # its group, cgroups, or subreaper
            cmd = builders.cmd_task_start(event.task_id, me, event.epoch, "", now)
            self._queue_report(_Report(event.task_id, event.epoch, "start", cmd))
        else:
            pid = self._registered.pop(event.task_id, None)
            if pid is not None:
                self._watchdog_send(f"del {pid}")
            if event.reason == "stale":
                self._reconcile_needed.set()
                return
            # After every run: a members-only snapshot keeps this O(members).
            replicas = self.output.replicate(
                event.task_id, event.epoch, self.snapshot(with_tasks=False)
            )
            stats = TaskStats(
                event.duration, event.cpu_time, event.peak_rss, event.reason == "timeout"
            )
            code = event.exit_code if event.exit_code is not None else -1
            cmd = builders.cmd_task_finish(
                event.task_id, me, event.epoch, code, stats, "", now, replicas
            )
            self._queue_report(_Report(event.task_id, event.epoch, "finish", cmd))
            self._reconcile_needed.set()

    def _queue_report(self, report: _Report) -> None:
        if report.kind == "finish":
            # A start not yet sent is redundant: a finish on an "assigned" task
            # records the run itself (one commit instead of two for short tasks).
            self._reports = [
                r for r in self._reports
                if not (r.kind == "start" and r.task == report.task and r.epoch == report.epoch)
            ]
        self._reports.append(report)
        self._report_wake.set()

    async def _report_loop(self) -> None:
        """Commit executor reports, keep retrying through a lost quorum.

        Everything pending is proposed at once (one round trip per batch, not
        per report: short tasks finish faster than serial commits).  Raft keeps
        the order of one node's proposals; a report that fails is retried
        before anything queued after it.
        """
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            while self._reports:
                batch, self._reports = self._reports[:MAX_REPORTS_PER_BATCH], \
                    self._reports[MAX_REPORTS_PER_BATCH:]
                results = await asyncio.gather(
                    *(self.agent.consensus.propose(r.cmd, self.agent.send_to_node) for r in batch),
                    return_exceptions=True,
                )
                failed = []
                for report, res in zip(batch, results, strict=True):
                    if isinstance(res, MeshError):
                        failed.append(report)
                    elif isinstance(res, BaseException):  # a bug, not the cluster: drop it
                        log.error("task report %s %s failed: %r", report.kind, report.task, res)
                if failed:
                    log.debug("%d task report(s) not committed yet; retrying", len(failed))
                    self._reports = failed + self._reports
                    await asyncio.sleep(0.5)

    # ------------------------------------------------------------ leader side

    async def _leader_loop(self) -> None:
        backlog = False
        while True:
            # A round that hit the proposal cap left work queued: go again at once.
            await asyncio.sleep(0 if backlog else self.sched_interval)
            backlog = False
            consensus = self.agent.consensus
            if not consensus.node.is_leader() or not consensus.has_quorum():
                continue
            try:
                backlog = await self._schedule_round()
            except Exception:
                log.exception("scheduling round failed")

    def snapshot(self, with_tasks: bool = True) -> ClusterSnapshot:
        """The scheduler's view; ``with_tasks=False`` skips the O(tasks) parts (task
        list and per-node counts) for callers that only need the members."""
        state = self.agent.consensus.state
        loads = state.node_load() if with_tasks else {}
        nodes = []
        for m in self.agent.membership.members():
            if m.state == "left":
                continue
            success, mean = state.node_perf(m.id)
            counts = loads.get(m.id, {})
            load = m.load
            mem_free = 1.0 - (load.mem_percent / 100.0) if load is not None else 1.0
            nodes.append(
                NodeView(
                    id=m.id, name=m.meta.name, alive=m.state == "alive",
                    draining=state.is_draining(m.id), caps=frozenset(m.meta.caps),
                    slots=max(1, m.meta.slots), running=int(counts.get("running", 0)),
                    queued=int(counts.get("queued", 0)),
                    cpu=load.cpu if load is not None else 0.0, mem_free=mem_free,
                    success_rate=success, mean_duration=mean,
                )
            )
        tasks = state.sched_tasks() if with_tasks else ()
        return ClusterSnapshot(tuple(nodes), tasks, time.time())

    async def _schedule_round(self) -> bool:
        """One placement round; True if it left decisions for the next round (capped)."""
        state = self.agent.consensus.state
        snap = self.snapshot()
        cfg = state.sched_config(self.agent.config.sched)
        room = MAX_INFLIGHT_DECISIONS - len(self._inflight)
        if room <= 0:
            return False  # the log is behind: let earlier decisions commit first
        commands: list[tuple[str, bytes]] = []  # (what it decides about, command)
        busy = self._inflight
        now = snap.now
        # Failover: only after the lease, so the dead host's watchdog has
        # killed its copies before new ones start.
        for node in snap.nodes:
            if node.alive:
                self._dead_since.pop(node.id, None)
                continue
            since = self._dead_since.setdefault(node.id, now)
            if now - since < self.lease or not snap.tasks_on(node.id) or node.id in busy:
                continue
            failover = plan_failover(snap, node.id, cfg)
            targets = {mv.task: mv.to for mv in failover if mv.to is not None}
            commands.append((node.id, builders.cmd_task_fail_node(node.id, targets, "", now)))
        queued = [t for t in snap.tasks if t.state == "queued" and t.id not in busy]
        # Only what this round can propose is placed (place_many's order), so a
        # deep backlog costs each round O(cap), not O(backlog).
        if len(queued) > MAX_PROPOSALS_PER_ROUND:
            queued.sort(key=lambda t: (-t.priority, t.created_at, t.id))
            queued = queued[:MAX_PROPOSALS_PER_ROUND]
        by_id = {t.id: t for t in queued}
        if queued:
            bids = await self._collect_bids(snap)
            per_task = {t.id: bids for t in queued} if bids else None
            for placement in place_many(queued, snap, cfg, per_task):
                task = by_id[placement.task]
                if placement.node is None:
                    continue
                commands.append((task.id, builders.cmd_task_assign(
                    task.id, placement.node, task.epoch + 1, "placed", "", now
                )))
        moves = []
        for node in snap.nodes:
            if node.draining and node.alive:
                moves.extend(plan_drain(snap, node.id, cfg))
        moves.extend(plan_steals(snap, cfg))
        self.heat = update_heat(self.heat, snap, cfg)
        rebalance = plan_rebalance(snap, self.heat, cfg)
        self.heat = settle_heat(self.heat, rebalance, snap)
        moves.extend(rebalance)
        seen: set[str] = set()
        for mv in moves:
            if mv.task in seen or mv.to is None or mv.task in busy:
                continue
            seen.add(mv.task)
            commands.append((mv.task, builders.cmd_task_migrate(
                mv.task, mv.to, str(mv.reason), "", now, mv.epoch
            )))
        limit = min(MAX_PROPOSALS_PER_ROUND, room)
        self._launch(commands[:limit])
        # Go again at once only when a full round of decisions was proposed (not
        # when the backlog cannot be placed: that would spin).
        return len(commands) >= limit

    def _launch(self, commands: list[tuple[str, bytes]]) -> None:
        """Propose a round's decisions without waiting for them to commit.

        The next round may run while they are in the log (rounds overlap, so
        placement is not one commit round trip per batch); it skips every task
        (or dead node) with a decision still in flight, and the state machine
        fences each decision on the epoch it was planned against anyway.
        """
        if not commands:
            return
        keys = [key for key, _ in commands]
        self._inflight.update(keys)
        proposal = asyncio.create_task(  # noqa: RUF006 (kept in self._proposals)
            self._propose_all([cmd for _, cmd in commands], keys)
        )
        self._proposals.add(proposal)
        proposal.add_done_callback(self._proposals.discard)

    async def _propose_all(self, commands: list[bytes], keys: list[str]) -> None:
        consensus = self.agent.consensus
        try:
            results = await asyncio.gather(
                *(consensus.propose_local(c) for c in commands), return_exceptions=True
            )
        finally:
            self._inflight.difference_update(keys)
        for res in results:
            if isinstance(res, BaseException) and not isinstance(res, MeshError):
                log.error("placement proposal failed: %r", res)

    async def _collect_bids(self, snap: ClusterSnapshot) -> dict[str, Bid]:
        request_id = next(self._bid_ids)
        self._bids[request_id] = {}
        me = self.agent.node_id
        for node in snap.nodes:
            if node.alive and node.id != me:
                self.agent.send_to_node(node.id, BidRequest(request_id, "", (), 0))
        self._bids[request_id][me] = self._my_bid(request_id, "", 0)
        await asyncio.sleep(self.bid_timeout)
        return self._bids.pop(request_id, {})

    def _my_bid(self, request_id: int, task: str, epoch: int) -> Bid:
        state = self.agent.consensus.state
        success, mean = state.node_perf(self.agent.node_id)
        load = self.agent.membership.latest_load
        mem_free = (load.mem_free_pct / 100.0) if load is not None else 1.0
        counts = state.node_load().get(self.agent.node_id, {})
        return Bid(
            request_id, task, self.agent.node_id, epoch, self.agent.membership.cpu_now,
            mem_free, self.executor.slots, len(self.executor.running()),
            int(counts.get("queued", 0)), success, mean,
        )

    def on_sched_message(self, from_addr: str, msg: object) -> None:
        if isinstance(msg, BidRequest):
            bid = self._my_bid(msg.request_id, msg.task, msg.epoch)
            self.agent.transport.send_stream(from_addr, _encode(bid))
        elif isinstance(msg, Bid):
            bucket = self._bids.get(msg.request_id)
            if bucket is not None:
                bucket[msg.node] = msg

    # ------------------------------------------------------------ membership

    async def register_members(self, members: list[MemberView]) -> None:
        """Leader: record names of nodes the state machine does not know yet (one per call)."""
        consensus = self.agent.consensus
        if not consensus.node.is_leader():
            return
        state = consensus.state
        for m in members:
            if m.state == "alive" and state.nodes.get(m.id, {}).get("name") != m.meta.name:
                with contextlib.suppress(MeshError):
                    await consensus.propose_local(
                        builders.cmd_node_register(m.id, m.meta.name, "", time.time())
                    )
                return

    # ------------------------------------------------------------ control API

    def handlers(
        self,
        commit: Callable[[bytes], Awaitable[ApplyResult]],
        read: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        state = self.agent.consensus.state

        async def submit(params: dict[str, Any]) -> Any:
            argv = params.get("argv") or None
            shell = params.get("shell") or None
            if (argv is None) == (shell is None):
                raise ValueError("give exactly one of argv or shell")
            timeout = float(params.get("timeout") or 0.0) or None
            mem, pids = int(params.get("mem") or 0), int(params.get("pids") or 0)
            # One line when this host cannot enforce a limit (README: Task containment).
            refusal = self.executor.check_limits(max(0, mem), max(0, pids))
            if refusal is not None:
                raise ValueError(f"{self.agent.config.name}: {refusal}")
            spec = builders.task_spec(
                argv=list(argv) if argv else None, shell=shell,
                env=dict(params.get("env") or {}), cwd=params.get("cwd") or None,
                caps=list(params.get("caps") or []), key=params.get("key") or None,
                strategy=params.get("strategy") or None, priority=int(params.get("priority", 0)),
                retries=int(params.get("retries", 2)), timeout=timeout,
                restartable=bool(params.get("restartable", False)),
                submitter=self.agent.config.name,
            )
            spec = dataclasses.replace(spec, mem=mem, pids=pids)
            rid = str(params.get("rid") or os.urandom(16).hex())
            return (await commit(builders.cmd_task_submit(spec, rid, time.time()))).value

        async def task_list(params: dict[str, Any]) -> Any:
            await read(params)
            return state.task_rows()

        async def task_get(params: dict[str, Any]) -> Any:
            await read(params)
            task = state.task(str(params.get("id", "")))
            if task is None:
                raise TaskError(f"no task {params.get('id')!r}")
            return task

        async def cancel(params: dict[str, Any]) -> Any:
            rid = str(params.get("rid") or os.urandom(16).hex())
            cmd = builders.cmd_task_cancel(str(params.get("id", "")), rid, time.time())
            return (await commit(cmd)).value

        async def logs(params: dict[str, Any]) -> Any:
            stream = {"stdout": "out", "stderr": "err"}.get(str(params.get("stream", "stdout")))
            if stream is None:
                raise ValueError("stream must be stdout or stderr")
            offset = int(params.get("offset", 0))
            if offset < 0:
                raise ValueError("offset must be >= 0")
            return await self.output.read(str(params.get("id", "")), stream, offset)

        return {
            "task.submit": submit,
            "task.list": task_list,
            "task.get": task_get,
            "task.cancel": cancel,
            "task.logs": logs,
        }


def _encode(msg: object) -> bytes:
    from agent import wire

    return wire.encode(msg)
