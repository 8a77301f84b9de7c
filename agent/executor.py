"""Runs assigned tasks as real subprocesses and accounts for them.

Contract with the runtime
-------------------------
The executor never decides to run anything by itself.  The runtime calls
``start(task_id, epoch, ...)`` only after it has applied a *committed*
assignment of that task to this node at that epoch, and calls
``kill_stale(task_id, epoch)`` as soon as it sees a committed assignment with
a newer epoch (fencing: a node that comes back from the dead kills its stale
copy before anything else).  ``start`` itself also fences: a run of the same
task at an older epoch is killed (and reaped) before the new one is spawned,
and a start for an epoch older than the one running is refused.

Theory of operation
-------------------
* Each run starts in a new session -- glibc's ``posix_spawn``
  (``containment.spawn``, the same child for less of the agent's CPU), or
  ``subprocess.Popen(start_new_session=True)`` where a ``preexec_fn`` is
  needed: the task leads its own session and process group, so a graceful
  stop (timeout, cancel) sends SIGTERM to that group.  The start itself (pipes,
  environment, spawn inside the jail) is ``agent/executor_spawn.py``.
* Containment (``agent.containment``): nothing a task starts outlives it,
  ``setsid`` children, double forks and daemons included.  As root with a
  usable cgroup hierarchy each run gets its own cgroup(s), which it is
  born in (the agent steps into the group for the spawn) or joins before
  exec (``containment.jail``'s "born inside"), and every hard kill (after the grace, fencing,
  shutdown, the leader's exit) goes through them; their directories go when
  the run is reaped, and a previous run's leftovers when the executor
  starts.  Otherwise the run's leader is a per-task subreaper that adopts
  the task's orphans and kills them all when the task ends or is killed.
  ``mem``/``pids`` limits need the cgroup controller: without it ``start``
  refuses the task (``check_limits`` says why), never running it unlimited.
* We do not let asyncio reap the child.  A pidfd (``os.pidfd_open``) becomes
  readable when the leader exits; while it is a zombie its pid still pins the
  group id, so we kill the rest of the task first (through its jail) and
  only then reap with ``os.wait4``, whose rusage gives the exact CPU time of
  the leader and every descendant it waited for.
* Resource accounting: every 0.5 s CPU and RSS are summed over the run's
  processes (its cgroup's members, or the subreaper's descendants).
  ``cpu_time`` is the larger of the polled figure and wait4's; ``peak_rss``
  is the largest polled sum (a run shorter than one poll is sampled once,
  right after spawn).
* Output: the child gets pipes, never our files.  The agent reads them and
  appends to ``<data_dir>/tasks/<task_id>/<epoch>.out|.err`` (dir 0700, files
  0600), each created at its stream's first byte: a stream that printed
  nothing has no file, and is noted in ``tasks/.empty-output`` when the run
  ends, so reading it gives empty output (``executor_runs.EmptyOutputs``).
  Each file keeps the *head*: the first ``output_limit`` bytes (8 MiB
  by default); beyond that the pipe is still drained so the task never
  blocks, and the dropped byte count is reported in the finished event.  The
  head was chosen over the tail because offsets then stay stable, which is
  what ``logs --follow`` (``read_output``) pages with.
* Directories: a run with the default working directory gets
  ``tasks/<task_id>/`` and its ``work/`` -- two mkdirs, which on ext4 cost
  more than the rest of a short run's spawn.  So when the runtime is done with
  a finished run (``done_with``: its artifacts are collected) that printed
  nothing and left ``work/`` empty, its directory pair is kept as a spare
  (at most ``executor_runs.SPARE_DIRS``), and the next such run takes it over with one
  ``rename``; the quiet run's directory is gone then (its reads are still
  empty, through ``tasks/.empty-output``).
* Timeout: SIGTERM to the group, a kill of the whole task after
  ``kill_grace`` seconds.  ``cancel`` does the same; ``kill_stale`` and
  ``shutdown`` kill at once.
* As root with ``run_as`` set, the task runs as that user (``user=``,
  ``group=``, no supplementary groups) with HOME/USER/LOGNAME set; its default
  working directory is ``<data_dir>/tasks/<task_id>/work`` owned by it (the
  child enters it before dropping privileges, so the private data dir above
  it need not be traversable by that user).  A
  non-root agent cannot switch users, so ``run_as`` is ignored there and
  tasks run as the agent's own user; a root agent without ``run_as`` runs
  tasks as root.
* Environment: only PATH, LANG, LC_ALL and TZ pass from the agent (its other
  variables may hold secrets; read once, when the executor is made), plus HOME,
  MESH_TASK_ID, MESH_TASK_EPOCH and then the task's own ``env``.  stdin is /dev/null.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agent.containment import Containment, Mode, usage_pids
from agent.containment.cgroups import CGROUP_ROOT
from agent.containment.jail import default_node
from agent.errors import ConfigError, TaskError
from agent.executor_runs import (
    Capture,
    EmptyOutputs,
    FinishReason,
    Run,
    RunDirs,
    close_capture,
    drain,
    read_capture,
)
from agent.executor_runs import (
    ExecEvent as ExecEvent,  # re-exported: the runner's and the tests' import
)
from agent.executor_spawn import base_env, open_child, run_env
from agent.load import TreeUsage
from agent.output_store import OutputStore, Stream, check_task_id

log = logging.getLogger(__name__)

OUTPUT_LIMIT_BYTES = 8 * 1024 * 1024
"""Bytes of stdout (and separately stderr) kept per run."""

KILL_GRACE_S = 5.0
"""Seconds between SIGTERM and SIGKILL on timeout or cancel."""

POLL_INTERVAL_S = 0.5
"""How often a run's process tree is sampled for CPU and RSS."""
FIRST_SAMPLE_S = 0.02
"""Seconds after the spawn of a run's first sample (default 20 ms, at most the poll
interval): a sample at the spawn itself would see the join shim, not the task, and
cost a cgroup walk and a /proc read per run; a run that ends sooner reports its CPU
from its reaped rusage and no peak RSS (0: not sampled)."""

