"""A run born inside its cgroup: the agent steps into the run's group for the spawn.

Root only (cgroups): skips without root, fails under ``CI=true`` without it
(``tests/rootpolicy.py``).  Needs a v2 kill hierarchy without a v2 memory
controller, as ``Containment`` does to spawn from inside; skips otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rootpolicy import enforce_root_policy

from agent import executor_spawn as spawn_module
from agent.containment import Containment, jail
from agent.containment.spawn import spawn as real_spawn
from agent.executor import Executor

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[Executor]:
    enforce_root_policy(())
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    made = Executor(data, slots=2, containment="cgroup", node_id=f"mt-inside-{os.getpid()}")
    if getattr(made.containment, "home", "(before 'born inside')") is None:
        pytest.skip(f"runs are not spawned from inside here: {made.containment.describe()}")
    try:
        yield made
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(made.shutdown(), 20)
        Containment(made.containment.node, "auto").cleanup_stale()


def spy_spawns(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argv of every run's spawn from here on, through Popen or posix_spawn (the
    spawns themselves are real)."""
    seen: list[list[str]] = []
    real_popen = subprocess.Popen

    def popen(args: list[str], *rest: Any, **kw: Any) -> subprocess.Popen[bytes]:
        seen.append(list(args))
        return real_popen(args, *rest, **kw)

    def spawn(path: str, argv: list[str], *rest: Any) -> int:
        seen.append(list(argv))
        return real_spawn(path, argv, *rest)

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(spawn_module, "spawn", spawn)
    return seen


async def run(executor: Executor, task_id: str, argv: list[str], **kw: Any) -> str:
    await executor.start(task_id, 1, argv, **kw)
    event = await asyncio.wait_for(executor.wait(task_id), 10)
    assert event is not None and event.exit_code == 0, event
    return executor.read_output(task_id, 1, "out", 0)[0].decode()


