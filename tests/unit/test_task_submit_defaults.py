"""``task.submit`` (agent/runtime/tasks.py) skips ``dataclasses.replace`` when a
submit sets no ``mem``, ``pids`` or ``artifacts`` (issue 14, session 7: 3.6 us a task
on the leader): the spec ``builders.task_spec`` made already holds ``TaskSubmit``'s
defaults, of the very types the handler computes (int 0, int 0, an empty tuple), so
the entry's bytes -- and every node's state -- are the same either way."""

from __future__ import annotations

import dataclasses

from agent.state import builders
from agent.state.ops import TaskSubmit


def test_the_defaults_are_what_the_handler_would_set() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(TaskSubmit)}
    for name, value in (("mem", 0), ("pids", 0), ("artifacts", ())):
        assert defaults[name] == value and type(defaults[name]) is type(value), name


def test_a_submit_without_limits_encodes_the_same_without_replace() -> None:
    for spec in (
        builders.task_spec(argv=["true"], submitter="n1"),
        builders.task_spec(shell="echo hi", env={"A": "1"}, cwd="/tmp", caps=["gpu"], key="k",
                           priority=3, retries=0, timeout=2.5, restartable=True, submitter="n2"),
    ):
        replaced = dataclasses.replace(spec, mem=0, pids=0, artifacts=())
        assert replaced == spec
        assert builders.cmd_task_submit(replaced, "rid", 1.0) == builders.cmd_task_submit(spec, "rid", 1.0)
    limited = dataclasses.replace(spec, mem=1 << 20, pids=0, artifacts=())
    assert builders.cmd_task_submit(limited, "rid", 1.0) != builders.cmd_task_submit(spec, "rid", 1.0)