RECENT_RESULTS = 1024
"""Finished events remembered for ``wait``/``last_result`` after a run ends."""

READ_LIMIT_MAX = 4 * 1024 * 1024
"""Largest slice ``read_output`` returns at once."""

_STREAMS: tuple[Stream, Stream] = ("out", "err")



class Executor:
    """Runs tasks in their own process groups, ``slots`` at a time."""

    def __init__(
        self,
        data_dir: Path,
        slots: int | None = None,
        run_as: str | None = None,
        on_event: Callable[[ExecEvent], None] | None = None,
        *,
        output_limit: int = OUTPUT_LIMIT_BYTES,
        kill_grace: float = KILL_GRACE_S,
        poll_interval: float = POLL_INTERVAL_S,
        node_id: str | None = None,
        containment: Mode = "auto",
        cgroup_root: Path = CGROUP_ROOT,
    ) -> None:
        """``node_id`` names this node's cgroup directory (default: derived from the
        data dir, one agent per data dir); ``containment`` forces cgroups or the
        subreaper ("auto": cgroups when root and usable); ``cgroup_root`` is where
        cgroup mounts are looked for."""
        self.data_dir = Path(data_dir)
        self.slots = slots if slots else (os.cpu_count() or 1)
        if self.slots < 1:
            raise ConfigError("slots", f"must be >= 1, got {self.slots}")
        self.on_event = on_event or (lambda _event: None)
        self.output_limit = output_limit
        self.kill_grace = kill_grace
        self.poll_interval = poll_interval
        self._user: pwd.struct_passwd | None = None
        if run_as and os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam(run_as)
            except KeyError:
                raise ConfigError("run_as", f"no such user {run_as!r}") from None
        self._runs: dict[str, Run] = {}
        self._recent: OrderedDict[str, ExecEvent] = OrderedDict()
        self._start_lock = asyncio.Lock()
        self._tasks_dir = self.data_dir / "tasks"
        self._output = OutputStore(self._tasks_dir)
        self._empty = EmptyOutputs(self._tasks_dir)
        self._dirs = RunDirs(self._tasks_dir)
        self._base_env = base_env(self._user)
        node = node_id or default_node(self.data_dir)
        self.containment = Containment(node, containment, cgroup_root, warn=log.warning)
        log.info("task containment: %s", self.containment.describe())
        self.containment.cleanup_stale()

    # ---- queries -------------------------------------------------------

    def running(self) -> dict[str, int]:
        """task id -> epoch of every run not yet finished."""
        return {task_id: run.epoch for task_id, run in self._runs.items()}

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - len(self._runs))

    def check_limits(self, mem: int = 0, pids: int = 0) -> str | None:
        """Why this host cannot enforce a memory (bytes) or pids limit, or None if it can."""
        return self.containment.limit_refusal(mem, pids)

    def work_dir(self, task_id: str, cwd: str | None) -> Path:
        """Where a run of ``task_id`` works: ``cwd``, or its default directory."""
        return Path(cwd) if cwd else self._tasks_dir / task_id / "work"

    @property
    def run_user(self) -> tuple[int, int] | None:
        """(uid, gid) tasks run as when the agent switches users, else None."""
        return (self._user.pw_uid, self._user.pw_gid) if self._user is not None else None

    def output_path(self, task_id: str, epoch: int, stream: Stream) -> Path:
        return self._output.path(task_id, epoch, stream)

    def read_output(
        self, task_id: str, epoch: int, stream: Stream, offset: int, limit: int = READ_LIMIT_MAX
    ) -> tuple[bytes, int, bool]:
        """Read captured output from ``offset``: ``(data, new_offset, eof)``.

        ``eof`` is True once the run has finished and everything was read.
        """
        limit = max(0, min(limit, READ_LIMIT_MAX))
        run = self._runs.get(task_id)
        live = run is not None and run.epoch == epoch
        try:
            data, new_offset, size = self._output.read(task_id, epoch, stream, offset, limit)
        except FileNotFoundError:
            if live:
                return b"", offset, False
            if self._empty.has(task_id, epoch, stream):
                return b"", offset, True
            raise TaskError(f"no output for task {task_id} epoch {epoch}") from None
        return data, new_offset, (not live) and new_offset >= size

    # ---- control -------------------------------------------------------

    async def start(
        self,
        task_id: str,
        epoch: int,
        cmd: Sequence[str] | str,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        mem: int = 0,
        pids: int = 0,
    ) -> None:
        """Spawn a run (see the module contract).  A string ``cmd`` runs under ``sh -c``.

        ``mem`` (bytes) and ``pids`` limit the run's cgroup; 0 means no limit.
        Idempotent for a task already running at ``epoch``.  Raises TaskError
        when no slot is free, the epoch is stale, a limit cannot be enforced
        here, or the command cannot start.
        """
        check_task_id(task_id)
        # Serialised: fencing awaits the old run's death, and a second start
        # must not slip in between that and the spawn.
        async with self._start_lock:
            await self._start_locked(task_id, epoch, cmd, env, cwd, timeout, mem, pids)

    async def _start_locked(
        self,
        task_id: str,
        epoch: int,
        cmd: Sequence[str] | str,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: float | None,
        mem: int,
        pids: int,
    ) -> None:
        current = self._runs.get(task_id)
        if current is not None:
            if current.epoch == epoch:
                return
            if current.epoch > epoch:
                raise TaskError(
                    f"task {task_id}: epoch {epoch} is stale (running epoch {current.epoch})"
                )
            await self._stop(current, "stale", graceful=False)
        if self.free_slots <= 0:
            raise TaskError(f"no free slot ({self.slots} in use)")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if not argv:
            raise TaskError("empty command")
        run = self._spawn(task_id, epoch, argv, env, cwd, mem, pids)
        self._runs[task_id] = run
        loop = asyncio.get_running_loop()
        run.finished = loop.create_future()
        if timeout is not None and timeout > 0:
            run.timers.append(loop.call_later(timeout, self._on_timeout, run))
        # The supervisor exists before anyone hears of the run, so a failing
        # listener cannot leave an unsupervised process behind.
        supervisor = loop.create_task(self._supervise(run), name=f"exec-{task_id}")
        supervisor.add_done_callback(_log_crash)
        jail = run.jail
        self.on_event(ExecEvent(
            "started", task_id, epoch, run.pid, None, 0.0, 0.0, 0, time.time(),
            cgroups=jail.cgroup_dirs, reaper=jail.reaper,
        ))

    def done_with(self, task_id: str, epoch: int) -> None:
        """The runtime is done with this finished run (artifacts collected, output
        replicated): if it printed nothing and left its default working directory
        empty, a later run takes its directories over (see the module doc)."""
        owner = self._user.pw_uid if self._user is not None else os.geteuid()
        self._dirs.done_with(task_id, epoch, live=task_id in self._runs, owner=owner)

    async def cancel(self, task_id: str) -> ExecEvent | None:
        """Terminate a run's whole group (SIGTERM, SIGKILL after the grace)."""
        run = self._runs.get(task_id)
        if run is None:
            return None
        return await self._stop(run, "cancelled", graceful=True)

    async def kill_stale(self, task_id: str, epoch: int) -> ExecEvent | None:
        """SIGKILL the run of ``task_id`` if its epoch is older than ``epoch``."""
        run = self._runs.get(task_id)
        if run is None or run.epoch >= epoch:
            return None
        return await self._stop(run, "stale", graceful=False)

    async def wait(self, task_id: str) -> ExecEvent | None:
        """Wait for the current run of ``task_id`` to finish.

        With no run in progress, the last finished event of that task if it is
        among the ``RECENT_RESULTS`` most recent ones, else None.
        """
        run = self._runs.get(task_id)
        if run is None or run.finished is None:
            return self.last_result(task_id)
        return await asyncio.shield(run.finished)

    def usage(self, task_id: str) -> TreeUsage | None:
        """Latest polled usage (CPU seconds, RSS now, process count) of a live run."""
        run = self._runs.get(task_id)
        return run.usage if run is not None else None

    def last_result(self, task_id: str) -> ExecEvent | None:
        """The most recent finished event of ``task_id`` (bounded memory)."""
        return self._recent.get(task_id)

    async def shutdown(self) -> None:
        """Kill every run (the agent is stopping; nobody would reap them)."""
        runs = list(self._runs.values())
        await asyncio.gather(*(self._stop(run, "shutdown", graceful=False) for run in runs))
        self.containment.close()

    # ---- internals -----------------------------------------------------

    def _spawn(
        self,
        task_id: str,
        epoch: int,
        argv: list[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        mem: int,
        pids: int,
    ) -> Run:
        task_dir, fresh, has_work = self._dirs.make(task_id, epoch, default_cwd=cwd is None)
        child_env = run_env(self._base_env, task_id, epoch, env)
        user = self._user
        own_dir = cwd is None and fresh
        if cwd is None:
            cwd = task_dir + "/work"
            if not has_work:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(cwd, 0o700)
            if user is not None:
                os.chown(cwd, user.pw_uid, user.pw_gid)
        jail = self.containment.prepare(task_id, epoch, mem, pids)
        popen, pipes = open_child(task_id, jail, argv, user, child_env, cwd)
        pidfd = os.pidfd_open(popen.pid)
        prefix = f"{task_dir}/{int(epoch)}."  # (``output_path``, without a Path per stream)
        captures = {"out": Capture(pipes[0], prefix + "out", self.output_limit),
                    "err": Capture(pipes[2], prefix + "err", self.output_limit)}
        run = Run(task_id, epoch, popen, pidfd, time.monotonic(), captures, jail)
        run.own_dir = own_dir
        loop = asyncio.get_running_loop()
        loop.add_reader(pidfd, self._on_exit, run)
        for capture in captures.values():
            os.set_blocking(capture.fd, False)
            loop.add_reader(capture.fd, read_capture, capture)
        return run

    def _on_exit(self, run: Run) -> None:
        asyncio.get_running_loop().remove_reader(run.pidfd)
        # The leader is a zombie: its pid still names the group, so this cannot
        # hit an unrelated process.  Everything else the task started dies now.
        run.jail.after_exit(run.pid)
        run.exited.set()

    def _on_timeout(self, run: Run) -> None:
        if self._runs.get(run.task_id) is run and not run.exited.is_set():
            run.reason = "timeout"
            self._terminate(run, graceful=True)

    def _terminate(self, run: Run, graceful: bool) -> None:
        if run.exited.is_set():
            return
        loop = asyncio.get_running_loop()
        if graceful:
            run.jail.terminate(run.pid)
            run.timers.append(loop.call_later(self.kill_grace, self._force_kill, run))
        else:
            self._force_kill(run)

    def _force_kill(self, run: Run) -> None:
        if not run.exited.is_set():
            run.jail.kill(run.pid)
            loop = asyncio.get_running_loop()
            run.timers.append(loop.call_later(self.kill_grace, self._last_resort, run))

    def _last_resort(self, run: Run) -> None:
        # A subreaper that did not finish its kills in time (stopped, stuck):
        # the run must still end.  Its leftover descendants would go to init.
        if not run.exited.is_set():
            log.warning("task %s: leader %d survived the kill; SIGKILL", run.task_id, run.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(run.pid, signal.SIGKILL)

    async def _stop(self, run: Run, reason: FinishReason, graceful: bool) -> ExecEvent:
        assert run.finished is not None
        if not run.exited.is_set():
            if run.reason == "exit" or not graceful:
                run.reason = reason
            self._terminate(run, graceful)
        return await asyncio.shield(run.finished)

    def _sample(self, run: Run) -> None:
        # Right after spawn a cgroup run's leader may not have joined its group yet
        # (the join shim runs first): the leader alone is the run then.
        pids = run.jail.members(run.pid) or ([] if run.exited.is_set() else [run.pid])
        summed = usage_pids(pids)
        if summed is not None:
            usage = TreeUsage(cpu_time=summed[0], rss=summed[1], nprocs=summed[2])
            run.usage = usage
            run.cpu_time = max(run.cpu_time, usage.cpu_time)
            run.peak_rss = max(run.peak_rss, usage.rss)

    def _poll(self, run: Run) -> None:
        """The sampling timer: sample the run, then again after ``poll_interval``."""
        if run.exited.is_set():
            return
        self._sample(run)
        loop = asyncio.get_running_loop()
        run.timers[:] = [t for t in run.timers if not t.cancelled() and t.when() > loop.time()]
        run.timers.append(loop.call_later(self.poll_interval, self._poll, run))

    async def _supervise(self, run: Run) -> None:
        assert run.finished is not None
        try:
            if not run.exited.is_set():
                # Sampled from a timer while it runs; the exit wakes this coroutine
                # directly (no wait_for task and timer per poll, one hop less at the end).
                loop = asyncio.get_running_loop()
                first = min(FIRST_SAMPLE_S, self.poll_interval)
                run.timers.append(loop.call_later(first, self._poll, run))
                await run.exited.wait()
            exit_code = self._reap(run)
            duration = time.monotonic() - run.started_mono
            # Before the drain: an escaped process holding our pipes dies here.
            await run.jail.settle()
            run.settled = True
            await drain(run)
        except BaseException as exc:
            if not run.exited.is_set():
                # Nobody will supervise this run any more (the loop is going
                # away): it must not outlive its supervisor.
                run.jail.kill(run.pid)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(run.pid, 0)
            if not run.settled:
                run.jail.settle_sync()
            if run.finished.done():
                pass
            elif isinstance(exc, asyncio.CancelledError):
                run.finished.cancel()
            else:
                run.finished.set_exception(TaskError(f"task {run.task_id}: supervisor: {exc!r}"))
            raise
        finally:
            for timer in run.timers:
                timer.cancel()
            asyncio.get_running_loop().remove_reader(run.pidfd)
            os.close(run.pidfd)
            for capture in run.captures.values():
                close_capture(capture)
            if self._runs.get(run.task_id) is run:
                del self._runs[run.task_id]
        # (before anyone hears of the end: a read of a stream without a file is empty)
        silent = [s for s, c in run.captures.items() if c.file_fd < 0]
        self._empty.add(run.task_id, run.epoch, silent)
        if run.own_dir and len(silent) == len(run.captures):
            self._dirs.quiet(run.task_id, run.epoch)
        event = ExecEvent(
            "finished",
            run.task_id,
            run.epoch,
            run.pid,
            exit_code,
            duration,
            run.cpu_time,
            run.peak_rss,
            time.time(),
            run.reason,
            run.captures["out"].dropped,
            run.captures["err"].dropped,
            silent=len(silent) == len(run.captures),
        )
        self._recent[run.task_id] = event
        self._recent.move_to_end(run.task_id)
        while len(self._recent) > RECENT_RESULTS:
            self._recent.popitem(last=False)
        run.finished.set_result(event)
        self.on_event(event)

    def _reap(self, run: Run) -> int | None:
        """Collect the leader's status and rusage (None if another reaper took it)."""
        try:
            _, status, rusage = os.wait4(run.pid, 0)
        except ChildProcessError:
            run.popen.returncode = -1
            return None
        exit_code = os.waitstatus_to_exitcode(status)
        run.popen.returncode = exit_code
        run.cpu_time = max(run.cpu_time, rusage.ru_utime + rusage.ru_stime)
        # ru_maxrss is not used: Linux carries the forking parent's (our) high-water
        # mark into the child, so it reports the agent's size, not the task's.
        return exit_code



def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        loop = task.get_loop()
        loop.call_exception_handler(
            {"message": "executor supervisor crashed", "exception": task.exception(), "task": task}
        )
