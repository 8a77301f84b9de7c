"""Issue 17 on real network-namespace hosts (root): output and artifacts outlive the
host that ran them.

One lab of 4 hosts for the module (a replaced replica needs somewhere to go);
agents as in test_tasks_netns (``--profile lan``, ``--slots 2``, ``--run-as ""``).
A keyed task is placed on a chosen host A by picking a key whose preference list
(the agents' own ring: ``HashRing`` over the member ids, 64 vnodes) starts at A.

* finished, then SIGKILL A: output and artifact read intact (SHA-256) through
  another host, and once A is dead every survivor's ``report`` returns to zero
  under-replicated items (the list took the 4th host);
* SIGKILL A while the task runs: ``meshtui logs --follow`` started against another
  host goes on through a replica, then follows the next attempt to the end.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.wait import wait_until

from agent.runtime.replica_store import ReplicaStore
from agent.sched import HashRing
from meshtui.client import ClientError
from netns.agents import LabAgents, keygen
from netns.harness import NetnsLab

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

HOSTS = range(4)
CONVERGE_TIMEOUT = 60.0
REPO = Path(__file__).resolve().parents[2]
ARTIFACT = bytes(hashlib.sha256(b"%d" % i).digest()[0] for i in range(300_000))
"""300 kB an artifact task writes (more than one replication chunk)."""


@pytest.fixture(scope="module")
def mesh() -> Iterator[LabAgents]:
    from rootpolicy import enforce_root_policy

    enforce_root_policy()
    base = Path(tempfile.mkdtemp(prefix="mt-art-"))
    key = keygen(base / "cluster.key")
    with NetnsLab(len(HOSTS)) as lab:
        agents = LabAgents(lab, key, base, mdns=False, seeds=[0], profile="lan",
                           common_args=["--slots", "2", "--run-as", ""])
        try:
            for host in HOSTS:
                agents.start(host)
            agents.wait_ready(HOSTS, timeout=30)
            agents.wait_all_members(HOSTS, agents.expect_all(HOSTS), CONVERGE_TIMEOUT)
            wait_until("4 voters", lambda: all(voters(agents, h) == 4 for h in HOSTS),
                       CONVERGE_TIMEOUT, 0.5, detail=agents.logs)
            yield agents
        finally:
            agents.stop_all()
            shutil.rmtree(base, ignore_errors=True)


def voters(agents: LabAgents, host: int) -> int:
    status = agents.try_status(host)
    if status is None or status.get("read_only"):
        return 0
    return len(status["consensus"].get("voters") or [])


def call(agents: LabAgents, host: int, method: str, params: dict[str, Any]) -> Any:
    return agents.call(host, method, params, 10.0)


def ids(agents: LabAgents) -> dict[int, str]:
    members = agents.status(0)["members"]
    return {int(m["name"][1:]): m["id"] for m in members}


def key_on(agents: LabAgents, host: int, alive: set[int], tag: str) -> str:
    """A key whose preference list among ``alive`` starts at ``host``."""
    by_host = ids(agents)
    ring = HashRing(by_host.values(), 64)
    live = {by_host[h] for h in alive}
    return next(k for k in (f"{tag}-{i}" for i in range(10_000))
                if ring.preference_list(k, 3, live.__contains__)[0] == by_host[host])


def wait_task(
    agents: LabAgents, host: int, task: str, states: set[str], timeout: float
) -> dict[str, Any]:
    got: list[dict[str, Any]] = [{}]

    def check() -> bool:
        try:
            got[0] = call(agents, host, "task.get", {"id": task, "stale": True})
        except ClientError:
            return False
        return got[0]["state"] in states

    wait_until(f"{task} in {states}", check, timeout, 0.25, detail=lambda: f"{got[0]}")
    return got[0]


def under_replicated(agents: LabAgents, hosts: list[int]) -> int:
    total = 0
    for host in hosts:
        try:
            total += int(call(agents, host, "report", {})["under_replicated"])
        except ClientError:
            return -1
    return total


def artifact_script(agents: LabAgents) -> Path:
    """A task body: 2000 lines of output, then ``result.bin`` (ARTIFACT) in its cwd."""
    script = Path(agents.base_dir) / "artifact_task.py"
    script.write_text(f"import sys\nsys.stdout.write('out %d\\n' * 2000 % tuple(range(2000)))\n"
                      f"open('result.bin', 'wb').write(bytes.fromhex({ARTIFACT.hex()!r}))\n")
    return script


def fetch(agents: LabAgents, host: int, task: str, name: str) -> tuple[bytes, str]:
    data, offset = b"", 0
    while True:
        got = call(agents, host, "artifact.get", {"id": task, "name": name, "offset": offset})
        data += got["data"]
        offset = got["offset"]
        if got["eof"]:
            return data, got["sha256"]


def logs(agents: LabAgents, host: int, task: str) -> bytes:
    data, offset = b"", 0
    got: dict[str, Any]
    while True:
        got = call(agents, host, "task.logs", {"id": task, "offset": offset})
        data += bytes(got["data"])
        offset = got["offset"]
        if got["eof"] and not got["data"]:
            return data


def test_output_and_artifact_outlive_their_host(mesh: LabAgents) -> None:
    a = 1
    key = key_on(mesh, a, set(HOSTS), "done")
    script = artifact_script(mesh)
    task = call(mesh, 0, "task.submit", {
        "argv": [sys.executable, str(script)], "key": key, "strategy": "hash",
        "artifacts": ["result.bin", "missing.txt"], "retries": 0, "rid": "art-1"})["id"]
    rec = wait_task(mesh, 0, task, {"succeeded", "failed"}, 60)
    assert rec["state"] == "succeeded" and rec["node"] == ids(mesh)[a], rec
    expected_out = "".join(f"out {i}\n" for i in range(2000)).encode()
    # a silent run on A: its finish says its output is empty, nothing is replicated
    # (issue 14), and a survivor answers its logs once A is gone
    silent = call(mesh, 0, "task.submit", {"argv": ["true"], "key": key, "strategy": "hash",
                                           "retries": 0, "rid": "art-quiet"})["id"]
    quiet = wait_task(mesh, 0, silent, {"succeeded", "failed"}, 60)
    assert quiet["node"] == ids(mesh)[a] and quiet["empty_outputs"] == [1], quiet
    assert not any(r.startswith("empty:") for r in quiet["replicas"]), quiet  # hosts only
    wait_until("replicated", lambda: under_replicated(mesh, list(HOSTS)) == 0, 30, 0.5,
               detail=mesh.logs)
    mesh.kill(a, signal.SIGKILL)
    others = [h for h in HOSTS if h != a]
    for host in others:  # every survivor reads both, intact, while A is still "alive"
        data, digest = fetch(mesh, host, task, "result.bin")
        assert digest == hashlib.sha256(ARTIFACT).hexdigest() == hashlib.sha256(data).hexdigest()
        assert logs(mesh, host, task) == expected_out
        assert logs(mesh, host, silent) == b""
    listing = call(mesh, others[0], "artifact.list", {"id": task})
    by_name = {i["name"]: i for i in listing["items"]}
    assert by_name["result.bin"]["size"] == len(ARTIFACT) and not by_name["result.bin"]["error"]
    assert by_name["missing.txt"]["error"] == \
        "artifact 'missing.txt': no such file in the task's working directory"
    with pytest.raises(ClientError, match="no such file"):
        fetch(mesh, others[1], task, "missing.txt")
    # A is declared dead; its place on the list goes to the 4th host and fills up
    started = time.monotonic()
    wait_until("no under-replicated items on the survivors",
               lambda: under_replicated(mesh, others) == 0
               and all(m["state"] != "alive" for m in mesh.status(others[0])["members"]
                       if m["name"] == mesh.name(a)),
               60, 0.5, detail=mesh.logs)
    print(f"re-replicated after A's death in {time.monotonic() - started:.1f} s")
    by_host = ids(mesh)
    first_list = HashRing(by_host.values(), 64).preference_list(key, 3)
    [fourth] = [h for h in HOSTS if by_host[h] not in first_list]
    copies = list((Path(mesh.base_dir) / mesh.name(fourth)).glob(f"**/replicas/{task}/1.*"))
    assert {c.name for c in copies} >= {"1.out", "1.a_result.bin"}, copies
    # an empty item (here the refused artifact's one-line error) is a row of the run's
    # record in the host's metadata journal only, no data file (issue 14)
    held = {i.name: i for i in ReplicaStore(copies[0].parent.parent, "check").load()
            if i.task_id == task}
    assert held["a:missing.txt"].complete and "no such file" in held["a:missing.txt"].error
    assert hashlib.sha256((Path(copies[0].parent) / "1.a_result.bin").read_bytes()).hexdigest() \
        == hashlib.sha256(ARTIFACT).hexdigest()
    # the CLI, through a survivor: list, fetch with the digest checked, refuse, prune
    target = mesh.socket(others[1])
    listed = cli("artifacts", task, "-t", target)
    assert "result.bin" in listed.stdout and "missing.txt" in listed.stdout
    fetched = Path(mesh.base_dir) / "fetched.bin"
    got = cli("artifacts", task, "--get", "result.bin", "-o", str(fetched), "-t", target)
    assert got.returncode == 0 and fetched.read_bytes() == ARTIFACT, got.stderr
    refused = cli("artifacts", task, "--get", "missing.txt", "-t", target)
    assert refused.returncode == 1 and refused.stderr.strip().count("\n") == 0
    assert "no such file in the task's working directory" in refused.stderr
    escape = cli("submit", "--artifact", "../x", "-t", target, "--", "true")
    assert escape.returncode == 2 and "leaves the task's working directory" in escape.stderr
    assert cli("prune", "--older-than", "0s", "-t", target).returncode == 0
    wait_until("pruned everywhere", lambda: not call(mesh, others[0], "artifact.list",
                                                     {"id": task})["items"], 10, 0.25)
    mesh.restart(a)
    mesh.wait_all_members(HOSTS, mesh.expect_all(HOSTS), CONVERGE_TIMEOUT)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshtui.cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_logs_follow_goes_on_through_a_replica_when_the_host_dies(mesh: LabAgents) -> None:
    a, reader = 2, 0
    key = key_on(mesh, a, set(HOSTS), "live")
    code = ("import os, sys, time\n"
            "for i in range(40):\n"
            "    print(f\"{os.environ['MESH_TASK_EPOCH']} line {i}\", flush=True)\n"
            "    time.sleep(0.1)\n")
    task = call(mesh, reader, "task.submit", {
        "argv": [sys.executable, "-c", code], "key": key, "strategy": "hash", "retries": 2,
        "rid": "live-1"})["id"]
    wait_task(mesh, reader, task, {"running"}, 30)
    follow = subprocess.Popen(
        [sys.executable, "-m", "meshtui.cli", "logs", "-f", task, "-t", mesh.socket(reader)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        time.sleep(1.5)
        mesh.kill(a, signal.SIGKILL)
        out, err = follow.communicate(timeout=90)
    finally:
        if follow.poll() is None:
            follow.kill()
    lines = out.decode().splitlines()
    first = [ln for ln in lines if ln.startswith("1 ")]
    later = [ln for ln in lines if not ln.startswith("1 ")]
    # attempt 1's lines up to the kill arrived (through a replica after A died), in order
    assert first == [f"1 line {i}" for i in range(len(first))] and len(first) >= 5, lines
    # then the next attempt, run on another host, from its first line to its last
    epoch = later[0].split()[0] if later else "?"
    assert later == [f"{epoch} line {i}" for i in range(40)], (lines, err.decode())
    assert f"attempt 1 ended; following attempt {epoch}" in err.decode()
    assert follow.returncode == 0
    # attempt 1 stays readable on its own
    old = call(mesh, reader, "task.logs", {"id": task, "offset": 0, "attempt": 1})
    assert old["data"].decode().splitlines()[0] == "1 line 0"
    mesh.restart(a)


def test_a_full_disk_on_a_replica_is_one_line_and_loses_nothing(mesh: LabAgents) -> None:
    """A tmpfs of 16 KiB mounted (in the agent's mount namespace) where one replica would
    store a new task's copies: the holder's report names the item with the replica's
    one-line refusal, the replica's earlier copy stays intact, and once the disk has
    room again the copy is made and the count is back to zero."""
    mesh.wait_all_members(HOSTS, mesh.expect_all(HOSTS), CONVERGE_TIMEOUT)  # after a restart
    by_host = ids(mesh)
    ring = HashRing(by_host.values(), 64)
    key = next(k for k in (f"disk-{i}" for i in range(10_000))
               if ring.preference_list(k, 3)[0] == by_host[3])
    replica = next(h for h in HOSTS if by_host[h] == ring.preference_list(key, 3)[1])
    earlier = call(mesh, 3, "task.submit", {
        "shell": "printf kept > kept.txt", "key": key, "strategy": "hash",
        "artifacts": ["kept.txt"], "retries": 0, "rid": "disk-0"})["id"]
    wait_task(mesh, 3, earlier, {"succeeded"}, 30)
    wait_until("replicated", lambda: under_replicated(mesh, list(HOSTS)) == 0, 60, 0.5,
               detail=lambda: str([call(mesh, h, "report", {})["under_replicated_items"]
                                   for h in HOSTS]))
    next_id = f"t{max(int(r['id'][1:]) for r in call(mesh, 3, 'task.list', {})) + 1}"
    where = Path(mesh.base_dir) / mesh.name(replica) / "data" / "replicas" / next_id
    where.mkdir(parents=True)
    proc = mesh.agents[replica].proc
    assert proc is not None
    pid = str(proc.pid)
    nsenter = ["nsenter", "--target", pid, "--mount", "--"]
    subprocess.run([*nsenter, "mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(where)],
                   check=True)
    try:
        script = artifact_script(mesh)
        task = call(mesh, 3, "task.submit", {
            "argv": [sys.executable, str(script)], "key": key, "strategy": "hash",
            "artifacts": ["result.bin"], "retries": 0, "rid": "disk-1"})["id"]
        assert task == next_id
        wait_task(mesh, 3, task, {"succeeded"}, 60)
        items: list[dict[str, Any]] = []

        def refused() -> bool:
            items[:] = call(mesh, 3, "report", {})["under_replicated_items"]
            return any("No space left on device" in i["error"] for i in items)

        wait_until("the holder reports the replica's refusal", refused, 30, 0.5,
                   detail=lambda: f"{items}")
        line = next(i["error"] for i in items if "No space" in i["error"])
        assert "\n" not in line and f"on {mesh.name(replica)}:" in line, line
        kept = call(mesh, replica, "artifact.get", {"id": earlier, "name": "kept.txt"})
        assert kept["data"] == b"kept" and kept["sha256"] == hashlib.sha256(b"kept").hexdigest()
    finally:
        subprocess.run([*nsenter, "umount", "-l", str(where)], check=False)
    wait_until("the copy is made once there is room", lambda: under_replicated(
        mesh, list(HOSTS)) == 0, 60, 0.5,
        detail=lambda: str([call(mesh, h, "report", {})["under_replicated_items"]
                            for h in HOSTS]))
