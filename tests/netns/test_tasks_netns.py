"""Issue 5's task acceptance list on real network-namespace hosts (root).

One lab of 4 namespace hosts is shared by the module; every host runs a
``mesh-agent`` with ``--profile lan`` (SWIM death ≈ 4-10 s, task lease 10 s),
``--slots 2``, ``--load-source tasks`` (the hosts share one 2-core kernel, so
only the agent's own task CPU tells hosts apart) and ``--run-as ""``: tasks
run as the agent's user (root) because they append heartbeats to a log in the
test's shared directory and run this venv's interpreter, which ``nobody``
cannot execute.  Agents join host 0 by address (no mDNS).

Each test starts from a healed mesh with all 4 agents alive and 4 Raft voters
(``healthy``), restarting whatever an earlier test killed.

Runs write heartbeat lines ``task epoch pid time`` to a shared file every
0.1 s while they live; ``overlaps`` proves no two runs of one task were ever
alive at the same time (a killed run's life ends at its last heartbeat).
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.wait import wait_until

from meshtui.client import ClientError
from netns.agents import LabAgents, keygen
from netns.harness import NetnsLab

pytestmark = [pytest.mark.root, pytest.mark.timeout(420)]

HOSTS = range(4)
CONVERGE_TIMEOUT = 60.0
"""Seconds for all agents to see each other alive and agree on 4 voters."""
HOT_READING = 0.1
"""Task CPU the keyed host must read (in 5 samples) before the others are released:
2 burners on 2 slots read ~1.0 on an idle box, far less under a concurrent suite."""
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- task bodies


def burn_task(seconds: float) -> list[str]:
    """A run that keeps one CPU busy for ``seconds`` of wall time."""
    code = (
        "import time\n"
        f"end = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end:\n"
        "    pass\n"
    )
    return [sys.executable, "-c", code]


def heartbeat_task(log: Path, seconds: float) -> list[str]:
    """A run that appends ``task epoch pid time`` to ``log`` every 0.1 s for ``seconds``."""
    code = (
        "import os, time\n"
        f"end = time.time() + {seconds}\n"
        f"log = open({str(log)!r}, 'a')\n"
        "tag = f\"{os.environ['MESH_TASK_ID']} {os.environ['MESH_TASK_EPOCH']} {os.getpid()}\"\n"
        "while time.time() < end:\n"
        "    log.write(f'{tag} {time.time()}\\n'); log.flush(); time.sleep(0.1)\n"
    )
    return [sys.executable, "-c", code]


def run_spans(log: Path) -> dict[str, list[tuple[float, float, int, int]]]:
    """``{task: [(first beat, last beat, epoch, pid), ...]}`` sorted by start."""
    lives: dict[tuple[str, int, int], list[float]] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue  # a line torn by SIGKILL mid-write
        task, epoch, pid, at = parts[0], int(parts[1]), int(parts[2]), float(parts[3])
        span = lives.setdefault((task, epoch, pid), [at, at])
        span[0], span[1] = min(span[0], at), max(span[1], at)
    by_task: dict[str, list[tuple[float, float, int, int]]] = defaultdict(list)
    for (task, epoch, pid), (start, end) in lives.items():
        by_task[task].append((start, end, epoch, pid))
    for runs in by_task.values():
        runs.sort()
    return by_task


def overlaps(log: Path) -> list[str]:
    """Every pair of runs of one task whose lives intersect (empty = fencing held)."""
    bad = []
    for task, runs in run_spans(log).items():
        for (s1, e1, ep1, p1), (s2, e2, ep2, p2) in itertools.pairwise(runs):
            if s2 <= e1:
                bad.append(f"{task}: run {p1}@{ep1} [{s1:.2f},{e1:.2f}] overlaps "
                           f"{p2}@{ep2} [{s2:.2f},{e2:.2f}]")
    return bad


# ---------------------------------------------------------------- cluster


@pytest.fixture(scope="module")
def mesh() -> Iterator[LabAgents]:
    from rootpolicy import enforce_root_policy

    enforce_root_policy()
    base = Path(tempfile.mkdtemp(prefix="mt-tasks-"))
    key = keygen(base / "cluster.key")
    with NetnsLab(len(HOSTS)) as lab:
        agents = LabAgents(
            lab, key, base, mdns=False, seeds=[0], profile="lan",
            common_args=["--slots", "2", "--run-as", ""],
        )
        try:
            for host in HOSTS:
                agents.start(host)
            agents.wait_ready(HOSTS, timeout=30)
            yield agents
        finally:
            agents.stop_all()
            shutil.rmtree(base, ignore_errors=True)


def _voters(agents: LabAgents, host: int) -> int:
    status = agents.try_status(host)
    if status is None or status.get("read_only"):
        return 0
    return len(status["consensus"].get("voters") or [])


@pytest.fixture
def healthy(mesh: LabAgents, tmp_path: Path) -> LabAgents:
    """Heal faults, restart dead or stopped agents, wait for 4 alive members and 4 voters."""
    mesh.lab.heal()
    for host in HOSTS:
        agent = mesh.agents[host]
        if agent.stopped:
            mesh.kill(host, signal.SIGCONT)
        if not agent.running:
            mesh.restart(host)
    mesh.wait_all_members(HOSTS, mesh.expect_all(HOSTS), CONVERGE_TIMEOUT)
    wait_until("4 voters on every host",
               lambda: all(_voters(mesh, h) == len(HOSTS) for h in HOSTS),
               CONVERGE_TIMEOUT, 0.5, detail=mesh.logs)
    return mesh


def call(agents: LabAgents, method: str, params: dict[str, Any] | None = None,
         hosts: Any = None, timeout: float = 10.0) -> Any:
    """``method`` on the first of ``hosts`` (default all running) that answers."""
    last: Exception | None = None
    for host in hosts if hosts is not None else agents.running_hosts:
        if agents.agents[host].stopped:
            continue
        try:
            return agents.call(host, method, params or {}, timeout)
        except ClientError as exc:
            last = exc
    raise AssertionError(f"no agent answered {method}: {last}")


def task_rows(agents: LabAgents, hosts: Any = None) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in call(agents, "task.list", {}, hosts)}


def leader_host(agents: LabAgents) -> int:
    status = call(agents, "status")
    leader = status["consensus"].get("leader")
    for member in status["members"]:
        if leader in (member.get("id"), member.get("name")):
            return int(member["name"][1:])
    raise AssertionError(f"no leader in {status['consensus']}")


def host_of(name: str) -> int:
    return int(name[1:])


def submit(agents: LabAgents, argv: list[str], rid: str, **params: Any) -> str:
    return str(call(agents, "task.submit", {"argv": argv, "rid": rid, **params})["id"])


def wait_states(agents: LabAgents, ids: list[str], states: set[str], timeout: float,
                hosts: Any = None) -> dict[str, dict[str, Any]]:
    last: list[dict[str, dict[str, Any]]] = [{}]

    def check() -> bool:
        try:
            last[0] = task_rows(agents, hosts)
        except AssertionError:
            return False
        return all(last[0].get(i, {}).get("state") in states for i in ids)

    def seen() -> str:
        rows = {i: (r["state"], r["node"], r["epoch"]) for i, r in last[0].items() if i in ids}
        return f"last seen: {rows}\n{agents.logs()}"

    wait_until(f"tasks {ids} to be {sorted(states)}", check, timeout, 0.5, detail=seen)
    return last[0]


# ---------------------------------------------------------------- tests


def _cpu_sample(agents: LabAgents) -> dict[str, float] | None:
    """Every host's task CPU as one agent sees it (None until all 4 are alive there)."""
    status = call(agents, "status")
    cpus = {m["name"]: float(m["cpu"] or 0.0) for m in status["members"] if m["state"] == "alive"}
    return cpus if len(cpus) == len(HOSTS) else None


