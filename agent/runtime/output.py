"""Task output for ``meshtui logs``: read from any host, replicated to the hash ring.

When a run finishes, its captured output is pushed (``OutputChunk`` with
request id 0) to the task's preference list on the hash ring — primary plus
two successors — and the replicas are recorded in the committed finish, so a
dead host's results can still be read.  ``read`` serves a slice from this
host's executor or replica copy, else asks the executing host and then each
replica (``OutputRequest``), each within ``runtime.output_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from pathlib import Path
from typing import Any

from agent.errors import SchedulingError, TaskError
from agent.executor import Executor
from agent.output_store import OutputStore
from agent.runtime.messages import OutputChunk, OutputRequest
from agent.runtime.ports import PeerSender, TaskReads
from agent.sched import ClusterSnapshot, preference_list

REPLICA_CHUNK = 512 * 1024
"""Bytes per pushed output replica chunk."""


class TaskOutput:
    def __init__(
        self,
        *,
        node_id: str,
        executor: Executor,
        replica_dir: Path,
        tasks: TaskReads,
        peers: PeerSender,
        timeout: float = 3.0,
    ) -> None:
        """``tasks``: the replicated task records (where a run is, its replicas);
        ``peers``: sending to other hosts."""
        self._node_id = node_id
        self._timeout = timeout
        """Seconds to wait for each replica's chunk (runtime.output_timeout)."""
        self._tasks = tasks
        self._peers = peers
        self.executor = executor
        self.replica_dir = replica_dir
        self._replicas = OutputStore(replica_dir)
        self._out_ids = itertools.count(1)
        self._out_waiters: dict[int, asyncio.Future[OutputChunk]] = {}

    def replicate(self, task_id: str, epoch: int, snap: ClusterSnapshot) -> list[str]:
        """Push the run's output to the hash ring's preference list (primary + 2)."""
        try:
            replicas = preference_list(task_id, snap, None, 3)
        except (SchedulingError, ValueError):
            return []
        for node in replicas:
            if node == self._node_id:
                continue
            for stream in ("out", "err"):
                offset = 0
                while True:
                    try:
                        data, new_offset, eof = self.executor.read_output(
                            task_id, epoch, stream, offset, REPLICA_CHUNK
                        )
                    except TaskError:
                        break
                    self._peers.send_to_node(
                        node, OutputChunk(0, task_id, epoch, stream, offset, data, eof, True)
                    )
                    offset = new_offset
                    if eof or not data:
                        break
        return list(replicas)

    def on_message(self, from_addr: str, msg: object) -> None:
        if isinstance(msg, OutputRequest):
            chunk = self._read_local(msg.task_id, msg.epoch, msg.stream, msg.offset, msg.limit)
            reply = OutputChunk(msg.request_id, msg.task_id, msg.epoch, msg.stream,
                                chunk[1], chunk[0], chunk[2], chunk[3])
            self._peers.send_to_addr(from_addr, reply)
        elif isinstance(msg, OutputChunk):
            if msg.request_id == 0:
                self._store_replica(msg)
                return
            fut = self._out_waiters.get(msg.request_id)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def _store_replica(self, msg: OutputChunk) -> None:
        with contextlib.suppress(TaskError, OSError):  # a bad id or a full disk: no copy
            self._replicas.write_at(msg.task_id, msg.epoch, msg.stream, msg.offset, msg.data)

    def _read_local(
        self, task_id: str, epoch: int, stream: str, offset: int, limit: int
    ) -> tuple[bytes, int, bool, bool]:
        """(data, new offset, eof, found) from our executor or our replica copy."""
        limit = max(1, min(limit, REPLICA_CHUNK))
        try:
            data, new_offset, eof = self.executor.read_output(
                task_id, epoch, stream, offset, limit  # type: ignore[arg-type]
            )
            return data, new_offset, eof, True
        except TaskError:
            pass
        try:
            data, new_offset, size = self._replicas.read(task_id, epoch, stream, offset, limit)
        except (OSError, TaskError):
            return b"", offset, True, False
        return data, new_offset, new_offset >= size, True

    async def read(self, task_id: str, stream: str, offset: int) -> dict[str, Any]:
        rec = self._tasks.task_record(task_id)
        if rec is None:
            raise TaskError(f"no task {task_id}")
        if rec.epoch == 0 or (rec.node is None and not rec.replicas):
            return {"data": b"", "offset": offset, "eof": True}
        data, new_offset, eof, found = self._read_local(task_id, rec.epoch, stream, offset, 65536)
        if found:
            return {"data": data, "offset": new_offset, "eof": eof and not self._live(rec)}
        for node in [n for n in [rec.node, *rec.replicas] if n and n != self._node_id]:
            request_id = next(self._out_ids)
            fut: asyncio.Future[OutputChunk] = asyncio.get_running_loop().create_future()
            self._out_waiters[request_id] = fut
            self._peers.send_to_node(
                node, OutputRequest(request_id, task_id, rec.epoch, stream, offset, 65536)
            )
            try:
                chunk = await asyncio.wait_for(fut, self._timeout)
            except TimeoutError:
                continue
            finally:
                self._out_waiters.pop(request_id, None)
            if chunk.found:
                return {"data": chunk.data, "offset": chunk.offset + len(chunk.data),
                        "eof": chunk.eof and not self._live(rec)}
        if self._live(rec):
            return {"data": b"", "offset": offset, "eof": True}
        raise TaskError(f"output of {task_id} is not available on any reachable host")

    @staticmethod
    def _live(rec: Any) -> bool:
        return rec.state in ("assigned", "running")
