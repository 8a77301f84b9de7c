"""Issue 14: a run's start and end on the executor's hot path cost no ``pathlib.Path``
objects (a host starts and ends hundreds of short runs a second, and the Path
arithmetic was about a sixth of the executor's Python time per run), and glibc's
posix_spawn attributes are built once, not per spawn.  Real runs of ``true``,
under whichever containment this host gives (cgroups as root, else the subreaper)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.containment import spawn as posix
from agent.executor import Executor

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[Executor]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    made = Executor(data, slots=2)
    try:
        yield made
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(made.shutdown(), 20)


async def one_run(executor: Executor, task_id: str) -> None:
    await executor.start(task_id, 1, ["true"])
    event = await asyncio.wait_for(executor.wait(task_id), 10)
    assert event is not None and event.exit_code == 0, event
    executor.done_with(task_id, 1)


async def test_a_run_makes_no_path_objects(
    executor: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    makers = [name for name in ("_from_parts", "_from_parsed_parts")
              if hasattr(pathlib.PurePath, name)]  # fmt: skip
    if not makers:
        pytest.skip("this Python's pathlib builds paths another way")
    await one_run(executor, "warm")  # directories, cgroup node directory, caches
    made: list[str] = []

    def counting(name: str, real: Callable[..., Any]) -> classmethod[Any, Any, Any]:
        def make(cls: type, *args: Any, **kw: Any) -> Any:
            made.append(name)
            return real(cls, *args, **kw)

        return classmethod(make)

    for name in makers:  # (the class's own function, called for the class asked)
        real = pathlib.PurePath.__dict__[name].__func__
        monkeypatch.setattr(pathlib.PurePath, name, counting(name, real))
    for n in range(4):
        await one_run(executor, f"t{n}")
    monkeypatch.undo()
    assert made == []


async def test_posix_spawn_attributes_are_built_once(
    executor: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not posix.AVAILABLE:
        pytest.skip("no posix_spawn with chdir and closefrom in this C library")
    await one_run(executor, "warm")
    built = posix._attributes()
    for n in range(3):
        await one_run(executor, f"t{n}")
    assert posix._attributes() is built
