"""Task containment against the real kernel: nothing a task starts outlives it.

Every test that needs cgroups or another user needs root: it skips without
root, and fails under ``CI=true`` (``tests/rootpolicy.py``).  Escaped
processes are found by scanning ``/proc`` for a unique ``sleep 301.<marker>``
argument the shell builds from an environment variable (so the shell's own
command line never matches).  Fixtures kill every marked process and remove
this test's cgroups even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from rootpolicy import enforce_root_policy, in_ci
from support.wait import wait_until

from agent.containment import Containment
from agent.containment import cgroups as cg
from agent.containment.cgroups import TaskGroup
from agent.errors import TaskError
from agent.executor import ExecEvent, Executor

pytestmark = pytest.mark.timeout(60)

MakeExecutor = Callable[..., Executor]

CHILDREN = 20
"""``setsid sleep`` children per task, as in the report (20 started, 11 survived)."""

# 20 setsid children and a double-forking daemon (stdio detached, new session,
# parent gone), then wait for the test's go file (bounded: 10 s) or sleep on.
ESCAPERS = (
    'for i in $(seq $N); do setsid sleep "301.$M" & done; '
    '(setsid sh -c "exec sleep 301.$M" </dev/null >/dev/null 2>&1 &) & '
)
WAIT_GO = "i=0; while [ ! -e go ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; echo done"


@pytest.fixture
def root() -> None:
    enforce_root_policy(())


@pytest.fixture
def marker() -> Iterator[str]:
    value = f"{os.getpid()}{time.monotonic_ns() % 10**9:09d}"
    try:
        yield value
    finally:
        for pid in marked(value):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def marked(marker: str) -> list[int]:
    """Live processes whose argv holds ``301.<marker>``."""
    wanted = f"301.{marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in argv:
            found.append(int(name))
    return found


GONE = 10.0
"""Seconds for killed processes to leave /proc: at once on an idle box; the room is
for a loaded one (a process that escaped would live for its whole ``sleep 300``)."""


def wait_count(marker: str, predicate: Callable[[int], bool], within: float, what: str) -> list[int]:
    """The processes marked ``marker`` once ``predicate(their count)`` holds."""
    seen: list[int] = []

    def check() -> bool:
        seen[:] = marked(marker)
        return predicate(len(seen))

    wait_until(what, check, within, 0.02, detail=lambda: f"{len(seen)} marked processes: {seen}")
    return list(seen)


async def await_count(
    marker: str, predicate: Callable[[int], bool], within: float, what: str
) -> list[int]:
    return await asyncio.to_thread(wait_count, marker, predicate, within, what)


@pytest.fixture
async def make_executor(tmp_path: Path) -> AsyncIterator[MakeExecutor]:
    """``make_executor(mode, **kw)``: an executor on its own node id, shut down (and
    its node's cgroups cleaned) at teardown."""
    made: list[Executor] = []

    def make(mode: str = "auto", **kw: object) -> Executor:
        index = len(made)
        data_dir = tmp_path / f"data{index}"
        data_dir.mkdir(mode=0o700)
        kw.setdefault("node_id", f"mt-test-{os.getpid()}-{index}")
        executor = Executor(data_dir, slots=4, containment=mode, kill_grace=0.5, **kw)  # type: ignore[arg-type]
        made.append(executor)
        return executor

    try:
        yield make
    finally:
        for executor in made:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(executor.shutdown(), 20)
            node = executor.containment.node
            Containment(node, "auto", executor.containment.cgroup_root).cleanup_stale()


async def start_escapers(executor: Executor, task_id: str, marker: str, tail: str) -> list[int]:
    await executor.start(task_id, 1, ESCAPERS + tail, env={"M": marker, "N": str(CHILDREN)})
    pids = await await_count(marker, lambda n: n >= CHILDREN + 1, 15,
                             f"{CHILDREN + 1} escapers to start")
    assert len(pids) == CHILDREN + 1, f"{len(pids)} escapers started"
    # Each left the task's session: a signal to the task's process group misses them.
    # A `setsid sleep` is marked from its fork, before it calls setsid(): wait for that.
    run_pid = _leader_pid(executor, task_id)
    own = (run_pid, os.getsid(run_pid))
    await asyncio.to_thread(
        wait_until, "the escapers to leave the task's session",
        lambda: all(os.getsid(pid) not in own for pid in pids), 10, 0.02,
        detail=lambda: f"sessions {[os.getsid(p) for p in pids]}, the task's {own}",
    )
    return pids


def _leader_pid(executor: Executor, task_id: str) -> int:
    return executor._runs[task_id].pid


# ---------------------------------------------------------------- containment


@pytest.mark.parametrize("mode", ["cgroup", "subreaper"])
@pytest.mark.parametrize("ending", ["exit", "cancel"])
async def test_nothing_outlives_the_task(
    root: None, make_executor: MakeExecutor, marker: str, mode: str, ending: str
) -> None:
    # As "nobody", the report's case: the escapers are not even the agent's user.
    executor = make_executor(mode, run_as="nobody")
    assert executor.containment.uses_cgroups == (mode == "cgroup")
    tail = WAIT_GO if ending == "exit" else "sleep 300"
    pids = await start_escapers(executor, "t", marker, tail)
    nobody = pwd.getpwnam("nobody").pw_uid
    assert {os.stat(f"/proc/{pid}").st_uid for pid in pids} == {nobody}
    if ending == "exit":
        (executor.data_dir / "tasks" / "t" / "work" / "go").touch()
        event = await asyncio.wait_for(executor.wait("t"), 10)
        assert event is not None and (event.reason, event.exit_code) == ("exit", 0)
        assert executor.read_output("t", 1, "out", 0)[0] == b"done\n"
    else:
        event = await asyncio.wait_for(executor.cancel("t"), 10)
        assert event is not None and event.reason == "cancelled"
    await await_count(marker, lambda n: n == 0, GONE,
                      f"every process of the task to die with it ({mode}, {ending})")
    assert executor.running() == {}


async def test_run_in_cgroup_is_killed_through_it_and_its_dirs_removed(
    root: None, make_executor: MakeExecutor, marker: str
) -> None:
    events: list[ExecEvent] = []
    executor = make_executor("cgroup", on_event=events.append)
    await start_escapers(executor, "t", marker, "sleep 300")
    dirs = [Path(d) for d in events[0].cgroups]
    assert dirs and all(d.name == "t-1" and d.parent.name == executor.containment.node for d in dirs)
    assert events[0].reaper is False
    members = cg.member_pids(dirs)
    assert set(marked(marker)) <= members  # setsid did not leave the cgroup
    usage = executor.usage("t")
    assert usage is not None and usage.nprocs >= 1
    await executor.start("t", 2, "true")  # fencing: the stale run dies through its cgroup first
    await await_count(marker, lambda n: n == 0, GONE, "the stale run's processes to die")
    assert not any(d.exists() for d in dirs)
    await executor.wait("t")


@pytest.mark.parametrize("run_as", ["", "nobody"])
async def test_cgroup_run_is_in_its_group_from_its_first_instruction(
    root: None, make_executor: MakeExecutor, run_as: str
) -> None:
    # The fast spawn path (no preexec_fn, so Popen can vfork): a shell joins the
    # groups, then execs the task, through setpriv for another user.  The task's
    # own first look at /proc/self already finds it inside, as its user.
    from agent.containment import jail

    executor = make_executor("cgroup", run_as=run_as or None)
    group = executor.containment.prepare("probe", 1)
    try:
        argv, extra = group.popen_args(["true"], pwd.getpwnam(run_as) if run_as else None)
        assert "preexec_fn" not in extra and argv[:3] == ["/bin/sh", "-c", jail.JOIN_SCRIPT]
    finally:
        group.settle_sync()
    await executor.start("t", 1, ["sh", "-c", "cat /proc/$$/cgroup; id -u; id -G"])
    event = await asyncio.wait_for(executor.wait("t"), 10)
    assert event is not None and event.exit_code == 0
    out = executor.read_output("t", 1, "out", 0)[0].decode()
    kill_dir = executor.containment.kill_hierarchy
    assert kill_dir is not None
    assert f"/meshtui/{executor.containment.node}/t-1" in out
    uid = pwd.getpwnam(run_as).pw_uid if run_as else 0
    lines = out.splitlines()
    assert lines[-2] == str(uid)
    if run_as:
        assert lines[-1] == str(pwd.getpwnam(run_as).pw_gid)  # no supplementary groups


async def test_a_missing_command_in_a_cgroup_is_refused_and_leaves_no_group(
    root: None, make_executor: MakeExecutor
) -> None:
    executor = make_executor("cgroup")
    with pytest.raises(TaskError, match="command not found"):
        await executor.start("t", 1, ["no-such-command-here"])
    assert executor.running() == {}
    kill = executor.containment.kill_hierarchy
    assert kill is not None and not (kill.node_dir(executor.containment.node) / "t-1").exists()


async def test_subreaper_run_reports_the_task_status(root: None, make_executor: MakeExecutor) -> None:
    events: list[ExecEvent] = []
    executor = make_executor("subreaper", on_event=events.append)
    await executor.start("t", 1, "exit 5")
    event = await asyncio.wait_for(executor.wait("t"), 10)
    assert event is not None and event.exit_code == 5
    assert events[0].reaper is True and events[0].cgroups == ()
    await executor.start("u", 1, "kill -TERM $$")
    event = await asyncio.wait_for(executor.wait("u"), 10)
    assert event is not None and event.exit_code == -15


async def test_stale_groups_are_killed_at_start_and_other_nodes_left_alone(
    root: None, make_executor: MakeExecutor, marker: str, tmp_path: Path
) -> None:
    executor = make_executor("cgroup")
    other = make_executor("cgroup")
    await start_escapers(executor, "t", marker, "sleep 300")
    other_marker = marker + "9"
    try:
        await start_escapers(other, "t", other_marker, "sleep 300")
        # A new executor for the first node (the agent restarted after a crash).
        data_dir = tmp_path / "restarted"
        data_dir.mkdir(mode=0o700)
        Executor(data_dir, containment="cgroup", node_id=executor.containment.node)
        await await_count(marker, lambda n: n == 0, GONE, "the stale node's processes to die")
        assert len(marked(other_marker)) == CHILDREN + 1  # another node's tasks: untouched
        event = await asyncio.wait_for(executor.wait("t"), 10)
        assert event is not None and event.exit_code == -9
    finally:
        for pid in marked(other_marker):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("mode", ["cgroup", "subreaper"])
async def test_watchdog_kills_through_the_jail(
    root: None, make_executor: MakeExecutor, marker: str, mode: str
) -> None:
    from agent import watchdog

    events: list[ExecEvent] = []
    executor = make_executor(mode, on_event=events.append)
    await start_escapers(executor, "t", marker, "sleep 300")
    started = events[0]
    proc = subprocess.Popen([sys.executable, "-m", "agent.watchdog"], stdin=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdin is not None
        lines = ["lease 0.2", *watchdog.registration(started.pid, started.cgroups, started.reaper)]
        proc.stdin.write("".join(f"{line}\n" for line in lines).encode())
        proc.stdin.flush()  # and no beat: the lease runs out
        await await_count(marker, lambda n: n == 0, GONE,
                          "the watchdog to kill the jail once the 0.2 s lease ran out")
        event = await asyncio.wait_for(executor.wait("t"), 10)
        assert event is not None and event.exit_code == -9
    finally:
        proc.kill()
        proc.wait(5)


@pytest.mark.parametrize("kind", ["v2 cgroup.kill", "v1 freezer", "v1 pids (no freezer)"])
def test_kill_until_empty_in_each_hierarchy(root: None, marker: str, kind: str) -> None:
    """The kill loop itself, in each kind of hierarchy this host has (v1 freezer and the
    freeze-less loop are not what the executor picks here, where v2 has cgroup.kill)."""
    version, controller = (2, "") if kind.startswith("v2") else (1, kind.split()[1])
    found = [h for h in cg.discover() if h.version == version
             and (version == 2 or controller in h.controllers)]  # fmt: skip
    if not found:
        pytest.skip(f"this host mounts no {kind} hierarchy")
    node = f"mt-test-{os.getpid()}-kill"
    group = TaskGroup((cg.make_dirs(found[0], node) / "g",))
    try:
        cg.create_group(group.dirs)
        script = ESCAPERS + "sleep 300"
        proc = subprocess.Popen(
            ["/bin/sh", "-c", script], env={**os.environ, "M": marker, "N": str(CHILDREN)},
            preexec_fn=lambda: cg.join(group.procs_files), start_new_session=True,
        )
        pids = wait_count(marker, lambda n: n >= CHILDREN + 1, 15, f"{CHILDREN + 1} escapers to start")
        assert len(pids) == CHILDREN + 1
        assert cg.kill_until_empty(group, timeout=5)
        assert proc.wait(5) == -9
        wait_count(marker, lambda n: n == 0, GONE, "the group's processes to die")
    finally:
        cg.kill_until_empty(group, timeout=5)
        cg.remove_group(group)
        cg.remove_node_dir_if_empty(found[0], node)
    assert not found[0].node_dir(node).exists()


# ---------------------------------------------------------------- limits


def require_limits(refusal: str | None) -> None:
    """Skip where this host cannot enforce the limit; under CI (root, cgroups) fail."""
    if refusal is not None:
        (pytest.fail if in_ci() else pytest.skip)(refusal)


async def test_pids_limit_stops_a_fork_bomb(root: None, make_executor: MakeExecutor) -> None:
    events: list[ExecEvent] = []
    executor = make_executor("cgroup", on_event=events.append)
    refusal = executor.check_limits(pids=5)
    require_limits(refusal)
    await executor.start("t", 1, "for i in $(seq 50); do sleep 30 & done; wait", pids=5)
    pids_max = [Path(d) / "pids.max" for d in events[0].cgroups if (Path(d) / "pids.max").exists()]
    assert [p.read_text().strip() for p in pids_max] == ["5"]
    event = await asyncio.wait_for(executor.wait("t"), 20)
    assert event is not None and event.exit_code not in (0, None)
    err = executor.read_output("t", 1, "err", 0)[0].decode().lower()
    assert "fork" in err or "resource temporarily unavailable" in err, err


async def test_memory_limit_is_set_and_enforced(root: None, make_executor: MakeExecutor) -> None:
    events: list[ExecEvent] = []
    executor = make_executor("cgroup", on_event=events.append)
    limit = 64 << 20
    refusal = executor.check_limits(mem=limit)
    require_limits(refusal)
    await executor.start("t", 1, "sleep 30", mem=limit)
    files = [Path(d) / name for d in events[0].cgroups
             for name in ("memory.max", "memory.limit_in_bytes") if (Path(d) / name).exists()]  # fmt: skip
    assert [int(f.read_text()) for f in files] == [limit]
    await executor.cancel("t")
    hog = [sys.executable, "-c", "data = b'x' * (256 << 20); print('survived')"]
    await executor.start("u", 1, hog, mem=limit)
    event = await asyncio.wait_for(executor.wait("u"), 20)
    assert event is not None and event.exit_code == -9  # the OOM killer, inside the cgroup
    assert executor.read_output("u", 1, "out", 0)[0] == b""


async def test_limits_refused_without_the_controller(tmp_data_dir: Path, tmp_path: Path) -> None:
    # A cgroup root holding no cgroup mount: as if the host had no controllers.
    executor = Executor(tmp_data_dir, slots=1, cgroup_root=tmp_path / "no-cgroups")
    assert not executor.containment.uses_cgroups
    assert "subreaper" in executor.containment.describe()
    for kw, needle in (({"mem": 512 << 20}, "--mem 512M"), ({"pids": 5}, "--pids 5")):
        refusal = executor.check_limits(**kw)
        assert refusal is not None and needle in refusal and "\n" not in refusal
        assert "unlimited" in refusal
        with pytest.raises(TaskError) as info:
            await executor.start("t", 1, "true", **kw)  # type: ignore[arg-type]
        assert "\n" not in str(info.value) and needle in str(info.value)
    assert executor.running() == {} and executor.free_slots == 1
    event = await run_plain(executor)
    assert event.exit_code == 0  # without limits it still runs (contained by the subreaper)


async def run_plain(executor: Executor) -> ExecEvent:
    await executor.start("plain", 1, "true")
    event = await asyncio.wait_for(executor.wait("plain"), 10)
    assert event is not None
    return event


def test_forced_cgroup_mode_without_cgroups_is_a_config_error(tmp_data_dir: Path, tmp_path: Path) -> None:
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match="cgroup containment unavailable"):
        Executor(tmp_data_dir, containment="cgroup", cgroup_root=tmp_path)


# ---------------------------------------------------------------- end to end


LIMITS_PROBE = r"""
import json, os
mounts = {}
for line in open('/proc/self/mountinfo'):
    left, _, right = line.partition(' - ')
    fs, opts = right.split()[0], right.split()[2].split(',')
    if fs in ('cgroup', 'cgroup2'):
        key = '' if fs == 'cgroup2' else ','.join(o for o in opts if o in ('memory', 'pids'))
        mounts[key] = left.split()[4]
found = {}
for line in open('/proc/self/cgroup'):
    _, ctrls, path = line.rstrip('\n').split(':', 2)
    mount = mounts.get(ctrls if ctrls else '')
    if mount is None:
        continue
    for name in ('memory.max', 'memory.limit_in_bytes', 'pids.max'):
        f = mount + path + '/' + name
        if os.path.exists(f):
            found[name] = open(f).read().strip()
print(json.dumps(found))
"""


def test_submit_limits_reach_the_run_through_raft(root: None, tmp_path: Path) -> None:
    from meshtui.client import call_sync
    from meshtui.demo import LocalMesh

    mesh = LocalMesh(1, base_dir=tmp_path / "mesh")
    mesh.start()
    try:
        assert mesh.wait_ready(20), mesh.nodes[0].log_file.read_text()[-2000:]
        sock = mesh.nodes[0].socket_path
        wait_until("the agent to elect a leader",
                   lambda: call_sync(sock, "status", {}, 2.0)["consensus"]["leader"], 20, 0.1)
        cli = [sys.executable, "-m", "meshtui.cli", "submit", "-t", sock, "--mem", "96M",
               "--pids", "7", "--", sys.executable, "-c", LIMITS_PROBE]
        done = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        task_id = done.stdout.strip()
        record: dict[str, object] = wait_until(
            f"{task_id} to end",
            lambda: (r := call_sync(sock, "task.get", {"id": task_id})).get("state")
            in ("succeeded", "failed", "lost") and r, 20, 0.1,
        )
        assert (record.get("state"), record.get("mem"), record.get("pids")) == (
            "succeeded", 96 << 20, 7
        ), record
        out = call_sync(sock, "task.logs", {"id": task_id, "stream": "stdout", "offset": 0})
        limits = json.loads(bytes(out["data"]).decode())
        mem = limits.get("memory.max") or limits.get("memory.limit_in_bytes")
        assert (mem, limits.get("pids.max")) == (str(96 << 20), "7"), limits
    finally:
        mesh.stop()