def test_keyed_burst_is_spread_by_stealing_and_rebalance(healthy: LabAgents) -> None:
    """40 CPU burners keyed onto one host: load stddev halves within 60 s, ≤ 2 moves each.

    Left alone, idle hosts steal from the keyed host within one scheduling
    round (0.5 s), long before the per-second CPU figure can show the hot
    spot, so the peak would be invisible.  The other three hosts are therefore
    drained while the burst lands and until the keyed host reads hot; then they
    are undrained and work stealing (and hot→cold rebalance, once the keyed host
    has read > 0.8 for 10 s, which a busy shared box may never allow) must
    spread the work.
    """
    agents = healthy
    burst = burn_task(8.0)
    first = submit(agents, burst, "burst-0", key="hot-key", restartable=True)
    rows = wait_states(agents, [first], {"running"}, 20)
    hot = rows[first]["node"]
    cold = [f"h{h}" for h in HOSTS if f"h{h}" != hot]
    for name in cold:
        call(agents, "node.drain", {"node": name})
    ids = [first] + [
        submit(agents, burst, f"burst-{i}", key="hot-key", restartable=True) for i in range(1, 40)
    ]
    samples: list[tuple[float, float, dict[str, float]]] = []
    t0 = time.monotonic()

    def sample() -> None:
        cpus = _cpu_sample(agents)
        if cpus is not None:
            samples.append((time.monotonic() - t0, statistics.pstdev(cpus.values()), cpus))

    def trace() -> str:
        return "\n".join(f"{t:6.1f}s sd={sd:.3f} {cpus}" for t, sd, cpus in samples)

    # Hold until the hot spot has shown for a while.  Drained hosts read exactly 0,
    # so stddev = 0.43 x the keyed host's figure: ~0.43 on an idle box, less when
    # other work shares the box (the halving criterion is relative, so it holds).
    while time.monotonic() - t0 < 30:
        sample()
        if sum(1 for _, _, cpus in samples if cpus[hot] >= HOT_READING) >= 5:
            break
        time.sleep(1.0)
    else:
        raise AssertionError(f"{hot} never read hot while the others were drained\n{trace()}")
    peak_at = samples[-1][0]
    assert all(r["node"] == hot for r in task_rows(agents).values() if r["id"] in ids)
    for name in cold:
        call(agents, "node.undrain", {"node": name})
    done = False
    while time.monotonic() - t0 < peak_at + 150 and not done:
        sample()
        rows = task_rows(agents)
        done = all(rows.get(i, {}).get("state") == "succeeded" for i in ids)
        time.sleep(1.0)
    assert done, f"burst did not finish: {task_rows(agents)}\n{trace()}"
    _, peak, peak_cpus = max(samples, key=lambda s: s[1])
    # A sample counts only while the burst is still burning (total task CPU at
    # least half of the peak's): a moment when every host reads 0 between two
    # waves of runs is not balance.
    busy = 0.5 * sum(peak_cpus.values())
    after = [sd for t, sd, cpus in samples
             if peak_at < t <= peak_at + 60 and sum(cpus.values()) >= busy]
    assert after and min(after) <= peak / 2, f"stddev did not halve within 60 s\n{trace()}"
    records = [call(agents, "task.get", {"id": i}) for i in ids]
    moves = {r["id"]: r.get("migrations") or [] for r in records}
    assert max(len(m) for m in moves.values()) <= 2, moves
    reasons = [str(m.get("reason")) for ms in moves.values() for m in ms]
    ran_on = {r["node"] for r in records}
    assert len(ran_on) == len(HOSTS), f"tasks ran only on {ran_on}\n{trace()}"
    halved_at = next(t for t, sd, cpus in samples if t > peak_at and sd <= peak / 2
                     and sum(cpus.values()) >= busy) - peak_at
    print(f"\npeak stddev {peak:.3f}; min within 60 s {min(after):.3f} "
          f"(first <= half at +{halved_at:.0f} s); "
          f"moves by reason { {r: reasons.count(r) for r in set(reasons)} }\n{trace()}")


