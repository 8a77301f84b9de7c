"""One-line summaries of commands for the TUI's consensus log."""

from __future__ import annotations

from collections.abc import Callable

from agent.state.commands import (
    Command,
    KvCas,
    KvDelete,
    KvPut,
    NodeDrain,
    NodeRegister,
    NodeUndrain,
    ProposalCreate,
    ProposalVote,
    TaskAssign,
    TaskCancel,
    TaskFailNode,
    TaskFinish,
    TaskLost,
    TaskMigrate,
    TaskStart,
    TaskSubmit,
)

MAX_SUMMARY = 120


def summarize(cmd: Command, name_of: Callable[[str], str]) -> str:
    """E.g. ``kv.put app/db.url (12 B)`` or ``task.assign t3 → web2 (epoch 1)``."""
    b = cmd.body
    match b:
        case KvPut():
            text = f"kv.put {b.ns}/{b.key} ({len(b.value)} B)"
        case KvDelete():
            text = f"kv.delete {b.ns}/{b.key}"
        case KvCas():
            text = f"kv.cas {b.ns}/{b.key} ({len(b.value)} B)"
        case ProposalCreate():
            text = f"proposal.create {b.title!r} (threshold {b.threshold:g})"
        case ProposalVote():
            text = f"proposal.vote #{b.id} {'yes' if b.approve else 'no'} by {name_of(b.voter)}"
        case NodeRegister():
            text = f"node.register {b.name or b.node}"
        case NodeDrain() | NodeUndrain():
            text = f"{b.OP} {name_of(b.node)}"
        case TaskSubmit():
            shown = " ".join(b.argv) if b.argv is not None else b.shell or ""
            text = f"task.submit {shown}"
        case TaskAssign():
            text = f"task.assign {b.task} → {name_of(b.node)} (epoch {b.epoch})"
        case TaskStart():
            text = f"task.start {b.task} on {name_of(b.node)} (epoch {b.epoch})"
        case TaskFinish():
            text = f"task.finish {b.task} exit {b.exit_code} on {name_of(b.node)}"
        case TaskMigrate():
            text = f"task.migrate {b.task} → {name_of(b.to)} ({b.reason})"
        case TaskCancel():
            text = f"task.cancel {b.task}"
        case TaskLost():
            text = f"task.lost {b.task}"
        case TaskFailNode():
            text = f"task.fail_node {name_of(b.node)} ({len(b.targets)} targets)"
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 1] + "…"
