"""Control params: missing or mistyped params are one-line bad requests, never not-found
and never coerced (``stale: "yes"`` is not true)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from types import SimpleNamespace
from typing import Any

import pytest

from agent.control.params import ListOf, MapOf, Schema, check_params, param, param_list
from agent.control.server import ControlServer, error_reply
from agent.errors import ProtocolError
from agent.runtime.handlers import METHOD_PARAMS, ControlPorts, build_handlers, strict
from agent.runtime.tasks import TaskRuntime


def test_present_values_are_returned_typed() -> None:
    params = {"ns": "default", "n": 3, "ratio": 1, "flag": False, "argv": ["a", "b"]}
    assert param(params, "ns", str) == "default"
    assert param(params, "n", int) == 3
    ratio = param(params, "ratio", float)
    assert ratio == 1.0 and type(ratio) is float
    assert param(params, "flag", bool) is False
    assert param_list(params, "argv", str) == ["a", "b"]


def test_defaults_cover_absent_and_none() -> None:
    assert param({}, "to", str, None) is None
    assert param({"to": None}, "to", str, "x") == "x"
    assert param_list({}, "caps", str, []) == []
    assert param_list({"caps": None}, "caps", str, ()) == ()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: param({}, "ns", str), "missing param 'ns'"),
        (lambda: param({"ns": None}, "ns", str), "missing param 'ns'"),
        (lambda: param({"n": True}, "n", int), "param 'n' must be int, not bool"),
        (lambda: param({"n": "3"}, "n", int), "param 'n' must be int, not str"),
        (lambda: param({"v": "s"}, "v", bytes), "param 'v' must be bytes, not str"),
        (lambda: param_list({"argv": "ls"}, "argv", str), "param 'argv' must be list, not str"),
        (lambda: param_list({"argv": ["ls", 1]}, "argv", str), "param 'argv[1]' must be str"),
    ],
)
def test_bad_params_are_protocol_errors_answered_bad_request(call: object, message: str) -> None:
    with pytest.raises(
        ProtocolError, match=message.replace("[", r"\[").replace("]", r"\]")
    ) as info:
        call()  # type: ignore[operator]
    assert error_reply(info.value)[0] == "bad_request"


# --------------------------------------------------------------- whole requests
# Every control method's params are checked against one table
# (agent.runtime.handlers.METHOD_PARAMS) before its handler runs.


def fake_ports() -> ControlPorts:
    """Just enough for ``build_handlers``: a state whose KV is empty."""
    state = SimpleNamespace(kv_get=lambda ns, key: None, applied_index=7)
    runtime = SimpleNamespace(_consensus=SimpleNamespace(queries=state), output=None)
    tasks = SimpleNamespace(
        handlers=lambda commit, read: TaskRuntime.handlers(runtime, commit, read),  # type: ignore[arg-type]
        compatible=lambda propose: propose,
    )
    return ControlPorts(
        consensus=SimpleNamespace(), state=state, names=SimpleNamespace(),  # type: ignore[arg-type]
        keyring=SimpleNamespace(), sources=SimpleNamespace(), tasks=tasks,  # type: ignore[arg-type]
        node_id="n1", node_name="n1", eligible_voters=lambda: 1, stop=lambda: None,
    )


def test_every_method_has_a_schema() -> None:
    handlers = build_handlers(fake_ports())  # raises LookupError naming a method without one
    assert set(handlers) == set(METHOD_PARAMS)
    with pytest.raises(LookupError, match=r"'new\.method' has no entry in METHOD_PARAMS"):
        strict("new.method", handlers["status"])


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("kv.get", {"key": "k", "stale": "yes"}, "kv.get: param 'stale' must be bool, not str"),
        ("kv.get", {"key": "k", "stale": 1}, "kv.get: param 'stale' must be bool, not int"),
        ("kv.list", {"prefix": b"a"}, "kv.list: param 'prefix' must be str, not bytes"),
        ("kv.put", {"key": "k", "value": 3}, "kv.put: param 'value' must be bytes or str, not int"),
        ("kv.put", {"key": 5, "value": b""}, "kv.put: param 'key' must be str, not int"),
        ("proposal.vote", {"id": "3"}, "proposal.vote: param 'id' must be int, not str"),
        ("proposal.vote", {"id": True}, "proposal.vote: param 'id' must be int, not bool"),
        ("proposal.vote", {"id": 3, "approve": "no"}, "param 'approve' must be bool, not str"),
        ("proposal.create", {"title": "t", "threshold": True}, "'threshold' must be float, not bool"),
        ("task.submit", {"shell": "true", "priority": 1.5}, "'priority' must be int, not float"),
        ("task.submit", {"shell": "true", "retries": False}, "'retries' must be int, not bool"),
        ("task.submit", {"shell": "true", "restartable": "true"}, "must be bool, not str"),
        ("task.submit", {"argv": "ls -l"}, "'argv' must be list of str, not str"),
        ("task.submit", {"argv": ["ls", 1]}, "'argv[1]' must be list of str, not int"),
        ("task.submit", {"shell": "env", "env": {"A": 1}}, "'env['A']' must be map of str to str"),
        ("task.submit", {"shell": "env", "env": ["A=1"]}, "'env' must be map of str to str, not list"),
        ("task.logs", {"id": "t", "offset": "0"}, "task.logs: param 'offset' must be int, not str"),
        ("leader.transfer", {"to": 2}, "leader.transfer: param 'to' must be str, not int"),
    ],
)
def test_mistyped_params_are_one_line_bad_requests(
    method: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        check_params(method, params, METHOD_PARAMS[method])
    assert message in str(info.value)
    code, text = error_reply(info.value)
    assert code == "bad_request" and "\n" not in text


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("kv.get", {"ns": "default", "key": "k", "stale": True}),
        ("kv.put", {"key": "k", "value": "as text", "rid": "r1"}),
        ("kv.cas", {"key": "k", "expected": None, "value": b"v"}),  # None: absent
        ("task.submit", {"argv": ["ls", "-l"], "env": {"A": "1"}, "timeout": 5, "priority": 0}),
        ("task.submit", {"shell": "true", "timeout": 2.5, "restartable": False, "cwd": None}),
        ("leader.transfer", {"to": None}),
        ("status", {"from_a_newer_client": [1, 2]}),  # params a schema does not name: ignored
    ],
)
def test_well_typed_params_pass(method: str, params: dict[str, Any]) -> None:
    check_params(method, params, METHOD_PARAMS[method])


def test_kinds_compose() -> None:
    schema: Schema = {"a": ListOf(int), "m": MapOf(bool), "x": (int, str)}
    check_params("m", {"a": [1, 2], "m": {"k": True}, "x": "s"}, schema)
    for bad in ({"a": [1, True]}, {"m": {"k": 1}}, {"m": {1: True}}, {"x": 1.0}):
        with pytest.raises(ProtocolError):
            check_params("m", bad, schema)


async def test_kv_get_with_stale_yes_is_answered_bad_request_over_the_socket() -> None:
    from meshtui.client import ClientError, ControlClient

    directory = tempfile.mkdtemp(prefix="mt-params-", dir="/tmp")
    server = ControlServer(f"{directory}/agent.sock", build_handlers(fake_ports()), {"tasks"})
    await server.start()
    try:
        async with await ControlClient.connect_unix(server.path) as client:
            with pytest.raises(ClientError) as info:
                await asyncio.wait_for(client.call("kv.get", key="k", stale="yes"), 10)
            assert info.value.code == "bad_request"
            assert info.value.message == "kv.get: param 'stale' must be bool, not str"
            # The same request well typed reaches the handler (a stale read: no barrier).
            got = await asyncio.wait_for(client.call("kv.get", key="k", stale=True), 10)
            assert got == {"value": None, "found": False, "index": 7}
    finally:
        await server.close()
        shutil.rmtree(directory, ignore_errors=True)
