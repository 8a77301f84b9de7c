"""Each agent's bounded metrics history: ring buffers at three resolutions.

Theory of operation
-------------------
Once a second the metrics service adds one sample: a value (or None) for each
of ``SERIES``.  Every sample goes into all three tiers (``TIERS``):

=====  ========  ======  =========================
tier   step      slots   covers
=====  ========  ======  =========================
fine   1 s       600     the last 10 minutes
mid    10 s      8,640   the last 24 hours
long   5 min     8,640   the last 30 days
=====  ========  ======  =========================

A tier is a ring of fixed-size slots.  Slot ``n`` holds the samples whose wall
time ``t`` has ``floor(t / step) == n`` and lives at position ``n % slots``;
the slot number is stored beside it, so a position still holding an older
slot reads as a gap and is reset when its new slot's first sample comes.  A
slot keeps, per series, the running mean of its samples (float32) and their
count (uint16): downsampling is the mean over the step, done as samples
arrive, and nothing ever grows.

Memory bound: every buffer is allocated once, at its full size, so the
history holds exactly ``MEMORY_BOUND_BYTES`` of samples whatever it is fed --
per slot 8 bytes of slot number and 6 bytes per series:
``(600 + 8640 + 8640) * (8 + 6 * len(SERIES))`` = 1.43 MB with 12 series
(``tests/unit/test_metrics_history.py`` feeds 30 days and checks it).

Persistence: ``encode()`` is a zlib-compressed image of the buffers (a header
line of JSON naming the series and tiers, then the raw arrays): empty slots
compress to almost nothing.  ``HistoryFile`` writes it atomically -- a temporary
file, fsync, rename, fsync of the directory -- so a crash leaves the old image
or the new one, never a torn one; the service saves it at most once per
``metrics.persist_interval`` and on a clean stop.  ``decode()`` takes back
what it can: series are matched by name (a newer agent may add some), a tier
whose shape changed is dropped, anything malformed is refused whole.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.durable import replace_file

SERIES: tuple[str, ...] = (
    "cpu",
    "members_alive",
    "connectivity_pct",
    "throughput",
    "rtt_p50_ms",
    "commit_p99_ms",
    "decision_p99_ms",
    "leader_changes",
    "load_stddev",
    "utilisation",
    "migrations_per_minute",
    "hotspots",
)
"""What one sample holds (see ``agent.metrics.engine.Sample.values``)."""

TIERS: tuple[tuple[int, int], ...] = ((1, 600), (10, 8640), (300, 8640))
"""(step seconds, slots) per tier: 10 min at 1 s, 24 h at 10 s, 30 days at 5 min."""

_SLOT_BYTES = 8
_MEAN_BYTES = 4
_COUNT_BYTES = 2
MAX_COUNT = 65535
"""A slot's per-series sample count saturates here (a 5-min slot gets 300)."""

MEMORY_BOUND_BYTES = sum(size for _, size in TIERS) * (
    _SLOT_BYTES + (_MEAN_BYTES + _COUNT_BYTES) * len(SERIES)
)
"""Bytes of samples the history holds, always (module doc)."""

MAGIC = b"MTHIST1\n"
MAX_FILE_BYTES = 64 << 20
"""A saved image larger than this (compressed or not) is refused as damaged."""

TIMEFRAMES: dict[str, float] = {
    "10m": 600.0, "1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0,
}
"""The timeframes ``report --timeframe`` and the TUI ask for."""


def parse_timeframe(text: str) -> float:
    """``10m``/``1h``/``24h``/``7d``/``30d`` -> seconds (``ValueError`` otherwise)."""
    try:
        return TIMEFRAMES[text]
    except KeyError:
        raise ValueError(f"timeframe must be one of {', '.join(TIMEFRAMES)}, got {text!r}") from None


