"""Tasks at run time: the pieces one host runs, wired to the agent (the facade it uses).

Theory of operation: ``TaskRuntime`` builds and owns, for this host,

* ``LeaderScheduler`` (``scheduler.py``) -- the leader's placement loop:
  snapshot, bids, the pure ``plan_round`` (``agent/sched/round.py``), proposals;
  it also answers bid requests and registers member names;
* ``LocalRunner`` (``task_runner.py``) -- reconciles the executor with the
  replicated state after each applied batch, turns executor events into
  ``task.start``/``task.finish`` reports and retries them until committed;
* ``WatchdogLease`` (``watchdog_lease.py``) -- the watchdog process that kills
  this host's runs when it loses quorum contact for ``task_lease`` seconds;
* ``TaskCpuSampler`` (``task_cpu.py``) -- the CPU the runs use, for load;
* the ``Executor`` (``agent/executor.py``) and ``TaskOutput`` (``output.py``).

Each piece gets narrow inputs (callables into consensus, membership and the
peer router, which this object receives as the small Protocols of
``ports.py``) instead of the agent.  The agent, the control handlers and the
status views use this class's small public surface; the ``task.*`` control
methods are below.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agent.config import AgentConfig
from agent.errors import TaskError
from agent.executor import ExecEvent, Executor
from agent.runtime.artifacts import ReplicaService, shown_record
from agent.runtime.compat import CompatProposer, Propose, batches_applied, quiet_outputs_read
from agent.runtime.handlers.common import applied_value
from agent.runtime.output import TaskOutput
from agent.runtime.ports import PeerSender, TaskConsensus, TaskMembers
from agent.runtime.scheduler import LeaderScheduler, build_snapshot
from agent.runtime.task_cpu import TaskCpuSampler
from agent.runtime.task_runner import LocalRunner
from agent.runtime.watchdog_lease import WatchdogLease
from agent.sched import Bid, ClusterSnapshot
from agent.state import builders
from agent.state.commands import Command, TaskSubmit
from agent.state.machine import ApplyResult, ValueIfOk
from agent.swim.members import MemberView


@runtime_checkable
class DirectSubmit(Protocol):
    """The Raft driver's writes (``consensus_requests.ClientRequests``): ``submit``
    takes a command's decoded form with its bytes, and a leader's write joins its
    group commit.  (``submit_decoded`` marks the Raft driver: PBFT's has none.)"""

    def is_leader(self) -> bool: ...

    def submit(
        self,
        command: bytes,
        forward: Callable[[str, object], None] | None = None,
        finish: Callable[[ApplyResult], Any] | None = None,
        decoded: Command | None = None,
    ) -> Awaitable[Any]: ...

    def submit_decoded(self, decoded: Any, finish: Callable[[ApplyResult], Any] | None = None) -> Any: ...


class TaskRuntime:
    """This host's task machinery; the agent sees only the methods below."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        node_id: str,
        consensus: TaskConsensus,
        members: TaskMembers,
        peers: PeerSender,
    ) -> None:
        self._consensus = consensus
        self._members = members
        self._node_id = node_id
        self._name = config.name
        timings = config.runtime
        self.sched_interval = timings.sched_interval
        self.bid_timeout = timings.bid_timeout
        self.lease = timings.task_lease
        data_dir = Path(config.data_dir)
        run_as = config.run_as if os.geteuid() == 0 else None
        self.executor = Executor(
            data_dir, config.effective_slots(), run_as or None, self._on_exec_event,
            node_id=node_id,
        )
        self.replicas = ReplicaService(
            node_id=node_id, node_name=config.name, root=data_dir / "replicas",
            members=members.members,
            sched_config=lambda: consensus.queries.sched_config(config.sched),
            send_to_node=peers.send_to_node, send_to_addr=peers.send_to_addr,
            records=consensus.queries.task_record, timeout=timings.output_timeout,
            quiet_allowed=quiet_outputs_read(members.members),
        )
        self.output = TaskOutput(
            executor=self.executor, replicas=self.replicas, tasks=consensus.queries, peers=peers,
        )
        self.cpu = TaskCpuSampler()
        self.watchdog = WatchdogLease(self.lease, consensus.has_quorum)
        self.runner = LocalRunner(
            node_id=node_id,
            executor=self.executor,
            records=lambda: consensus.queries,
            propose=self.compatible(consensus.propose),
            replicate=lambda task, epoch: [],  # after_run replicates
            lease=self.watchdog,
            cpu=self.cpu,
            retry_delay=timings.report_retry_delay,
            on_run=self._run_started,
            after_run=self._run_finished,
            after_run_now=self._run_finished_now,
        )
        sched_base = config.sched
        self.scheduler = LeaderScheduler(
            node_id=node_id,
            interval=self.sched_interval,
            bid_timeout=self.bid_timeout,
            lease=self.lease,
            is_leader=consensus.is_leader,
            has_quorum=consensus.has_quorum,
            snapshot=self.snapshot,
            sched_config=lambda: consensus.queries.sched_config(sched_base),
            propose=self.compatible(consensus.propose_local),
            send_to_node=peers.send_to_node,
            reply=peers.send_to_addr,
            local_bid=self._my_bid,
            registered_name=lambda node: consensus.queries.registered_name(node),
        )

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.watchdog.start()
        self.scheduler.start()
        self.runner.start()
        self.replicas.start()

    async def close(self) -> None:
        await self.scheduler.close()
        await self.runner.close()
        await self.replicas.close()
        await self.watchdog.stop_beating()
        await self.executor.shutdown()  # its finish events unregister the runs first
        await self.watchdog.close()

    # ------------------------------------------------------------ events from the agent

    def on_applied(self, index: int, result: ApplyResult) -> None:
        if any(e.get("topic") in ("tasks", "migrations") for e in result.events):
            self.runner.wake()
        if result.placeable:  # a submit, requeue or undrain: the leader places now
            self.scheduler.wake()

    def on_member_down(self, node_id: str) -> None:
        self.scheduler.on_member_down(node_id)

    def on_sched_message(self, from_addr: str, msg: object) -> None:
        self.scheduler.on_sched_message(from_addr, msg)

    def on_output_message(self, from_addr: str, msg: object) -> None:
        self.output.on_message(from_addr, msg)

    def on_replica_message(self, from_addr: str, msg: object) -> None:
        self.replicas.on_message(from_addr, msg)

    async def register_members(self, members: list[MemberView]) -> None:
        await self.scheduler.register_members(members)

    def _on_exec_event(self, event: ExecEvent) -> None:
        self.runner.on_exec_event(event)

    def _run_started(self, event: ExecEvent) -> None:
        rec = self._consensus.queries.task_record(event.task_id)
        if rec is not None:
            self.replicas.run_started(
                rec, event.epoch,
                lambda stream: self.executor.output_path(event.task_id, event.epoch, stream),  # type: ignore[arg-type]
            )

    def _run_finished_now(self, event: ExecEvent) -> list[str] | None:
        """``_run_finished`` at once for a run without artifacts (else None)."""
        rec = self._consensus.queries.task_record(event.task_id)
        return self.replicas.run_finished_now(rec, event.task_id, event.epoch, event.silent)

    async def _run_finished(self, event: ExecEvent) -> list[str]:
        """Complete the run's replicated output, collect its artifacts; the replica hosts."""
        rec = self._consensus.queries.task_record(event.task_id)
        workdir = self.executor.work_dir(event.task_id, rec.cwd) if rec is not None else None
        return await self.replicas.run_finished(
            rec, event.task_id, event.epoch, workdir, self.executor.run_user, event.silent
        )

    # ------------------------------------------------------------ figures

    def load_figures(self) -> tuple[float, int, int]:
        """(CPU used by our task processes as a fraction of all cores, queued, running)."""
        cpu = self.cpu.sample(self.executor.slots)
        mine = self._consensus.queries.node_load().get(self._node_id, {})
        return cpu, int(mine.get("queued", 0)), len(self.executor.running())

    def decision_latencies(self) -> list[float]:
        return self._consensus.queries.decision_latencies()

    def hotspots(self) -> list[str]:
        now = time.time()
        heat = self.scheduler.heat
        return [
            self._consensus.queries.name_of(n)
            for n in sorted(heat.hot)
            if heat.hot_for(n, now) > 0
        ]

    def snapshot(self, with_tasks: bool = True) -> ClusterSnapshot:
        """The scheduler's view; ``with_tasks=False`` skips the O(tasks) parts (task
        list and per-node counts) for callers that only need the members."""
        return build_snapshot(
            self._members.members(), self._consensus.queries, with_tasks, time.time()
        )

    def _my_bid(self, request_id: int, task: str, epoch: int) -> Bid:
        state = self._consensus.queries
        success, mean = state.node_perf(self._node_id)
        load = self._members.latest_load
        mem_free = (load.mem_free_pct / 100.0) if load is not None else 1.0
        counts = state.node_load().get(self._node_id, {})
        return Bid(
            request_id, task, self._node_id, epoch, self._members.cpu_now,
            mem_free, self.executor.slots, len(self.executor.running()),
            int(counts.get("queued", 0)), success, mean,
        )

    # ------------------------------------------------------------ control API

    def _submit_spec(self, params: dict[str, Any]) -> TaskSubmit:
        """``task.submit``'s params as its ``TaskSubmit`` (``ValueError``: refused)."""
        argv = params.get("argv") or None
        shell = params.get("shell") or None
        if (argv is None) == (shell is None):
            raise ValueError("give exactly one of argv or shell")
        timeout = float(params.get("timeout") or 0.0) or None
        mem, pids = int(params.get("mem") or 0), int(params.get("pids") or 0)
        # One line when this host cannot enforce a limit (README: Task containment).
        refusal = self.executor.check_limits(max(0, mem), max(0, pids))
        if refusal is not None:
            raise ValueError(f"{self._name}: {refusal}")
        spec = builders.task_spec(
            argv=list(argv) if argv else None, shell=shell,
            env=dict(params.get("env") or {}), cwd=params.get("cwd") or None,
            caps=list(params.get("caps") or []), key=params.get("key") or None,
            strategy=params.get("strategy") or None, priority=int(params.get("priority", 0)),
            retries=int(params.get("retries", 2)), timeout=timeout,
            restartable=bool(params.get("restartable", False)),
            submitter=self._name,
        )
        artifacts = tuple(params.get("artifacts") or ())
        if mem or pids or artifacts:  # else the spec holds them already: TaskSubmit's defaults
            spec = dataclasses.replace(spec, mem=mem, pids=pids, artifacts=artifacts)
        return spec

    def compatible(self, propose: Propose) -> CompatProposer:
        """``propose`` writing ``batch`` and ``task.place`` in the older commands while
        a member of the cluster runs a release that does not apply them
        (``runtime/compat.py``: a rolling upgrade)."""
        return CompatProposer(propose, batches_applied(self._members.members))

    def handlers(
        self,
        commit: Callable[[bytes], Awaitable[ApplyResult]],
        read: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        state = self._consensus.queries

        # The Raft leader's submits go straight to its group commit (as kv.put's
        # do): a Pending answered from its apply loop, and the decoded command
        # kept, so the leader applies it without decoding its own entry.  Any
        # other node's go through ``commit`` (one forward for a pass's submits).
        direct = self._consensus if isinstance(self._consensus, DirectSubmit) else None
        submit_value = ValueIfOk(applied_value)

        async def committed(command: bytes) -> Any:
            return (await commit(command)).value

        def submit(params: dict[str, Any]) -> Awaitable[Any]:
            # Plain, not async: a bad param raises here, answered as before.
            spec = self._submit_spec(params)
            rid, at = str(params.get("rid") or os.urandom(16).hex()), time.time()
            if direct is not None and direct.is_leader():
                data, decoded = builders.task_submit_decoded(spec, rid, at)
                return direct.submit(data, finish=submit_value, decoded=decoded)
            return committed(builders.cmd_task_submit(spec, rid, at))

        async def task_list(params: dict[str, Any]) -> Any:
            await read(params)
            return state.task_rows()

        async def task_get(params: dict[str, Any]) -> Any:
            await read(params)
            task = state.task(str(params.get("id", "")))
            if task is None:
                raise TaskError(f"no task {params.get('id')!r}")
            return shown_record(task)

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
            attempt = params.get("attempt")
            return await self.output.read(
                str(params.get("id", "")), stream, offset,
                None if attempt is None else int(attempt),
            )

        return {
            "task.submit": submit,
            "task.list": task_list,
            "task.get": task_get,
            "task.cancel": cancel,
            "task.logs": logs,
        }

