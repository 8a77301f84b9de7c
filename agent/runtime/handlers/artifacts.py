"""``artifact.*`` and ``replicas.prune``: a task's artifacts through any node (issue 17).

``artifact.list`` names the artifacts of one attempt (the latest that has
any, unless ``attempt`` says) with their size, SHA-256 and, for one that
could not be collected, its one-line error; ``artifact.get`` returns one
slice of one (the client pages with ``offset`` and checks the digest); both
read this host's copy or a replica's (``agent/runtime/artifacts.py``).
``replicas.prune`` drops finished output and artifact copies older than
``older_than`` seconds on every live host.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from agent.errors import TaskError
from agent.runtime.handlers.common import param_str
from agent.runtime.ports import Handler
from agent.runtime.replica_messages import ReplicaData
from agent.state.tasks import TaskRecord

GET_LIMIT = 1024 * 1024
"""Bytes one ``artifact.get`` returns at most."""


class ReplicaPort(Protocol):
    """The replicas as the control methods use them (``ReplicaService``)."""

    def task_record(self, task_id: str) -> TaskRecord | None: ...

    async def listing(self, rec: TaskRecord) -> list[dict[str, Any]]: ...

    async def read(
        self, rec: TaskRecord, epoch: int, name: str, offset: int, limit: int
    ) -> ReplicaData | None: ...

    def prune(self, before: float) -> int: ...


def handlers(port: ReplicaPort | None) -> dict[str, Handler]:
    """The methods over ``port`` (None: each refuses, for a node without replicas)."""

    def replicas_here() -> ReplicaPort:
        if port is None:
            raise TaskError("this node keeps no replicas")
        return port

    def record(params: dict[str, Any]) -> TaskRecord:
        task_id = param_str(params, "id", "")
        rec = replicas_here().task_record(task_id)
        if rec is None:
            raise TaskError(f"no task {task_id!r}")
        return rec

    async def artifact_list(params: dict[str, Any]) -> Any:
        rec = record(params)
        rows = [r for r in await replicas_here().listing(rec) if r["name"].startswith("a:")]
        attempt = params.get("attempt")
        epoch = int(attempt) if attempt is not None else max(
            (r["epoch"] for r in rows), default=rec.epoch)
        items = [{**r, "name": r["name"][2:]} for r in rows if r["epoch"] == epoch]
        return {"id": rec.id, "epoch": epoch, "latest": rec.epoch,
                "requested": list(rec.artifacts), "items": items}

    async def artifact_get(params: dict[str, Any]) -> Any:
        rec = record(params)
        name = param_str(params, "name", "")
        offset = int(params.get("offset") or 0)
        if offset < 0:
            raise ValueError("offset must be >= 0")
        attempt = params.get("attempt")
        epoch = int(attempt) if attempt is not None else (await artifact_list(params))["epoch"]
        got = await replicas_here().read(rec, epoch, f"a:{name}", offset, GET_LIMIT)
        if got is None:
            raise TaskError(f"artifact {name!r} of {rec.id} attempt {epoch} is not available "
                            f"on any reachable host")
        if got.error:
            raise TaskError(got.error)
        if not got.complete:
            raise TaskError(f"artifact {name!r} of {rec.id} attempt {epoch}: no complete copy "
                            f"reachable yet")
        end = offset + len(got.data)
        return {"data": got.data, "offset": end, "size": got.size, "sha256": got.sha256,
                "eof": end >= got.size, "epoch": epoch}

    async def prune(params: dict[str, Any]) -> Any:
        older = params.get("older_than")
        if not isinstance(older, (int, float)) or older < 0:
            raise ValueError("older_than must be a number of seconds >= 0")
        before = time.time() - float(older)
        return {"removed": replicas_here().prune(before), "before": before}

    return {
        "artifact.list": artifact_list,
        "artifact.get": artifact_get,
        "replicas.prune": prune,
    }
