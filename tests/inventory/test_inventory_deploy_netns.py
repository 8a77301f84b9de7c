"""Deploy, re-deploy, rolling upgrade and undeploy on 3 namespace hosts (root, slow).

Each lab host runs its own OpenSSH sshd; a fourth namespace is the operator's
machine, where ``meshtui deploy`` runs.  The namespaces have no route to any
registry: hosts install only from the wheels deploy uploads.  A fourth
inventory host (198.18.0.99) does not exist and must be reported while the
three others deploy.

All namespaces share one filesystem, so each inventory host gets its own
prefix, config dir, data dir and control socket under one temporary
directory; the test talks to the agents' Unix sockets directly for the
KV writer and the quorum probe that run during the upgrade.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns.harness import NetnsLab
from support.sshd import ssh_keygen
from support.wait import wait_until

from inventory.wheels import build_wheelhouse
from meshtui.client import ClientError, call_sync

pytestmark = [pytest.mark.root(tools=("sshd", "ssh-keygen")), pytest.mark.slow]

HOSTS = 3
GHOST = "198.18.0.99"
MESHTUI = str(Path(sys.executable).with_name("meshtui"))


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and "pytest" not in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mt-inv-"))  # short: Unix socket paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


def inventory_text(lab: NetnsLab, base: Path, key: Path, slots: int) -> str:
    addr = lab.addr
    lines = [
        "all:",
        "  vars:",
        "    ansible_user: root",
        f"    ansible_ssh_private_key_file: {key}",
        "    ansible_host_key_checking: false",
        "    mesh_profile: local",
        "    mesh_mdns: false",
        "    mesh_cluster: netns",
        f"    mesh_slots: {slots}",
        "    mesh_service_manager: supervisor",
        "  children:",
        "    mesh:",
        "      hosts:",
    ]
    for i in range(HOSTS):
        lines += [
            f"        h{i}:",
            f"          ansible_host: {addr(i)}",
            f"          mesh_seed: {'true' if i == 0 else 'false'}",
            f"          mesh_prefix: {base}/h{i}/opt",
            f"          mesh_config_dir: {base}/h{i}/etc",
            f"          mesh_data_dir: {base}/h{i}/data",
            f"          mesh_socket: {base}/h{i}/agent.sock",
        ]
    lines += [
        "    missing:",
        "      hosts:",
        "        ghost:",
        f"          ansible_host: {GHOST}",
        f"          mesh_prefix: {base}/ghost/opt",
    ]
    return "\n".join(lines) + "\n"


def status_over_ssh(
    lab: NetnsLab, operator: int, host: int, base: Path, env: dict[str, str]
) -> dict[str, Any]:
    """``meshtui status -t ssh://root@HOST/socket --json`` from the operator's namespace."""
    url = f"ssh://root@{lab.addr(host)}{base}/h{host}/agent.sock"
    done = lab.run(operator, [MESHTUI, "status", "-t", url, "--json"], env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    status: dict[str, Any] = json.loads(done.stdout)
    return status


class Traffic:
    """A KV writer and a quorum probe, each every 100 ms, over the agents' Unix sockets."""

    def __init__(self, sockets: list[str]) -> None:
        self.sockets = sockets
        self.stop = threading.Event()
        self.writes_ok = 0
        self.write_failures: list[str] = []
        self.samples = 0
        self.no_quorum_samples: list[str] = []
        self.threads = [
            threading.Thread(target=self._writer, daemon=True),
            threading.Thread(target=self._probe, daemon=True),
        ]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _writer(self) -> None:
        n = 0
        while not self.stop.wait(0.1):
            n += 1
            rid = uuid.uuid4().hex
            params = {"ns": "upgrade", "key": f"k{n}", "value": str(n).encode(), "rid": rid}
            # The host being upgraded is down for a while: a write goes to any agent that
            # answers, retried (same rid: applied once) for up to 5 s.
            deadline = time.monotonic() + 5
            last = ""
            while time.monotonic() < deadline:
                for sock in self.sockets:
                    try:
                        call_sync(sock, "kv.put", params, timeout=2.0)
                    except ClientError as exc:
                        last = f"{sock}: {exc}"
                        continue
                    self.writes_ok += 1
                    break
                else:
                    time.sleep(0.1)
                    continue
                break
            else:
                self.write_failures.append(f"write k{n}: {last}")

    def _probe(self) -> None:
        while not self.stop.wait(0.1):
            answers = []
            for sock in self.sockets:
                try:
                    answers.append(call_sync(sock, "status", {}, timeout=1.0))
                except ClientError:
                    continue
            self.samples += 1
            if answers and all(a.get("read_only") for a in answers):
                self.no_quorum_samples.append(f"{time.monotonic():.1f}: all read-only")


def test_deploy_upgrade_undeploy_on_three_namespace_hosts(base: Path) -> None:
    # Built in the root namespace (registry reachable), shipped from a pinned directory.
    built = asyncio.run(build_wheelhouse())
    wheels = base / "wheelhouse"
    wheels.mkdir()
    for name in built.files:
        shutil.copy(built.directory / name, wheels / name)
    home = base / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    client_key = home / ".ssh" / "id_ed25519"
    client_pub = ssh_keygen(client_key)
    env = {**os.environ, "HOME": str(home), "MESHTUI_WHEELHOUSE": str(wheels)}
    inv = base / "lab.yml"
    sockets = [f"{base}/h{i}/agent.sock" for i in range(HOSTS)]
    operator = HOSTS

    with NetnsLab(HOSTS + 1) as lab:
        known = []
        for i in range(HOSTS):
            lab.start_sshd(i, client_pub, base / f"hostkey{i}")
            pub = (base / f"hostkey{i}" / "ssh_host_ed25519_key.pub").read_text().split()
            known.append(f"{lab.addr(i)} {pub[0]} {pub[1]}")
        (home / ".ssh" / "known_hosts").write_text("\n".join(known) + "\n")
        inv.write_text(inventory_text(lab, base, client_key, slots=2))

        def meshtui(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
            done = lab.run(operator, [MESHTUI, *args], env=env, timeout=timeout)
            print(f"$ meshtui {' '.join(args)}\n{done.stdout}{done.stderr}")  # shown on failure
            return done

        try:
            # 1. deploy: three hosts join, the missing fourth is reported on one line.
            first = meshtui("deploy", "-i", str(inv))
            out = first.stdout
            assert first.returncode == 1, out + first.stderr
            assert "deploy: 4 hosts: 3 changed, 1 failed" in out, out
            ghost_lines = [line for line in out.splitlines() if line.startswith("FAILED ghost")]
            assert len(ghost_lines) == 1 and f"connect: {GHOST}:22" in ghost_lines[0], out
            for i in range(HOSTS):
                status = status_over_ssh(lab, operator, i, base, env)
                alive = sorted(m["name"] for m in status["members"] if m["state"] == "alive")
                assert alive == ["h0", "h1", "h2"], status

            # 2. re-deploy changes nothing (and restarts nothing).
            pids = [Path(f"{base}/h{i}/opt/run/agent.pid").read_text() for i in range(HOSTS)]
            again = meshtui("deploy", "-i", str(inv), "--limit", "all:!ghost")
            assert again.returncode == 0, again.stdout + again.stderr
            assert "deploy: 3 hosts: 3 unchanged" in again.stdout, again.stdout
            assert pids == [Path(f"{base}/h{i}/opt/run/agent.pid").read_text() for i in range(HOSTS)]

            # 3. rolling upgrade (new config and a changed wheelhouse) under write load.
            inv.write_text(inventory_text(lab, base, client_key, slots=3))
            (wheels / "zzmeshtuitestmarker-1.0-py3-none-any.whl").write_bytes(os.urandom(64))
            with Traffic(sockets) as traffic:
                # Writes flow before the upgrade starts and still flow after it ends.
                wait_until("writes to succeed before the upgrade",
                           lambda: traffic.writes_ok >= 5, 30, 0.1)
                upgraded = meshtui("upgrade", "-i", str(inv), "--limit", "mesh", timeout=600)
                before_end = traffic.writes_ok
                wait_until("writes to succeed after the upgrade",
                           lambda: traffic.writes_ok >= before_end + 5, 30, 0.1,
                           detail=lambda: traffic.write_failures[-5:])
            assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
            assert "upgrade: 3 hosts: 3 changed" in upgraded.stdout, upgraded.stdout
            assert traffic.write_failures == [], traffic.write_failures[:5]
            assert traffic.no_quorum_samples == [], traffic.no_quorum_samples[:5]
            assert traffic.writes_ok > 20 and traffic.samples > 20
            for i in range(HOSTS):
                assert "slots = 3" in Path(f"{base}/h{i}/etc/agent.toml").read_text()
            status = status_over_ssh(lab, operator, 0, base, env)
            assert sorted(m["name"] for m in status["members"] if m["state"] == "alive") == [
                "h0",
                "h1",
                "h2",
            ]
        finally:
            # 4. undeploy leaves no agent process.
            gone = meshtui("undeploy", "-i", str(inv), "--limit", "mesh")
        assert gone.returncode == 0, gone.stdout + gone.stderr
        wait_until(f"every process under {base} to exit",
                   lambda: not processes_mentioning(str(base)), 15, 0.2,
                   detail=lambda: processes_mentioning(str(base)))
