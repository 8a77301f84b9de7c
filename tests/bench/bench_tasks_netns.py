"""1,000 ``true`` tasks over 4 namespace hosts x 2 slots: meshtui vs Dask and GNU parallel.

Run (root): ``.venv/bin/python tests/bench/bench_tasks_netns.py [--tasks N] [--runs R]
[--profile lan] [--skip-parallel] [--breakdown] [--py-spy DIR]``.
Dask is a bench-only install, not a project dependency:
``.venv/bin/pip install 'dask[distributed]'``.

One ``NetnsLab(4)``; each host runs a ``mesh-agent`` (``--slots 2``,
``--load-source tasks``, ``--run-as ""``) and an OpenSSH ``sshd``.  In one run:

* meshtui: one async ``ControlClient`` on the leader's socket submits the N
  tasks with up to 128 calls in flight and follows the ``tasks`` event stream;
  makespan = first submit → the last task's ``finished`` event (checked
  against ``task.list``: every task succeeded).
* anchor: GNU parallel in host 0's namespace, ``--sshlogin 2/root@h0,...,2/root@h3``
  (2 job slots per host, as the agents have), runs the same N ``true`` commands
  over SSH; makespan = its wall time.  Issue 5 quotes about 170 s for this on
  this box and asks for ours ≤ 1/20 of it.  Slow (~100 s): run once, after the
  last run, unless ``--skip-parallel``.
* anchor: Dask (issue 14), what a Python user would pick instead:
  ``LocalCluster(n_workers=4, threads_per_worker=2)`` (4 worker processes x 2
  threads: the same 8 slots) on this host, no namespaces, no network between
  machines, no durability, no fencing, runs the same N ``subprocess.run(["true"])``
  calls; makespan = ``client.map`` → the last result gathered (the cluster is
  started and its workers answered a warm-up call first, as our agents have
  formed their cluster first).  Measured in every run right after ours, with
  our agents stopped.  Target: ours ≤ Dask's.

Every figure is printed with the load average; each run uses a fresh lab.
``--breakdown`` reads every task's record after the run and prints where a
task's time went (median/p90): submit commit → placement (``assigned_at -
created_at``), placement → start on its host (queueing for a slot dominates:
every task is placed at once), the run itself, and the host's finish time →
the bench seeing the committed ``finished`` event; plus the agents' CPU
seconds per task (psutil: the agent process, and its reaped children = the
tasks' own processes).  ``--py-spy DIR`` records the leader and one other
agent with py-spy (raw format, 200 Hz) during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import checkout_path  # noqa: F401  (this checkout and tests/ first on sys.path)
import psutil
from netns.agents import LabAgents, keygen
from netns.harness import NetnsLab
from support.wait import wait_until

from meshtui.client import ClientError, ControlClient

HOSTS = 4
SLOTS = 2
INFLIGHT = 128
CGROUP_MOUNT = 'mount -t cgroup2 mesh-cgroup /sys/fs/cgroup && exec "$@"'
"""``ip netns exec`` gives each agent a fresh sysfs on /sys, which hides the host's
cgroup mounts: an agent would fall back to the per-task Python subreaper there.  A
root agent on a real host finds the cgroup hierarchy, so (unless ``--no-cgroups``)
each agent mounts the cgroup2 hierarchy in its own mount namespace first."""


class CgroupLabAgents(LabAgents):
    """Lab agents that see the cgroup2 hierarchy, as a root agent on a host does."""

    def argv(self, host: int, extra_args: Sequence[str] = (),
             key_file: Path | None = None) -> list[str]:
        return ["sh", "-c", CGROUP_MOUNT, "mesh-cgroup",
                *super().argv(host, extra_args, key_file)]


def loadavg() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole box from /proc/stat (iowait and idle not busy)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def busy_since(before: tuple[int, int]) -> str:
    """The share of the box's CPU time that was busy since ``before`` (every process:
    ours or Dask, the bench, and anyone else's load)."""
    busy, total = cpu_ticks()
    return f"box CPU {100 * (busy - before[0]) / max(1, total - before[1]):.0f}% busy"


