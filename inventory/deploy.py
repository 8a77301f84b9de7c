"""``meshtui deploy`` and ``meshtui undeploy``: every selected host in parallel over SSH.

Deploy, per host (at most ``--forks`` at once, default 5 as in Ansible):

1. connect (asyncssh; ``~/.ssh/config``, agent keys and ``known_hosts`` apply);
2. check the remote Python/architecture against the wheels, and whether
   systemd runs there;
3. upload the wheels the host lacks to ``<mesh_prefix>/wheels`` (SFTP) and
   install them offline into ``<mesh_prefix>/venv`` (no registry needed);
4. write ``agent.toml`` and ``cluster.key`` (0600) under ``mesh_config_dir``
   and the ``mesh-agent.service`` unit or the supervisor script;
5. start the agent, or restart it if anything in 3-4 changed;
6. wait until ``meshtui status --json`` on the host shows it alive in a mesh
   that has a leader.

A host where nothing differs is reported ``unchanged`` and is not restarted.
A host that fails (unreachable, wrong Python, agent never joins) is reported
with one line and the others carry on; ``DeployReport.exit_code`` is then 1.

The wheels are built on the operator's machine once per run (see
``inventory.wheels``), before any host is contacted.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.errors import MeshError
from inventory import agentfiles as files
from inventory import hoststeps as steps
from inventory.clusterkey import key_path_for, load_or_create_key
from inventory.hostvars import Host
from inventory.loader import Inventory
from inventory.progress import (
    CHANGED,
    FAILED,
    REMOVED,
    UNCHANGED,
    DeployReport,
    HostOutcome,
    Progress,
)
from inventory.remote import RemoteHost, connect
from inventory.wheels import Wheelhouse, build_wheelhouse

DEFAULT_PARALLEL = 5
"""Hosts worked on at once (``--forks``; Ansible's default)."""
MEMBER_TIMEOUT = 120.0
"""Seconds a started agent has to become an alive member of a mesh with a leader."""


@dataclass(frozen=True, slots=True)
class Converged:
    changes: tuple[str, ...]
    """What differed: wheels, venv, config, started."""
    systemd: bool
    """The agent runs as a systemd unit (else under the supervisor script)."""


async def for_each_host(
    hosts: list[Host],
    progress: Progress,
    work: Callable[[Host], Awaitable[HostOutcome]],
    parallel: int = DEFAULT_PARALLEL,
) -> list[HostOutcome]:
    """Run ``work`` per host with at most ``parallel`` at once; a failure stays on its host."""
    gate = asyncio.Semaphore(max(1, parallel))

    async def guarded(host: Host) -> HostOutcome:
        async with gate:
            try:
                outcome = await work(host)
            except MeshError as exc:  # StepError and friends: already one line
                outcome = HostOutcome(host.name, FAILED, str(exc))
            except AssertionError:
                raise  # a broken invariant of ours is not a host failure
            except Exception as exc:  # one host's surprise must not stop the others
                text = " / ".join(str(exc).splitlines()) or "no detail"
                outcome = HostOutcome(host.name, FAILED, f"{type(exc).__name__}: {text}")
        progress.finished(outcome.host, outcome.status, outcome.detail)
        return outcome

    return list(await asyncio.gather(*(guarded(h) for h in hosts)))


async def deploy(
    inv: Inventory,
    limit: str | None,
    progress: Progress,
    purge: bool = False,
    *,
    parallel: int = DEFAULT_PARALLEL,
    member_timeout: float = MEMBER_TIMEOUT,
) -> DeployReport:
    """Deploy (or converge) the agent on every host ``limit`` selects.

    ``purge`` is accepted so deploy, undeploy and upgrade share one signature;
    deploy never deletes anything on a host but stale wheels.
    """
    del purge
    hosts = inv.select(limit)
    all_hosts = list(inv.hosts.values())
    keys = {h.name: load_or_create_key(key_path_for(inv, h)) for h in hosts}
    if not hosts:
        return DeployReport("deploy", ())
    for host in hosts:
        progress.step(host.name, "queued")
    wheelhouse = await build_wheelhouse()

    async def one(host: Host) -> HostOutcome:
        progress.step(host.name, f"connecting to {host.address}:{host.ssh_port}")
        async with connect(host) as remote:
            result = await converge_host(remote, wheelhouse, all_hosts, inv.path, keys[host.name], progress)
            await steps.wait_member(remote, result.systemd, member_timeout, progress)
        if result.changes:
            return HostOutcome(host.name, CHANGED, ", ".join(result.changes))
        return HostOutcome(host.name, UNCHANGED)

    outcomes = await for_each_host(hosts, progress, one, parallel)
    return DeployReport("deploy", tuple(outcomes))


async def converge_host(
    remote: RemoteHost,
    wheelhouse: Wheelhouse,
    all_hosts: list[Host],
    inventory_path: str,
    key: str,
    progress: Progress,
) -> Converged:
    """Steps 2-5 of deploy on one connected host."""
    host = remote.host
    progress.step(host.name, "checking the host")
    facts = await steps.probe(remote, wheelhouse)
    changes: list[str] = []
    if await steps.sync_wheels(remote, wheelhouse, progress):
        changes.append("wheels")
    if await steps.install_venv(remote, wheelhouse, progress):
        changes.append("venv")
    wanted = steps.desired_files(host, all_hosts, inventory_path, key, facts.systemd)
    written = await steps.sync_files(remote, wanted, progress)
    if written:
        changes.append("config")
    running = await steps.service_running(remote, facts.systemd)
    if changes or not running:
        progress.step(host.name, "restarting the agent" if running else "starting the agent")
        unit_changed = files.unit_path(host) in written
        await steps.start_service(remote, facts.systemd, restart=running, unit_changed=unit_changed)
        if not running:
            changes.append("started")
    return Converged(tuple(changes), facts.systemd)


async def undeploy(
    inv: Inventory,
    limit: str | None,
    progress: Progress,
    purge: bool = False,
    *,
    parallel: int = DEFAULT_PARALLEL,
) -> DeployReport:
    """Stop and remove the agent, its venv, wheels and config; the data dir too if ``purge``."""
    hosts = inv.select(limit)

    async def one(host: Host) -> HostOutcome:
        progress.step(host.name, f"connecting to {host.address}:{host.ssh_port}")
        async with connect(host) as remote:
            removed = await remove_host(remote, purge, progress)
        return HostOutcome(host.name, REMOVED if removed else UNCHANGED)

    outcomes = await for_each_host(hosts, progress, one, parallel)
    return DeployReport("undeploy", tuple(outcomes))


async def remove_host(remote: RemoteHost, purge: bool, progress: Progress) -> bool:
    """Undeploy one host; True if there was anything to remove."""
    host = remote.host
    q = shlex.quote
    unit = files.unit_path(host)
    targets = removal_targets(host, purge)
    found = await present_targets(remote, targets)
    if not found:
        return False
    progress.step(host.name, "stopping the agent")
    if unit in found:
        name = q(files.service_name(host))
        await remote.run(
            f"systemctl disable --now {name} 2>/dev/null; rm -f {q(unit)}; "
            "systemctl daemon-reload 2>/dev/null; true",
            "stop agent",
        )
    await remote.run(files.supervisor_stop(host), "stop agent")
    progress.step(host.name, "removing " + ("everything" if purge else "all but the data dir"))
    await remote.run(
        "rm -rf " + " ".join(q(t) for t in targets if t != unit) + "; "
        f"rmdir {q(host.prefix)} {q(host.config_dir)} 2>/dev/null; true",
        "remove files",
    )
    return True


def removal_targets(host: Host, purge: bool) -> list[str]:
    """Every path undeploy removes (the data dir only with ``purge``)."""
    targets = [
        host.venv,
        f"{host.prefix}/wheels",
        files.supervisor_path(host),
        f"{host.prefix}/run",
        f"{host.prefix}/log",
        host.config_path,
        host.key_path,
        f"{host.config_dir}/keyring",
        files.unit_path(host),
    ]
    if purge:
        targets.append(host.data_dir)
    return targets


async def present_targets(remote: RemoteHost, targets: list[str]) -> list[str]:
    """Those of ``targets`` that exist, plus ``running`` when the supervisor runs (read only)."""
    q = shlex.quote
    present = await remote.run(
        "for p in " + " ".join(q(t) for t in targets) + '; do [ -e "$p" ] && echo "$p"; done; '
        f"{files.supervisor_running_check(remote.host)} && echo running; true",
        "check host",
    )
    return present.stdout.split()
