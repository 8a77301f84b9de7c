"""The replicated state machine: tasks, assignments, KV namespaces, proposals.

``StateMachine.apply(index, data) -> ApplyResult(ok, value, error, events)``
consumes committed entries built with the ``cmd_*`` constructors (``b""`` is a
no-op); ``snapshot()``/``restore()`` move the whole state.  Results (``value``)
per op -- the control API returns them as they are:

================  =========================================================
kv.put            ``{index}``
kv.delete         ``{index, deleted}``
kv.cas            ``{index, ok}``
kv.put_ttl        ``{index, expires_at}`` (the command's ``at`` + ``ttl_ms``)
kv.expire         ``{index, expired}`` (the named keys still due at its ``at``)
proposal.create   ``{id}`` (int; refused if ``validate_proposal`` objects)
proposal.vote     ``{tally: {yes, no, eligible, voters, participation, state}}``
node.register     ``{}``;  node.drain / node.undrain (id or name): ``{node}``
task.submit       ``{id}`` ("t1", "t2", ...)
task.assign       ``{task, epoch}`` -- epoch must be the task's epoch + 1
task.place        ``{placed, refused: [[task, reason], ...]}`` -- a round's
                  assignments in one entry, each fenced as ``task.assign``
batch             ``[[ok, value, error], ...]`` -- each command applied as its own
                  entry would be (rid, result, events)
task.start        ``{task, epoch}``;  task.finish: ``{task, state}``
task.migrate      ``{task, epoch}`` (the new epoch)
task.cancel       ``{}``;  task.lost: ``{task}``
task.fail_node    ``{moved, requeued, lost}``
================  =========================================================

Rejections are ``ok=False`` with a one-line ``error`` ("stale epoch", "unknown
task t9", ...).  ``events`` are ``{"topic": "tasks"|"migrations"|"consensus",
"data": {...}}`` in the control API's shapes; task kinds are submitted,
assigned, started, finished, cancelled, lost and requeued (back to the queue
after a failed run or a lost host).
"""

from agent.state.builders import (
    cmd_batch,
    cmd_kv_cas,
    cmd_kv_delete,
    cmd_kv_put,
    cmd_node_drain,
    cmd_node_register,
    cmd_node_undrain,
    cmd_proposal_create,
    cmd_proposal_vote,
    cmd_task_assign,
    cmd_task_cancel,
    cmd_task_fail_node,
    cmd_task_finish,
    cmd_task_lost,
    cmd_task_migrate,
    cmd_task_place,
    cmd_task_start,
    cmd_task_submit,
    task_spec,
)
from agent.state.commands import Command, TaskStats, TaskSubmit, decode_command, encode_command
from agent.state.kv import KvEntry
from agent.state.machine import MAX_RIDS, ApplyResult, StateMachine
from agent.state.proposals import Proposal, sched_overrides, validate_proposal
from agent.state.tasks import TERMINAL, TaskRecord

__all__ = [
    "MAX_RIDS",
    "TERMINAL",
    "ApplyResult",
    "Command",
    "KvEntry",
    "Proposal",
    "StateMachine",
    "TaskRecord",
    "TaskStats",
    "TaskSubmit",
    "cmd_batch",
    "cmd_kv_cas",
    "cmd_kv_delete",
    "cmd_kv_put",
    "cmd_node_drain",
    "cmd_node_register",
    "cmd_node_undrain",
    "cmd_proposal_create",
    "cmd_proposal_vote",
    "cmd_task_assign",
    "cmd_task_cancel",
    "cmd_task_fail_node",
    "cmd_task_finish",
    "cmd_task_lost",
    "cmd_task_migrate",
    "cmd_task_place",
    "cmd_task_start",
    "cmd_task_submit",
    "decode_command",
    "encode_command",
    "sched_overrides",
    "task_spec",
    "validate_proposal",
]
