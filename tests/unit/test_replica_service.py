"""Issue 17: the replica service on one host -- a finished run's artifacts collected
into the store (refusals kept as one-line items), its streams completed with their
digest, and reads and listings served from what is here."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from agent.runtime.artifacts import ReplicaService
from agent.sched import SchedConfig
from agent.state.tasks import TaskRecord


def record(task_id: str, artifacts: list[str]) -> TaskRecord:
    return TaskRecord(task_id, None, "true", {}, None, [], "users", "hash", 0, 0, None, False,
                      "test", 0.0, artifacts=artifacts)


def test_a_finished_run_keeps_its_artifacts_and_output(tmp_path: Path) -> None:
    sent: list[tuple[str, object]] = []
    service = ReplicaService(
        node_id="me", node_name="n1", root=tmp_path / "replicas", members=list,
        sched_config=SchedConfig, send_to_node=lambda n, m: sent.append((n, m)),
        send_to_addr=lambda a, m: None, records=lambda _id: None, artifact_limit=100,
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / "ok.txt").write_bytes(b"fine")
    (work / "big.bin").write_bytes(b"x" * 101)
    capture = tmp_path / "1.out"
    capture.write_bytes(b"hello\n")
    rec = record("t1", ["ok.txt", "big.bin", "gone.txt"])
    service.run_started(rec, 1, lambda stream: capture if stream == "out" else tmp_path / "1.err")

    async def finish() -> list[str]:
        return await service.run_finished(rec, "t1", 1, work, None)

    assert asyncio.run(finish()) == ["me"]  # the only live host
    rows = {r["name"]: r for r in asyncio.run(service.listing(rec))}
    assert rows["a:ok.txt"]["sha256"] == hashlib.sha256(b"fine").hexdigest()
    assert rows["a:big.bin"]["error"] == \
        "artifact 'big.bin': 101 bytes is over the per-artifact limit of 100 bytes"
    assert "no such file" in rows["a:gone.txt"]["error"]
    assert rows["out"]["complete"] and rows["out"]["size"] == 6
    got = asyncio.run(service.read(rec, 1, "a:ok.txt", 0, 10))
    assert got is not None and got.data == b"fine" and got.complete
    assert not service.under_replicated()
    assert not sent  # nobody else to send to
