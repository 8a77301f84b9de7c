"""Issue 15: throughput is the rate of peer messages received over the window.

A real agent (in process, loopback, alone: no SWIM peers to talk to) and a
real sealed ``PeerRouter`` that sends it messages at a known rate over TCP;
the agent's ``report`` must show that rate over its 10 s window within 20%.
The rate the test achieved (messages sent in the 10 s before the agent's last
sample, counted by the sender) is the truth, not the rate it aimed at.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ports import free_port

from agent.config import default_local
from agent.crypto import Keyring
from agent.runtime.agent import INSECURE_KEY, Agent
from agent.runtime.messages import ForwardResult
from agent.runtime.router import PeerRouter
from meshtui.client import ControlClient

RATE = 150.0
"""Messages per second the test sends."""
SEND_S = 12.0
"""Seconds of sending: the 10 s window plus slack for the agent's 1 s sampling."""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mt-thr-", dir="/tmp") as directory:
        yield Path(directory)


async def test_a_known_message_rate_reads_back_within_20_percent(short_dir: Path) -> None:
    port = free_port()
    config = dataclasses.replace(
        default_local(), name="t1", data_dir=str(short_dir / "data"), port=port,
        socket=str(short_dir / "agent.sock"), insecure_no_key=True, slots=1, run_as="",
    )
    agent = await Agent.start(config)
    sender = PeerRouter(bind="127.0.0.1", port=0, keyring=Keyring.from_key(INSECURE_KEY), node_id="f" * 32)
    await sender.start()
    client = await ControlClient.connect_unix(config.socket)
    try:
        sender.advertise(f"127.0.0.1:{sender.port}")
        target = f"127.0.0.1:{port}"
        sent_at: list[float] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        while (now := loop.time()) - start < SEND_S:
            due = int((now - start) * RATE) + 1 - len(sent_at)
            for _ in range(max(0, due)):
                sender.send_to_addr(target, ForwardResult(len(sent_at) + 1, "", "", b""), True)
                sent_at.append(time.monotonic())
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)  # the last frames land
        report = await client.call("report")
        stats = report["transport"]
        received = stats["stream_msgs_in"] + stats["datagrams_in"]
        assert received >= 0.95 * len(sent_at), (received, len(sent_at))
        reported = report["throughput_msgs_per_s"]["10s"]
        # The truth: what was sent in the 10 s before now (the agent sampled in the last second).
        end = time.monotonic()
        truth = sum(1 for t in sent_at if end - 11.0 <= t <= end - 1.0) / 10.0
        print(f"sent {truth:.1f} msgs/s over the last 10 s; the agent reports {reported}")
        assert reported is not None and abs(reported - truth) <= 0.2 * truth, (reported, truth)
        assert abs(report["throughput_msgs_per_s"]["1m"] - len(sent_at) / SEND_S) <= 0.2 * RATE

    finally:
        await client.close()
        await sender.close()
        await agent.stop()
