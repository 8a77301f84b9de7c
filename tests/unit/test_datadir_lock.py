"""One process per data dir: a second holder is refused naming the dir and the pid.

The last test starts two real ``mesh-agent run`` processes on one data dir
(loopback, distinct ports and sockets): the second must exit 2 with one line
and touch nothing there, while the first keeps serving.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.wait import wait_until

from agent.datadir import LOCK_NAME, DataDirBusy, lock_data_dir

pytestmark = pytest.mark.timeout(60)


def test_lock_writes_our_pid_and_refuses_a_second_holder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with lock_data_dir(str(data)) as lock:
        assert lock.held and (data / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        # flock belongs to the open file description: a second open conflicts
        # even inside this process.
        with pytest.raises(DataDirBusy) as info:
            lock_data_dir(str(data))
        assert info.value.pid == os.getpid()
        assert str(info.value) == (
            f"data dir {data} is in use by pid {os.getpid()} (lock {data / LOCK_NAME})"
        )
        assert (data / LOCK_NAME).read_text() == f"{os.getpid()}\n"  # the loser erased nothing
    assert not lock.held
    lock_data_dir(str(data)).release()  # free again once released


def test_a_stale_pid_in_the_lock_file_does_not_block(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("999999999\n")  # a holder that died: no flock
    with lock_data_dir(str(tmp_path)):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_create_false_refuses_a_missing_dir_and_makes_nothing(tmp_path: Path) -> None:
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match="no such directory"):
        lock_data_dir(str(tmp_path / "typo"), create=False)
    assert not (tmp_path / "typo").exists()
    lock_data_dir(str(tmp_path), create=False).release()


def test_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, agent.datadir as d; d.lock_data_dir(sys.argv[1]); print('held', flush=True);"
         " sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(DataDirBusy) as info:
            lock_data_dir(str(tmp_path))
        assert info.value.pid == holder.pid
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
        holder.wait(timeout=10)
    lock_data_dir(str(tmp_path)).release()


# ------------------------------------------------------------ two real agents


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Socket paths must fit in 107 bytes; pytest's tmp_path may not.
    directory = Path(tempfile.mkdtemp(prefix="mt-lock-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def agent_argv(data_dir: Path, sock: Path, key: Path) -> list[str]:
    return [
        sys.executable, "-m", "agent.cli", "run", "--profile", "local", "--name", "lockme",
        "--data-dir", str(data_dir), "--bind", "127.0.0.1", "--port", "0", "--no-mdns",
        "--key-file", str(key), "--socket", str(sock),
    ]


def wait_serving(sock: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    from meshtui.client import call_sync

    def serving() -> bool:
        assert proc.poll() is None, "the first agent exited"
        try:
            call_sync(str(sock), "status", {}, 1.0)
        except Exception:
            return False
        return True

    wait_until(f"the agent on {sock} to serve", serving, timeout, 0.1)


def small_files(data_dir: Path) -> dict[str, bytes]:
    """Top-level files other than the lock and the log: node id, boot counter, ..."""
    return {
        p.name: p.read_bytes()
        for p in data_dir.iterdir()
        if p.is_file() and p.name not in (LOCK_NAME, "first.log")
    }


def test_second_agent_on_one_data_dir_exits_2_naming_dir_and_pid(short_dir: Path) -> None:
    data = short_dir / "data"
    key = short_dir / "cluster.key"
    subprocess.run(
        [sys.executable, "-m", "agent.cli", "keygen", "-o", str(key)], check=True, timeout=30
    )
    data.mkdir()
    with open(data / "first.log", "wb") as log:
        first = subprocess.Popen(
            agent_argv(data, short_dir / "a.sock", key), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_serving(short_dir / "a.sock", first, 30)
        before = small_files(data)
        assert "node_id" in before
        second = subprocess.run(
            agent_argv(data, short_dir / "b.sock", key), capture_output=True, text=True, timeout=30
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr.splitlines() == [
            f"mesh-agent: data dir {data} is in use by pid {first.pid} (lock {data / LOCK_NAME})"
        ]
        assert not (short_dir / "b.sock").exists()
        assert small_files(data) == before  # read nothing, wrote nothing
        assert first.poll() is None
        wait_serving(short_dir / "a.sock", first, 5)
    finally:
        first.terminate()
        try:
            first.wait(timeout=15)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait(timeout=10)
