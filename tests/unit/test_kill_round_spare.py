"""``cgroups.kill_round``'s ``spare``: a member it must leave alive (the agent stuck in a
run's group).  On plain files standing in for a cgroup's (no root needed): the
round reads ``cgroup.procs`` and must neither write ``cgroup.kill`` nor freeze."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agent.containment import cgroups
from agent.containment.cgroups import TaskGroup


def fake_group(tmp_path: Path, pids: list[int]) -> TaskGroup:
    (tmp_path / "cgroup.procs").write_text("".join(f"{pid}\n" for pid in pids))
    (tmp_path / "cgroup.kill").write_text("")
    (tmp_path / "cgroup.freeze").write_text("0\n")
    return TaskGroup((str(tmp_path),))


def test_a_spared_member_lives_and_the_others_are_killed(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        group = fake_group(tmp_path, [os.getpid(), child.pid])
        assert cgroups.kill_round(group, spare=os.getpid()) is False  # one was left to kill
        assert child.wait(10) == -9
        assert (tmp_path / "cgroup.kill").read_text() == ""  # would have killed us too
        assert (tmp_path / "cgroup.freeze").read_text() == "0\n"
        fake_group(tmp_path, [os.getpid()])
        assert cgroups.kill_round(group, spare=os.getpid()) is True  # only the spared one
        assert cgroups.kill_until_empty(group, timeout=1, spare=os.getpid()) is True
    finally:
        child.kill()
        child.wait()


def test_a_spare_that_is_no_member_changes_nothing(tmp_path: Path) -> None:
    # Not a member: the usual round, which kills through cgroup.kill.
    group = fake_group(tmp_path, [2**22 + 1])  # above pid_max: no such process
    assert cgroups.kill_round(group, spare=os.getpid()) is False
    assert (tmp_path / "cgroup.kill").read_text() == "1"