def _kill_namespace(agents: LabAgents, host: int) -> None:
    """SIGKILL everything in ``host``'s namespace: agent, watchdog and task processes."""
    ns = agents.lab.ns(host)
    for _ in range(5):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True, check=False).stdout.split()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(int(pid)).kill()
        time.sleep(0.1)
    agent = agents.agents[host]
    assert agent.proc is not None
    agent.proc.wait(timeout=10)


def _running_victim(agents: LabAgents, rows: dict[str, dict[str, Any]], ids: list[str]) -> int:
    """A non-leader host that runs at least one of ``ids``."""
    leader = leader_host(agents)
    for task in ids:
        host = host_of(rows[task]["node"])
        if host != leader:
            return host
    raise AssertionError(f"every task runs on the leader h{leader}: {rows}")


def test_killed_host_tasks_finish_elsewhere_and_stopped_agent_is_fenced(
    healthy: LabAgents, tmp_path: Path
) -> None:
    agents = healthy
    log = tmp_path / "runs.log"
    ids = [submit(agents, heartbeat_task(log, 8.0), f"kill-{i}", retries=2) for i in range(6)]
    rows = wait_states(agents, ids, {"running"}, 30)
    victim = _running_victim(agents, rows, ids)
    on_victim = [i for i in ids if rows[i]["node"] == f"h{victim}"]
    _kill_namespace(agents, victim)
    survivors = [h for h in HOSTS if h != victim]
    rows = wait_states(agents, ids, {"succeeded"}, 90, survivors)
    for task in on_victim:
        assert rows[task]["epoch"] > 1 and rows[task]["node"] != f"h{victim}", rows[task]
    assert overlaps(log) == []

    # The killed host comes back; then a hung (SIGSTOPped) agent outlives its death.
    agents.restart(victim)
    agents.wait_all_members(HOSTS, agents.expect_all(HOSTS), CONVERGE_TIMEOUT)
    log2 = tmp_path / "runs2.log"
    ids = [submit(agents, heartbeat_task(log2, 12.0), f"stop-{i}", retries=2) for i in range(6)]
    rows = wait_states(agents, ids, {"running"}, 30)
    victim = _running_victim(agents, rows, ids)
    on_victim = [i for i in ids if rows[i]["node"] == f"h{victim}"]
    survivors = [h for h in HOSTS if h != victim]
    agents.kill(victim, signal.SIGSTOP)  # the agent only: its tasks keep running
    try:
        wait_until(
            f"the survivors to reassign {on_victim} (epoch > 1)",
            lambda: all(task_rows(agents, survivors)[i]["epoch"] > 1 for i in on_victim),
            60, 0.5, detail=lambda: task_rows(agents, survivors),
        )
        stale = {(t, pid) for t, runs in run_spans(log2).items() if t in on_victim
                 for _, _, epoch, pid in runs if epoch == 1}
        # Checked while the agent is still stopped: its watchdog alone killed them.
        alive = [(t, pid) for t, pid in stale if _live_run(pid, t)]
    finally:
        agents.kill(victim, signal.SIGCONT)
    assert stale, "the stopped host's runs never wrote a heartbeat"
    assert not alive, f"stale runs still alive after the lease: {alive}"
    rows = wait_states(agents, ids, {"succeeded"}, 90)
    for task in on_victim:
        assert rows[task]["node"] != f"h{victim}", rows[task]
    assert overlaps(log2) == []
    # Back from the stop, the host does not restart or keep anything it lost:
    # once its own view has caught up (every task succeeded there), no run of
    # these tasks is alive anywhere, and no two runs of one task overlapped.
    wait_states(agents, ids, {"succeeded"}, 30, [victim])
    wait_until("no run of the tasks to be alive", lambda: not _live_runs(ids), 10, 0.2,
               detail=lambda: _live_runs(ids))
    assert overlaps(log2) == []