def run_true(_i: int) -> int:
    """One Dask task: what each of ours runs."""
    return subprocess.run(["true"], check=False).returncode


def run_dask(count: int) -> tuple[float, str]:
    """Dask anchor: ``count`` ``subprocess.run(["true"])`` on 4 workers x 2 threads; its
    makespan and a line of its CPU per task (psutil: this process, which holds the
    scheduler and the client, and the workers with their reaped ``true``s)."""
    try:
        import dask
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise SystemExit("Dask is missing (bench-only anchor): "
                         ".venv/bin/pip install 'dask[distributed]'") from None
    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    # Dask's scratch files go to a directory of ours, removed after (its default,
    # /tmp/dask-scratch-space, would stay behind).
    with tempfile.TemporaryDirectory(prefix="mt-bench-dask-") as scratch, \
            dask.config.set({"temporary-directory": scratch}), \
            LocalCluster(n_workers=HOSTS, threads_per_worker=SLOTS, processes=True,
                         dashboard_address=None, local_directory=scratch) as cluster, \
            Client(cluster) as client:
        client.gather(client.map(run_true, range(HOSTS * SLOTS), pure=False))  # warm-up
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        before = [p.cpu_times() for p in procs]
        ticks = cpu_ticks()
        started = time.monotonic()
        codes = client.gather(client.map(run_true, range(count), pure=False))
        wall = time.monotonic() - started
        busy = busy_since(ticks)
        after = [p.cpu_times() for p in procs]
    if any(codes):
        raise SystemExit(f"Dask: {sum(1 for c in codes if c)} of {count} `true` runs failed")
    own = sum(a.user + a.system - b.user - b.system for a, b in zip(after, before, strict=True))
    kids = sum(a.children_user + a.children_system - b.children_user - b.children_system
               for a, b in zip(after[1:], before[1:], strict=True))
    return wall, (f"    CPU ms per task, Dask processes (scheduler+client+4 workers) "
                  f"{1000 * own / count:.2f}; task processes {1000 * kids / count:.2f}; {busy}")


async def call_retry(client: ControlClient, method: str, params: dict[str, Any]) -> Any:
    """``method``, retried through leader changes (submits carry a rid: idempotent)."""
    for _ in range(50):
        try:
            return await client.call(method, params, timeout=60.0)
        except ClientError as exc:
            if exc.code not in ("no_quorum", "not_leader", "unavailable"):
                raise
            await asyncio.sleep(0.2)
    raise SystemExit(f"{method} failed 50 times through leader changes")


@dataclasses.dataclass
class OursResult:
    makespan: float
    by_host: dict[str, int]
    seen: dict[str, float]
    """Task id -> wall time the bench saw its ``finished`` event."""
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """``task.get`` of every task (with ``--breakdown``)."""
    client_cpu: float = 0.0
    """CPU seconds of this process (the client: submits, the event stream) until the
    makespan ends."""


