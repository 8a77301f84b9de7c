"""Handler param helpers: missing or mistyped params are bad requests, never not-found."""

from __future__ import annotations

import pytest

from agent.control.params import param, param_list
from agent.control.server import error_reply
from agent.errors import ProtocolError


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
