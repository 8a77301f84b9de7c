"""``task.submit``'s bounds check has a one-pass fast path (issue 14, session 8):
``submit_rules.submit_ok`` says the usual submit breaks no rule of ``SUBMIT_RULES``
and names no artifact, without a call per rule (every node checks every submit, at
encode on the leader and at decode everywhere).  When it says no, the rules decide.
These tests hold it to the rules: on values at and around every bound (Hypothesis)
the check gives the same verdict and the same reason as the rules alone, and the
fast path never passes a submit the rules refuse."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ProtocolError
from agent.state import builders
from agent.state.commands import (
    _BY_CLASS,
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
    Command,
    check,
    decode_command,
)
from agent.state.ops import TaskSubmit
from agent.state.submit_rules import check_submit as _check_submit
from agent.state.submit_rules import rules_refusal as _rules_refusal
from agent.state.submit_rules import submit_ok as _submit_ok
from agent.state.submit_rules import usual_submit as _usual_submit

by_the_rules = _rules_refusal
"""``_check_submit`` without its fast path: the rule walk it was before it."""


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


# ---------------------------------------------------------------- decoding a submit
# ``commands._usual_submit`` builds a decoded submit's ``TaskSubmit`` without a
# converter call per field when every value has its usual wire type; anything else
# goes to the converters, which name what is wrong.

WIRE: dict[str, st.SearchStrategy[Any]] = {
    # field -> wire values: the usual types, and others the converters convert or refuse
    "argv": st.none() | st.lists(st.text(max_size=3), max_size=3) | st.just([1]) | st.just("x"),
    "shell": st.none() | st.text(max_size=3) | st.just(b"x") | st.just(1),
    "env": st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=2)
    | st.just({"A": 1}) | st.just({1: "a"}) | st.just([]),
    "cwd": st.none() | st.text(max_size=3) | st.just(1),
    "caps": st.lists(st.text(max_size=3), max_size=2) | st.just(("a",)) | st.just([None]),
    "key": st.none() | st.text(max_size=3) | st.just(True),
    "strategy": st.sampled_from(["auction", "hash", "capability", "nope", 1]),
    "priority": st.integers(-3, 3) | st.just(True) | st.just(1.0),
    "retries": st.integers(0, 3) | st.just(False) | st.just(None),
    "timeout": st.none() | st.floats(0.1, 9) | st.integers(1, 9) | st.just(float("nan"))
    | st.just(float("inf")) | st.just(True),
    "restartable": st.booleans() | st.just(1) | st.just(None),
    "submitter": st.text(max_size=3) | st.just(None),
    "mem": st.just(0) | st.just(MIN_TASK_MEM) | st.just(False) | st.just(1.0),
    "pids": st.integers(0, 3) | st.just(True),
    "artifacts": st.lists(st.sampled_from(["a.txt", "b"]), max_size=2) | st.just([1]),
}


@st.composite
def wire_maps(draw: st.DrawFn) -> dict[str, Any]:
    """A decoded submit's map: every field from the handler's usual submit, up to
    three of them set to other wire values, sometimes one missing or one extra."""
    spec = builders.task_spec(argv=["sleep", "1"], env={"A": "1"}, caps=["gpu"], timeout=2.5,
                              submitter="n1")
    m: dict[str, Any] = {f: list(v) if isinstance(v, tuple) else v
                         for f, v in dataclasses.asdict(spec).items()}
    for name in draw(st.lists(st.sampled_from(sorted(WIRE)), max_size=3)):
        m[name] = draw(WIRE[name])
    change = draw(st.sampled_from(["none", "none", "none", "missing", "extra"]))
    if change == "missing":
        del m[draw(st.sampled_from(sorted(m)))]
    elif change == "extra":
        m["surprise"] = 1
    return m


def typed(value: Any) -> Any:
    if isinstance(value, dict):
        return ("dict", [(typed(k), typed(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__name__, [typed(v) for v in value])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, typed(getattr(value, f.name))) for f in dataclasses.fields(value)]
    return (type(value).__name__, repr(value))


@settings(max_examples=400, deadline=None)
@given(wire_maps())
def test_a_decoded_submit_is_what_the_converters_build(m: dict[str, Any]) -> None:
    fast = _usual_submit(dict(m))
    try:
        slow = _BY_CLASS[TaskSubmit].build(dict(m))
    except ProtocolError:
        assert fast is None  # the converters' refusal, with its words, decides
        return
    if fast is not None:
        assert typed(fast) == typed(slow)
    # Through decode_command, both ways, from real bytes: the same command or refusal.
    data = msgpack.packb({"op": "task.submit", "rid": "r", "at": 1.0, **m}, use_bin_type=True)
    reason = check(slow)
    if reason is not None:
        with pytest.raises(ProtocolError, match=re.escape(reason)):
            decode_command(data)
    else:
        assert typed(decode_command(data)) == typed(Command(slow, "r", 1.0))


def test_usual_wire_submits_take_the_fast_path() -> None:
    for spec in (
        builders.task_spec(argv=["sleep", "600"], retries=0, submitter="n1"),
        builders.task_spec(shell="echo hi", env={"A": "1"}, cwd="/tmp", caps=["gpu"], key="k",
                           priority=-3, retries=7, timeout=2.5, restartable=True, submitter="n2"),
    ):
        m = msgpack.unpackb(builders.cmd_task_submit(spec, "r", 1.0), raw=False)
        for name in ("op", "rid", "at"):
            del m[name]
        fast = _usual_submit(m)
        assert fast is not None and typed(fast) == typed(spec)
