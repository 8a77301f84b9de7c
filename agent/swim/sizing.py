"""A conservative, codec-free estimate of a message's encoded size.

The core may not call the codec (sans-IO, no msgpack), yet must never emit a
datagram larger than ``SwimConfig.max_datagram_payload``.  ``agent.wire``
encodes a message as a msgpack array ``[version, type, field0, ...]`` with
nested dataclasses as inline arrays.  :func:`estimate_size` walks the same
structure and charges each value the size of msgpack's encoding from the
msgpack spec, rounding up wherever the packer has a choice:

* int: 1 byte for -32..127, 2/3/5/9 for 8/16/32/64-bit values;
* float: 9 (float64; a packer set to single floats only makes it smaller);
* bool and None: 1;
* str and bytes: 1/2/3/5-byte header by length + the UTF-8 / raw bytes;
* array (tuple, dataclass) and map: 1/3/5-byte header by item count + items.

Every term is an upper bound of the packer's actual output, so the sum is
too (the unit tests check it against ``agent.wire.encode`` on random
messages).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

FLOAT_MAX_BYTES = 9


def int_size(value: int) -> int:
    """msgpack's encoding of an integer."""
    if -32 <= value <= 127:
        return 1
    if -(2**7) <= value < 2**8:
        return 2
    if -(2**15) <= value < 2**16:
        return 3
    if -(2**31) <= value < 2**32:
        return 5
    return 9


def str_header_size(length: int) -> int:
    """Header of a str (fixstr up to 31 bytes) or, conservatively, bin of ``length``."""
    if length < 32:
        return 1
    if length < 2**8:
        return 2
    if length < 2**16:
        return 3
    return 5


def container_header_size(count: int) -> int:
    """Header of an array or map with ``count`` items."""
    if count < 16:
        return 1
    if count < 2**16:
        return 3
    return 5


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        assert dataclasses.is_dataclass(cls), f"cannot size a {cls.__name__}"
        names = tuple(f.name for f in dataclasses.fields(cls))
        _FIELD_NAMES[cls] = names
    return names


def value_size(value: Any) -> int:
    """Upper bound of the msgpack encoding of one field value."""
    tp = type(value)
    if tp is str:
        n = len(value.encode("utf-8")) if not value.isascii() else len(value)
        return str_header_size(n) + n
    if tp is int:
        return int_size(value)
    if tp is float:
        return FLOAT_MAX_BYTES
    if value is None or tp is bool:
        return 1
    if tp is tuple:
        return container_header_size(len(value)) + sum(map(value_size, value))
    if isinstance(value, int):  # IntEnum and other int subclasses
        return int_size(int(value))
    if tp is bytes:
        return str_header_size(len(value)) + 1 + len(value)
    if tp is dict:
        return container_header_size(len(value)) + sum(
            value_size(k) + value_size(v) for k, v in value.items()
        )
    return dataclass_size(value)


@functools.lru_cache(maxsize=16384)
def dataclass_size(value: Any) -> int:
    """Upper bound of one nested (frozen, hashable) dataclass's encoding.

    Memoised by value: the same broadcast (an Alive with its NodeMeta, a Suspect,
    a LoadReport) is sized by every queue it passes through and every datagram
    that carries a member's metadata, and sizing walks every field.  A hit costs
    one hash and one equality check."""
    names = _field_names(type(value))
    return container_header_size(len(names)) + sum(value_size(getattr(value, n)) for n in names)


TUPLE_GROWTH_BYTES = 2
"""Extra header bytes a tuple may need when it grows past 15 items (fixarray ->
array16); added by callers that size a tuple item by item."""


def message_size(msg: object) -> int:
    """Upper bound of ``agent.wire.encode(msg)``'s length: the message array of
    ``2 + fields`` items, version and type numbers, then the fields."""
    names = _field_names(type(msg))
    header = container_header_size(len(names) + 2) + 2 * 9
    return header + sum(value_size(getattr(msg, n)) for n in names)
