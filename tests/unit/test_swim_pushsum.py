"""Push-sum aggregation: convergence to the average, epochs tracking change, mass."""

from __future__ import annotations

import random

import pytest

from agent.swim.pushsum import PushSumAggregator


def run_rounds(aggs: list[PushSumAggregator], rng: random.Random, rounds: int, now: float) -> None:
    for r in range(rounds):
        shares = []
        for i, agg in enumerate(aggs):
            share = agg.share()
            if share is not None:
                j = rng.randrange(len(aggs) - 1)
                shares.append((j if j < i else j + 1, share))
        for j, (epoch, total, weight) in shares:
            aggs[j].receive(now + r * 0.01, epoch, total, weight)


def test_converges_to_the_average_and_conserves_mass() -> None:
    rng = random.Random(7)
    values = [rng.random() for _ in range(64)]
    aggs = [PushSumAggregator(epoch_length=100.0, now=0.0) for _ in values]
    for agg, v in zip(aggs, values, strict=True):
        agg.set_value(v)
    run_rounds(aggs, rng, 40, 0.0)
    mean = sum(values) / len(values)
    assert sum(a.weight for a in aggs) == pytest.approx(64.0)
    assert sum(a.total for a in aggs) == pytest.approx(sum(values))
    for agg in aggs:
        assert agg.estimate == pytest.approx(mean, abs=0.005)


def test_epochs_restart_from_current_values_and_publish_the_last_estimate() -> None:
    rng = random.Random(8)
    aggs = [PushSumAggregator(epoch_length=1.0, now=0.0) for _ in range(32)]
    for i, agg in enumerate(aggs):
        agg.set_value(0.2 if i % 2 else 0.4)
    run_rounds(aggs, rng, 30, 0.0)
    assert aggs[0].published is None  # no epoch finished yet
    for agg in aggs:
        agg.set_value(0.9)  # load changed everywhere
    aggs[0].advance(1.0)  # one node's epoch ends first ...
    assert aggs[0].epoch == 1 and aggs[0].published == pytest.approx(0.3, abs=0.01)
    run_rounds(aggs, rng, 40, 1.0)  # ... and the newer epoch spreads to all
    for agg in aggs:
        assert agg.epoch == 1
        assert agg.estimate == pytest.approx(0.9, abs=0.01)


def test_stale_epochs_are_dropped_and_nodes_without_a_value_relay_only() -> None:
    agg = PushSumAggregator(epoch_length=1.0, now=0.0)
    agg.advance(2.0)
    assert agg.epoch == 1 and agg.estimate is None  # no value yet: weight 0
    agg.receive(2.0, 0, 5.0, 1.0)
    assert agg.estimate is None
    agg.receive(2.0, 1, 0.5, 1.0)
    assert agg.estimate == pytest.approx(0.5)
    agg.receive(2.0, 1, -1.0, 1.0)  # nonsense is refused
    assert agg.estimate == pytest.approx(0.5)
