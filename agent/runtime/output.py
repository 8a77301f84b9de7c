"""Task output for ``meshtui logs``: read from any host, any attempt, while it runs.

Each run's stdout/stderr is replicated while it runs to the preference list
of the task's ring key (``artifacts.py``/``replication.py``), so ``read`` --
one slice of one attempt (``epoch``, the current one by default) -- is
served from this host's executor or replica copy, else from the fullest copy
a live holder has.  The answer says which attempt it is and whether it ended
(``eof``): an attempt ends when its copy is complete, or once the task has
moved past it (its host died and the task runs again under a newer epoch, or
it finished) and everything a replica got of it has been read.  So
``logs --follow`` pinned to an attempt goes on through a replica when the
host running it dies, and the next attempt's output never mixes into it.

``OutputRequest``/``OutputChunk`` (112/113) are still answered and stored for
agents of the previous version, which pushed a finished run's output that way.
"""

from __future__ import annotations

import contextlib
from typing import Any

from agent.errors import TaskError
from agent.executor import Executor
from agent.output_store import OutputStore, check_stream
from agent.runtime.artifacts import ReplicaService
from agent.runtime.messages import OutputChunk, OutputRequest
from agent.runtime.ports import PeerSender, TaskReads

READ_LIMIT = 64 * 1024
"""Bytes one ``task.logs`` call returns at most."""


class TaskOutput:
    def __init__(
        self,
        *,
        executor: Executor,
        replicas: ReplicaService,
        tasks: TaskReads,
        peers: PeerSender,
    ) -> None:
        """``tasks``: the replicated task records; ``replicas``: copies here and remote."""
        self._tasks = tasks
        self._peers = peers
        self._replicas = replicas
        self.executor = executor
        self._legacy = OutputStore(replicas.store.root)

    # ------------------------------------------------------------ the previous protocol

    def on_message(self, from_addr: str, msg: object) -> None:
        if isinstance(msg, OutputRequest):
            data, offset, eof, found = self._read_executor(
                msg.task_id, msg.epoch, msg.stream, msg.offset, min(msg.limit, READ_LIMIT))
            self._peers.send_to_addr(from_addr, OutputChunk(
                msg.request_id, msg.task_id, msg.epoch, msg.stream, offset, data, eof, found))
        elif isinstance(msg, OutputChunk) and msg.request_id == 0:
            with contextlib.suppress(TaskError, OSError):  # a bad id or a full disk: no copy
                self._legacy.write_at(msg.task_id, msg.epoch, msg.stream, msg.offset, msg.data)

    def _read_executor(
        self, task_id: str, epoch: int, stream: str, offset: int, limit: int
    ) -> tuple[bytes, int, bool, bool]:
        """(data, new offset, eof, found) from this host's executor capture."""
        try:
            data, new_offset, eof = self.executor.read_output(
                task_id, epoch, check_stream(stream), offset, max(1, limit)
            )
        except TaskError:
            return b"", offset, True, False
        return data, new_offset, eof, True

    # ------------------------------------------------------------ reads

    async def read(
        self, task_id: str, stream: str, offset: int, epoch: int | None = None
    ) -> dict[str, Any]:
        """One slice of attempt ``epoch`` (default: the current one) of ``stream``."""
        rec = self._tasks.task_record(task_id)
        if rec is None:
            raise TaskError(f"no task {task_id}")
        epoch = rec.epoch if epoch is None else epoch
        if epoch < 0 or epoch > rec.epoch:
            raise TaskError(f"task {task_id} has no attempt {epoch} (latest {rec.epoch})")
        running = rec.state in ("assigned", "running") and rec.epoch == epoch
        reply = {"offset": offset, "epoch": epoch, "latest": rec.epoch, "state": rec.state}
        if epoch == 0:
            return {**reply, "data": b"", "eof": not running}
        if self.executor.running().get(task_id) == epoch:
            data, new_offset, eof, _ = self._read_executor(task_id, epoch, stream, offset,
                                                           READ_LIMIT)
            return {**reply, "data": data, "offset": new_offset, "eof": eof}
        got = await self._replicas.read(rec, epoch, stream, offset, READ_LIMIT)
        if got is None:
            data, new_offset, eof, found = self._read_executor(task_id, epoch, stream, offset,
                                                               READ_LIMIT)
            if not found:
                data, new_offset, eof, found = self._read_legacy(task_id, epoch, stream, offset)
            if found:
                return {**reply, "data": data, "offset": new_offset, "eof": eof and not running}
            if running:
                return {**reply, "data": b"", "eof": False}
            raise TaskError(f"output of {task_id} attempt {epoch} is not available on any "
                            f"reachable host")
        end = offset + len(got.data)
        ended = got.complete or not (running or got.live)
        return {**reply, "data": got.data, "offset": end, "eof": ended and end >= got.size}

    def _read_legacy(
        self, task_id: str, epoch: int, stream: str, offset: int
    ) -> tuple[bytes, int, bool, bool]:
        try:
            data, new_offset, size = self._legacy.read(task_id, epoch, stream, offset,
                                                       READ_LIMIT)
        except (OSError, TaskError):
            return b"", offset, True, False
        return data, new_offset, new_offset >= size, True
