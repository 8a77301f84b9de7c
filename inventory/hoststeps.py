"""The steps deploy, upgrade and undeploy perform on one host over SSH.

Each step compares what the host has with what the inventory wants and acts
only on a difference, returning whether it changed anything; that is what
makes a re-deploy of an unchanged inventory touch nothing and restart
nothing.  Steps raise ``StepError`` with a one-line reason.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inventory import agentfiles as files
from inventory.hostvars import Host
from inventory.progress import Progress
from inventory.remote import RemoteHost, StepError, sha256_text
from inventory.wheels import MANIFEST, Wheelhouse

SYSTEMD_STATES = {"running", "degraded", "starting", "initializing", "maintenance"}
"""``systemctl is-system-running`` answers meaning systemd manages services here."""
STATUS_TIMEOUT = 20.0
"""Seconds one ``meshtui status`` on a host may take."""

_PIP_ENV = (
    "unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_CONSTRAINT PIP_REQUIREMENT; "
    "export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1; "
)


@dataclass(frozen=True, slots=True)
class HostFacts:
    python: tuple[int, int]
    machine: str
    systemd: bool


async def probe(remote: RemoteHost, wheelhouse: Wheelhouse | None) -> HostFacts:
    """Python version, architecture and init system; refuse wheels that cannot run there."""
    host = remote.host
    script = "import sys, platform; print(sys.version_info[0], sys.version_info[1], platform.machine())"
    done = await remote.run(
        f"{shlex.quote(host.python)} -c {shlex.quote(script)}", "check python", check=False
    )
    fields = done.stdout.split()
    if done.exit_status != 0 or len(fields) != 3:
        raise StepError("check python", f"{host.python} does not run: {done.stderr or done.stdout}")
    python, machine = (int(fields[0]), int(fields[1])), fields[2]
    if wheelhouse is not None and (python, machine) != (wheelhouse.python, wheelhouse.machine):
        raise StepError(
            "check python",
            f"host has Python {python[0]}.{python[1]} on {machine}; the wheels are for "
            f"Python {wheelhouse.python[0]}.{wheelhouse.python[1]} on {wheelhouse.machine}",
        )
    manager = str(host.vars.get("mesh_service_manager") or "auto")
    if manager not in ("auto", "systemd", "supervisor"):
        raise StepError("check host", "mesh_service_manager must be auto, systemd or supervisor")
    if manager == "auto":
        state = await remote.run("systemctl is-system-running 2>/dev/null", "check systemd", check=False)
        systemd = state.stdout.strip() in SYSTEMD_STATES
    else:
        systemd = manager == "systemd"
    return HostFacts(python, machine, systemd)


async def sync_wheels(remote: RemoteHost, wheelhouse: Wheelhouse, progress: Progress) -> bool:
    """Upload the wheels the host lacks or has with another hash; drop stale ones."""
    host = remote.host
    directory = f"{host.prefix}/wheels"
    quoted = shlex.quote(directory)
    done = await remote.run(
        f'mkdir -p {quoted} && cd {quoted} && for f in *.whl; do [ -f "$f" ] && sha256sum "$f"; done; true',
        "check wheels",
    )
    present: dict[str, str] = {}
    for line in done.stdout.splitlines():
        digest, _, name = line.partition("  ")
        if name:
            present[name] = digest
    missing = [n for n, d in wheelhouse.files.items() if present.get(n) != d]
    stale = [n for n in present if n not in wheelhouse.files]
    if not missing and not stale:
        return False
    if missing:
        progress.step(host.name, f"uploading {len(missing)} of {len(wheelhouse.files)} wheels")
        await remote.upload([wheelhouse.directory / n for n in missing], directory, "upload wheels")
    await remote.write_file(f"{directory}/{MANIFEST}", wheelhouse.manifest.encode(), 0o644, "upload wheels")
    removal = "rm -f " + " ".join(shlex.quote(n) for n in stale) + " && " if stale else ""
    await remote.run(f"cd {quoted} && {removal}sha256sum -c --quiet {MANIFEST}", "verify wheels")
    return True


async def install_venv(remote: RemoteHost, wheelhouse: Wheelhouse, progress: Progress) -> bool:
    """Create the venv and install offline unless it already holds exactly these wheels."""
    host = remote.host
    venv, wheels = host.venv, f"{host.prefix}/wheels"
    marker = f"{venv}/{files.INSTALLED_MARKER}"
    q = shlex.quote
    check = await remote.run(
        f"[ -x {q(venv + '/bin/mesh-agent')} ] && cat {q(marker)}", "check venv", check=False
    )
    if check.exit_status == 0 and check.stdout.strip() == wheelhouse.digest:
        return False
    progress.step(host.name, "installing into the venv (offline)")
    project = q(f"{wheels}/{wheelhouse.project_wheel}")
    # --no-compile: byte-compiling all of textual etc. triples the install time, and
    # Python compiles what the agent imports on first use anyway.
    pip = f"{q(venv + '/bin/python')} -m pip install --quiet --no-compile --no-index --find-links {q(wheels)}"
    await remote.run(
        _PIP_ENV
        + f"set -e; [ -x {q(venv + '/bin/python')} ] || {q(host.python)} -m venv {q(venv)}; "
        + f"{pip} {project}; {pip} --no-deps --force-reinstall {project}; "
        + f"echo {wheelhouse.digest} > {q(marker)}",
        "install",
    )
    return True


def desired_files(
    host: Host, all_hosts: Sequence[Host], inventory_path: str, key: str, systemd: bool
) -> dict[str, tuple[bytes, int]]:
    """Every file the host needs besides the wheels: path → (content, mode)."""
    wanted = {
        host.config_path: (
            files.render_agent_config(host, all_hosts, inventory_path).encode(),
            0o644,
        ),
        host.key_path: ((key.strip() + "\n").encode(), 0o600),
    }
    if systemd:
        wanted[files.unit_path(host)] = (files.render_systemd_unit(host).encode(), 0o644)
    else:
        wanted[files.supervisor_path(host)] = (files.render_supervisor(host).encode(), 0o755)
    return wanted


async def sync_files(
    remote: RemoteHost, wanted: dict[str, tuple[bytes, int]], progress: Progress
) -> list[str]:
    """Write the files whose content differs; returns their paths."""
    have = await remote.file_hashes(wanted, "check config")
    changed = [p for p, (data, _) in wanted.items() if have.get(p) != sha256_text(data)]
    if changed:
        progress.step(remote.host.name, "writing " + ", ".join(changed))
    for path in changed:
        data, mode = wanted[path]
        await remote.write_file(path, data, mode, "write config")
    host = remote.host
    await remote.run(
        f"mkdir -p {shlex.quote(host.data_dir)} && chmod 700 {shlex.quote(host.data_dir)}",
        "create data dir",
    )
    return changed


async def service_running(remote: RemoteHost, systemd: bool) -> bool:
    host = remote.host
    if systemd:
        command = f"systemctl is-active --quiet {shlex.quote(files.service_name(host))}"
    else:
        command = files.supervisor_running_check(host)
    return (await remote.run(command, "check service", check=False)).exit_status == 0


async def start_service(remote: RemoteHost, systemd: bool, restart: bool, unit_changed: bool) -> None:
    host = remote.host
    if systemd:
        name = shlex.quote(files.service_name(host))
        reload = "systemctl daemon-reload && " if unit_changed else ""
        verb = "restart" if restart else "start"
        await remote.run(f"{reload}systemctl enable {name} && systemctl {verb} {name}", "start agent")
        return
    if restart:
        await remote.run(files.supervisor_stop(host), "stop agent")
    await remote.run(files.supervisor_start(host), "start agent")


async def stop_service(remote: RemoteHost, systemd: bool) -> None:
    host = remote.host
    if systemd:
        name = shlex.quote(files.service_name(host))
        await remote.run(f"systemctl stop {name}", "stop agent")
    else:
        await remote.run(files.supervisor_stop(host), "stop agent")


def membership_problem(status: Any, name: str) -> str | None:
    """None when ``name`` is an alive member that knows the leader; else what is missing."""
    if not isinstance(status, dict):
        return "status is not a JSON object"
    members = status.get("members") or []
    me = [m for m in members if isinstance(m, dict) and m.get("name") == name]
    if not me:
        return f"{name} is not in its own member list"
    if me[0].get("state") != "alive":
        return f"{name} is {me[0].get('state')}"
    consensus = status.get("consensus") or {}
    if not consensus.get("leader"):
        alive = sum(1 for m in members if isinstance(m, dict) and m.get("state") == "alive")
        return f"no leader yet ({alive} alive members)"
    return None


async def read_status(remote: RemoteHost) -> tuple[dict[str, Any] | None, str]:
    """``meshtui status --json`` on the host: (status, "") or (None, why not)."""
    done = await remote.run(files.status_command(remote.host), "status", check=False, timeout=STATUS_TIMEOUT)
    if done.exit_status != 0:
        return None, (done.stderr.strip() or done.stdout.strip() or f"exit {done.exit_status}")
    try:
        value = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None, "status printed something that is not JSON"
    if not isinstance(value, dict):
        return None, "status is not a JSON object"
    return value, ""


async def wait_member(
    remote: RemoteHost, systemd: bool, timeout: float, progress: Progress
) -> dict[str, Any]:
    """Poll ``meshtui status --json`` on the host until it is an alive member with a leader."""
    host = remote.host
    progress.step(host.name, "waiting until it is a member")
    deadline = time.monotonic() + timeout
    problem = "no answer yet"
    while True:
        status, error = await read_status(remote)
        if status is not None:
            found = membership_problem(status, host.name)
            if found is None:
                return status
            problem = found
        else:
            problem = error.splitlines()[-1] if error else "no answer"
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(1.0)
    log = await agent_log_tail(remote, systemd)
    raise StepError(
        "wait for membership",
        f"not a member after {timeout:.0f}s: {problem}" + (f"; agent log: {log}" if log else ""),
    )


async def agent_log_tail(remote: RemoteHost, systemd: bool, lines: int = 3) -> str:
    host = remote.host
    if systemd:
        command = f"journalctl -u {shlex.quote(files.service_name(host))} -n {lines} --no-pager -o cat"
    else:
        command = f"tail -n {lines} {shlex.quote(files.agent_log(host))}"
    done = await remote.run(command, "read log", check=False)
    return " / ".join(line.strip() for line in done.stdout.splitlines() if line.strip())
