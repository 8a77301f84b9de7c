"""The on-disk format of the Raft WAL: record framing, segment headers, ack slots.

Two segment versions exist; a data dir may hold both (one written before an
upgrade, the next after it), in ``seq`` order:

* **v1** ``<seq>-<first index>.wal``: records from byte 0, nothing else.
* **v2** ``<seq>-<first index>.seg``: a 4 KiB header block, then records::

      0     segment header: magic "MTWALv02" | version u32 | seq u64 | first index u64 | crc u32
      1024  ack slot A  \\  each: magic "MTACK\\0\\0\\0" | generation u64 | batch first u64 |
      2048  ack slot B  /        last index u64 | term u64 | vote (u8 length + 64 bytes) | crc u32
      4096  records...

  and a *sealed* segment (every one but the last) ends with a seal record
  ``[4, last index]`` written and synced before the next segment is created.

A record (both versions) is ``length u32 LE | crc u32 LE (zlib.crc32 of the
payload) | payload (msgpack)``; payloads: ``[1, term, index, kind, data]`` an
entry, ``[2, term, vote, commit]`` the hard state, ``[3, index, term]`` a
snapshot marker, ``[4, last index]`` a seal.

**Ack slots** are how a node knows what it acknowledged even when its log's
tail is gone (Alagappan et al., FAST 2018: protocol-aware recovery).  Each
group commit writes the next generation into the slot the previous one did
not use and then fdatasyncs the segment once: the slot rides in the same
flush as the records, so the write path pays no extra fsync.  A slot says:
"entries up to ``last index`` are being made durable by this sync; entries up
to ``batch first - 1`` were durable (and may have been acknowledged) before
it began."  So on recovery a log that ends below ``batch first - 1`` lost
acknowledged entries, while one that ends inside the last batch may just be a
torn write of a sync that never returned.  Alternating slots mean a slot torn
by a crash leaves the previous generation readable.  A clean close writes a
slot with an empty batch, so after a clean stop any loss is detected.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

MAX_RECORD = 64 * 1024 * 1024
"""No record is larger than this (entries are bounded by the 16 MiB frame limit)."""

HEADER = struct.Struct("<II")
REC_ENTRY, REC_HARD_STATE, REC_SNAPSHOT, REC_SEAL = 1, 2, 3, 4
RECORD_KINDS = (REC_ENTRY, REC_HARD_STATE, REC_SNAPSHOT, REC_SEAL)

WAL_VERSION = 2
SEGMENT_MAGIC = b"MTWALv02"
_SEG = struct.Struct("<8sIQQ")
RECORDS_START = 4096
"""Byte offset of the first record in a v2 segment (the header block before it)."""

ACK_MAGIC = b"MTACK\0\0\0"
ACK_SLOTS = (1024, 2048)
_ACK = struct.Struct("<8sQQQQB64s")
MAX_VOTE = 64


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def parse_at(data: bytes | memoryview, off: int) -> tuple[list[Any], int] | None:
    """The record at ``off`` and the offset after it, or None if it is not a valid record."""
    if len(data) - off < HEADER.size:
        return None
    length, crc = HEADER.unpack_from(data, off)
    end = off + HEADER.size + length
    if length == 0 or length > MAX_RECORD or end > len(data):
        return None
    payload = bytes(data[off + HEADER.size : end])
    if zlib.crc32(payload) != crc:
        return None
    try:
        record = msgpack.unpackb(payload, raw=False)
    except Exception:
        return None
    if not isinstance(record, list) or not record or record[0] not in RECORD_KINDS:
        return None
    return record, end


def valid_record_after(data: bytes, start: int, end: int) -> bool:
    """Does any valid record start in ``data[start:end]`` (``end``: last non-zero byte + 1)?"""
    return any(parse_at(data, p) is not None for p in range(start, end - HEADER.size))


def only_zeros_from(data: bytes, off: int) -> bool:
    return data.count(0, off) == len(data) - off


# ---------------------------------------------------------------- segment header


def segment_header(seq: int, first_index: int) -> bytes:
    body = _SEG.pack(SEGMENT_MAGIC, WAL_VERSION, seq, first_index)
    return body + struct.pack("<I", zlib.crc32(body))


def check_segment_header(data: bytes, seq: int, first_index: int) -> str:
    """'' if ``data`` starts with this segment's valid v2 header, else why not."""
    if len(data) < RECORDS_START:
        return "segment shorter than its header block"
    body = data[: _SEG.size]
    (crc,) = struct.unpack_from("<I", data, _SEG.size)
    if zlib.crc32(body) != crc or data[:8] != SEGMENT_MAGIC:
        return "corrupt segment header"
    _, version, got_seq, got_first = _SEG.unpack(body)
    if version != WAL_VERSION:
        return f"unknown WAL version {version}"
    if (got_seq, got_first) != (seq, first_index):
        return f"segment header names {got_seq:x}-{got_first:x}, not its file name"
    return ""


# ---------------------------------------------------------------- ack slots


@dataclass(frozen=True, slots=True)
class AckSlot:
    """What one group commit promised (see the module doc)."""

    generation: int
    batch_first: int
    """First index this sync made durable; everything below was durable before it."""
    last_index: int
    term: int
    vote: str

    @property
    def acknowledged(self) -> int:
        """The last index certainly durable (and perhaps acknowledged) before this sync."""
        return self.batch_first - 1

    def encode(self) -> bytes:
        vote = self.vote.encode()[:MAX_VOTE]
        body = _ACK.pack(
            ACK_MAGIC, self.generation, self.batch_first, self.last_index, self.term, len(vote), vote
        )
        return body + struct.pack("<I", zlib.crc32(body))


def slot_offset(generation: int) -> int:
    return ACK_SLOTS[generation % 2]


def read_slots(data: bytes) -> AckSlot | None:
    """The newest valid ack slot in a v2 segment's header block, if any."""
    best: AckSlot | None = None
    for off in ACK_SLOTS:
        end = off + _ACK.size + 4
        if len(data) < end:
            continue
        body = data[off : off + _ACK.size]
        (crc,) = struct.unpack_from("<I", data, off + _ACK.size)
        if zlib.crc32(body) != crc or body[:8] != ACK_MAGIC:
            continue
        _, gen, first, last, term, vote_len, vote = _ACK.unpack(body)
        slot = AckSlot(gen, first, last, term, vote[:vote_len].decode(errors="replace"))
        if best is None or slot.generation > best.generation:
            best = slot
    return best


def hard_state_payload(term: int, vote: str, commit: int) -> bytes:
    return bytes(msgpack.packb([REC_HARD_STATE, term, vote, commit]))
