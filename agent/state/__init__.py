"""The replicated state machine: tasks, assignments, KV namespaces, proposals.

``StateMachine.apply(index, data)`` consumes committed entries built with the
``cmd_*`` constructors; ``snapshot()``/``restore()`` move the whole state.
"""

from agent.state.builders import (
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
    "cmd_task_start",
    "cmd_task_submit",
    "decode_command",
    "encode_command",
    "sched_overrides",
    "task_spec",
    "validate_proposal",
]
