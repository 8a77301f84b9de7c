"""etcd's leader failover on this box, the anchor for meshtui's (issue 14).

Three ``etcd`` members on loopback with etcd's default timings (heartbeat
100 ms, election timeout 1 s), each in its own data dir.  Per kill: SIGKILL
the leader, then ``etcdctl put`` to a survivor with a 0.5 s command timeout,
retried at once until it succeeds; the time from the kill to that success.
The killed member is restarted on its data dir and the cluster left to settle.

Bench-only: Debian's ``etcd-server`` and ``etcd-client`` packages
(``apt-get install etcd-server etcd-client``), not a project dependency.  When
``etcd`` is not on PATH the anchor is skipped with a line saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from support.ports import free_port

COMMAND_TIMEOUT = "0.5s"
"""etcdctl's per-attempt timeout: the client retries every 0.5 s at most."""


def available() -> bool:
    return shutil.which("etcd") is not None and shutil.which("etcdctl") is not None


class EtcdCluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.names = ["e1", "e2", "e3"]
        self.peer = {n: free_port() for n in self.names}
        self.client = {n: free_port() for n in self.names}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _argv(self, name: str, state: str) -> list[str]:
        initial = ",".join(f"{n}=http://127.0.0.1:{self.peer[n]}" for n in self.names)
        return [
            "etcd", "--name", name, "--data-dir", str(self.base / name),
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer[name]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[name]}",
            "--listen-client-urls", f"http://127.0.0.1:{self.client[name]}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client[name]}",
            "--initial-cluster", initial, "--initial-cluster-state", state,
            "--initial-cluster-token", "mt-bench", "--log-level", "error",
        ]

    def start(self, name: str, state: str = "new") -> None:
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 (kept by the child)
        self.procs[name] = subprocess.Popen(self._argv(name, state), stdout=log, stderr=log)

    def endpoint(self, name: str) -> str:
        return f"http://127.0.0.1:{self.client[name]}"

    def ctl(self, name: str, *args: str, timeout: str = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run(
            ["etcdctl", "--endpoints", self.endpoint(name), "--command-timeout", timeout, *args],
            capture_output=True, text=True, env=env, timeout=30,
        )

    def leader(self) -> str | None:
        for name in self.names:
            if self.procs[name].poll() is not None:
                continue
            out = self.ctl(name, "endpoint", "status", "-w", "json", timeout="1s")
            if out.returncode != 0:
                continue
            status = json.loads(out.stdout)[0]["Status"]
            if status["header"]["member_id"] == status["leader"]:
                return name
        return None

    def wait_leader(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (leader := self.leader()) is not None:
                return leader
            time.sleep(0.1)
        return None

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def failover(kills: int) -> list[float]:
    """Seconds from each leader SIGKILL to the first ``etcdctl put`` that succeeds."""
    base = Path(tempfile.mkdtemp(prefix="mt-bench-etcd-"))
    cluster = EtcdCluster(base)
    times: list[float] = []
    try:
        for name in cluster.names:
            cluster.start(name)
        for _ in range(kills):
            leader = cluster.wait_leader(60)
            if leader is None:
                break
            time.sleep(2.0)  # a steady cluster, as for meshtui's kills
            survivor = next(n for n in cluster.names if n != leader)
            killed_at = time.monotonic()
            cluster.procs[leader].send_signal(signal.SIGKILL)
            cluster.procs[leader].wait(10)
            while time.monotonic() - killed_at < 30:
                if cluster.ctl(survivor, "put", "failover", "x").returncode == 0:
                    times.append(time.monotonic() - killed_at)
                    break
            else:
                times.append(float("inf"))
            cluster.start(leader, state="existing")
        return times
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
