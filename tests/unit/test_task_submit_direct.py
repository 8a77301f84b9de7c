"""A Raft leader's ``task.submit`` goes straight to its group commit with its decoded
command (issue 14, session 8): ``agent/runtime/tasks.py`` hands the driver the bytes
and, when ``commands.submit_decodes_to_itself`` says the ``TaskSubmit`` is exactly
what those bytes decode to, the ``Command``, so the leader applies it without
decoding its own entry.  ``==`` cannot decide "exactly": ``1 == 1.0 == True`` and a
str subclass equals its str, so the check is by type.  These tests hold the fast
path to the slow one: the same decoded values of the same types (samples and
Hypothesis), the same state and snapshot bytes on the leader as on a follower that
decodes every entry, the same refusals; and ``task.submit_many`` still answers a
task refused at the call with a row of its own."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_consensus_group_commit import WAIT, leading

from agent.errors import ProtocolError
from agent.raft.messages import EntryKind
from agent.runtime.handlers import METHOD_PARAMS
from agent.runtime.sched_submit import submit_many
from agent.runtime.tasks import DirectSubmit, TaskRuntime
from agent.state import builders
from agent.state.commands import (
    Command,
    decode_command,
    encode_command,
    submit_decodes_to_itself,
)
from agent.state.machine import ApplyResult, StateMachine
from agent.state.ops import TaskSubmit


class Text(str):
    """A str subclass: equal to its str, not of its type."""


def typed(value: Any) -> Any:
    """``value`` with every type spelled out, so equal values of other types differ."""
    if isinstance(value, dict):
        return ("dict", type(value).__name__, [(typed(k), typed(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__name__, [typed(v) for v in value])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,
                [(f.name, typed(getattr(value, f.name))) for f in dataclasses.fields(value)])
    return (type(value).__name__, value)


def round_trip(spec: TaskSubmit, rid: str = "r1", at: float = 1.5) -> Command:
    return decode_command(encode_command(spec, rid, at))


USUAL = [
    builders.task_spec(argv=["sleep", "600"], retries=0, submitter="n1"),
    builders.task_spec(shell="echo hi", env={"A": "1"}, cwd="/tmp", caps=["gpu"], key="k",
                       priority=-3, retries=7, timeout=2.5, restartable=True, submitter="n2"),
    dataclasses.replace(builders.task_spec(argv=["true"], submitter="n3"),
                        mem=1 << 20, pids=64, artifacts=("out.txt",)),
]


@pytest.mark.parametrize("spec", USUAL)
def test_the_usual_submits_decode_to_themselves_and_the_check_says_so(spec: TaskSubmit) -> None:
    assert submit_decodes_to_itself(spec)
    data, decoded = builders.task_submit_decoded(spec, "r1", 1.5)
    assert data == builders.cmd_task_submit(spec, "r1", 1.5)
    assert decoded is not None and typed(decoded) == typed(decode_command(data))


INEXACT: list[dict[str, Any]] = [
    {"priority": True},            # == 1
    {"retries": 2.0},              # == 2
    {"timeout": 3},                # == 3.0
    {"timeout": True},
    {"restartable": 1},            # == True
    {"mem": True},
    {"pids": 0.0},
    {"argv": ["sleep", "1"]},      # a list: decoding gives a tuple
    {"argv": ("sleep", Text("1"))},
    {"shell": Text("echo")},
    {"env": {"A": Text("1")}},
    {"env": {Text("A"): "1"}},
    {"caps": ["gpu"]},
    {"caps": (Text("gpu"),)},
    {"key": Text("k")},
    {"strategy": Text("auction")},
    {"submitter": Text("n1")},
    {"cwd": Text("/tmp")},
    {"artifacts": ["out.txt"]},
]


@pytest.mark.parametrize("change", INEXACT, ids=[next(iter(c)) for c in INEXACT])
def test_a_value_equal_but_of_another_type_is_not_exact(change: dict[str, Any]) -> None:
    base = builders.task_spec(argv=["sleep", "1"], shell=None, submitter="n1")
    if "shell" in change:
        base = builders.task_spec(shell="echo", submitter="n1")
    spec = dataclasses.replace(base, **change)
    assert not submit_decodes_to_itself(spec)
    try:
        data, decoded = builders.task_submit_decoded(spec, "r1", 1.5)
    except ProtocolError:
        return  # refused at encode, as before: nothing proposed
    assert decoded is None  # the leader decodes its entry, as a follower does
    assert typed(decode_command(data)) != typed(Command(spec, "r1", 1.5))  # not the same


def test_a_non_float_time_is_not_exact() -> None:
    data, decoded = builders.task_submit_decoded(USUAL[0], "r1", 2)  # type: ignore[arg-type]
    assert decoded is None and decode_command(data).at == 2.0


def test_the_check_covers_every_field() -> None:
    # commands.py refuses to import if TaskSubmit gains a field the check does not know.
    names = {f.name for f in dataclasses.fields(TaskSubmit)}
    assert names == set(dataclasses.asdict(USUAL[1]))


_text = st.text(min_size=1, max_size=8)
_name = _text.filter(lambda k: "=" not in k and "\0" not in k)

PERTURB: list[tuple[str, Any]] = [
    # (field, what makes its value an equal (or alike) value of another type)
    ("argv", lambda v: list(v) if v else v),
    ("argv", lambda v: (Text(v[0]), *v[1:]) if v else v),
    ("shell", lambda v: Text(v) if v else v),
    ("env", lambda v: {Text(k): x for k, x in v.items()}),
    ("env", lambda v: {k: Text(x) for k, x in v.items()}),
    ("cwd", lambda v: Text(v) if v else v),
    ("caps", list),
    ("key", lambda v: Text(v) if v else v),
    ("strategy", Text),
    ("priority", float),
    ("priority", lambda v: v == 1),
    ("retries", float),
    ("timeout", lambda v: round(v) if v else v),
    ("timeout", lambda v: True if v else v),
    ("restartable", int),
    ("submitter", Text),
    ("mem", lambda v: bool(v)),
    ("pids", float),
    ("artifacts", list),
]


@st.composite
def specs(draw: st.DrawFn) -> TaskSubmit:
    """A valid ``TaskSubmit`` as the handler makes it, half of them with one field
    changed to an equal or alike value of another type (``PERTURB``)."""
    shell = draw(st.booleans())
    spec = TaskSubmit(
        argv=None if shell else tuple(draw(st.lists(_text, min_size=1, max_size=3))),
        shell=draw(_text) if shell else None,
        env=draw(st.dictionaries(_name, _text, max_size=2)),
        cwd=draw(st.none() | _text),
        caps=tuple(draw(st.lists(_text, max_size=2))),
        key=draw(st.none() | _text),
        strategy=draw(st.sampled_from(["auction", "hash", "capability"])),
        priority=draw(st.integers(-5, 5)),
        retries=draw(st.integers(0, 3)),
        timeout=draw(st.none() | st.floats(0.5, 9)),
        restartable=draw(st.booleans()),
        submitter=draw(_text),
        mem=draw(st.sampled_from([0, 1 << 20])),
        pids=draw(st.integers(0, 9)),
        artifacts=tuple(draw(st.lists(st.sampled_from(["a.txt", "out/b"]), max_size=2))),
    )
    change = draw(st.none() | st.sampled_from(PERTURB))
    if change is None:
        return spec
    name, alike = change
    return dataclasses.replace(spec, **{name: alike(getattr(spec, name))})


@settings(max_examples=300, deadline=None)
@given(specs())
def test_exact_means_the_decoded_form_is_the_same_values_of_the_same_types(spec: TaskSubmit) -> None:
    try:
        data, decoded = builders.task_submit_decoded(spec, "r1", 1.5)
    except ProtocolError:
        return  # refused: no entry, the fast path never runs
    slow = decode_command(data)
    if decoded is not None:
        assert typed(decoded) == typed(slow)
    # And the other way: whenever the round trip gives back the very same values and
    # types, the check says so (the fast path is not needlessly lost).
    if typed(Command(spec, "r1", 1.5)) == typed(slow):
        assert decoded is not None


# ---------------------------------------------------------------- a real leader


def handlers_over(consensus: Any, committed: list[bytes]) -> dict[str, Any]:
    runtime = SimpleNamespace(
        _consensus=consensus, _name="n1",
        executor=SimpleNamespace(check_limits=lambda mem, pids: None if mem < (1 << 40) else "no"),
    )
    runtime._submit_spec = lambda params: TaskRuntime._submit_spec(runtime, params)  # type: ignore[arg-type]

    async def commit(command: bytes) -> ApplyResult:
        committed.append(command)
        return ApplyResult(True, {"id": "t?"}, None)

    async def read(params: dict[str, Any]) -> None:
        return None

    return TaskRuntime.handlers(runtime, commit, read)  # type: ignore[arg-type]


def replayed(driver: Any) -> StateMachine:
    """A follower's state: every committed entry decoded and applied, nothing kept."""
    follower = StateMachine()
    log = driver._node.log
    for entry in log.slice(log.first_index(), log.committed + 1):
        if entry.kind == EntryKind.NORMAL:
            follower.apply(entry.index, entry.data, answer=False)
        else:
            follower.applied_index = entry.index
    return follower


