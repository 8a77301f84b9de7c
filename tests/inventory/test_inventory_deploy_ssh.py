"""Deploy steps against a real OpenSSH sshd on loopback (root: sshd needs it).

The inventory points every meshtui path (prefix, config dir, data dir,
socket) into a temporary directory, so the test installs for real — SFTP
upload of the wheelhouse, ``python3 -m venv``, ``pip install --no-index`` —
without touching /opt or /etc.  A second inventory host on a closed port must
be reported as failed on one line while the real one succeeds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.ports import free_port
from support.sshd import LoopbackSshd, loopback_sshd
from support.wait import wait_until_async

from inventory import agentfiles as files
from inventory import load_inventory
from inventory.clusterkey import key_id_of
from inventory.deploy import converge_host, deploy, undeploy
from inventory.hoststeps import install_venv, probe, start_service, stop_service, sync_wheels, wait_member
from inventory.hostvars import Host
from inventory.keys import keys_command
from inventory.loader import Inventory
from inventory.progress import FAILED, QuietProgress
from inventory.remote import RemoteHost, connect
from inventory.upgrade import upgrade
from inventory.wheels import Wheelhouse, build_wheelhouse, file_sha256

pytestmark = pytest.mark.root(tools=("sshd", "ssh-keygen"))

SFTP_CONFIG = ("MaxSessions 64", "Subsystem sftp internal-sftp")
"""What the deploy steps need from a host's sshd: SFTP uploads, many channels at once."""


