"""A run born inside its cgroup: the agent steps into the run's group for the spawn.

Root only (cgroups): skips without root, fails under ``CI=true`` without it
(``tests/rootpolicy.py``).  Needs a v2 kill hierarchy without a v2 memory
controller, as ``Containment`` does to spawn from inside; skips otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rootpolicy import enforce_root_policy

from agent.containment import Containment, jail
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


def spy_popen(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argv of every Popen from here on (the spawn itself is real)."""
    seen: list[list[str]] = []
    real = subprocess.Popen

    def popen(args: list[str], *rest: Any, **kw: Any) -> subprocess.Popen[bytes]:
        seen.append(list(args))
        return real(args, *rest, **kw)

    monkeypatch.setattr(subprocess, "Popen", popen)
    return seen


async def run(executor: Executor, task_id: str, argv: list[str], **kw: Any) -> str:
    await executor.start(task_id, 1, argv, **kw)
    event = await asyncio.wait_for(executor.wait(task_id), 10)
    assert event is not None and event.exit_code == 0, event
    return executor.read_output(task_id, 1, "out", 0)[0].decode()


async def test_an_unlimited_run_execs_the_task_first_inside_its_group(
    executor: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = spy_popen(monkeypatch)
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
