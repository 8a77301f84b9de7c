"""The kept msgpack Packer of the control codec and of ``encode_command`` (issue 14):
the same bytes as ``msgpack.packb``, on the loop's thread and on any other, and a
pack that fails leaves nothing behind for the next one."""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import pytest

from agent.control.codec import encode_frame
from agent.errors import ProtocolError
from agent.framing import frame
from agent.state.commands import KvPut, decode_command, encode_command

MESSAGE = {"id": 7, "result": {"index": 42, "items": [b"x" * 10, "y", None, 1.5]}}


def _expected(obj: Any) -> bytes:
    return frame(msgpack.packb(obj, use_bin_type=True), 1 << 30)


def test_frames_equal_packb_here_and_in_a_thread() -> None:
    assert encode_frame(MESSAGE) == _expected(MESSAGE)
    out: list[bytes] = []
    worker = threading.Thread(target=lambda: out.append(encode_frame(MESSAGE)))
    worker.start()
    worker.join()
    assert out == [_expected(MESSAGE)]


def test_a_failed_pack_leaves_nothing_behind() -> None:
    with pytest.raises(ProtocolError):
        encode_frame({"id": 1, "result": [1, 2, object()]})
    assert encode_frame(MESSAGE) == _expected(MESSAGE)


def test_commands_encode_the_same_in_a_thread() -> None:
    here = encode_command(KvPut("n", "k", b"v"), "r", 1.5)
    out: list[bytes] = []
    worker = threading.Thread(target=lambda: out.append(encode_command(KvPut("n", "k", b"v"), "r", 1.5)))
    worker.start()
    worker.join()
    assert out == [here]
    assert decode_command(here).body == KvPut("n", "k", b"v")