async def run_ours(sock: str, count: int, timeout: float, breakdown: bool) -> OursResult:
    """Makespan of ``count`` ``true`` tasks and the hosts they ran on."""
    events = await ControlClient.connect_unix(sock)
    client = await ControlClient.connect_unix(sock)
    # Only the kinds read here: the agent drops the rest before encoding them (a
    # failed `true` is a ``finished`` event too; ``lost`` ends a task without one).
    sub = await events.subscribe(["tasks:finished", "tasks:lost"])
    ids: set[str] = set()
    finished: set[str] = set()
    gate = asyncio.Semaphore(INFLIGHT)
    all_done = asyncio.Event()
    early: set[str] = set()  # finished events that beat their submit reply
    seen: dict[str, float] = {}

    async def follow() -> None:
        async for item in sub:
            if item.get("event") == "overflow":
                continue  # the final task.list check covers anything missed
            data = item.get("data") or {}
            if data.get("kind") not in ("finished", "lost"):
                continue
            task_id = str((data.get("task") or {}).get("id"))
            seen.setdefault(task_id, time.time())
            (finished if task_id in ids else early).add(task_id)
            if len(finished) == count:
                all_done.set()

    async def one(i: int) -> None:
        async with gate:
            result = await call_retry(
                client, "task.submit", {"argv": ["true"], "rid": f"bench-{i}", "retries": 2}
            )
            task_id = str(result["id"])
            ids.add(task_id)
            if task_id in early:
                finished.add(task_id)
                if len(finished) == count:
                    all_done.set()

    follower = asyncio.create_task(follow())
    cpu_before = sum(psutil.Process().cpu_times()[:2])
    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    deadline = started + timeout
    # Events are the fast path; task.list (every 2 s) is the authority.
    while not all_done.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), 2.0)
        if all_done.is_set():
            break
        rows = await call_retry(client, "task.list", {})
        if all(r["state"] in ("succeeded", "failed", "lost") for r in rows if r["id"] in ids):
            break
    makespan = time.monotonic() - started
    client_cpu = sum(psutil.Process().cpu_times()[:2]) - cpu_before
    rows = await call_retry(client, "task.list", {})
    follower.cancel()
    records: list[dict[str, Any]] = []
    if breakdown:
        gate2 = asyncio.Semaphore(32)

        async def get(task_id: str) -> dict[str, Any]:
            async with gate2:
                record: dict[str, Any] = await call_retry(client, "task.get", {"id": task_id})
                return record

        records = list(await asyncio.gather(*(get(t) for t in sorted(ids))))
    await events.close()
    await client.close()
    mine = [r for r in rows if r["id"] in ids]
    bad = [r for r in mine if r["state"] != "succeeded"]
    if len(mine) != count or bad:
        raise SystemExit(f"{len(bad)} of {count} tasks did not succeed: {bad[:5]}")
    by_host: dict[str, int] = {}
    for row in mine:
        by_host[str(row["node"])] = by_host.get(str(row["node"]), 0) + 1
    return OursResult(makespan, by_host, seen, records, client_cpu)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def print_breakdown(result: OursResult) -> None:
    """Where a task's time went, from the records' own timestamps (one kernel clock)."""
    stages: dict[str, list[float]] = {"submit -> placed": [], "placed -> started": [],
                                      "run (spawn..exit)": [], "exit -> finish seen": []}
    for rec in result.records:
        stamps = [rec.get(k) for k in ("created_at", "assigned_at", "started_at", "finished_at")]
        if any(v is None for v in stamps):
            continue
        created, assigned, started, finished = (float(v) for v in stamps)
        duration = float(rec.get("duration") or 0.0)
        stages["submit -> placed"].append(assigned - created)
        stages["placed -> started"].append(started - assigned)
        stages["run (spawn..exit)"].append(duration)
        seen = result.seen.get(str(rec["id"]))
        if seen is not None:
            stages["exit -> finish seen"].append(seen - finished)
    for name, values in stages.items():
        print(f"    {name:22s} median {1000 * pct(values, 0.5):8.1f} ms   "
              f"p90 {1000 * pct(values, 0.9):8.1f} ms   (n={len(values)})")
    starts = sorted(rec["started_at"] for rec in result.records if rec.get("started_at"))
    if len(starts) > 1:
        print(f"    starts: first→last {starts[-1] - starts[0]:.2f} s, "
              f"{(len(starts) - 1) / max(1e-9, starts[-1] - starts[0]):.0f} starts/s over 8 slots")


