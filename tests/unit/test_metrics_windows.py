"""Issue 15: trailing windows, counter rates and nearest-rank percentiles."""

from __future__ import annotations

import pytest

from agent.metrics.windows import (
    MAX_RATE_SAMPLES,
    CounterRate,
    count_within,
    percentile,
    percentiles,
    pstdev,
)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.5, None),
        ([7.0], 0.99, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),  # nearest rank: ceil(0.5 * 4) = 2nd
        ([4.0, 3.0, 2.0, 1.0], 0.5, 2.0),  # order does not matter
        (list(range(1, 101)), 0.99, 99),
        (list(range(1, 101)), 1.0, 100),
        (list(range(1, 101)), 0.0, 1),
    ],
)
def test_nearest_rank_percentile(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_percentiles_sort_once_and_agree_with_percentile() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentiles(values, 0.5, 0.99) == [percentile(values, 0.5), percentile(values, 0.99)]
    assert percentiles([], 0.5, 0.99) == [None, None]


def test_count_within_is_a_half_open_trailing_window() -> None:
    times = [0.0, 10.0, 40.0, 69.9, 70.0, 71.0]
    assert count_within(times, 70.0, 60.0) == 3  # (10, 70]: 40, 69.9, 70
    assert count_within([], 70.0, 60.0) == 0


def test_pstdev() -> None:
    assert pstdev([]) == 0.0 and pstdev([0.5]) == 0.0
    assert pstdev([0.0, 1.0]) == pytest.approx(0.5)


def test_rate_over_each_window_is_the_window_mean_not_a_lifetime_average() -> None:
    rate = CounterRate(horizon=60.0)
    # 100 s at 10 msgs/s, then 20 s at 100 msgs/s; one sample a second.
    for t in range(0, 121):
        rate.add(float(t), 10.0 * t if t <= 100 else 1000.0 + 100.0 * (t - 100))
    assert rate.rate(10.0) == pytest.approx(100.0)
    # 60 s window: 40 s at 10/s and 20 s at 100/s.
    assert rate.rate(60.0) == pytest.approx((40 * 10 + 20 * 100) / 60)
    assert len(rate) <= 62  # the horizon plus one base sample, not the whole run


def test_rate_needs_two_samples_and_restarts_after_a_counter_reset() -> None:
    rate = CounterRate(horizon=60.0)
    assert rate.rate(10.0) is None
    rate.add(0.0, 100.0)
    assert rate.rate(10.0) is None
    rate.add(1.0, 150.0)
    assert rate.rate(10.0) == pytest.approx(50.0)  # shorter history than the window
    rate.add(2.0, 3.0)  # the counter went down: a restart, start again
    assert rate.rate(10.0) is None
    rate.add(3.0, 13.0)
    assert rate.rate(10.0) == pytest.approx(10.0)


def test_rate_samples_are_bounded_however_often_they_come() -> None:
    rate = CounterRate(horizon=1e9)
    for i in range(MAX_RATE_SAMPLES * 2):
        rate.add(float(i), float(i))
    assert len(rate) == MAX_RATE_SAMPLES
