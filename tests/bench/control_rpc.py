"""Control API throughput: our server + client against a bare msgpack echo.

Run: ``.venv/bin/python tests/bench/control_rpc.py [--seconds S]``.

Figures, all over a Unix socket on this host, in one run:

* sequential calls/s and p50/p99 latency with ``ControlClient``;
* pipelined calls/s with 64 calls in flight;
* ``call_sync`` one-shot calls/s (connect + request + reply + close, what
  ``meshtui status`` does);
* events/s from ``publish`` to a subscriber's ``async for``;
* the comparison peer: a minimal asyncio server that only reads a length
  prefix, unpacks, packs the reply and writes it, driven by a minimal
  sequential client -- the floor our validation and dispatch add to.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import struct
import tempfile
import time
from typing import Any

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)
import msgpack

from agent.control.server import ControlServer
from meshtui.client import ControlClient, call_sync

HEADER = struct.Struct(">I")
PARAMS = {"ns": "default", "key": "k", "value": b"v" * 64}


async def echo(params: dict[str, Any]) -> Any:
    return {"index": 1, "found": True, "value": params.get("value")}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bare_server(path: str) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = HEADER.unpack(await reader.readexactly(4))
                req = msgpack.unpackb(await reader.readexactly(length), raw=False)
                body = msgpack.packb({"id": req["id"], "result": {"index": 1}}, use_bin_type=True)
                writer.write(HEADER.pack(len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_unix_server(handle, path=path)


async def bare_calls(path: str, seconds: float) -> float:
    reader, writer = await asyncio.open_unix_connection(path)
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        body = msgpack.packb({"id": count, "method": "kv.get", "params": PARAMS})
        writer.write(HEADER.pack(len(body)) + body)
        (length,) = HEADER.unpack(await reader.readexactly(4))
        msgpack.unpackb(await reader.readexactly(length), raw=False)
        count += 1
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.05)  # let the server side see EOF before it is closed
    return count / seconds


async def main(seconds: float) -> None:
    directory = tempfile.mkdtemp(prefix="mt-bench-", dir="/tmp")
    path = os.path.join(directory, "agent.sock")
    server = ControlServer(path, {"kv.get": echo}, {"tasks"})
    await server.start()
    try:
        client = await ControlClient.connect_unix(path)
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await client.call("kv.get", PARAMS)
            latencies.append(time.perf_counter() - started)
        sequential = len(latencies) / seconds

        count, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await asyncio.gather(*(client.call("kv.get", PARAMS) for _ in range(64)))
            count += 64
        pipelined = count / seconds

        sync_count, sync_deadline = 0, time.perf_counter() + seconds

        def sync_loop() -> int:
            done = 0
            while time.perf_counter() < sync_deadline:
                call_sync(path, "kv.get", PARAMS, 5)
                done += 1
            return done

        sync_count = await asyncio.to_thread(sync_loop)
        sync_rate = sync_count / seconds

        sub = await client.subscribe(["tasks"])
        total = 50_000
        started = time.perf_counter()
        for i in range(total):
            server.publish("tasks", {"kind": "finished", "task": {"id": i}})
            if i % 1000 == 999:
                await asyncio.sleep(0)
        received = 0
        async for event in sub:
            received += 1 if event["event"] == "tasks" else event["data"]["dropped"]
            if received >= total:
                break
        events_rate = total / (time.perf_counter() - started)
        await client.close()

        bare_path = os.path.join(directory, "bare.sock")
        bare = await bare_server(bare_path)
        bare_rate = await bare_calls(bare_path, seconds)
        bare.close()
        await bare.wait_closed()
    finally:
        await server.close()
        shutil.rmtree(directory, ignore_errors=True)

    print(
        f"control sequential : {sequential:9.0f} calls/s  "
        f"p50 {percentile(latencies, 0.5) * 1e6:.0f} us  "
        f"p99 {percentile(latencies, 0.99) * 1e6:.0f} us"
    )
    print(f"control pipelined  : {pipelined:9.0f} calls/s  (64 in flight)")
    print(f"call_sync one-shot : {sync_rate:9.0f} calls/s  (connect+call+close, from a thread)")
    print(f"events             : {events_rate:9.0f} events/s publish -> async for")
    print(f"bare msgpack echo  : {bare_rate:9.0f} calls/s  (comparison: no validation/dispatch)")
    print(f"ratio control/bare : {sequential / bare_rate:9.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    asyncio.run(main(parser.parse_args().seconds))
