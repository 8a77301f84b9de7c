"""Finding candidate peers: mDNS (python-zeroconf) and seeds.

Discovery only *proposes* addresses. A candidate becomes a member only after
an authenticated push-pull join over sealed TCP (the SWIM core admits members
from PushPull messages alone, and the transport drops anything not sealed
with a cluster key).  So a host with another key can be discovered here but
is never admitted; the transport counts its rejected packets.

Retries never stop.  Every ``rejoin_interval`` (capped exponential backoff
that resets when a candidate we are not connected to appears) the runtime
asks ``pending()`` for candidates that are not alive members and joins them.
That is how the two halves of a healed partition find each other with no
operator: each side still remembers the other's addresses from mDNS, seeds
or the dead-member list, and keeps knocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

SERVICE_TYPE = "_mesh-agent._tcp.local."
"""The mDNS service type every agent registers and browses."""

SEED_RESOLVE_TIMEOUT = 2.0
"""Seconds a DNS lookup of a seed may take before it is retried later."""


def cluster_hash(cluster: str) -> str:
    """What mDNS advertises instead of the cluster name (and never the key)."""
    return hashlib.sha256(b"meshtui-cluster:" + cluster.encode()).hexdigest()[:16]


@dataclass(slots=True)
class CandidateSet:
    """Addresses worth joining, with where each came from (``seed``/``mdns``/``peer``)."""

    sources: dict[str, str] = field(default_factory=dict)

    def add(self, addr: str, source: str) -> bool:
        fresh = addr not in self.sources
        self.sources.setdefault(addr, source)
        return fresh

    def discard(self, addr: str) -> None:
        self.sources.pop(addr, None)

    def pending(self, connected: Iterable[str]) -> list[str]:
        live = set(connected)
        return sorted(a for a in self.sources if a not in live)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Capped exponential backoff: base·2^attempt, at most ``cap`` seconds."""
    return float(min(cap, base * (2 ** min(attempt, 30))))


class Discovery:
    """mDNS registration + browsing and seed resolution, feeding a CandidateSet."""

    def __init__(
        self,
        *,
        node_id: str,
        cluster: str,
        version: str,
        advertise_host: str,
        port: int,
        seeds: Iterable[str],
        use_mdns: bool,
        self_addrs: Iterable[str],
        on_candidate: Callable[[str], None],
    ) -> None:
        self.node_id = node_id
        self.cluster_hash = cluster_hash(cluster)
        self.version = version
        self.advertise_host = advertise_host
        self.port = port
        self.seeds = list(seeds)
        self.use_mdns = use_mdns
        self.self_addrs = set(self_addrs)
        self.on_candidate = on_candidate
        self.candidates = CandidateSet()
        self._zc: Any = None
        self._info: Any = None
        self._browser: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._resolving: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        for seed in self.seeds:
            self._tasks.append(asyncio.create_task(self._resolve_seed_forever(seed)))
        if self.use_mdns:
            await self._start_mdns()

    async def close(self) -> None:
        tasks = [*self._tasks, *self._resolving.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._zc is not None:
            with contextlib.suppress(Exception):
                await self._zc.async_close()
            self._zc = None

    def _propose(self, addr: str, source: str) -> None:
        if addr in self.self_addrs:
            return
        if self.candidates.add(addr, source):
            log.info("discovered candidate %s via %s", addr, source)
        self.on_candidate(addr)

    async def _resolve_seed_forever(self, seed: str) -> None:
        """Seeds may be DNS names; re-resolve them periodically (addresses change)."""
        host, _, port = seed.rpartition(":")
        host = host.strip("[]")
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
                # cancel from close() (CPython gh-86296) and this loop would live on.
                async with asyncio.timeout(SEED_RESOLVE_TIMEOUT):
                    infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
                for info in infos:
                    ip = str(info[4][0])
                    addr = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                    self._propose(addr, "seed")
                attempt = 0
                await asyncio.sleep(60.0)
            except (OSError, TimeoutError) as exc:
                delay = backoff_delay(attempt, 0.5, 30.0)
                log.warning("seed %s: cannot resolve (%s); retrying in %.1fs", seed, exc, delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def _start_mdns(self) -> None:
        # zeroconf is imported here, not at module top: the CLI and tests that
        # never touch mDNS should not pay ~150 ms for it.
        from zeroconf import IPVersion, ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        addresses = [socket.inet_aton(self.advertise_host)] if _is_ipv4(self.advertise_host) else []
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.node_id}.{SERVICE_TYPE}",
            port=self.port,
            addresses=addresses or None,
            properties={
                "id": self.node_id,
                "cluster": self.cluster_hash,
                "port": str(self.port),
                "ver": self.version,
            },
            server=f"mesh-{self.node_id[:12]}.local.",
        )
        try:
            await self._zc.async_register_service(self._info, allow_name_change=True)
        except Exception as exc:  # zeroconf raises several unrelated types here
            log.error("mDNS registration failed (%s); continuing with seeds only", exc)

        def on_change(
            zeroconf: Any, service_type: str, name: str, state_change: Any
        ) -> None:
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
                # Bounded: one resolve per service name at a time.
                if name in self._resolving:
                    return
                task = asyncio.create_task(self._resolve(service_type, name))
                self._resolving[name] = task
                task.add_done_callback(functools.partial(self._resolved, name))

        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, [SERVICE_TYPE], handlers=[on_change]
        )

    def _resolved(self, name: str, _task: asyncio.Task[None]) -> None:
        self._resolving.pop(name, None)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, 3000):
            return
        props = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else ""
            )
            for k, v in (info.properties or {}).items()
        }
        if props.get("id") == self.node_id:
            return
        if props.get("cluster") != self.cluster_hash:
            return  # another cluster's advert
        for ip in info.parsed_addresses():
            if _is_ipv4(ip):
                self._propose(f"{ip}:{info.port}", "mdns")


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return host.count(".") == 3