PARAMS: list[dict[str, Any]] = [
    {"argv": ["sleep", "600"], "rid": "a-1", "retries": 0},
    {"shell": "echo hi", "env": {"A": "1"}, "caps": ["gpu"], "priority": 3, "timeout": 2.5,
     "restartable": True, "rid": "a-2"},
    {"argv": ["true"], "mem": 1 << 20, "pids": 8, "artifacts": ["out.txt"], "rid": "a-3"},
    {"argv": ["true"], "rid": "a-1"},  # a retried rid: the first answer again
]


def test_a_leader_applies_its_submits_decoded_and_its_state_is_a_followers(tmp_path: Path) -> None:
    async def run() -> None:
        driver = await leading(tmp_path)
        try:
            assert isinstance(driver, DirectSubmit)
            committed: list[bytes] = []
            submit = handlers_over(driver, committed)["task.submit"]
            calls = [submit(dict(p)) for p in PARAMS]
            with pytest.raises(ProtocolError, match="strategy must be one of"):  # as before
                submit({"argv": ["true"], "strategy": "nope", "rid": "a-4"})
            queued = [d for _, _, d, _ in driver._queued_writes]
            assert len(queued) == len(PARAMS) and committed == []  # none via the batcher
            assert all(type(d) is Command for d in queued)  # each kept decoded
            results = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
            ids = [r["id"] for r in results[:3]]
            assert results[3] == results[0]
            assert len(set(ids)) == 3
            record = driver.queries.task(ids[1])
            assert record is not None and record["env"] == {"A": "1"}
            follower = replayed(driver)
            assert follower.snapshot() == driver._state.snapshot()
        finally:
            await driver.close()

    asyncio.run(run())


