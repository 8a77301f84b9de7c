"""Executor against real subprocesses: exit codes, groups, timeouts, output, fencing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest
from support.wait import wait_until, wait_until_async

from agent.errors import ConfigError, TaskError
from agent.executor import ExecEvent, Executor

pytestmark = pytest.mark.timeout(60)


def _gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (absent or a zombie awaiting init)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_gone(pid: int, within: float = 3.0) -> None:
    wait_until(f"pid {pid} to exit", lambda: _gone(pid), within, 0.02)


async def read_pid_file(path: Path, within: float = 5.0) -> int:
    def written() -> str:
        text = path.read_text() if path.exists() else ""
        return text if text.endswith("\n") else ""

    return int(await wait_until_async(f"{path} to be written", written, within))


@pytest.fixture
def events() -> list[ExecEvent]:
    return []


@pytest.fixture
def executor(tmp_data_dir: Path, events: list[ExecEvent]) -> Executor:
    return Executor(tmp_data_dir, slots=4, run_as=None, on_event=events.append, kill_grace=0.5)


async def run_to_end(
    executor: Executor, task_id: str, cmd: str | list[str], **kw: object
) -> ExecEvent:
    await executor.start(task_id, 1, cmd, **kw)  # type: ignore[arg-type]
    event = await executor.wait(task_id)
    assert event is not None
    return event


@pytest.mark.parametrize(
    ("cmd", "code"),
    [("true", 0), ("exit 3", 3), (["/bin/sh", "-c", "exit 7"], 7), ("kill -9 $$", -9)],
)
async def test_exit_codes(executor: Executor, cmd: str | list[str], code: int) -> None:
    event = await run_to_end(executor, "t", cmd)
    assert event.kind == "finished"
    assert event.exit_code == code
    assert event.reason == "exit"
    assert event.duration >= 0


async def test_events_and_output(executor: Executor, events: list[ExecEvent]) -> None:
    event = await run_to_end(executor, "t", "echo out-$MESH_TASK_ID; echo err >&2; pwd")
    assert [e.kind for e in events] == ["started", "finished"]
    assert events[0].pid == event.pid > 0
    data, offset, eof = executor.read_output("t", 1, "out", 0)
    lines = data.decode().splitlines()
    assert lines[0] == "out-t"
    assert lines[1] == str(executor.data_dir / "tasks" / "t" / "work")
    assert eof and offset == len(data)
    assert executor.read_output("t", 1, "err", 0) == (b"err\n", 4, True)
    part, offset, eof = executor.read_output("t", 1, "out", 2, limit=3)
    assert (part, offset, eof) == (b"t-t", 5, False)
    task_dir = executor.data_dir / "tasks" / "t"
    assert stat.S_IMODE(task_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((task_dir / "1.out").stat().st_mode) == 0o600


async def test_env_and_cwd(executor: Executor, tmp_path: Path) -> None:
    await run_to_end(executor, "t", "echo $FOO:$MESH_TASK_EPOCH; pwd", env={"FOO": "bar"},
                     cwd=str(tmp_path))
    data, _, _ = executor.read_output("t", 1, "out", 0)
    assert data.decode().splitlines() == ["bar:1", str(tmp_path)]


async def test_follow_while_running(executor: Executor) -> None:
    await executor.start("t", 1, "echo first; sleep 0.4; echo second")
    data, offset, eof = b"", 0, False
    for _ in range(200):
        chunk, offset, eof = executor.read_output("t", 1, "out", offset)
        data += chunk
        if eof:
            break
        if data == b"first\n":
            assert not eof
        await asyncio.sleep(0.02)
    assert data == b"first\nsecond\n" and eof


async def test_timeout_kills_whole_group(executor: Executor, tmp_path: Path) -> None:
    pidfile = tmp_path / "gc.pid"
    start = time.monotonic()
    await executor.start("t", 1, f"sleep 300 & echo $! > {pidfile}; sleep 300", timeout=0.5)
    grandchild = await read_pid_file(pidfile)
    event = await executor.wait("t")
    assert event is not None
    assert event.reason == "timeout"
    assert event.exit_code == -15
    assert time.monotonic() - start < 5
    assert_gone(event.pid)
    assert_gone(grandchild)


async def test_timeout_escalates_to_sigkill(executor: Executor, tmp_path: Path) -> None:
    pidfile = tmp_path / "gc.pid"
    await executor.start(
        "t", 1, f"trap '' TERM; sleep 300 & echo $! > {pidfile}; wait; wait", timeout=0.3
    )
    grandchild = await read_pid_file(pidfile)
    event = await executor.wait("t")
    assert event is not None
    assert event.reason == "timeout"
    assert event.exit_code == -9
    assert event.duration >= 0.3 + 0.5 - 0.05  # timeout + grace
    assert_gone(grandchild)


async def test_cancel(executor: Executor, tmp_path: Path) -> None:
    pidfile = tmp_path / "gc.pid"
    await executor.start("t", 1, f"sleep 300 & echo $! > {pidfile}; sleep 300")
    grandchild = await read_pid_file(pidfile)
    assert executor.running() == {"t": 1}
    usage = await wait_until_async(  # the tree is polled every 0.5 s
        "the run's usage to count sh and its 2 sleeps",
        lambda: (u := executor.usage("t")) is not None and u.nprocs >= 3 and u, 10, 0.05,
    )
    assert usage.rss > 0
    event = await executor.cancel("t")
    assert event is not None and event.reason == "cancelled"
    assert executor.running() == {} and executor.usage("t") is None
    assert_gone(grandchild)
    assert await executor.cancel("t") is None


async def test_leftover_children_die_with_the_leader(executor: Executor, tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    event = await run_to_end(executor, "t", f"sleep 300 & echo $! > {pidfile}")
    assert event.exit_code == 0
    assert_gone(int(pidfile.read_text()))


async def test_output_is_bounded(tmp_data_dir: Path) -> None:
    executor = Executor(tmp_data_dir, slots=1, output_limit=1000)
    event = await run_to_end(executor, "t", "head -c 5000 /dev/zero; head -c 10 /dev/zero >&2")
    assert event.exit_code == 0
    assert (event.truncated_out, event.truncated_err) == (4000, 0)
    assert (tmp_data_dir / "tasks" / "t" / "1.out").stat().st_size == 1000
    data, offset, eof = executor.read_output("t", 1, "out", 0)
    assert data == b"\0" * 1000 and offset == 1000 and eof


async def test_large_output_does_not_block(tmp_data_dir: Path) -> None:
    executor = Executor(tmp_data_dir, slots=1, output_limit=64 * 1024)
    event = await run_to_end(executor, "t", "head -c 20000000 /dev/zero", timeout=20)
    assert event.reason == "exit" and event.exit_code == 0
    assert event.truncated_out == 20_000_000 - 64 * 1024


async def test_stats_cpu_and_rss(executor: Executor) -> None:
    burn = (
        "import time\n"
        "block = bytearray(60 * 1024 * 1024)\n"
        "for i in range(0, len(block), 4096): block[i] = 1\n"
        "end = time.process_time() + 0.6\n"
        "while time.process_time() < end: pass\n"
    )
    event = await run_to_end(executor, "t", [sys.executable, "-c", burn])
    assert event.exit_code == 0
    assert event.cpu_time >= 0.5
    assert event.cpu_time <= event.duration * (os.cpu_count() or 1) + 0.1
    assert event.peak_rss >= 60 * 1024 * 1024


async def test_cpu_time_includes_grandchildren(executor: Executor) -> None:
    loop_cmd = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"
    event = await run_to_end(executor, "t", f"sh -c '{loop_cmd}'; sh -c '{loop_cmd}'")
    single = await run_to_end(executor, "u", loop_cmd)
    assert event.cpu_time > 1.5 * single.cpu_time > 0


async def test_slots(tmp_data_dir: Path) -> None:
    executor = Executor(tmp_data_dir, slots=2, kill_grace=0.2)
    assert executor.free_slots == 2
    await executor.start("a", 1, "sleep 30")
    await executor.start("b", 1, "sleep 30")
    assert executor.free_slots == 0
    with pytest.raises(TaskError, match="no free slot"):
        await executor.start("c", 1, "true")
    await executor.start("a", 1, "sleep 30")  # idempotent: already running at epoch 1
    assert executor.running() == {"a": 1, "b": 1}
    await executor.cancel("a")
    assert executor.free_slots == 1
    await executor.start("c", 1, "true")
    await executor.wait("c")
    await executor.shutdown()
    assert executor.running() == {} and executor.free_slots == 2


def test_default_slots_is_cpu_count(tmp_data_dir: Path) -> None:
    assert Executor(tmp_data_dir).slots == (os.cpu_count() or 1)
    with pytest.raises(ConfigError):
        Executor(tmp_data_dir, slots=-1)


async def test_stale_epoch_fencing(executor: Executor, events: list[ExecEvent]) -> None:
    await executor.start("t", 1, "sleep 300")
    first_pid = events[-1].pid
    assert await executor.kill_stale("t", 1) is None  # same epoch: not stale
    assert executor.running() == {"t": 1}
    await executor.start("t", 2, "sleep 300")  # newer assignment fences the old run first
    assert [(e.kind, e.epoch, e.reason) for e in events] == [
        ("started", 1, None),
        ("finished", 1, "stale"),
        ("started", 2, None),
    ]
    assert_gone(first_pid)  # the events above already show it was fenced first
    with pytest.raises(TaskError, match="stale"):
        await executor.start("t", 1, "true")
    event = await executor.kill_stale("t", 3)
    assert event is not None and event.reason == "stale" and event.exit_code == -9
    assert executor.running() == {}


async def test_bad_inputs(executor: Executor) -> None:
    with pytest.raises(TaskError, match="invalid task id"):
        await executor.start("../escape", 1, "true")
    with pytest.raises(TaskError, match="cannot start"):
        await executor.start("t", 1, ["/nonexistent/binary"])
    assert executor.running() == {} and executor.free_slots == 4
    with pytest.raises(TaskError, match="no output"):
        executor.read_output("t2", 1, "out", 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="run_as needs root to switch user")
async def test_run_as_nobody(tmp_data_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    executor = Executor(tmp_data_dir, slots=1, run_as="nobody")
    event = await run_to_end(executor, "t", "id -u; id -G; echo $HOME; touch mine && echo ok")
    assert event.exit_code == 0
    data, _, _ = executor.read_output("t", 1, "out", 0)
    lines = data.decode().splitlines()
    assert lines[0] == str(nobody.pw_uid)
    assert lines[1] == str(nobody.pw_gid)  # no supplementary groups kept from root
    assert lines[2] == nobody.pw_dir
    assert lines[3] == "ok"
    out_file = tmp_data_dir / "tasks" / "t" / "1.out"
    assert out_file.stat().st_uid == 0  # the agent owns the capture, not the task
    assert stat.S_IMODE(out_file.parent.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="run_as needs root to switch user")
def test_run_as_unknown_user(tmp_data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="run_as"):
        Executor(tmp_data_dir, run_as="no-such-user-mt")


async def test_many_runs_leak_no_fds_or_processes(tmp_data_dir: Path) -> None:
    executor = Executor(tmp_data_dir, slots=4)
    fds_before = len(os.listdir("/proc/self/fd"))
    for batch in range(10):
        ids = [f"b{batch}-{i}" for i in range(4)]
        for task_id in ids:
            await executor.start(task_id, 1, "echo $MESH_TASK_ID")
        results = [await executor.wait(task_id) for task_id in ids]
        assert all(r is not None and r.exit_code == 0 for r in results)
    assert executor.running() == {} and executor.free_slots == 4
    assert len(os.listdir("/proc/self/fd")) <= fds_before
    assert not [c for c in psutil.Process().children() if c.status() != psutil.STATUS_ZOMBIE]
    assert executor.read_output("b9-3", 1, "out", 0)[0] == b"b9-3\n"


async def test_escaped_child_holding_pipes_does_not_hang_the_run(
    executor: Executor, tmp_path: Path
) -> None:
    pidfile = tmp_path / "escaped.pid"
    start = time.monotonic()
    # setsid leaves the task's group but inherits stdout: the run must still end.
    event = await run_to_end(
        executor,
        "t",
        f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 30' & "
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done; echo done",
    )
    try:
        assert event.exit_code == 0
        assert time.monotonic() - start < 5
        assert executor.read_output("t", 1, "out", 0)[0] == b"done\n"
        assert executor.running() == {}
    finally:
        escaped = await read_pid_file(pidfile)
        with contextlib.suppress(ProcessLookupError):
            os.kill(escaped, signal.SIGKILL)


async def test_concurrent_starts_of_one_task_run_it_once(
    executor: Executor, events: list[ExecEvent]
) -> None:
    await executor.start("t", 1, "sleep 30")
    await asyncio.gather(*(executor.start("t", 2, "sleep 30") for _ in range(5)))
    assert executor.running() == {"t": 2}
    assert [(e.kind, e.epoch) for e in events] == [
        ("started", 1), ("finished", 1), ("started", 2)
    ]
    await executor.shutdown()
    assert events[-1].reason == "shutdown"


def test_run_dies_with_its_event_loop(tmp_data_dir: Path) -> None:
    pids: list[int] = []

    async def start_and_leave() -> None:
        executor = Executor(tmp_data_dir, slots=1, on_event=lambda e: pids.append(e.pid))
        await executor.start("t", 1, "sleep 300")
        await asyncio.sleep(0.1)  # the supervisor is running; asyncio.run then cancels it

    asyncio.run(start_and_leave())
    assert pids
    assert_gone(pids[0])
