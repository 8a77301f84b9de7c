"""Issues 6 and 18: ``meshtui demo`` in a real terminal (tmux): members and a leader within
15 s; with no key pressed, a work steal and a hot→cold migration, each with its reason,
within 90 s (the Mesh screen's recent-changes feed); quitting leaves no agent running and
no files behind.  One demo run serves both issues (it is the suite's longest test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support.wait import wait_until

pytestmark = pytest.mark.timeout(200)

MIGRATION_WITHIN = 90.0
"""Issue 18's promise: the demo shows its moves by itself within this many seconds."""


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
    started = time.monotonic()
    subprocess.run(
        [tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "45",
         # env(1): a running tmux server would not pass our environment on.
         f"env TMPDIR={scratch} TERM=xterm-256color {meshtui} demo --nodes 3"],
        check=True, env=env,
    )
    screen = ""
    try:
        def capture() -> str:
            return subprocess.run(
                [tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout

        def leader_and_members() -> str:
            shown = capture()
            return shown if "leader n" in shown and all(f"n{i}" in shown for i in (1, 2, 3)) else ""

        # 15 s is the demo's promise (issue 6), not just a bound for failing.
        screen = wait_until("a leader and n1..n3 on screen", leader_and_members, 15, 0.5,
                            detail=capture)
        assert "3 alive" in screen, screen
        assert "Demo workload" in screen, screen  # what it runs and what to watch for

        seen: list[str] = []

        def steal_and_hot_cold() -> bool:
            seen.append(capture())  # the feed scrolls: remember every screen seen
            shown = "".join(seen)
            return "(steal)" in shown and "(hot-cold)" in shown

        wait_until("a steal and a hot-cold move, each with its reason, with no key pressed",
                   steal_and_hot_cold, MIGRATION_WITHIN - (time.monotonic() - started), 1.0,
                   detail=lambda: seen[-1] if seen else "")
        assert _agents_under(scratch), "the demo's agents are not running"
        subprocess.run([tmux, "send-keys", "-t", session, "q"], check=True)
        wait_until("the demo's agents to exit after quitting", lambda: not _agents_under(scratch),
                   20, 0.25, detail=lambda: _agents_under(scratch))
        wait_until("the demo to remove its files", lambda: not any(scratch.iterdir()), 10, 0.25,
                   detail=lambda: list(scratch.iterdir()))
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], capture_output=True)
        for line in _agents_under(scratch):
            subprocess.run(["kill", "-9", line.split()[0]], capture_output=True)
