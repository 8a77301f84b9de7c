"""Rendering of agent.toml / unit / supervisor, membership and quorum checks, keys, report."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest
from support.wait import wait_until

from agent.config import load_config
from agent.errors import ConfigError
from inventory import agentfiles as files
from inventory import load_inventory
from inventory.clusterkey import key_path_for, load_or_create_key, read_key
from inventory.hoststeps import desired_files, membership_problem
from inventory.loader import Inventory
from inventory.progress import DeployReport, HostOutcome, PlainProgress
from inventory.upgrade import quorum_problem


def make_inventory(tmp_path: Path, text: str) -> Inventory:
    path = tmp_path / "inv.yml"
    path.write_text(text)
    return load_inventory(path)


THREE = """
all:
  vars:
    mesh_cluster: lab
    mesh_profile: local
  children:
    web:
      vars: {mesh_capabilities: [http, "ssd"]}
      hosts:
        w1: {ansible_host: 198.18.0.10, mesh_seed: true, mesh_slots: 2}
        w2: {ansible_host: 198.18.0.11, mesh_port: 7901, mesh_socket: /run/w2.sock}
    db:
      hosts:
        d1: {ansible_host: db.lan, mesh_seed: true, mesh_mdns: false}
"""


def test_agent_config_is_valid_toml_for_the_agent(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path, THREE)
    hosts = list(inv.hosts.values())
    for host in hosts:
        path = tmp_path / f"{host.name}.toml"
        path.write_text(files.render_agent_config(host, hosts, inv.path))
        cfg = load_config(str(path), {}, None)
        assert cfg.name == host.name
        assert cfg.cluster == "lab"
        assert cfg.caps == host.capabilities
        assert cfg.port == host.mesh_port
        assert cfg.key_file == "/etc/mesh-agent/cluster.key"
        assert cfg.profile == "local"
    w1 = load_config(str(tmp_path / "w1.toml"), {}, None)
    assert w1.join == ("db.lan:7900",)
    assert w1.advertise == "198.18.0.10"
    assert w1.slots == 2
    w2 = load_config(str(tmp_path / "w2.toml"), {}, None)
    assert w2.join == ("198.18.0.10:7900", "db.lan:7900")
    assert w2.socket == "/run/w2.sock"
    d1 = load_config(str(tmp_path / "d1.toml"), {}, None)
    assert d1.advertise == ""  # a DNS name: let the agent pick its address
    assert d1.mdns is False


def test_mesh_consensus_pbft_reaches_the_agent_config_and_bad_values_are_one_line(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path, "all:\n  vars: {mesh_consensus: pbft, mesh_replicas: 7}\n"
                                   "  hosts:\n    a: {ansible_host: 10.0.0.1}\n")
    (host,) = inv.hosts.values()
    path = tmp_path / "a.toml"
    path.write_text(files.render_agent_config(host, [host], inv.path))
    cfg = load_config(str(path), {}, None)
    assert (cfg.consensus, cfg.replicas) == ("pbft", 7)
    raft = make_inventory(tmp_path, "all:\n  hosts:\n    a: {ansible_host: 10.0.0.1}\n")
    assert "\nconsensus =" not in files.render_agent_config(*raft.hosts.values(), [], raft.path)
    for bad, says in (("mesh_consensus: paxos", "mesh_consensus must be 'raft' or 'pbft'"),
                      ("mesh_replicas: 5", "mesh_replicas must be 4 or 7")):
        with pytest.raises(Exception, match=says):
            make_inventory(tmp_path, f"all:\n  hosts:\n    a: {{{bad}}}\n")


def test_first_host_is_the_seed_when_none_is_marked(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path, "all:\n  hosts:\n    a: {ansible_host: 10.0.0.1}\n    b:\n")
    hosts = list(inv.hosts.values())
    assert files.seeds_for(hosts[0], hosts) == []
    assert files.seeds_for(hosts[1], hosts) == ["10.0.0.1:7900"]


def test_rendering_is_deterministic_and_key_file_private(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path, THREE)
    hosts = list(inv.hosts.values())
    a = desired_files(hosts[0], hosts, inv.path, "KEY", systemd=False)
    b = desired_files(hosts[0], hosts, inv.path, "KEY", systemd=False)
    assert a == b
    assert a[hosts[0].key_path] == (b"KEY\n", 0o600)
    assert files.supervisor_path(hosts[0]) in a
    unit = desired_files(hosts[0], hosts, inv.path, "KEY", systemd=True)
    assert "/etc/systemd/system/mesh-agent.service" in unit
    text = unit["/etc/systemd/system/mesh-agent.service"][0].decode()
    assert "ExecStart=/opt/meshtui/venv/bin/mesh-agent run --config /etc/mesh-agent/agent.toml" in text


def test_cluster_key_generated_once_private_and_reused(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path, THREE)
    path = key_path_for(inv, inv.host("w1"))
    assert path == str(tmp_path / "inv.yml.key")
    first = load_or_create_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path) == first
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        read_key(path)
    os.chmod(path, 0o600)
    Path(path).write_text("not base64!\n")
    with pytest.raises(ConfigError, match="base64"):
        read_key(path)


def test_cluster_key_file_var_relative_to_inventory(tmp_path: Path) -> None:
    inv = make_inventory(tmp_path, "all:\n  vars: {mesh_cluster_key_file: keys/lab.key}\n  hosts: {a:}\n")
    assert key_path_for(inv, inv.host("a")) == str(tmp_path / "keys" / "lab.key")


STATUS = {
    "node": "a",
    "members": [
        {"name": "a", "state": "alive"},
        {"name": "b", "state": "alive"},
        {"name": "c", "state": "dead"},
    ],
    "consensus": {"leader": "b", "voters": ["a", "b", "c"], "commit_index": 7},
}


def test_membership_problem() -> None:
    assert membership_problem(STATUS, "a") is None
    assert membership_problem(STATUS, "c") == "c is dead"
    assert membership_problem(STATUS, "z") == "z is not in its own member list"
    no_leader = {**STATUS, "consensus": {"leader": None}}
    assert membership_problem(no_leader, "a") == "no leader yet (2 alive members)"
    assert membership_problem([], "a") == "status is not a JSON object"


def test_quorum_problem() -> None:
    # a, b alive, c dead: stopping a or b leaves 1 of 3 voters (needs 2)
    assert "1 of 3 voters" in (quorum_problem(STATUS, "a") or "")
    assert quorum_problem(STATUS, "c") is None  # already down: stopping it changes nothing
    all_alive = {
        **STATUS,
        "members": [{"name": n, "state": "alive"} for n in "abc"],
    }
    assert quorum_problem(all_alive, "a") is None
    learner = {**all_alive, "consensus": {"voters": ["b", "c"]}}
    assert quorum_problem(learner, "a") is None


def test_plain_progress_and_report() -> None:
    out = io.StringIO()
    progress = PlainProgress(out, ["web01", "db"])
    progress.step("db", "uploading 3 wheels")
    progress.finished("web01", "failed", "connect: 10.0.0.1:22: refused")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("db    ") and lines[0].endswith("uploading 3 wheels")
    assert lines[1].endswith("FAILED: connect: 10.0.0.1:22: refused")
    report = DeployReport("deploy", (HostOutcome("a", "changed", "wheels"), HostOutcome("b", "failed", "x")))
    assert report.exit_code == 1
    assert report.summary() == "deploy: 2 hosts: 1 changed, 1 failed"
    assert report.to_json()["hosts"][1] == {"host": "b", "status": "failed", "detail": "x"}
    assert DeployReport("deploy", (HostOutcome("a", "unchanged"),)).exit_code == 0


def test_supervisor_restarts_the_agent_and_stops_cleanly(tmp_path: Path) -> None:
    """The real supervisor script with a stand-in ``mesh-agent`` that exits on demand."""
    prefix = tmp_path / "prefix"
    inv = make_inventory(
        tmp_path, f"all:\n  hosts:\n    a: {{mesh_prefix: {prefix}, mesh_config_dir: {tmp_path}}}\n"
    )
    host = inv.host("a")
    bin_dir = prefix / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    starts = tmp_path / "starts"
    agent = bin_dir / "mesh-agent"
    # Each start appends a line; the first run exits after 0.2 s, later ones run until killed.
    agent.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {starts}\n'
        f'if [ "$(wc -l < {starts})" -eq 1 ]; then sleep 0.2; exit 3; fi\n'
        "exec sleep 60\n"
    )
    agent.chmod(0o755)
    Path(files.supervisor_path(host)).write_text(files.render_supervisor(host))

    def running() -> bool:
        return subprocess.run(["sh", "-c", files.supervisor_running_check(host)]).returncode == 0

    assert not running()
    subprocess.run(["sh", "-c", files.supervisor_start(host)], check=True, timeout=10)
    try:
        wait_until("the supervisor to run", running, 10)
        wait_until("the supervisor to restart the agent once",
                   lambda: starts.exists() and len(starts.read_text().splitlines()) >= 2, 10)
        assert starts.read_text().splitlines()[0] == f"run --config {tmp_path}/agent.toml"
        agent_pid = int(Path(files.agent_pidfile(host)).read_text())
        os.kill(agent_pid, 0)
        assert "restarting in 1 s" in Path(files.agent_log(host)).read_text()
    finally:
        subprocess.run(["sh", "-c", files.supervisor_stop(host)], check=True, timeout=30)
    assert not running()
    wait_until(f"the agent (pid {agent_pid}) to exit", lambda: not _alive(agent_pid), 10)
    assert not Path(files.supervisor_pidfile(host)).exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of an exited supervisor is reaped by init; treat it as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