class CpuMeter:
    """CPU seconds of each agent (itself; and its reaped children: the tasks)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.before = {name: p.cpu_times() for name, p in self.procs.items()}

    def used(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name, proc in self.procs.items():
            now, then = proc.cpu_times(), self.before[name]
            out[name] = (now.user + now.system - then.user - then.system,
                         now.children_user + now.children_system
                         - then.children_user - then.children_system)
        return out


def settle(pids: dict[str, int], quiet: float = 0.1, window: float = 0.5,
           timeout: float = 15.0) -> float:
    """Wait until the agents together use less than ``quiet`` of a core over ``window``
    seconds (their start-up work is done: a formed cluster still gossips its
    metadata, starts each watchdog, writes its first snapshot); the seconds waited.
    Dask's cluster gets a warm-up call too; without this the first second of the
    agents' own start-up was charged to the tasks."""
    procs = [psutil.Process(pid) for pid in pids.values()]

    def total() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = total()
        time.sleep(window)
        if (total() - before) / window < quiet:
            break
    return time.monotonic() - started


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--format", "raw",
                             "-o", str(out), "-r", "200"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_parallel(lab: NetnsLab, workdir: Path, count: int) -> float:
    """GNU parallel over SSH from host 0 to all 4 hosts, 2 jobs each; wall seconds."""
    client_key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)],
                   check=True)
    pub = (workdir / "id_ed25519.pub").read_text()
    for host in range(HOSTS):
        lab.start_sshd(host, pub, workdir / "hostkeys")
    ssh = (f"ssh -i {client_key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
           "-o BatchMode=yes -o LogLevel=ERROR")
    logins = ",".join(f"{SLOTS}/root@{lab.addr(h)}" for h in range(HOSTS))
    # Warm-up: one command per host, so key exchange problems fail here, not in the timing.
    for host in range(HOSTS):
        out = lab.run(0, [*ssh.split(), f"root@{lab.addr(host)}", "true"], timeout=30)
        if out.returncode != 0:
            raise SystemExit(f"ssh to host {host} failed: {out.stderr}")
    argv = ["parallel", "--will-cite", "--ssh", ssh, "--sshlogin", logins, "true", ":::",
            *[str(i) for i in range(count)]]
    started = time.monotonic()
    out = lab.run(0, argv, timeout=3600)
    wall = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"GNU parallel failed ({out.returncode}): {out.stderr[-2000:]}")
    return wall