async def test_an_unlimited_run_execs_the_task_first_inside_its_group(
    executor: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy_spawns(monkeypatch)
    own = Path("/proc/self/cgroup").read_text()
    argv = ["sh", "-c", "grep ^0:: /proc/$$/cgroup"]
    out = await run(executor, "t", argv)
    # No join shell: the first thing the child execs is the task, already in its group.
    assert seen == [argv]
    assert out.strip().endswith(f"/meshtui/{executor.containment.node}/t-1")
    assert Path("/proc/self/cgroup").read_text() == own  # the agent went back home
    # A run with a limit still joins through the shell (the agent never enters it).
    await run(executor, "u", ["true"], pids=64)
    assert seen[-1][:3] == ["/bin/sh", "-c", jail.JOIN_SCRIPT]
    assert Path("/proc/self/cgroup").read_text() == own


def test_a_fork_waits_while_the_agent_is_inside_a_group() -> None:
    # A worker thread's os.fork (artifact collection) must not be born in a task's
    # group: the spawn window's lock is taken by every fork.
    forked = threading.Event()

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forked.set()

    jail._window.acquire()
    thread = threading.Thread(target=fork)
    try:
        thread.start()
        assert not forked.wait(0.3), "forked while the spawn window was held"
    finally:
        jail._window.release()
    assert forked.wait(10)
    thread.join(10)


PROBE = (
    'pwd; readlink /proc/$$/fd/0; '
    '[ "$(cut -d" " -f6 /proc/$$/stat)" = "$$" ] && echo "session leader"; env | sort'
)
"""(Descriptors and masks are read by an ls and a grep of their own /proc/self: a
shell's own change while it forks would race the read.)"""


def inherited_ignores() -> int:
    """The signals a child still ignores after exec: what this process ignores (a run
    under ``nohup`` or from a background shell ignores SIGHUP, SIGINT, SIGQUIT), but
    SIGPIPE and SIGXFSZ, which Python ignores itself and both spawns set back to default."""
    status = Path("/proc/self/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return ignored & ~(1 << (signal.SIGPIPE - 1)) & ~(1 << (signal.SIGXFSZ - 1))


def test_posix_spawn_gives_the_child_what_popen_gave_it(tmp_path: Path) -> None:
    # The executor's Popen arguments against containment.spawn: same directory, same
    # descriptors (an inheritable one of ours is closed), stdin /dev/null, a new
    # session, SIGPIPE/SIGXFSZ back to default, the same signal mask (SIGUSR1 blocked
    # around both, as a subreaper's signals are around its spawn), the same env.
    from agent.containment import spawn as posix

    if not posix.AVAILABLE:
        pytest.skip("no posix_spawn with chdir and closefrom in this C library")
    env = {"PATH": os.defpath, "MESH_TASK_ID": "t", "ODD": "a b=c"}
    grep = shutil.which("grep")
    ls = shutil.which("ls")
    assert grep is not None and ls is not None
    probes = [["/bin/sh", "-c", PROBE], [ls, "/proc/self/fd"],
              [grep, "-E", "^Sig(Blk|Ign)", "/proc/self/status"]]
    stray_r, stray_w = os.pipe()
    os.set_inheritable(stray_w, True)
    outs: dict[str, list[str]] = {"popen": [], "spawn": []}
    try:
        for argv, how in itertools.product(probes, outs):
            read_end, write_end = os.pipe()
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # as the executor
            try:
                if how == "popen":
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=write_end,
                                            stderr=write_end, cwd=str(tmp_path), env=env,
                                            start_new_session=True, close_fds=True)
                    pid = proc.pid
                else:
                    pid = posix.spawn(argv[0], argv, env, str(tmp_path), write_end, write_end)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            os.close(write_end)
            with os.fdopen(read_end, "rb") as pipe:
                outs[how].append(pipe.read().decode())
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, outs[how][-1]
    finally:
        os.close(stray_r)
        os.close(stray_w)
    assert outs["popen"] == outs["spawn"], outs
    shell, fds, masks = outs["spawn"]
    assert shell.splitlines()[:3] == [str(tmp_path), "/dev/null", "session leader"]
    assert fds.split() == ["0", "1", "2", "3"]  # (3: the directory ls reads)
    assert masks.splitlines() == ["SigBlk:\t0000000000000200", f"SigIgn:\t{inherited_ignores():016x}"]
    with pytest.raises(FileNotFoundError):
        posix.spawn(str(tmp_path / "missing"), ["missing"], env, str(tmp_path), 1, 2)


STUCK_SCRIPT = r"""
import asyncio, logging, os, sys
from pathlib import Path
from agent.executor import Executor

logging.basicConfig(level=logging.WARNING, format="WARN %(message)s", stream=sys.stdout)

async def main(data: str, node: str) -> None:
    ex = Executor(Path(data), slots=1, containment="cgroup", node_id=node)
    assert ex.containment.home is not None, ex.containment.describe()
    ex.containment._homes = ("/nonexistent-mt-home/cgroup.procs",)  # every move home fails
    # The task leaves a grandchild behind in its group; the run's end kills the group.
    escaper_file = Path(data) / "escaper"
    await ex.start("t", 1, ["sh", "-c", f"sleep 30 & echo $! > {escaper_file}"])
    event = await asyncio.wait_for(ex.wait("t"), 20)
    print("first", event.exit_code)
    escaper = int(escaper_file.read_text())
    for _ in range(200):  # the escaper is killed, the agent (this process) is not
        if not Path(f"/proc/{escaper}").exists() or \
                Path(f"/proc/{escaper}/stat").read_text().split()[2] == "Z":
            break
        await asyncio.sleep(0.05)
    else:
        print("escaper alive")
    await ex.start("u", 1, ["true"])
    event = await asyncio.wait_for(ex.wait("u"), 20)
    print("second", event.exit_code)
    await asyncio.wait_for(ex.shutdown(), 20)
    print("alive")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_an_agent_that_cannot_leave_a_group_survives_the_runs_end(tmp_path: Path) -> None:
    """If the agent cannot move back home after a spawn it stays in the run's group;
    the kills at the run's end must spare it (no ``cgroup.kill``, no freezer) and
    still kill the task's other processes.  In a child process: a regression kills
    that child, not the test run."""
    enforce_root_policy(())
    probe = Executor(tmp_path / "probe", slots=1, containment="cgroup",
                     node_id=f"mt-probe-{os.getpid()}")
    if getattr(probe.containment, "home", None) is None:
        pytest.skip(f"runs are not spawned from inside here: {probe.containment.describe()}")
    node = f"mt-stuck-{os.getpid()}"
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            [sys.executable, "-c", STUCK_SCRIPT, str(data), node], cwd=root,
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
    finally:
        Containment(node, "auto").cleanup_stale()
    lines = done.stdout.splitlines()
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    assert "first 0" in lines and "second 0" in lines and "alive" in lines, done.stdout
    assert "escaper alive" not in lines, done.stdout
    assert any("cannot leave a task's cgroup" in line for line in lines), done.stdout
