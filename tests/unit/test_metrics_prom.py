"""Issue 15: the Prometheus exposition passes ``promtool check metrics``, and the
``/metrics`` endpoint serves it from the event loop over real sockets."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest
from rootpolicy import in_ci

from agent.metrics import prom
from agent.metrics.engine import Inputs, MetricsEngine
from agent.metrics.http import MetricsHTTPServer
from agent.swim.members import MemberView
from agent.swim.messages import NodeLoad, NodeMeta


def member(name: str, state: str = "alive", cpu: float = 0.1, rtt_ms: float | None = 1.0) -> MemberView:
    meta = NodeMeta(name=name, addr=f"{name}:1", caps=(), slots=2, version="t", role="voter")
    load = NodeLoad(cpu=cpu, load1=0.0, mem_free=1, mem_percent=50.0, queued=0, running=0)
    return MemberView(f"id-{name}", f"{name}:1", meta, load, state, 1, rtt_ms, 0.0)


def view() -> prom.ScrapeView:
    members = (member("n1", rtt_ms=None), member("n2", cpu=0.9), member("n3", state="dead"))
    inputs = Inputs(members=members, messages_in=1234, leader_changes=3, voters=3,
                    participation={1: 2 / 3}, decision_latencies=[0.01, 0.02],
                    commit_latencies=[0.001])
    figures = MetricsEngine().figures(0.0, inputs)
    return prom.ScrapeView(
        node="n1", node_id="id-n1", version="0.1.0", engine="raft", role="leader", term=5,
        commit_index=42, voters=3, partitioned=False, members=members, hot=frozenset({"id-n2"}),
        figures=figures, messages_in=1234,
        traffic={"datagrams_in": 10, "datagrams_out": 11, "datagram_bytes_in": 1000,
                 "datagram_bytes_out": 1100, "stream_msgs_in": 5, "stream_msgs_out": 6,
                 "stream_bytes_in": 500, "stream_bytes_out": 600},
        history_bytes=1430400, latencies={"commit": [0.001], "decision": [0.01, 0.02]},
    )


def exposition() -> str:
    return prom.render(prom.registry(view)).decode()


def test_exposition_follows_the_naming_conventions() -> None:
    text = exposition()
    assert 'meshtui_members{state="alive"} 2.0' in text
    assert "meshtui_leader_changes_total 3.0" in text
    assert 'meshtui_peer_rtt_seconds{peer="n2"} 0.001' in text
    assert 'meshtui_member_hot{member="n2"} 1.0' in text
    assert 'meshtui_vote_participation_ratio{proposal="1"} 0.6667' in text
    assert 'meshtui_node_info{engine="raft",id="id-n1",node="n1",version="0.1.0"} 1.0' in text
    assert 'meshtui_fault_tolerance{kind="byzantine"} 0.0' in text
    assert 'meshtui_decision_latency_seconds{quantile="0.99"} 0.02' in text
    assert "meshtui_decision_latency_seconds_count 2.0" in text
    assert "process_cpu_seconds_total" in text  # prometheus-client's process collector
    for line in text.splitlines():
        if line.startswith("# TYPE meshtui_"):
            name, kind = line.split()[2:4]
            assert kind in ("gauge", "counter", "summary")
            assert name.endswith("_total") == (kind == "counter")


def test_promtool_check_metrics_passes() -> None:
    if shutil.which("promtool") is None:
        if in_ci():
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (.ci/run installs Debian's prometheus package)")
    out = subprocess.run(["promtool", "check", "metrics"], input=exposition(), capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


async def _http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_endpoint_serves_get_head_and_refuses_the_rest() -> None:
    server = MetricsHTTPServer("127.0.0.1", 0, lambda: b"meshtui_x 1.0\n")
    await server.start()
    try:
        got = await _http(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"\r\n\r\nmeshtui_x 1.0\n")
        assert b"text/plain; version=0.0.4" in got
        head = await _http(server.port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        assert (await _http(server.port, b"GET /nope HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _http(server.port, b"POST /metrics HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await _http(server.port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        # Keep-alive: two requests on one connection, as Prometheus scrapes.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(2):
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert status.startswith(b"HTTP/1.1 200")
            await reader.readexactly(len(b"meshtui_x 1.0\n"))
        writer.close()
        assert server.scrapes == 4
    finally:
        await server.close()


async def test_endpoint_caps_concurrent_scrapers() -> None:
    server = MetricsHTTPServer("127.0.0.1", 0, lambda: b"x\n", max_clients=1)
    await server.start()
    try:
        _idle_reader, idle = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.05)  # the first connection holds the only slot
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
        assert server.refused == 1
        idle.close()
        writer.close()
    finally:
        await server.close()
