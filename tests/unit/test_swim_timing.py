"""Table tests for the SWIM/Lifeguard timeout maths (values as memberlist's tests)."""

from __future__ import annotations

import pytest

from agent.swim.timing import (
    epidemic_rounds,
    ewma,
    expected_confirmations,
    push_pull_scale,
    remaining_suspicion_time,
    retransmit_limit,
    scaled_probe_interval,
    scaled_timeout,
    suspicion_bounds,
    suspicion_timeout,
)


@pytest.mark.parametrize(
    ("n", "expected"),
    [  # memberlist util_test.go TestSuspicionTimeout (x3), mult 3, interval 1 s
        (5, 3.0),
        (10, 3.0),
        (50, 5.094),
        (100, 6.0),
        (500, 8.094),
        (1000, 9.0),
    ],
)
def test_suspicion_timeout_matches_memberlist(n: int, expected: float) -> None:
    assert suspicion_timeout(3, n, 1.0) == pytest.approx(expected, abs=1e-9)


def test_suspicion_timeout_scales_with_interval_and_floors_at_one_node() -> None:
    assert suspicion_timeout(4, 1000, 0.2) == pytest.approx(2.4)
    assert suspicion_timeout(4, 0, 1.0) == 4.0
    assert suspicion_bounds(4, 6, 1000, 1.0) == (pytest.approx(12.0), pytest.approx(72.0))


@pytest.mark.parametrize(
    ("n", "k", "elapsed", "lo", "hi", "expected"),
    [  # memberlist suspicion_test.go TestSuspicion_remainingSuspicionTime
        (0, 3, 0.0, 2.0, 30.0, 30.0),
        (1, 3, 2.0, 2.0, 30.0, 14.0),
        (2, 3, 3.0, 2.0, 30.0, 4.810),
        (3, 3, 4.0, 2.0, 30.0, -2.0),
        (4, 3, 5.0, 2.0, 30.0, -3.0),
        (5, 3, 10.0, 2.0, 30.0, -8.0),
        # k < 1: nothing to wait for, the floor
        (0, 0, 0.0, 2.0, 30.0, 2.0),
        (0, 0, 1.5, 2.0, 30.0, 0.5),
    ],
)
def test_remaining_suspicion_time(
    n: int, k: int, elapsed: float, lo: float, hi: float, expected: float
) -> None:
    assert remaining_suspicion_time(n, k, elapsed, lo, hi) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [  # memberlist util_test.go TestRetransmitLimit
        (3, 0, 0),
        (3, 1, 3),
        (3, 99, 6),
        (4, 9, 4),
        (4, 10, 8),
        (4, 1000, 16),
    ],
)
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert retransmit_limit(mult, n) == expected


@pytest.mark.parametrize(
    ("k_mult", "n", "expected"),
    [(4, 1, 0), (4, 3, 0), (4, 4, 2), (4, 100, 2), (6, 10, 4), (1, 10, 0)],
)
def test_expected_confirmations(k_mult: int, n: int, expected: int) -> None:
    assert expected_confirmations(k_mult, n) == expected


@pytest.mark.parametrize(("score", "interval", "expected"), [(0, 1.0, 1.0), (1, 1.0, 2.0), (7, 0.2, 1.6)])
def test_health_scaling(score: int, interval: float, expected: float) -> None:
    assert scaled_probe_interval(interval, score) == pytest.approx(expected)
    assert scaled_timeout(interval / 2, score) == pytest.approx(expected / 2)


@pytest.mark.parametrize(
    ("n", "expected"),
    [  # memberlist util_test.go TestPushPullScale, interval 1 s
        (0, 1.0),
        (1, 1.0),
        (32, 1.0),
        (33, 2.0),
        (64, 2.0),
        (65, 3.0),
        (128, 3.0),
        (129, 4.0),
    ],
)
def test_push_pull_scale(n: int, expected: float) -> None:
    assert push_pull_scale(1.0, n) == expected


def test_ewma() -> None:
    assert ewma(None, 0.010, 0.125) == 0.010
    assert ewma(0.010, 0.018, 0.125) == pytest.approx(0.011)


@pytest.mark.parametrize(
    ("n", "fanout", "fraction", "loss", "expected"),
    [
        (1, 3, 1.0, 0.0, 0),
        (10, 3, 0.9999, 0.0, 5),
        (1000, 3, 0.999, 0.0, 8),
        (1000, 3, 0.9999, 0.0, 9),
    ],
)
def test_epidemic_rounds(n: int, fanout: int, fraction: float, loss: float, expected: int) -> None:
    assert epidemic_rounds(n, fanout, fraction, loss) == expected


def test_epidemic_rounds_grow_with_loss_and_size() -> None:
    assert epidemic_rounds(1000, 3, 0.999, 0.3) > epidemic_rounds(1000, 3, 0.999)
    assert epidemic_rounds(5000, 3, 0.999) >= epidemic_rounds(1000, 3, 0.999)
