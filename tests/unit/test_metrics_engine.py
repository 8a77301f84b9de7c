"""Issue 15: the figures from one ``Inputs`` -- every metric is in the catalog,
and the catalog is what README's "Metrics" section shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.metrics import catalog
from agent.metrics.engine import Inputs, MetricsEngine
from agent.swim.members import MemberView
from agent.swim.messages import NodeLoad, NodeMeta

README = Path(__file__).resolve().parents[2] / "README.md"


def member(name: str, state: str = "alive", cpu: float = 0.1, running: int = 0, slots: int = 2,
           rtt_ms: float | None = 1.0) -> MemberView:
    meta = NodeMeta(name=name, addr=f"{name}:1", caps=(), slots=slots, version="t", role="voter")
    load = NodeLoad(cpu=cpu, load1=0.0, mem_free=1, mem_percent=50.0, queued=0, running=running)
    return MemberView(f"id-{name}", f"{name}:1", meta, load, state, 1, rtt_ms, 0.0)


def inputs(**changes: object) -> Inputs:
    base: dict[str, object] = {
        "members": (member("n1", rtt_ms=None), member("n2", rtt_ms=2.0), member("n3", rtt_ms=4.0)),
        "messages_in": 0,
        "leader_changes": 1,
        "voters": 3,
    }
    base.update(changes)
    return Inputs(**base)  # type: ignore[arg-type]


def test_every_figure_is_defined_once_in_the_catalog() -> None:
    figures = MetricsEngine().figures(0.0, inputs())
    assert set(figures) <= set(catalog.BY_KEY)
    assert len(catalog.BY_KEY) == len(catalog.CATALOG)  # no key defined twice
    for metric in catalog.CATALOG:
        assert metric.scope in ("node", "cluster") and metric.source in ("gossiped", "committed", "local")
        assert metric.unit and metric.formula
        if metric.prom:
            assert metric.prom.startswith("meshtui_")
            assert metric.prom.endswith("_total") == (metric.kind == "counter")


def test_readme_metrics_section_lists_the_catalog() -> None:
    text = README.read_text()
    section = text[text.index("## Metrics"):]
    section = section[: section.index("\n## ", 4)]
    listed = set(re.findall(r"^\| `([a-z_0-9]+)` \|", section, re.MULTILINE))
    assert listed == set(catalog.BY_KEY)
    assert "leader_elections" not in text


def test_known_answers() -> None:
    engine = MetricsEngine()
    members = (
        member("n1", cpu=0.2, running=1, rtt_ms=None),
        member("n2", cpu=0.6, running=1, rtt_ms=2.0),
        member("n3", state="dead", cpu=0.9, running=2, rtt_ms=4.0),
        member("n4", state="left"),
    )
    fig = engine.figures(1000.0, inputs(
        members=members,
        participation={7: 2 / 3, 8: 1.0},
        migration_times=[900.0, 950.0, 999.0, 1000.5],
        decision_latencies=[0.001, 0.002, 0.003, 0.100],
        commit_latencies=[0.004] * 99 + [0.050],
    ))
    assert fig["connectivity_pct"] == pytest.approx(66.7)  # 2 alive of 3 not left
    assert fig["members"] == {"alive": 2, "suspect": 0, "dead": 1, "left": 1}
    assert fig["vote_participation_by_proposal"] == {"7": 0.6667, "8": 1.0}
    assert fig["vote_participation"] == pytest.approx(0.8333, abs=1e-3)
    assert fig["migrations_per_minute"] == 2  # (940, 1000]: 950 and 999
    assert fig["decision_latency_ms"] == {"p50": 2.0, "p99": 100.0}
    assert fig["commit_latency_ms"] == {"p50": 4.0, "p99": 4.0}  # nearest rank: 99th of 100
    assert fig["load_variance_stddev"] == pytest.approx(0.2)  # alive: 0.2 and 0.6
    assert fig["utilisation"] == pytest.approx(0.5)  # 2 running / 4 slots over alive members
    assert fig["latency_ms"]["per_peer"] == {"n2": 2.0, "n3": 4.0}
    assert fig["crash_tolerance_f"] == 1 and fig["byzantine_tolerance_f"] == 0
    assert fig["leader_changes"] == 1
    assert fig["partition_recovery_s"] is None


@pytest.mark.parametrize(
    ("engine", "voters", "own", "expected"),
    [("raft", 1, None, 0), ("raft", 7, None, 0), ("pbft", 4, None, 1), ("pbft", 7, None, 2),
     ("pbft", 4, 1, 1), ("other", 4, 3, 3)],
)
def test_byzantine_tolerance_is_computed(engine: str, voters: int, own: int | None, expected: int) -> None:
    fig = MetricsEngine().figures(0.0, inputs(engine=engine, voters=voters, engine_byzantine_f=own))
    assert fig["byzantine_tolerance_f"] == expected


def test_throughput_is_a_rate_over_the_window_and_hotspots_come_from_gossip() -> None:
    engine = MetricsEngine()
    hot = (member("n1", cpu=0.95), member("n2", cpu=0.1))
    for second in range(30):
        values = engine.tick(float(second), 5000.0 + second, inputs(members=hot, messages_in=second * 40))
    fig = engine.figures(5030.0, inputs(members=hot))
    assert fig["throughput_msgs_per_s"] == {"10s": 40.0, "1m": 40.0}
    assert fig["hotspots"] == ["n1"]  # default hot_window is 10 s: every node sees it
    assert values["hotspots"] == 1.0 and values["throughput"] == 40.0