class Tier:
    """One ring of ``size`` slots of ``step`` seconds (module doc)."""

    def __init__(self, step: int, size: int, series: int) -> None:
        self.step, self.size, self.series = step, size, series
        self.slots = array("q", [-1]) * size
        self.means = array("f", [0.0]) * (size * series)
        self.counts = array("H", [0]) * (size * series)

    @property
    def nbytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self.slots, self.means, self.counts))

    def add(self, t: float, values: Sequence[float | None]) -> None:
        slot = int(t // self.step)
        pos = slot % self.size
        base = pos * self.series
        if self.slots[pos] != slot:
            if self.slots[pos] > slot:
                return  # older than what the position holds now: too old to keep
            self.slots[pos] = slot
            for k in range(self.series):
                self.means[base + k] = 0.0
                self.counts[base + k] = 0
        for k, value in enumerate(values[: self.series]):
            if value is None or not math.isfinite(value):
                continue
            count = self.counts[base + k]
            if count >= MAX_COUNT:
                continue
            count += 1
            self.counts[base + k] = count
            mean = self.means[base + k]
            self.means[base + k] = mean + (value - mean) / count

    def row(self, slot: int) -> list[float | None] | None:
        """The means of slot ``slot`` (None per series without samples), or None if absent."""
        pos = slot % self.size
        if self.slots[pos] != slot:
            return None
        base = pos * self.series
        return [
            float(self.means[base + k]) if self.counts[base + k] else None for k in range(self.series)
        ]

    @property
    def span(self) -> float:
        return float(self.step * self.size)


class History:
    """The three tiers and the queries over them."""

    def __init__(self, series: Sequence[str] = SERIES, tiers: Sequence[tuple[int, int]] = TIERS) -> None:
        self.series = tuple(series)
        self.tiers = [Tier(step, size, len(self.series)) for step, size in tiers]
        self.samples = 0
        self.checkpoint: dict[str, Any] = {}
        """Small state saved with the history (the leader-change count's checkpoint)."""

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tiers)

    def add(self, t: float, values: dict[str, float | None]) -> None:
        row = [values.get(name) for name in self.series]
        for tier in self.tiers:
            tier.add(t, row)
        self.samples += 1

    def tier_for(self, timeframe: float) -> Tier:
        """The finest tier that covers ``timeframe`` seconds (the coarsest if none does)."""
        for tier in self.tiers:
            if tier.span >= timeframe:
                return tier
        return self.tiers[-1]

    def points(self, timeframe: float, now: float) -> tuple[Tier, list[tuple[float, list[float | None]]]]:
        """``(tier, [(slot start time, values), ...])`` for the slots with samples
        in the trailing ``timeframe`` seconds, oldest first."""
        tier = self.tier_for(timeframe)
        last = int(now // tier.step)
        first = max(last - tier.size + 1, int((now - timeframe) // tier.step) + 1)
        out = []
        for slot in range(first, last + 1):
            row = tier.row(slot)
            if row is not None:
                out.append((float(slot * tier.step), row))
        return tier, out

    def series_view(self, timeframe: float, now: float, max_points: int = 120) -> dict[str, Any]:
        """For sparklines: each series as ``max_points`` buckets (None: no sample),
        the trailing ``timeframe`` split evenly, each bucket the mean of its slots."""
        tier, points = self.points(timeframe, now)
        max_points = max(1, min(max_points, 2000))
        buckets = max(1, min(max_points, math.ceil(timeframe / tier.step)))
        width = timeframe / buckets
        start = now - timeframe
        sums = [[0.0] * buckets for _ in self.series]
        counts = [[0] * buckets for _ in self.series]
        for at, row in points:
            b = min(buckets - 1, max(0, int((at + tier.step / 2 - start) // width)))
            for k, value in enumerate(row):
                if value is not None:
                    sums[k][b] += value
                    counts[k][b] += 1
        return {
            "timeframe": timeframe,
            "step": tier.step,
            "bucket_s": width,
            "start": start,
            "series": {
                name: [round(s / c, 6) if c else None for s, c in zip(sums[k], counts[k], strict=True)]
                for k, name in enumerate(self.series)
            },
        }

    def summary(self, timeframe: float, now: float) -> dict[str, Any]:
        """Per series over the trailing ``timeframe``: min, mean, max, last (of the
        slot means) and how many slots had samples."""
        tier, points = self.points(timeframe, now)
        out: dict[str, Any] = {}
        for k, name in enumerate(self.series):
            values = [row[k] for _, row in points if row[k] is not None]
            if not values:
                out[name] = {"min": None, "mean": None, "max": None, "last": None, "slots": 0}
                continue
            out[name] = {
                "min": round(min(v for v in values if v is not None), 4),
                "mean": round(sum(v for v in values if v is not None) / len(values), 4),
                "max": round(max(v for v in values if v is not None), 4),
                "last": round(float(values[-1] or 0.0), 4),
                "slots": len(values),
            }
        return {"timeframe": timeframe, "step": tier.step, "series": out}

    # ------------------------------------------------------------ persistence

    def encode(self) -> bytes:
        header = {
            "series": list(self.series),
            "tiers": [[t.step, t.size] for t in self.tiers],
            "samples": self.samples,
            "checkpoint": self.checkpoint,
        }
        parts = [MAGIC, json.dumps(header).encode() + b"\n"]
        for tier in self.tiers:
            parts += [tier.slots.tobytes(), tier.means.tobytes(), tier.counts.tobytes()]
        return zlib.compress(b"".join(parts), 6)

    def decode(self, blob: bytes) -> None:
        """Take back a saved image (module doc); ``ValueError`` if it is malformed."""
        if len(blob) > MAX_FILE_BYTES:
            raise ValueError("history image too large")
        try:
            raw = zlib.decompressobj().decompress(blob, MAX_FILE_BYTES)
        except zlib.error as exc:
            raise ValueError(f"history image not zlib: {exc}") from None
        if not raw.startswith(MAGIC):
            raise ValueError("not a metrics history image")
        end = raw.find(b"\n", len(MAGIC))
        if end < 0:
            raise ValueError("history image header cut short")
        try:
            header = json.loads(raw[len(MAGIC):end])
            names = [str(n) for n in header["series"]]
            shapes = [(int(s), int(n)) for s, n in header["tiers"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"history image header: {exc}") from None
        offset = end + 1
        loaded = []
        for step, size in shapes:
            lengths = (size * 8, size * len(names) * 4, size * len(names) * 2)
            chunk = [raw[offset + sum(lengths[:i]): offset + sum(lengths[: i + 1])] for i in range(3)]
            offset += sum(lengths)
            if any(len(c) != n for c, n in zip(chunk, lengths, strict=True)):
                raise ValueError("history image cut short")
            loaded.append((step, size, chunk))
        for step, size, chunk in loaded:
            self._restore_tier(step, size, names, chunk)
        self.samples = int(header.get("samples", 0))
        checkpoint = header.get("checkpoint", {})
        self.checkpoint = checkpoint if isinstance(checkpoint, dict) else {}

    def _restore_tier(self, step: int, size: int, names: list[str], chunk: list[bytes]) -> None:
        tier = next((t for t in self.tiers if (t.step, t.size) == (step, size)), None)
        if tier is None:
            return  # a tier this version does not keep
        slots, means, counts = array("q"), array("f"), array("H")
        slots.frombytes(chunk[0])
        means.frombytes(chunk[1])
        counts.frombytes(chunk[2])
        tier.slots[:] = slots
        ours = {name: k for k, name in enumerate(self.series)}
        width = len(names)
        for pos in range(size):
            for j, name in enumerate(names):
                k = ours.get(name)
                if k is not None:
                    tier.means[pos * tier.series + k] = means[pos * width + j]
                    tier.counts[pos * tier.series + k] = counts[pos * width + j]


class HistoryFile:
    """Where a history is saved: ``<data_dir>/metrics/history.bin`` (atomic writes)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / "metrics" / "history.bin"

    def load_into(self, history: History) -> bool:
        """Fill ``history`` from the file; False if there is none (``ValueError`` if damaged)."""
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return False
        history.decode(blob)
        return True

    def save(self, blob: bytes) -> None:
        """Replace the file with ``blob`` atomically (module doc).  Blocking: call it
        off the event loop."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(self.path, blob, mode=0o644)
