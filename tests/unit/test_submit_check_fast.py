"""``task.submit``'s bounds check has a one-pass fast path (issue 14, session 8):
``commands._submit_ok`` says the usual submit breaks no rule of ``_SUBMIT_RULES``
and names no artifact, without a call per rule (every node checks every submit, at
encode on the leader and at decode everywhere).  When it says no, the rules decide.
These tests hold it to the rules: on values at and around every bound (Hypothesis)
the check gives the same verdict and the same reason as the rules alone, and the
fast path never passes a submit the rules refuse."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.output_store import artifact_refusal
from agent.state import builders
from agent.state.commands import (
    _SUBMIT_RULES,
    MAX_ARG_LEN,
    MAX_ARGV,
    MAX_ARTIFACTS,
    MAX_CAPS,
    MAX_ENV,
    MAX_KEY_LEN,
    MAX_NAME_LEN,
    MAX_PRIORITY,
    MAX_RETRIES,
    MAX_TASK_MEM,
    MAX_TASK_PIDS,
    MAX_TIMEOUT,
    MIN_TASK_MEM,
    _check_submit,
    _submit_ok,
    check,
)
from agent.state.ops import TaskSubmit


def by_the_rules(s: TaskSubmit) -> str | None:
    """``_check_submit`` without its fast path (as it was before it)."""
    for broken, reason in _SUBMIT_RULES:
        if broken(s):
            return reason
    for name in s.artifacts:
        refusal = artifact_refusal(name)
        if refusal is not None:
            return refusal
    return None


def around(bound: int) -> st.SearchStrategy[int]:
    return st.sampled_from([bound - 1, bound, bound + 1])


def text(length: st.SearchStrategy[int], alphabet: str = "ab") -> st.SearchStrategy[str]:
    return length.map(lambda n: (alphabet * (n // len(alphabet) + 1))[: max(0, n)])


_small = st.integers(0, 3)
_name = st.one_of(text(_small), text(around(MAX_NAME_LEN)))


def argvs() -> st.SearchStrategy[tuple[str, ...] | None]:
    def make(count: int, last: str) -> tuple[str, ...]:
        return (*["x"] * (count - 1), last) if count else ()

    return st.builds(make, st.one_of(st.sampled_from([0, 1, 2]), around(MAX_ARGV)),
                     st.one_of(text(st.sampled_from([0, 1])), text(around(MAX_ARG_LEN))))


BOUNDS: dict[str, st.SearchStrategy[Any]] = {
    # field -> values at and around its bounds (valid and not), one field changed a time
    "argv": st.none() | argvs(),
    "shell": st.none() | text(st.sampled_from([0, 1])) | text(around(MAX_ARG_LEN)),
    "env": st.one_of(
        st.lists(st.sampled_from(["A", "", "B=1", "C\0", "D"]), max_size=3).map(
            lambda keys: {k: "v" for k in keys}),
        around(MAX_ENV).map(lambda n: {f"K{i}": "v" for i in range(n)}),
    ),
    "cwd": st.none() | text(st.sampled_from([1, 4095, 4096, 4097])),
    "caps": st.one_of(st.lists(_name, max_size=3).map(tuple),
                      around(MAX_CAPS).map(lambda n: ("gpu",) * n)),
    "key": st.none() | text(st.sampled_from([0, 1, MAX_KEY_LEN, MAX_KEY_LEN + 1])),
    "strategy": st.sampled_from(["auction", "hash", "capability", "nope", ""]),
    "priority": st.one_of(_small, around(MAX_PRIORITY), around(-MAX_PRIORITY)),
    "retries": st.one_of(st.sampled_from([-1, 0, 2]), around(MAX_RETRIES)),
    "timeout": st.none() | st.sampled_from([-1.0, 0.0, 0.5, MAX_TIMEOUT, MAX_TIMEOUT + 1]),
    "submitter": _name,
    "mem": st.sampled_from([0, 1, -1, MIN_TASK_MEM - 1, MIN_TASK_MEM, MAX_TASK_MEM,
                            MAX_TASK_MEM + 1]),
    "pids": st.one_of(st.sampled_from([-1, 0, 8]), around(MAX_TASK_PIDS)),
    "artifacts": st.one_of(
        st.lists(st.sampled_from(["out.txt", "a/b", "../x", "/abs", ""]), max_size=2).map(tuple),
        around(MAX_ARTIFACTS).map(lambda n: ("f",) * n),
    ),
}


@st.composite
def submits(draw: st.DrawFn) -> TaskSubmit:
    """A usual submit (argv or shell), with up to two fields set to values at or
    around their bounds (``BOUNDS``)."""
    if draw(st.booleans()):
        spec = builders.task_spec(argv=["sleep", "1"], submitter="n1")
    else:
        spec = builders.task_spec(shell="echo hi", env={"A": "1"}, caps=["gpu"], key="k",
                                  timeout=2.5, submitter="n1")
    for name in draw(st.lists(st.sampled_from(sorted(BOUNDS)), max_size=2)):
        spec = dataclasses.replace(spec, **{name: draw(BOUNDS[name])})
    return spec


@settings(max_examples=400, deadline=None)
@given(submits())
def test_the_fast_path_gives_the_rules_verdict_and_reason(s: TaskSubmit) -> None:
    expected = by_the_rules(s)
    assert _check_submit(s) == expected
    assert check(s) == expected
    if _submit_ok(s):
        assert expected is None


def test_the_usual_submits_take_the_fast_path() -> None:
    for spec in (
        builders.task_spec(argv=["sleep", "600"], retries=0, submitter="n1"),
        builders.task_spec(shell="echo hi", env={"A": "1"}, cwd="/tmp", caps=["gpu"], key="k",
                           priority=-3, retries=7, timeout=2.5, restartable=True, submitter="n2"),
        dataclasses.replace(builders.task_spec(argv=["true"]), mem=MIN_TASK_MEM, pids=64),
    ):
        assert _submit_ok(spec) and _check_submit(spec) is None
    # One artifact to look at: the rules' loop (its own refusals) decides.
    named = dataclasses.replace(builders.task_spec(argv=["true"]), artifacts=("out.txt",))
    assert not _submit_ok(named) and _check_submit(named) is None