def test_an_inexact_submit_is_decoded_by_the_leader_and_the_states_still_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Force the slow path for every other submit: the leader decodes those entries.
    real = builders.task_submit_decoded
    flip = iter(range(1000))

    def sometimes(spec: TaskSubmit, rid: str, at: float) -> tuple[bytes, Command | None]:
        data, decoded = real(spec, rid, at)
        return data, decoded if next(flip) % 2 else None

    monkeypatch.setattr(builders, "task_submit_decoded", sometimes)

    async def run() -> None:
        driver = await leading(tmp_path)
        try:
            submit = handlers_over(driver, [])["task.submit"]
            calls = [submit({"argv": ["true", str(i)], "rid": f"b-{i}", "priority": i % 3})
                     for i in range(20)]
            kept = [d for _, _, d, _ in driver._queued_writes]
            assert sum(d is None for d in kept) == 10
            results = await asyncio.wait_for(asyncio.gather(*calls), WAIT)
            assert len({r["id"] for r in results}) == 20
            assert replayed(driver).snapshot() == driver._state.snapshot()
        finally:
            await driver.close()

    asyncio.run(run())


def test_a_follower_or_another_driver_commits_through_the_batcher() -> None:
    committed: list[bytes] = []

    class Follower:
        queries = None

        def is_leader(self) -> bool:
            return False

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a follower's submit goes through commit")

        def submit_decoded(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("unused")

    async def run() -> None:
        for consensus in (Follower(), SimpleNamespace(queries=None, is_leader=lambda: True)):
            submit = handlers_over(consensus, committed)["task.submit"]
            assert await submit({"argv": ["true"], "rid": "c-1"}) == {"id": "t?"}
        assert [decode_command(c).rid for c in committed] == ["c-1", "c-1"]

    asyncio.run(run())


def test_bad_params_are_refused_at_the_call_with_one_line() -> None:
    submit = handlers_over(SimpleNamespace(queries=None), [])["task.submit"]
    for params, words in (({}, "give exactly one of argv or shell"),
                          ({"argv": ["a"], "shell": "b"}, "give exactly one of argv or shell"),
                          ({"argv": ["a"], "mem": 1 << 41}, "n1: no")):
        with pytest.raises(ValueError, match=words):
            submit(params)


def test_submit_many_answers_a_task_refused_at_the_call_with_its_own_row() -> None:
    # task.submit is a plain function now: a bad task raises at the call, which
    # must refuse that task only, not the request.
    def submit(params: dict[str, Any]) -> Any:
        if "argv" not in params:
            raise ValueError("give exactly one of argv or shell")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result({"id": params["argv"][0]})
        return fut

    async def run() -> list[Any]:
        many = submit_many(submit, METHOD_PARAMS["task.submit"])
        rows: list[Any] = await many({"tasks": [{"argv": ["t1"]}, {"shell": "x"}, {"argv": ["t3"]}]})
        return rows

    rows = asyncio.run(run())
    assert rows == [{"id": "t1"},
                    {"error": "bad_request", "message": "give exactly one of argv or shell"},
                    {"id": "t3"}]