def run_once(args: argparse.Namespace, run: int, with_parallel: bool) -> dict[str, float]:
    """One fresh lab: ours (then the agents stop), Dask, maybe GNU parallel."""
    workdir = Path(tempfile.mkdtemp(prefix="mt-bench-tasks-"))
    key = keygen(workdir / "cluster.key")
    figures: dict[str, float] = {}
    with NetnsLab(HOSTS) as lab:
        kind = LabAgents if args.no_cgroups else CgroupLabAgents
        agents = kind(lab, key, workdir, mdns=False, seeds=[0], profile=args.profile,
                      common_args=["--slots", str(SLOTS), "--run-as", ""])
        try:
            for host in range(HOSTS):
                agents.start(host)
            agents.wait_all_members(range(HOSTS), agents.expect_all(range(HOSTS)), 60)

            def voters() -> bool:
                status = agents.try_status(0)
                return status is not None and not status["read_only"] \
                    and len(status["consensus"]["voters"]) == HOSTS

            wait_until(f"{HOSTS} voters", voters, 60, 0.5, detail=agents.logs)
            leader = int(agents.status(0)["consensus"]["leader"][1:])
            sock = agents.socket(leader)
            pids = {agents.name(h): a.proc.pid for h, a in agents.agents.items()
                    if a.proc is not None}
            spies = []
            if args.py_spy:
                other = (leader + 1) % HOSTS
                outdir = Path(args.py_spy)
                outdir.mkdir(parents=True, exist_ok=True)
                spies = [start_py_spy(pids[agents.name(leader)], outdir / f"run{run}-leader.txt"),
                         start_py_spy(pids[agents.name(other)], outdir / f"run{run}-host.txt")]
                time.sleep(1.0)
            settled = settle(pids)
            meter = CpuMeter(pids)
            load_before = loadavg()
            ticks = cpu_ticks()
            ours = asyncio.run(run_ours(sock, args.tasks, 600.0, args.breakdown))
            used = meter.used()
            busy = busy_since(ticks)
            client_ms = 1000 * ours.client_cpu / args.tasks
            for spy in spies:
                spy.send_signal(2)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(30)
        finally:
            agents.stop_all()
        figures["ours"] = ours.makespan
        log_text = agents.agents[leader].log_path.read_text(errors="replace")
        containment = next((line.split("task containment: ", 1)[1] for line in log_text.splitlines()
                            if "task containment: " in line), "unknown")
        print(f"run {run}: {args.tasks} `true` tasks, {HOSTS} namespace hosts x {SLOTS} slots "
              f"(agents: --profile {args.profile}; leader h{leader}; idle after "
              f"{settled:.1f} s)\n  containment: {containment}")
        print(f"  meshtui:                   {ours.makespan:8.2f} s makespan "
              f"({args.tasks / ours.makespan:.0f} tasks/s; per host "
              f"{dict(sorted(ours.by_host.items()))}) ({load_before} before, {loadavg()} after)")
        agent_ms = {n: 1000 * u[0] / args.tasks for n, u in sorted(used.items())}
        child_ms = sum(u[1] for u in used.values()) * 1000 / args.tasks
        print("    CPU ms per task, agent processes: "
              + ", ".join(f"{n}{'*' if n == f'h{leader}' else ''} {v:.2f}"
                          for n, v in agent_ms.items())
              + f" (sum {sum(agent_ms.values()):.2f}); task processes {child_ms:.2f}; "
              f"the bench's client {client_ms:.2f}; {busy}")
        if args.breakdown:
            print_breakdown(ours)
        dask, dask_cpu = run_dask(args.tasks)
        figures["dask"] = dask
        print(f"  Dask LocalCluster(4x2):    {dask:8.2f} s makespan "
              f"({args.tasks / dask:.0f} tasks/s) ({loadavg()})\n{dask_cpu}")
        print(f"  ratio: ours/Dask = {ours.makespan / dask:.2f} (target <= 1.00: "
              f"{'meets' if ours.makespan <= dask else 'misses'})")
        if with_parallel:
            anchor = run_parallel(lab, workdir, args.tasks)
            figures["parallel"] = anchor
            print(f"  GNU parallel --sshlogin:   {anchor:8.2f} s makespan "
                  f"({args.tasks / anchor:.1f} tasks/s) ({loadavg()})")
            print(f"  ratio: ours is {anchor / ours.makespan:.1f}x faster (target >= 20x: "
                  f"{'meets' if anchor / ours.makespan >= 20 else 'misses'})")
    shutil.rmtree(workdir, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="fresh labs, each ours then Dask")
    parser.add_argument("--profile", choices=["lan", "local"], default="lan")
    parser.add_argument("--skip-parallel", action="store_true",
                        help="no GNU parallel anchor (the slow part; else after the last run)")
    parser.add_argument("--no-cgroups", action="store_true",
                        help="agents without the cgroup mount: the per-task subreaper")
    parser.add_argument("--breakdown", action="store_true",
                        help="per-task latency breakdown from the task records")
    parser.add_argument("--py-spy", default="", metavar="DIR",
                        help="py-spy raw profiles of the leader and one host per run")
    args = parser.parse_args()
    # A SIGTERM (timeout, kill) unwinds through the labs' finally blocks: namespaces
    # and agents are removed, as on any other failure.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    if not args.skip_parallel and shutil.which("parallel") is None:
        raise SystemExit("GNU parallel is missing: apt-get install parallel")
    print(f"bench_tasks_netns: {os.cpu_count()} CPUs, {loadavg()}")
    results = [run_once(args, run + 1, not args.skip_parallel and run == args.runs - 1)
               for run in range(args.runs)]
    ours = [r["ours"] for r in results]
    dask = [r["dask"] for r in results]
    ratios = [r["ours"] / r["dask"] for r in results]
    print(f"summary over {args.runs} run(s): meshtui {min(ours):.2f}-{max(ours):.2f} s "
          f"(median {statistics.median(ours):.2f}), Dask {min(dask):.2f}-{max(dask):.2f} s; "
          f"ours/Dask per run {min(ratios):.2f}-{max(ratios):.2f} ({loadavg()})")


if __name__ == "__main__":
    main()
