"""A userspace impaired wire: the harness's fallback when the kernel lacks sch_netem.

Theory of operation
-------------------
``tc qdisc ... netem`` needs ``CONFIG_NET_SCH_NETEM``; some CI kernels (this
project's firecracker VMs among them) are built without it.  The harness then
splices this relay between a host's veth and the lab bridge, inside the lab
namespace::

    host eth0 <-> v<i>  [relay]  r<i>a <-> r<i>b (bridge port)

Two ``AF_PACKET`` sockets see every frame on ``v<i>`` and ``r<i>a``.  Frames
leaving the host (read on ``v<i>``) are dropped with probability ``loss`` or
held for ``delay ± jitter`` (uniform, like netem's default) and then written
to ``r<i>a``; frames towards the host pass straight through.  That is netem's
contract: egress impairment of the host's interface.  Jitter reorders
packets, as netem's does.

Both sockets use ``PACKET_VNET_HDR``: each frame carries the kernel's
virtio-net header, so TSO/GSO super-frames and partial checksums from the
veth pass through untouched and the kernel finishes them on transmit (veth
offloads cannot be switched off without ethtool).

Bounded: at most ``MAX_QUEUE`` frames are held (beyond that, frames are
dropped, as a full netem queue does).  Runs until SIGTERM/SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import random
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
MAX_FRAME = 65536 + 64
MAX_QUEUE = 10_000


def open_tap(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


def relay(
    host_if: str, bridge_if: str, delay: float, jitter: float, loss: float, seed: int
) -> None:
    rng = random.Random(seed)
    from_host = open_tap(host_if)
    to_bridge = open_tap(bridge_if)
    held: list[tuple[float, int, bytes]] = []
    seq = 0
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while not stop:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, frame = heapq.heappop(held)
            with contextlib.suppress(OSError):  # like a wire: a refused frame is lost
                to_bridge.send(frame)
        wait = max(0.0, held[0][0] - now) if held else 0.5
        try:
            readable, _, _ = select.select([from_host, to_bridge], [], [], wait)
        except InterruptedError:
            continue
        for sock in readable:
            for _ in range(64):  # bounded batch per wakeup
                try:
                    frame, addr = sock.recvfrom(MAX_FRAME)
                except (BlockingIOError, InterruptedError):
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue  # our own transmissions echoed back
                if sock is to_bridge:
                    with contextlib.suppress(OSError):
                        from_host.send(frame)
                    continue
                if loss > 0 and rng.random() < loss:
                    continue
                if len(held) >= MAX_QUEUE:
                    continue
                hold = max(0.0, delay + rng.uniform(-jitter, jitter))
                seq += 1
                heapq.heappush(held, (time.monotonic() + hold, seq, frame))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host-if", required=True)
    parser.add_argument("--bridge-if", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss-pct", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    args = parser.parse_args(argv)
    relay(
        args.host_if,
        args.bridge_if,
        args.delay_ms / 1000.0,
        args.jitter_ms / 1000.0,
        args.loss_pct / 100.0,
        args.seed,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
