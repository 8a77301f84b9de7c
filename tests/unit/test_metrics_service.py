"""Issue 15: the metrics service over small fakes of the agent's components --
sampling, the report and history views, saving (at most once per interval and
on stop) and taking the history and the leader-change checkpoint back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from agent.metrics.config import MetricsConfig
from agent.metrics.history import HistoryFile
from agent.metrics.service import MetricsService
from agent.metrics.trackers import LeaderTerms
from agent.sched.config import SchedConfig
from agent.swim.members import MemberView
from agent.swim.messages import NodeLoad, NodeMeta


def member(name: str, state: str = "alive") -> MemberView:
    meta = NodeMeta(name=name, addr=f"{name}:1", caps=(), slots=2, version="t", role="voter")
    load = NodeLoad(cpu=0.2, load1=0.0, mem_free=1, mem_percent=50.0, queued=0, running=1)
    return MemberView(f"id-{name}", f"{name}:1", meta, load, state, 1, 1.5, 0.0)


class Fakes:
    """Members, consensus, state and traffic as the service reads them."""

    def __init__(self) -> None:
        self.leader_terms = LeaderTerms()
        self.commit_latencies = [0.002, 0.004]
        self.cpu_now = 0.25
        self.partitioned = False
        self.datagrams_in = 0
        self.stream_msgs_in = 0

    def members(self) -> list[MemberView]:
        return [member("n1"), member("n2"), member("n3", "dead")]

    def status(self) -> dict[str, Any]:
        return {"engine": "raft", "role": "leader", "term": 4, "commit_index": 9, "voters": ["a", "b", "c"]}

    def proposal_rows(self) -> list[dict[str, Any]]:
        return [{"id": 3, "participation": 2 / 3}]

    def decision_latencies(self) -> list[float]:
        return [0.01]

    def migration_times(self) -> list[float]:
        return [time.time() - 1.0]

    def sched_config(self, base: SchedConfig | None = None) -> SchedConfig:
        return base or SchedConfig()

    def as_dict(self) -> dict[str, Any]:
        return {"datagrams_in": self.datagrams_in}


def service(tmp_path: Path, fakes: Fakes, **config: Any) -> MetricsService:
    return MetricsService(
        config=MetricsConfig(**config), data_dir=str(tmp_path), node="n1", node_id="id-n1", version="t",
        members=fakes, consensus=fakes, state=fakes, traffic=fakes, sched=SchedConfig(),
    )


async def test_samples_report_and_save_on_stop(tmp_path: Path) -> None:
    fakes = Fakes()
    for index, term in enumerate([1, 2, 2, 3], start=1):
        fakes.leader_terms.observe(index, term)
    svc = service(tmp_path, fakes, persist_interval=3600.0)
    start = time.time() - 12.0
    for second in range(12):
        fakes.datagrams_in = 100 * second
        svc.sample(float(second), start + second)
    report = svc.report("24h")
    assert report["throughput_msgs_per_s"]["10s"] == 100.0
    assert report["leader_changes"] == 2 and report["vote_participation_by_proposal"] == {"3": 0.6667}
    assert report["members"]["dead"] == 1 and report["migrations_per_minute"] == 1
    assert report["history"]["series"]["members_alive"]["max"] == 2.0
    view = svc.scrape_view()
    assert view.term == 4 and view.voters == 3 and view.latencies["commit"] == [0.002, 0.004]
    await svc.start()
    assert not HistoryFile(tmp_path).path.exists()  # not due yet (persist_interval)
    await svc.close()
    assert HistoryFile(tmp_path).path.exists()  # saved on stop

    # A new service (a restart) takes the history and the leader-change count back.
    again_fakes = Fakes()
    again = service(tmp_path, again_fakes)
    assert again.history.samples == 12
    for index, term in enumerate([1, 2, 2, 3, 5], start=1):  # the replay, and one more leader
        again_fakes.leader_terms.observe(index, term)
    assert again_fakes.leader_terms.changes == 3


async def test_saves_at_most_once_per_interval(tmp_path: Path) -> None:
    fakes = Fakes()
    svc = service(tmp_path, fakes, persist_interval=1.0)
    await svc.start()
    try:
        path = HistoryFile(tmp_path).path
        deadline = time.monotonic() + 5
        while not path.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        first = path.stat().st_mtime_ns
        await asyncio.sleep(0.5)
        assert path.stat().st_mtime_ns == first  # within the interval: not again
    finally:
        await svc.close()


async def test_a_damaged_history_is_set_aside(tmp_path: Path) -> None:
    store = HistoryFile(tmp_path)
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b"not a history")
    svc = service(tmp_path, Fakes())
    assert svc.history.samples == 0
    assert store.path.with_suffix(".damaged").read_bytes() == b"not a history"
