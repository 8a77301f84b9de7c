"""``meshtui upgrade``: a rolling upgrade, one host at a time, never below quorum.

For each selected host, in inventory order:

1. upload the new wheels beside the old ones (harmless to the running agent);
   if the venv already holds exactly these wheels and the config is current,
   the host is ``unchanged`` and nothing else happens to it;
2. read the host's ``meshtui status --json``: if the host is a Raft voter and
   stopping it would leave fewer alive voters than a majority, wait up to
   ``QUORUM_WAIT`` seconds for the cluster to heal (the previous host may still
   be rejoining the voter set), then stop here (checked again before step 5);
3. ``meshtui drain <host>`` so the scheduler moves its queued work away;
4. if it leads, ``meshtui transfer-leader`` and wait until another node does;
5. stop the agent, install the wheels and config, start it;
6. wait until it is an alive member whose ``commit_index`` is within
   ``max_lag`` entries of the leader's (asked on the leader's host when the
   leader is in the inventory, else of the index seen before the restart), and,
   if it was a voter before, until it is a voter again: a host that left
   gracefully may come back as a learner that autopilot promotes once caught
   up, and the next host must not be stopped while the voter set is short;
7. ``meshtui undrain <host>``.

The first host that fails stops the upgrade: later hosts are reported
``skipped`` so an operator can look before anything else goes down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from inventory import agentfiles as files
from inventory import hoststeps as steps
from inventory.clusterkey import key_path_for, load_or_create_key
from inventory.deploy import MEMBER_TIMEOUT
from inventory.hostvars import Host
from inventory.loader import Inventory
from inventory.progress import (
    CHANGED,
    FAILED,
    SKIPPED,
    UNCHANGED,
    DeployReport,
    HostOutcome,
    Progress,
)
from inventory.remote import RemoteHost, StepError, connect, sha256_text
from inventory.wheels import Wheelhouse, build_wheelhouse

MAX_LAG = 10
"""Log entries a restarted host may trail the leader by and count as caught up."""
TRANSFER_TIMEOUT = 30.0
"""Seconds for leadership to move off a host before it is stopped."""
QUORUM_WAIT = 30.0
"""Seconds to wait for a voter set that cannot lose this host to heal before giving up."""


def quorum_problem(status: dict[str, Any], name: str) -> str | None:
    """None if stopping ``name`` keeps a majority of voters alive; else why not."""
    voters = _voters(status)
    if name not in voters:
        return None
    alive = {
        m.get("name")
        for m in status.get("members") or []
        if isinstance(m, dict) and m.get("state") == "alive"
    }
    remaining = sum(1 for v in voters if v != name and v in alive)
    needed = len(voters) // 2 + 1
    if remaining < needed:
        return (
            f"stopping {name} would leave {remaining} of {len(voters)} voters alive (quorum needs {needed})"
        )
    return None


async def upgrade(
    inv: Inventory,
    limit: str | None,
    progress: Progress,
    purge: bool = False,
    *,
    member_timeout: float = MEMBER_TIMEOUT,
    max_lag: int = MAX_LAG,
) -> DeployReport:
    """Roll the current wheels and config over the selected hosts, one at a time."""
    del purge
    hosts = inv.select(limit)
    if not hosts:
        return DeployReport("upgrade", ())
    all_hosts = list(inv.hosts.values())
    keys = {h.name: load_or_create_key(key_path_for(inv, h)) for h in hosts}
    wheelhouse = await build_wheelhouse()
    outcomes: list[HostOutcome] = []
    for index, host in enumerate(hosts):
        progress.step(host.name, f"connecting to {host.address}:{host.ssh_port}")
        try:
            async with connect(host) as remote:
                outcome = await upgrade_host(
                    remote,
                    inv,
                    wheelhouse,
                    all_hosts,
                    keys[host.name],
                    progress,
                    member_timeout,
                    max_lag,
                )
        except StepError as exc:
            outcome = HostOutcome(host.name, FAILED, str(exc))
        progress.finished(outcome.host, outcome.status, outcome.detail)
        outcomes.append(outcome)
        if outcome.status == FAILED:
            for later in hosts[index + 1 :]:
                skipped = HostOutcome(later.name, SKIPPED, f"upgrade stopped at {host.name}")
                progress.finished(skipped.host, skipped.status, skipped.detail)
                outcomes.append(skipped)
            break
    return DeployReport("upgrade", tuple(outcomes))


async def upgrade_host(
    remote: RemoteHost,
    inv: Inventory,
    wheelhouse: Wheelhouse,
    all_hosts: list[Host],
    key: str,
    progress: Progress,
    member_timeout: float,
    max_lag: int,
) -> HostOutcome:
    host = remote.host
    facts = await steps.probe(remote, wheelhouse)
    await steps.sync_wheels(remote, wheelhouse, progress)
    wanted = steps.desired_files(host, all_hosts, inv.path, key, facts.systemd)
    have = await remote.file_hashes(list(wanted), "check config")
    marker = await remote.run(
        f"cat {host.venv}/{files.INSTALLED_MARKER} 2>/dev/null", "check venv", check=False
    )
    stale_files = [p for p, (data, _) in wanted.items() if have.get(p) != sha256_text(data)]
    if marker.stdout.strip() == wheelhouse.digest and not stale_files:
        return HostOutcome(host.name, UNCHANGED)

    status, error = await steps.read_status(remote)
    if status is None:
        raise StepError("status", f"the agent does not answer ({error}); deploy it first")
    status = await _wait_quorum_safe(remote, status, progress)
    before = _commit_index(status)
    was_voter = host.name in _voters(status)

    progress.step(host.name, "draining")
    await remote.run(files.meshtui_command(host, "drain", host.name), "drain")
    if (status.get("consensus") or {}).get("leader") == host.name:
        await _transfer_leadership(remote, progress)

    # Check again right before stopping: a peer may have died while we drained.
    status, error = await steps.read_status(remote)
    try:
        if status is None:
            raise StepError("quorum check", error)
        await _wait_quorum_safe(remote, status, progress)
    except StepError:
        await remote.run(files.meshtui_command(host, "undrain", host.name), "undrain", check=False)
        raise
    progress.step(host.name, "stopping the agent")
    await steps.stop_service(remote, facts.systemd)
    try:
        await steps.install_venv(remote, wheelhouse, progress)
        written = await steps.sync_files(remote, wanted, progress)
    except StepError:
        # Do not leave the host down: start whatever is installed, then report.
        with contextlib.suppress(StepError):
            await steps.start_service(remote, facts.systemd, restart=False, unit_changed=True)
        raise
    progress.step(host.name, "starting the agent")
    await steps.start_service(
        remote, facts.systemd, restart=False, unit_changed=files.unit_path(host) in written
    )
    await steps.wait_member(remote, facts.systemd, member_timeout, progress)
    await _wait_caught_up(remote, inv, before, member_timeout, max_lag, progress)
    if was_voter:
        await _wait_voter(remote, member_timeout, progress)
    progress.step(host.name, "undraining")
    await remote.run(files.meshtui_command(host, "undrain", host.name), "undrain")
    return HostOutcome(host.name, CHANGED, "upgraded")


async def _transfer_leadership(remote: RemoteHost, progress: Progress) -> None:
    host = remote.host
    progress.step(host.name, "transferring leadership away")
    await remote.run(files.meshtui_command(host, "transfer-leader"), "transfer leadership")
    deadline = time.monotonic() + TRANSFER_TIMEOUT
    while time.monotonic() < deadline:
        status, _ = await steps.read_status(remote)
        leader = (status or {}).get("consensus", {}).get("leader")
        if status is not None and leader and leader != host.name:
            return
        await asyncio.sleep(0.5)
    raise StepError("transfer leadership", f"still leading after {TRANSFER_TIMEOUT:.0f}s")


async def _wait_caught_up(
    remote: RemoteHost,
    inv: Inventory,
    before: int,
    timeout: float,
    max_lag: int,
    progress: Progress,
) -> None:
    """Wait until this host's commit index reaches the leader's (less ``max_lag``).

    The leader's index is read *before* this host's, so the comparison is with
    where the leader was a moment ago: under a steady write load the leader
    moves on meanwhile, and comparing the other way round would chase it.
    """
    host = remote.host
    progress.step(host.name, "waiting for its log to catch up")
    deadline = time.monotonic() + timeout
    detail = "no status"
    async with contextlib.AsyncExitStack() as stack:
        leader_remote: RemoteHost | None = None
        while True:
            status, error = await steps.read_status(remote)
            leader = ((status or {}).get("consensus") or {}).get("leader")
            if leader and leader != host.name and leader in inv.hosts:
                if leader_remote is None or leader_remote.host.name != leader:
                    try:
                        leader_remote = await stack.enter_async_context(connect(inv.hosts[str(leader)]))
                    except StepError:
                        leader_remote = None
                target = before
                if leader_remote is not None:
                    theirs, _ = await steps.read_status(leader_remote)
                    if theirs is not None:
                        target = max(target, _commit_index(theirs))
                status, error = await steps.read_status(remote)
            else:
                target = before
            if status is not None:
                mine = _commit_index(status)
                if leader and mine >= target - max_lag:
                    return
                detail = f"commit_index {mine}, leader {leader} at {target}"
            else:
                detail = error
            if time.monotonic() >= deadline:
                raise StepError("catch up", f"log not caught up after {timeout:.0f}s: {detail}")
            await asyncio.sleep(0.5)


async def _wait_quorum_safe(
    remote: RemoteHost, status: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """The first status in which stopping this host keeps a majority of voters alive.

    Polls for up to ``QUORUM_WAIT`` seconds, so a voter set that is still healing
    (a learner about to be promoted, a peer about to be seen alive) does not stop
    the upgrade; a set that stays short does, with the reason.
    """
    host = remote.host
    deadline = time.monotonic() + QUORUM_WAIT
    problem = quorum_problem(status, host.name)
    if problem is None:
        return status
    progress.step(host.name, f"waiting for quorum to allow it: {problem}")
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        fresh, error = await steps.read_status(remote)
        if fresh is None:
            problem = error
            continue
        problem = quorum_problem(fresh, host.name)
        if problem is None:
            return fresh
    raise StepError("quorum check", problem)


async def _wait_voter(remote: RemoteHost, timeout: float, progress: Progress) -> None:
    """Wait until the restarted host is back in the voter set it was in before."""
    host = remote.host
    progress.step(host.name, "waiting to be a voter again")
    deadline = time.monotonic() + timeout
    while True:
        status, _ = await steps.read_status(remote)
        if status is not None and host.name in _voters(status):
            return
        if time.monotonic() >= deadline:
            raise StepError("voter", f"not a voter again after {timeout:.0f}s")
        await asyncio.sleep(0.5)


def _voters(status: dict[str, Any]) -> list[str]:
    return [str(v) for v in (status.get("consensus") or {}).get("voters") or []]


def _commit_index(status: dict[str, Any]) -> int:
    return int((status.get("consensus") or {}).get("commit_index") or 0)
