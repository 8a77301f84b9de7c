"""agent/durable.py: one recipe for replacing a small state file durably."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.durable import replace_file


def test_replace_writes_the_bytes_with_the_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.write_bytes(b"old")
    replace_file(target, b"new" * 10_000, mode=0o600)
    assert target.read_bytes() == b"new" * 10_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_the_file_and_then_its_directory_are_synced(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync of the temp file before the rename, of the directory after it: without
    the second a power cut may bring the old name back (a new node id)."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    def fsync(fd: int) -> None:
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)
    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    replace_file(tmp_path / "id", b"x\n")
    assert events == ["file", "rename", "dir"]


def test_a_failed_replace_leaves_the_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "inside").write_text("keep")  # a non-empty directory cannot be renamed over
    with pytest.raises(OSError):
        replace_file(target, b"data")
    assert (target / "inside").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_a_temp_left_by_a_crash_is_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "group"
    (tmp_path / "group.tmp").write_bytes(b"half a write from before a crash")
    replace_file(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert not (tmp_path / "group.tmp").exists()
