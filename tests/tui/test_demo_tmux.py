"""Issue 6: ``meshtui demo`` in a real terminal (tmux): members and a leader within 15 s,
and quitting leaves no agent running and no files behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def _need_tmux() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("CI=true but tmux is missing (.ci/run installs it)")
        pytest.skip("tmux is not installed")
    return tmux


def _agents_under(directory: Path) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "agent.cli run" in line and str(directory) in line]


def test_demo_in_tmux_shows_members_and_leader_then_cleans_up(tmp_path: Path) -> None:
    tmux = _need_tmux()
    session = f"mt-demo-{uuid.uuid4().hex[:8]}"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    meshtui = str(Path(sys.executable).with_name("meshtui"))
    env = {**os.environ, "TMPDIR": str(scratch), "TERM": "xterm-256color"}
    subprocess.run(
        [tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "45",
         # env(1): a running tmux server would not pass our environment on.
         f"env TMPDIR={scratch} TERM=xterm-256color {meshtui} demo --nodes 3"],
        check=True, env=env,
    )
    screen = ""
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            screen = subprocess.run(
                [tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            if "leader n" in screen and all(f"n{i}" in screen for i in (1, 2, 3)):
                break
            time.sleep(0.5)
        assert "leader n" in screen, f"no leader on screen within 15 s:\n{screen}"
        assert "3 alive" in screen, screen
        assert _agents_under(scratch), "the demo's agents are not running"
        subprocess.run([tmux, "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _agents_under(scratch):
            time.sleep(0.25)
        assert _agents_under(scratch) == [], "agents still running after quitting the demo"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(scratch.iterdir()):
            time.sleep(0.25)
        assert list(scratch.iterdir()) == [], "the demo left files behind"
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], capture_output=True)
        for line in _agents_under(scratch):
            subprocess.run(["kill", "-9", line.split()[0]], capture_output=True)