def _live_runs(tasks: list[str]) -> list[tuple[str, int]]:
    """``(task, pid)`` of every live run of ``tasks`` on this machine (all namespaces)."""
    wanted = set(tasks)
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            task = proc.environ().get("MESH_TASK_ID")
        except psutil.Error:
            continue
        if task in wanted:
            found.append((task, proc.pid))
    return found


def _live_run(pid: int, task: str) -> bool:
    """Is ``pid`` still a live (not zombie: its stopped parent cannot reap it) run of ``task``?"""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.environ().get("MESH_TASK_ID") == task  # not a recycled pid
    except psutil.Error:
        return False


def test_minority_is_read_only_and_commits_its_result_after_heal(
    healthy: LabAgents, tmp_path: Path
) -> None:
    agents = healthy
    log = tmp_path / "runs.log"
    # Shorter than the 10 s lease: the majority does not reassign it while cut off.
    ids = [submit(agents, heartbeat_task(log, 5.0), f"part-{i}", retries=2) for i in range(4)]
    rows = wait_states(agents, ids, {"running"}, 30)
    lone = _running_victim(agents, rows, ids)
    task = next(i for i in ids if rows[i]["node"] == f"h{lone}")
    majority = [h for h in HOSTS if h != lone]
    cut_at = time.monotonic()
    agents.lab.partition([majority, [lone]])
    try:
        agents.wait_status(lone, lambda s: bool(s["read_only"]), 15, "read-only")
        out = subprocess.run(
            [sys.executable, "-m", "meshtui.cli", "submit", "-t", agents.socket(lone),
             "--", "true"], capture_output=True, text=True, timeout=30, cwd=REPO,
        )
        assert out.returncode == 3, (out.returncode, out.stdout, out.stderr)
        assert "no quorum: cluster is read-only here" in out.stderr
        # The run on the lone host completes while cut off.
        wait_until(
            f"the cut-off run of {task} to beat for more than 4.5 s",
            lambda: any(end - start > 4.5 for start, end, _, _ in run_spans(log).get(task, [])),
            10, 0.2, detail=lambda: run_spans(log).get(task),
        )
        assert time.monotonic() - cut_at < 10, "partition outlived the lease: test is invalid"
    finally:
        agents.lab.heal()
    rows = wait_states(agents, [task], {"succeeded"}, 60)
    assert rows[task]["node"] == f"h{lone}" and rows[task]["epoch"] == 1, rows[task]
    assert rows[task]["exit_code"] == 0
    wait_states(agents, ids, {"succeeded"}, 60)
    assert overlaps(log) == []
