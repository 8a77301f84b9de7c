"""The policies and the state machine in a loop, the way the leader runs them:
40 CPU-bound tasks keyed onto one host spread out through stealing and rebalance,
no task moves more than twice, every task finishes exactly once, and stale
executors are fenced.  A pure model: hosts run tasks for a fixed number of rounds."""

from __future__ import annotations

import statistics

import pytest

from agent.sched import (
    ClusterSnapshot,
    HeatState,
    NodeView,
    SchedConfig,
    place_many,
    plan_rebalance,
    plan_steals,
    preference_list,
    update_heat,
)
from agent.state import (
    StateMachine,
    TaskStats,
    cmd_node_register,
    cmd_task_assign,
    cmd_task_finish,
    cmd_task_migrate,
    cmd_task_start,
    cmd_task_submit,
    task_spec,
)

HOSTS = [f"h{i}" for i in range(4)]
SLOTS = 2
ROUND = 5.0  # seconds between scheduling rounds


class Mesh:
    def __init__(self, seed: int) -> None:
        self.sm = StateMachine()
        self.index = 0
        self.now = 0.0
        self.cpu = dict.fromkeys(HOSTS, 0.0)  # smoothed
        self.runs: dict[str, list[tuple[str, float, float | None]]] = {}
        self.remaining: dict[str, int] = {}  # task → rounds of work left in its current run
        for h in HOSTS:
            self.commit(cmd_node_register(h, h, "", 0.0))

    def commit(self, data: bytes) -> bool:
        self.index += 1
        return self.sm.apply(self.index, data).ok

    def snapshot(self) -> ClusterSnapshot:
        load = self.sm.node_load()
        nodes = tuple(
            NodeView(h, h, slots=SLOTS, running=load.get(h, {}).get("running", 0),
                     queued=load.get(h, {}).get("queued", 0), cpu=self.cpu[h])
            for h in HOSTS
        )  # fmt: skip
        return ClusterSnapshot(nodes, self.sm.sched_tasks(), self.now)

    def executors(self) -> None:
        """Each host finishes due runs, then starts assigned tasks into free slots."""
        for task in list(self.sm.tasks):
            if task.state == "running" and task.node is not None:
                self.remaining[task.id] -= 1
                if self.remaining[task.id] == 0:
                    ok = self.commit(
                        cmd_task_finish(
                            task.id, task.node, task.epoch, 0, TaskStats(1.0), "", self.now
                        )
                    )
                    assert ok
                    host, start, _ = self.runs[task.id][-1]
                    self.runs[task.id][-1] = (host, start, self.now)
        for h in HOSTS:
            running = sum(1 for t in self.sm.tasks if t.node == h and t.state == "running")
            waiting = [t for t in self.sm.tasks if t.node == h and t.state == "assigned"]
            for task in waiting[: max(0, SLOTS - running)]:
                assert self.commit(cmd_task_start(task.id, h, task.epoch, "", self.now))
                self.remaining[task.id] = 6
                self.runs.setdefault(task.id, []).append((h, self.now, None))
        for h in HOSTS:  # CPU-bound tasks: load follows running/slots, smoothed
            running = sum(1 for t in self.sm.tasks if t.node == h and t.state == "running")
            self.cpu[h] = 0.5 * self.cpu[h] + 0.5 * min(1.0, running / SLOTS)

    def schedule(self, heat: HeatState, cfg: SchedConfig) -> HeatState:
        self.place(cfg)
        return self.balance(heat, cfg)

    def place(self, cfg: SchedConfig) -> None:
        snap = self.snapshot()
        queued = [t for t in snap.tasks if t.state == "queued"]
        for d in place_many(queued, snap, cfg):
            task = next(t for t in queued if t.id == d.task)
            assert d.node is not None
            assert self.commit(
                cmd_task_assign(task.id, d.node, task.epoch + 1, "placed", "", self.now)
            )

    def balance(self, heat: HeatState, cfg: SchedConfig) -> HeatState:
        snap = self.snapshot()
        heat = update_heat(heat, snap, cfg)
        seen: set[str] = set()
        for mv in [*plan_steals(snap, cfg), *plan_rebalance(snap, heat, cfg)]:
            if mv.task in seen or mv.to is None:
                continue
            seen.add(mv.task)
            self.commit(cmd_task_migrate(mv.task, mv.to, str(mv.reason), "", self.now, mv.epoch))
        return heat

    def cpu_spread(self) -> float:
        """Stddev of (smoothed) CPU load across hosts: the issue's balance measure."""
        return statistics.pstdev(self.cpu.values())


def run(seed: int, balance: bool) -> tuple[Mesh, float, float]:
    """Submit the burst, run until every task succeeded; (mesh, CPU stddev at 60 s, makespan)."""
    mesh = Mesh(seed)
    cfg = SchedConfig(hot_window=10.0, min_move_interval=30.0)
    key = f"hot-key-{seed}"
    primary = preference_list(key, mesh.snapshot(), cfg)[0]
    for _ in range(40):
        assert mesh.commit(cmd_task_submit(task_spec(["burn"], key=key), "", 0.0))
    mesh.place(cfg)
    assert mesh.sm.node_load() == {primary: {"queued": 40, "running": 0}}, f"seed {seed}"
    heat = HeatState()
    spread_60 = -1.0
    for rnd in range(1, 1000):
        mesh.now = rnd * ROUND
        mesh.executors()
        mesh.place(cfg)
        if balance:
            heat = mesh.balance(heat, cfg)
        if mesh.now == 60.0:
            spread_60 = mesh.cpu_spread()
        if all(t.state == "succeeded" for t in mesh.sm.tasks):
            return mesh, spread_60, mesh.now
    raise AssertionError(f"seed {seed}: tasks did not all finish")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_keyed_burst_spreads_and_every_task_runs_once(seed: int) -> None:
    _, alone_spread, alone_makespan = run(seed, balance=False)
    mesh, spread, makespan = run(seed, balance=True)
    cfg = SchedConfig()
    print(f"seed {seed}: cpu stddev at 60 s {alone_spread:.3f} → {spread:.3f}, "
          f"makespan {alone_makespan:.0f} s → {makespan:.0f} s")  # fmt: skip
    assert spread <= alone_spread / 2, f"seed {seed}: {alone_spread:.3f} → {spread:.3f}"
    assert makespan < alone_makespan, f"seed {seed}"
    hosts_used = {runs[0][0] for runs in mesh.runs.values()}
    assert hosts_used == set(HOSTS), f"seed {seed}: only {hosts_used}"
    for task in mesh.sm.tasks:
        assert len(task.migrations) <= cfg.max_moves_per_task, f"seed {seed}: {task.id}"
        assert task.attempts == 1 and len(mesh.runs[task.id]) == 1, f"seed {seed}: {task.id}"
