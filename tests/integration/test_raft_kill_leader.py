"""Issue 4: 3 real agents under a write load; SIGKILL the leader 10 times in a row.

Every acknowledged write must survive and the whole KV history (client
threads' puts and gets plus final reads from every node) must be
linearizable.  A put whose reply was lost (error, timeout) may or may not
have happened: it enters the history with an unknown outcome.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from pathlib import Path

import pytest
from sim.linearizability import UNKNOWN, Operation, check_kv
from support.wait import wait_until

from meshtui.client import ClientError, call_sync
from meshtui.demo import LocalMesh

pytestmark = pytest.mark.timeout(300)

KEYS = [f"k{i}" for i in range(4)]
KILLS = 10


def leader_of(mesh: LocalMesh) -> str | None:
    for node in mesh.nodes:
        if not node.running:
            continue
        try:
            status = call_sync(node.socket_path, "status", {}, 1.0)
        except ClientError:
            continue
        leader = status["consensus"]["leader"]
        if leader and status["consensus"]["role"] in ("leader", "voter"):
            return str(leader)
    return None


def wait_writable(mesh: LocalMesh, timeout: float, what: str) -> None:
    """Wait until a probe write through some running node commits."""
    probe = itertools.count()

    def accepts_a_write() -> bool:
        for node in mesh.nodes:
            if not node.running:
                continue
            try:
                call_sync(node.socket_path, "kv.put",
                          {"ns": "probe", "key": "p", "value": str(next(probe)).encode()}, 2.0)
                return True
            except ClientError:
                continue
        return False

    wait_until(what, accepts_a_write, timeout, 0.1, detail=lambda: describe(mesh))


def describe(mesh: LocalMesh) -> str:
    """Each node's consensus view, for failure messages."""
    lines = []
    for node in mesh.nodes:
        try:
            cons = call_sync(node.socket_path, "status", {}, 1.0)["consensus"]
            lines.append(f"{node.name}: {cons}")
        except ClientError as exc:
            lines.append(f"{node.name}: {exc}")
    return "; ".join(lines)


def final_read(sock: str, key: str) -> dict[str, object]:
    """A linearizable read, retried while a just-restarted node catches up (bounded)."""
    for _ in range(50):
        try:
            return dict(call_sync(sock, "kv.get", {"ns": "t", "key": key}, 5.0))
        except ClientError:
            time.sleep(0.2)
    return dict(call_sync(sock, "kv.get", {"ns": "t", "key": key}, 5.0))


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clock = itertools.count(1)
        self.ops: list[Operation] = []
        self.acked_puts = 0

    def now(self) -> float:
        with self.lock:
            return float(next(self.clock))

    def add(self, op: Operation) -> None:
        with self.lock:
            self.ops.append(op)


def client(cid: int, mesh: LocalMesh, rec: Recorder, stop: threading.Event) -> None:
    rng = random.Random(cid)
    values = itertools.count()
    while not stop.is_set():
        node = rng.choice(mesh.nodes)
        key = rng.choice(KEYS)
        if rng.random() < 0.6:
            value = f"c{cid}-{next(values)}"
            call = rec.now()
            try:
                call_sync(node.socket_path, "kv.put",
                          {"ns": "t", "key": key, "value": value.encode(),
                           "rid": f"{cid}-{value}"}, 3.0)
            except ClientError:
                rec.add(Operation(cid, key, "put", (value,), UNKNOWN, call, math.inf))
                time.sleep(0.05)
                continue
            rec.add(Operation(cid, key, "put", (value,), None, call, rec.now()))
            with rec.lock:
                rec.acked_puts += 1
        else:
            call = rec.now()
            try:
                got = call_sync(node.socket_path, "kv.get", {"ns": "t", "key": key}, 3.0)
            except ClientError:
                time.sleep(0.05)
                continue
            ret = rec.now()
            value_out = got["value"].decode() if got["found"] else None
            rec.add(Operation(cid, key, "get", (), value_out, call, ret))


def test_kill_leader_ten_times_no_acknowledged_write_lost(tmp_path: Path) -> None:
    mesh = LocalMesh(3, base_dir=tmp_path)
    mesh.start()
    rec = Recorder()
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(c, mesh, rec, stop)) for c in range(4)]
    try:
        assert mesh.wait_ready(20)
        assert mesh.wait_voters(3, 30), f"never reached 3 voters: {describe(mesh)}"
        wait_writable(mesh, 30, "the cluster to accept a write")
        for t in threads:
            t.start()
        kills = 0
        while kills < KILLS:
            time.sleep(1.0)
            leader = leader_of(mesh)
            if leader is None:
                continue
            mesh.kill(leader)
            kills += 1
            wait_writable(mesh, 20, f"a new leader to accept a write after kill {kills}")
            mesh.restart(leader)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=10)
        wait_writable(mesh, 20, "the cluster to accept a write after the last restart")
        assert mesh.wait_ready(20)  # the last restarted node answers again
        # Final linearizable reads from every node close the history.
        for node in mesh.nodes:
            for key in KEYS:
                call = rec.now()
                got = final_read(node.socket_path, key)
                value = got["value"].decode() if got["found"] else None  # type: ignore[attr-defined]
                rec.add(Operation(99, key, "get", (), value, call, rec.now()))
    finally:
        stop.set()
        mesh.stop()
    assert rec.acked_puts > 50, f"too little load to mean anything ({rec.acked_puts} acked puts)"
    problems = check_kv(rec.ops)
    assert problems == [], problems
