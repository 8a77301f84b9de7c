"""Issue 17: collecting artifacts from a task's working directory -- no symbolic link
followed, nothing outside the directory, the per-artifact limit, the task's user;
each refusal one line naming the artifact."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from agent.output_store import artifact_refusal, item_file
from agent.runtime.artifact_collect import collect


@pytest.fixture
def work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "out" / "result.txt").write_bytes(b"result\n")
    (work / "top.bin").write_bytes(bytes(range(256)))
    (tmp_path / "secret").write_text("outside")
    (work / "link").symlink_to(tmp_path / "secret")
    (work / "dirlink").symlink_to(tmp_path)
    os.mkfifo(work / "fifo")
    (work / "big").write_bytes(b"b" * 2048)
    return work


def one(work: Path, name: str, limit: int = 1024) -> tuple[bytes, str]:
    [got] = collect(work, [name], limit)
    assert got.name == name
    return got.data, got.error


def test_regular_files_are_read(work: Path) -> None:
    assert one(work, "out/result.txt") == (b"result\n", "")
    assert one(work, "top.bin") == (bytes(range(256)), "")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("missing.txt", "no such file"),
        ("link", "symbolic link"),
        ("dirlink/secret", "not a directory (or is a symbolic link)"),
        ("fifo", "not a regular file"),
        ("out", "not a regular file"),
        ("big", "2048 bytes is over the per-artifact limit of 1024 bytes"),
    ],
)
def test_refusals_are_one_line_naming_the_artifact(work: Path, name: str, why: str) -> None:
    data, error = one(work, name)
    assert data == b""
    assert error.startswith(f"artifact {name!r}: ") and why in error and "\n" not in error


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../x", "leaves the task's working directory"),
        ("a/../../x", "leaves the task's working directory"),
        ("/etc/passwd", "is absolute"),
        ("a//b", "empty or '.'"),
        ("./a", "empty or '.'"),
        ("", "1-200 characters"),
        ("a\nb", "control characters"),
    ],
)
def test_names_leaving_the_directory_are_refused_at_submit(name: str, why: str) -> None:
    refusal = artifact_refusal(name)
    assert refusal is not None and why in refusal


def test_submit_refuses_an_escaping_artifact_in_one_line() -> None:
    from agent.state import builders
    from agent.state.commands import check as validate

    spec = builders.task_spec(shell="true")
    import dataclasses

    bad = dataclasses.replace(spec, artifacts=("ok.txt", "../etc/shadow"))
    assert validate(bad) == "artifact '../etc/shadow' leaves the task's working directory"
    assert validate(dataclasses.replace(spec, artifacts=("ok.txt", "d/e.bin"))) is None


def test_item_files_are_flat_and_distinct() -> None:
    assert item_file("out") == "out"
    assert item_file("a:d/e.bin") != item_file("a:d_e.bin")
    assert "/" not in item_file("a:d/e/f")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_files_are_read_as_the_tasks_user(work: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    os.chmod(work.parent, 0o755)
    os.chmod(work, 0o755)
    (work / "mine").write_text("root only")
    os.chmod(work / "mine", 0o600)
    (work / "open").write_text("anyone")
    os.chmod(work / "open", 0o644)
    got = collect(work, ["mine", "open", "link"], 1024, (nobody.pw_uid, nobody.pw_gid))
    assert got[0].error == "artifact 'mine': permission denied for the task's user"
    assert got[1].data == b"anyone" and not got[1].error
    assert "symbolic link" in got[2].error