@pytest.fixture(scope="module")
def sshd() -> Iterator[LoopbackSshd]:
    with loopback_sshd("mt-inv-sshd-", SFTP_CONFIG) as server:
        yield server


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wheelhouse]:
    """Built once, then pinned with MESHTUI_WHEELHOUSE: the working tree may change meanwhile."""
    built = asyncio.run(build_wheelhouse())
    pinned = tmp_path_factory.mktemp("wheelhouse")
    for name in built.files:
        shutil.copy(built.directory / name, pinned / name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MESHTUI_WHEELHOUSE", str(pinned))
        yield asyncio.run(build_wheelhouse())


@pytest.fixture(scope="module")
def host_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One install location for the module, so later tests reuse the first one's venv."""
    return tmp_path_factory.mktemp("host")


def write_inventory(tmp_path: Path, sshd: LoopbackSshd, base: Path, ghost: bool = False) -> Inventory:
    lines = [
        "all:",
        "  vars:",
        "    ansible_user: root",
        f"    ansible_ssh_private_key_file: {sshd.client_key}",
        "    ansible_host_key_checking: false",
        "    mesh_profile: local",
        "    mesh_mdns: false",
        "    mesh_bind: 127.0.0.1",
        "    mesh_service_manager: supervisor",
        "  hosts:",
        "    local:",
        "      ansible_host: 127.0.0.1",
        f"      ansible_port: {sshd.port}",
        "      mesh_seed: true",
        f"      mesh_port: {free_port()}",
        f"      mesh_prefix: {base}/opt",
        f"      mesh_config_dir: {base}/etc",
        f"      mesh_data_dir: {base}/data",
        f"      mesh_socket: {base}/agent.sock",
    ]
    if ghost:
        lines += [
            "    ghost:",
            "      ansible_host: 127.0.0.1",
            f"      ansible_port: {free_port()}",  # nothing listens there
            f"      mesh_prefix: {base}/ghost",
        ]
    path = tmp_path / "inv.yml"
    path.write_text("\n".join(lines) + "\n")
    return load_inventory(path)


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


async def test_upload_venv_and_offline_install(
    sshd: LoopbackSshd, wheelhouse: Wheelhouse, host_base: Path, tmp_path: Path
) -> None:
    inv = write_inventory(tmp_path, sshd, host_base)
    host = inv.host("local")
    progress = QuietProgress()
    async with connect(host) as remote:
        facts = await probe(remote, wheelhouse)
        assert facts.python == wheelhouse.python
        assert await sync_wheels(remote, wheelhouse, progress) is True
        assert await install_venv(remote, wheelhouse, progress) is True
        # Idempotent: the same wheels are neither uploaded nor installed again.
        assert await sync_wheels(remote, wheelhouse, progress) is False
        assert await install_venv(remote, wheelhouse, progress) is False
        # A damaged wheel on the host is noticed by its hash and replaced.
        victim = sorted(wheelhouse.files)[0]
        (Path(host.prefix) / "wheels" / victim).write_bytes(b"damaged")
        stale = Path(host.prefix) / "wheels" / "old-1.0-py3-none-any.whl"
        stale.write_bytes(b"old")
        remote.sftp_ok = False  # exercise the exec fallback for servers without sftp
        assert await sync_wheels(remote, wheelhouse, progress) is True
        assert not stale.exists()
        assert file_sha256(Path(host.prefix) / "wheels" / victim) == wheelhouse.files[victim]
        help_text = await remote.run(f"{host.venv}/bin/mesh-agent --help", "help")
        assert "run" in help_text.stdout
        where = await remote.run(
            f"{host.venv}/bin/python -c 'import agent, inventory; print(agent.__file__)'", "where"
        )
        # Installed from the uploaded wheel, not the operator's editable checkout.
        assert where.stdout.strip().startswith(host.venv + "/lib/")
    uploads = [e for e in progress.events if e[2].startswith("uploading")]
    assert uploads[0][2] == f"uploading {len(wheelhouse.files)} of {len(wheelhouse.files)} wheels"
    assert uploads[1][2] == f"uploading 1 of {len(wheelhouse.files)} wheels"


AGENT_READY = importlib.util.find_spec("agent.runtime.agent") is not None


@pytest.mark.skipif(not AGENT_READY, reason="the agent runtime (agent.runtime.agent) is not in yet")
async def test_full_deploy_keys_and_idempotent_redeploy(
    sshd: LoopbackSshd, wheelhouse: Wheelhouse, host_base: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inv = write_inventory(tmp_path, sshd, host_base, ghost=True)
    host = inv.host("local")
    progress = QuietProgress()
    try:
        report = await deploy(inv, None, progress, member_timeout=60)
        assert report.outcome("local").status == "changed", report.outcome("local")
        ghost = report.outcome("ghost")
        assert ghost.status == FAILED
        assert ghost.detail.startswith(f"connect: 127.0.0.1:{inv.host('ghost').ssh_port}: ")
        assert report.exit_code == 1
        assert Path(inv.default_key_path).stat().st_mode & 0o777 == 0o600
        status = agent_status(host.venv, host.socket)
        assert status["node"] == "local"
        assert [m["state"] for m in status["members"] if m["name"] == "local"] == ["alive"]
        assert status["consensus"]["leader"] == "local"

        # Key rotation across the inventory: install -> use -> remove, each idempotent.
        # Every command run on the host is recorded: no key may appear in one (argv
        # is visible to every user through ps).
        commands: list[str] = []
        real_run = RemoteHost.run

        async def spy_run(self: RemoteHost, command: str, *args: Any, **kwargs: Any) -> Any:
            commands.append(command)
            return await real_run(self, command, *args, **kwargs)

        monkeypatch.setattr(RemoteHost, "run", spy_run)
        ring = Path(host.config_dir) / "keyring"
        old_key = Path(inv.default_key_path).read_text().strip()
        old_id = key_id_of(old_key)
        installed = await keys_command("install", inv, "local", progress)
        assert installed.exit_code == 0, installed.hosts
        new_id = installed.outcome("local").detail.split()[-1]
        new_key = (Path(inv.default_key_path + ".d") / f"{new_id}.key").read_text().strip()
        assert sorted(agent_key_ids(host)) == sorted([old_id, new_id])
        assert sorted(p.name for p in ring.iterdir()) == [f"{new_id}.key"]
        # Restarted mid-rotation, the agent loads keyring/*.key beside cluster.key.
        async with connect(host) as remote:
            await stop_service(remote, systemd=False)
            await start_service(remote, False, restart=False, unit_changed=False)
            await wait_member(remote, False, 60, progress)
        assert sorted(agent_key_ids(host)) == sorted([old_id, new_id])
        assert agent_key_ids(host, primary_only=True) == [old_id]
        used = await keys_command("use", inv, "local", progress, new_id)
        assert used.exit_code == 0, used.hosts
        assert key_id_of(Path(inv.default_key_path).read_text()) == new_id
        assert key_id_of(Path(host.key_path).read_text()) == new_id
        assert agent_key_ids(host, primary_only=True) == [new_id]
        # The old primary stays on the host until remove, for hosts not switched yet.
        assert sorted(p.name for p in ring.iterdir()) == sorted([f"{old_id}.key", f"{new_id}.key"])
        for _ in range(2):  # the second run finds nothing left to do
            removed = await keys_command("remove", inv, "local", progress, old_id)
            assert removed.exit_code == 0, removed.hosts
        assert agent_key_ids(host) == [new_id]
        assert sorted(p.name for p in ring.iterdir()) == [f"{new_id}.key"]
        assert commands and not [c for c in commands if old_key in c or new_key in c]
        monkeypatch.undo()
        listed = await keys_command("list", inv, "local", progress)
        assert listed.outcome("local").detail == f"keys {new_id}*"

        again = await deploy(inv, "local", progress, member_timeout=60)
        assert again.outcome("local").status == "unchanged", again.outcome("local")
        assert again.exit_code == 0
    finally:
        # Stop the agent but keep the venv for the next test (saves an install).
        async with connect(host) as remote:
            await stop_service(remote, systemd=False)


def agent_status(venv: str, sock: str) -> dict[str, Any]:
    shown = subprocess.run(
        [f"{venv}/bin/meshtui", "status", "--json", "-t", sock],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    status: dict[str, Any] = json.loads(shown.stdout)
    return status


def agent_key_ids(host: Host, primary_only: bool = False) -> list[str]:
    shown = subprocess.run(
        [f"{host.venv}/bin/meshtui", "keys", "list", "--json", "-t", host.socket],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    keys = json.loads(shown.stdout)["keys"]
    return [k["id"] for k in keys if k["primary"] or not primary_only]


async def test_converge_then_undeploy_with_an_unreachable_host(
    sshd: LoopbackSshd, wheelhouse: Wheelhouse, host_base: Path, tmp_path: Path
) -> None:
    inv = write_inventory(tmp_path, sshd, host_base, ghost=True)
    host = inv.host("local")
    progress = QuietProgress()
    async with connect(host) as remote:
        first = await converge_host(
            remote, wheelhouse, list(inv.hosts.values()), inv.path, "a2V5" * 11, progress
        )
        # wheels and venv are there from the tests above (when they ran); config is new
        assert {"config", "started"} <= set(first.changes)
        assert not first.systemd
        again = await converge_host(
            remote, wheelhouse, list(inv.hosts.values()), inv.path, "a2V5" * 11, progress
        )
        assert again.changes == ()  # unchanged host: nothing written, nothing restarted
    key = Path(host.key_path)
    assert key.read_text() == "a2V5" * 11 + "\n"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert 'name = "local"' in Path(host.config_path).read_text()
    assert processes_mentioning(files.supervisor_path(host))

    report = await undeploy(inv, None, progress)
    assert report.exit_code == 1
    assert report.outcome("local").status == "removed"
    ghost = report.outcome("ghost")
    assert ghost.status == FAILED
    assert ghost.detail.startswith(f"connect: 127.0.0.1:{inv.host('ghost').ssh_port}: ")
    assert "\n" not in ghost.detail
    await wait_until_async(
        f"the processes under {host.prefix} to exit",
        lambda: not processes_mentioning(host.prefix), 10, 0.1,
        detail=lambda: processes_mentioning(host.prefix),
    )
    assert not Path(host.venv).exists()
    assert not Path(host.config_path).exists()
    assert Path(host.data_dir).is_dir()  # kept without purge
    again = await undeploy(inv, "local", progress, purge=True)
    assert again.outcome("local").status == "removed"
    assert not Path(host.data_dir).exists()
    assert (await undeploy(inv, "local", progress)).outcome("local").status == "unchanged"


async def test_upgrade_stops_at_the_first_host_that_fails(
    sshd: LoopbackSshd, wheelhouse: Wheelhouse, tmp_path: Path
) -> None:
    path = tmp_path / "inv.yml"
    path.write_text(
        "all:\n"
        "  vars: {ansible_user: root, ansible_host_key_checking: false}\n"
        "  hosts:\n"
        f"    ghost: {{ansible_host: 127.0.0.1, ansible_port: {free_port()}}}\n"
        f"    local: {{ansible_host: 127.0.0.1, ansible_port: {sshd.port},"
        f" ansible_ssh_private_key_file: {sshd.client_key},"
        f" mesh_prefix: {tmp_path}/opt, mesh_config_dir: {tmp_path}/etc}}\n"
    )
    inv = load_inventory(path)
    report = await upgrade(inv, None, QuietProgress())
    assert [(h.host, h.status) for h in report.hosts] == [("ghost", FAILED), ("local", "skipped")]
    assert report.outcome("local").detail == "upgrade stopped at ghost"
    assert report.exit_code == 1
    assert not (tmp_path / "opt").exists()  # nothing was touched on the skipped host
