"""Issue 15: the bounded metrics history -- downsampling, queries, its memory
bound after a simulated 30 days, and the saved image (atomic, survives damage)."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest

from agent.metrics.history import (
    MEMORY_BOUND_BYTES,
    SERIES,
    TIERS,
    History,
    HistoryFile,
    parse_timeframe,
)

T0 = 1_780_000_000.0
"""A wall-clock start well away from 0 (slots are wall time / step)."""

DAY = 86400.0


def test_memory_bound_is_what_the_module_doc_says() -> None:
    assert sum(size for _, size in TIERS) * (8 + 6 * len(SERIES)) == MEMORY_BOUND_BYTES
    assert MEMORY_BOUND_BYTES < 1.5e6
    assert History().nbytes == MEMORY_BOUND_BYTES


def buffers(history: History) -> list[tuple[int, int]]:
    """(address, length) of every ring buffer: a buffer that grew would move or lengthen."""
    return [a.buffer_info() for t in history.tiers for a in (t.slots, t.means, t.counts)]


def feed(history: History, start: float, end: float, step: float) -> float:
    t, i = start, 0
    while t < end:
        history.add(t, {"cpu": (i % 100) / 100.0, "members_alive": 3.0, "leader_changes": float(i // 2880)})
        t += step
        i += 1
    return t


def test_thirty_days_of_samples_stay_within_the_bound() -> None:
    history = History()
    allocated = buffers(history)
    # 30 days: one sample every 30 s (86,400 samples), every tier wrapping (the
    # 1 s and 10 s rings many times over).
    end = feed(history, T0, T0 + 30 * DAY, 30.0)
    assert history.samples == 86_400
    assert buffers(history) == allocated and history.nbytes == MEMORY_BOUND_BYTES  # nothing grew
    # And one more day under tracemalloc: feeding it allocates nothing that stays.
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    end = feed(history, end, end + DAY, 60.0)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 16 << 10, f"history kept {grown} more bytes after another day of samples"
    assert buffers(history) == allocated
    # The long tier covers the whole 30 days; the fine one only the last 10 minutes.
    _, long_points = history.points(30 * DAY, end)
    _, fine_points = history.points(600.0, end)
    assert 8600 <= len(long_points) <= 8640
    assert 9 <= len(fine_points) <= 10  # the last day's 10 minutes at one sample per 60 s


def test_downsampling_keeps_the_mean_of_each_step() -> None:
    history = History()
    for s in range(600):  # 10 minutes at 1 s: 0, 1, 0, 1, ...
        history.add(T0 + s, {"cpu": float(s % 2)})
    tier, points = history.points(DAY, T0 + 600)
    assert tier.step == 10
    assert all(row[SERIES.index("cpu")] == pytest.approx(0.5) for _, row in points)
    summary = history.summary(parse_timeframe("24h"), T0 + 600)["series"]["cpu"]
    assert summary["mean"] == pytest.approx(0.5) and summary["slots"] in (60, 61)
    assert history.summary(DAY, T0 + 600)["series"]["throughput"]["slots"] == 0  # never sampled


def test_series_view_buckets_for_sparklines() -> None:
    history = History()
    for s in range(600):
        history.add(T0 + s, {"members_alive": 3.0 if s < 300 else 2.0})
    view = history.series_view(600.0, T0 + 599.5, max_points=10)
    alive = view["series"]["members_alive"]
    assert view["step"] == 1 and len(alive) == 10
    assert alive[0] == pytest.approx(3.0) and alive[-1] == pytest.approx(2.0)


def test_the_image_round_trips_and_survives_a_new_series_list(tmp_path: Path) -> None:
    history = History()
    for s in range(0, 3600, 5):
        history.add(T0 + s, {"cpu": 0.25, "hotspots": 1.0})
    history.checkpoint["leader_terms"] = [10, 3, 2]
    store = HistoryFile(tmp_path)
    store.save(history.encode())
    assert store.path.exists() and not store.path.with_name(store.path.name + ".tmp").exists()
    assert store.path.stat().st_size < 64 << 10  # compact: mostly empty rings

    again = History()
    assert store.load_into(again)
    assert again.summary(3600, T0 + 3600) == history.summary(3600, T0 + 3600)
    assert again.checkpoint == {"leader_terms": [10, 3, 2]}

    # A newer agent with another series list takes back the series it still has.
    other = History(series=("hotspots", "brand_new"))
    assert store.load_into(other)
    summary = other.summary(3600, T0 + 3600)["series"]
    assert summary["hotspots"]["mean"] == pytest.approx(1.0)
    assert summary["brand_new"]["slots"] == 0


@pytest.mark.parametrize("damage", [b"", b"garbage", b"x" * 100])
def test_a_damaged_image_is_refused_whole(tmp_path: Path, damage: bytes) -> None:
    store = HistoryFile(tmp_path)
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(damage)
    with pytest.raises(ValueError):
        store.load_into(History())


def test_a_cut_image_is_refused(tmp_path: Path) -> None:
    import zlib

    history = History()
    history.add(T0, {"cpu": 1.0})
    raw = zlib.decompress(history.encode())
    with pytest.raises(ValueError, match="cut short"):
        History().decode(zlib.compress(raw[: len(raw) // 2]))


def test_unknown_timeframe_is_a_value_error() -> None:
    assert parse_timeframe("7d") == 7 * DAY
    with pytest.raises(ValueError, match="timeframe"):
        parse_timeframe("2w")
