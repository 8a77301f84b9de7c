"""uvloop's libuv worker pool is 2 threads in the agent unless the operator says
otherwise (agent/runtime/event_loop.py ``UV_THREADPOOL_SIZE``, issue 14: each idle
thread makes the agent's cgroup moves around a spawn dearer)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agent.runtime import event_loop

pytestmark = pytest.mark.skipif(not event_loop.uvloop_available(), reason="uvloop not installed")

# A UDP bind by host name starts libuv's pool, as the agent's transport does.
PROBE = """
import asyncio, os
from agent.runtime import event_loop

async def main() -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("0.0.0.0", 0))
    print(len(os.listdir(f"/proc/{os.getpid()}/task")), os.environ.get("UV_THREADPOOL_SIZE"))

event_loop.run(main(), "uvloop")
"""


def _probe(extra: dict[str, str]) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "UV_THREADPOOL_SIZE"} | extra
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    threads, size = out.stdout.split()
    return int(threads), size


def test_the_agent_runs_two_pool_threads_by_default() -> None:
    assert _probe({}) == (1 + int(event_loop.UV_THREADPOOL_SIZE), event_loop.UV_THREADPOOL_SIZE)


def test_an_operators_setting_wins() -> None:
    assert _probe({"UV_THREADPOOL_SIZE": "3"}) == (4, "3")
