"""Issue 14: a run's capture file is created at its stream's first byte.  A stream that
printed nothing has no file; reading it is empty (eof once the run ended), after a
restart of the executor too; a task that never ran here still has "no output"; and a
run of the same epoch after a restart never shows the earlier run's output."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.errors import TaskError
from agent.executor import Executor

pytestmark = pytest.mark.timeout(60)


async def run(executor: Executor, task_id: str, cmd: str) -> None:
    await executor.start(task_id, 1, cmd)
    event = await executor.wait(task_id)
    assert event is not None and event.exit_code == 0


async def test_a_silent_run_has_no_capture_files_and_reads_empty(tmp_data_dir: Path) -> None:
    executor = Executor(tmp_data_dir, slots=2)
    await run(executor, "quiet", "true")
    await run(executor, "talks", "echo hi >&2")
    tasks = tmp_data_dir / "tasks"
    assert sorted(p.name for p in (tasks / "quiet").iterdir()) == ["work"]
    assert sorted(p.name for p in (tasks / "talks").iterdir()) == ["1.err", "work"]
    assert stat.S_IMODE((tasks / "talks" / "1.err").stat().st_mode) == 0o600
    for reader in (executor, Executor(tmp_data_dir, slots=2)):  # and after a restart
        assert reader.read_output("quiet", 1, "out", 0) == (b"", 0, True)
        assert reader.read_output("quiet", 1, "err", 0) == (b"", 0, True)
        assert reader.read_output("talks", 1, "out", 0) == (b"", 0, True)
        assert reader.read_output("talks", 1, "err", 0) == (b"hi\n", 3, True)
        with pytest.raises(TaskError, match="no output"):
            reader.read_output("quiet", 2, "out", 0)  # an epoch that never ran here
        with pytest.raises(TaskError, match="no output"):
            reader.read_output("never", 1, "out", 0)


async def test_a_rerun_of_an_epoch_after_a_restart_shows_only_its_own_output(
    tmp_data_dir: Path,
) -> None:
    await run(Executor(tmp_data_dir, slots=1), "t", "echo before")
    again = Executor(tmp_data_dir, slots=1)  # the agent restarted; the epoch runs again
    await run(again, "t", "true")
    assert again.read_output("t", 1, "out", 0) == (b"", 0, True)
    assert not (tmp_data_dir / "tasks" / "t" / "1.out").exists()


async def test_a_live_run_without_output_yet_reads_empty_not_ended(tmp_data_dir: Path) -> None:
    executor = Executor(tmp_data_dir, slots=1, kill_grace=0.5)
    await executor.start("t", 1, "sleep 5")
    assert executor.read_output("t", 1, "out", 0) == (b"", 0, False)
    await executor.cancel("t")
    assert executor.read_output("t", 1, "out", 0) == (b"", 0, True)


async def test_a_quiet_run_leaves_its_directories_to_the_next_run(tmp_data_dir: Path) -> None:
    executor = Executor(tmp_data_dir, slots=1)
    tasks = tmp_data_dir / "tasks"
    await run(executor, "a", "true")
    inode = (tasks / "a" / "work").stat().st_ino
    executor.done_with("a", 1)  # the runtime is done with it (its artifacts collected)
    await run(executor, "b", "pwd")
    assert not (tasks / "a").exists()
    assert (tasks / "b" / "work").stat().st_ino == inode
    assert executor.read_output("b", 1, "out", 0)[0] == f"{tasks / 'b' / 'work'}\n".encode()
    assert executor.read_output("a", 1, "out", 0) == (b"", 0, True)  # still empty, not "no output"
    # not taken over: a run that printed (b), left a file (c), or was not released (d)
    executor.done_with("b", 1)
    await run(executor, "c", "touch left")
    executor.done_with("c", 1)
    await run(executor, "d", "true")
    await run(executor, "e", "true")
    assert {p.name for p in tasks.iterdir() if p.is_dir()} == {"b", "c", "d", "e"}
    assert (tasks / "c" / "work" / "left").exists()


async def test_a_task_directory_holding_an_earlier_run_is_never_a_spare(
    tmp_data_dir: Path,
) -> None:
    executor = Executor(tmp_data_dir, slots=1)
    await run(executor, "t", "echo first")  # epoch 1 printed: its capture stays
    await executor.start("t", 2, "true")
    assert (await executor.wait("t")) is not None
    executor.done_with("t", 2)
    await run(executor, "u", "true")
    assert (tmp_data_dir / "tasks" / "t" / "1.out").read_bytes() == b"first\n"
    assert executor.read_output("t", 1, "out", 0)[0] == b"first\n"


async def test_nothing_a_task_changed_reaches_the_next_run(tmp_data_dir: Path) -> None:
    """A task (here as root) that wrote beside its work directory, or changed its mode,
    leaves no spare: the next run gets fresh directories."""
    executor = Executor(tmp_data_dir, slots=1)
    tasks = tmp_data_dir / "tasks"
    await run(executor, "beside", "touch ../left-beside")
    await run(executor, "mode", "chmod 755 .")
    for task in ("beside", "mode"):
        executor.done_with(task, 1)
    await run(executor, "next", "true")
    assert {p.name for p in tasks.iterdir() if p.is_dir()} == {"beside", "mode", "next"}
    assert stat.S_IMODE((tasks / "next" / "work").stat().st_mode) == 0o700
