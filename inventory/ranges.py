"""Ansible host ranges: ``web[01:03]``, ``db-[a:c]``, ``node[0:10:5]``.

Numeric bounds with a leading zero keep their width (``[01:03]`` → 01, 02, 03);
alphabetic bounds are single letters.  A name may hold several ranges; they
expand left to right like Ansible's ``expand_hostname_range``.
"""

from __future__ import annotations

import re
import string

_RANGE = re.compile(r"\[([^\[\]:]+):([^\[\]:]+)(?::([^\[\]:]+))?\]")


class RangeError(ValueError):
    """A malformed range; the message is the reason alone (the caller adds file:line)."""


def has_range(pattern: str) -> bool:
    return _RANGE.search(pattern) is not None


def expand_host_range(pattern: str) -> list[str]:
    """Every host name the pattern denotes, in order; a plain name gives itself."""
    match = _RANGE.search(pattern)
    if match is None:
        if "[" in pattern or "]" in pattern:
            raise RangeError(f"malformed host range in {pattern!r}")
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    start, end, stride_text = match.group(1), match.group(2), match.group(3)
    stride = 1
    if stride_text is not None:
        if not stride_text.isdigit() or int(stride_text) < 1:
            raise RangeError(f"bad stride {stride_text!r} in {pattern!r}")
        stride = int(stride_text)
    items: list[str]
    if start.isdigit() and end.isdigit():
        first, last = int(start), int(end)
        if first > last:
            raise RangeError(f"range start {start} is after its end {end} in {pattern!r}")
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        items = [str(n).zfill(width) for n in range(first, last + 1, stride)]
    elif len(start) == 1 and len(end) == 1 and start in string.ascii_letters and end in string.ascii_letters:
        letters = string.ascii_letters
        first, last = letters.index(start), letters.index(end)
        if first > last:
            raise RangeError(f"range start {start} is after its end {end} in {pattern!r}")
        items = list(letters[first : last + 1 : stride])
    else:
        raise RangeError(f"range bounds must be numbers or single letters in {pattern!r}")
    return [head + item + rest for item in items for rest in expand_host_range(tail)]
