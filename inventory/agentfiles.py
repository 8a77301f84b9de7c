"""The files and shell commands deploy puts on a host, rendered from its ``Host``.

Pure functions of the inventory (no I/O), so idempotence is simple: the same
inventory renders byte-identical files, and deploy compares their hashes with
what the host has before touching anything.

Layout on a host (``P`` = ``mesh_prefix``, ``C`` = ``mesh_config_dir``)::

    P/wheels/*.whl, P/wheels/SHA256SUMS   the uploaded wheelhouse
    P/venv/                               python3 -m venv; .meshtui-wheels = installed manifest hash
    P/supervise.sh, P/run/, P/log/        the supervisor, where systemd is not running
    C/agent.toml, C/cluster.key (0600)    docs/internals.md §5
    /etc/systemd/system/<mesh_service>.service   where systemd is running
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence

from inventory.hostvars import Host

INSTALLED_MARKER = ".meshtui-wheels"


def toml_str(value: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML escapes for what we write)."""
    return json.dumps(value, ensure_ascii=False)


def toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(toml_str(v) for v in values) + "]"


def seeds_for(host: Host, all_hosts: Sequence[Host]) -> list[str]:
    """Seed addresses this host joins: every ``mesh_seed`` host but itself.

    With no host marked as a seed, the first inventory host is the seed, so a
    fresh inventory without ``mesh_seed`` still forms one cluster where
    multicast (mDNS) does not reach.
    """
    seeds = [h for h in all_hosts if h.seed] or list(all_hosts[:1])
    return [h.seed_address for h in seeds if h.name != host.name]


def render_agent_config(host: Host, all_hosts: Sequence[Host], inventory_path: str) -> str:
    lines = [
        f"# Written by `meshtui deploy -i {inventory_path}` for host {host.name}.",
        "# Edit the inventory and re-deploy: changes made here are overwritten.",
        f"name = {toml_str(host.name)}",
        f"data_dir = {toml_str(host.data_dir)}",
        f"bind = {toml_str(host.bind)}",
        f"port = {host.mesh_port}",
        f"advertise = {toml_str(host.advertise)}",
        f"join = {toml_list(seeds_for(host, all_hosts))}",
        f"mdns = {'true' if host.mdns else 'false'}",
        f"key_file = {toml_str(host.key_path)}",
        f"cluster = {toml_str(host.cluster)}",
        f"caps = {toml_list(host.capabilities)}",
        f"slots = {host.slots}",
        f"profile = {toml_str(host.profile)}",
    ]
    if host.consensus != "raft":  # Raft hosts' files stay as they were
        lines += [f"consensus = {toml_str(host.consensus)}", f"replicas = {host.replicas}"]
    if host.socket:
        lines.append(f"socket = {toml_str(host.socket)}")
    return "\n".join(lines) + "\n"


def service_name(host: Host) -> str:
    return str(host.vars.get("mesh_service") or "mesh-agent")


def unit_path(host: Host) -> str:
    return f"/etc/systemd/system/{service_name(host)}.service"


def agent_argv(host: Host) -> list[str]:
    return [f"{host.venv}/bin/mesh-agent", "run", "--config", host.config_path]


UNIT_HARDENING = (
    # The agent makes one cgroup per task run below its own (agent.containment):
    # systemd hands it that subtree instead of fighting over it.
    "Delegate=yes",
    "NoNewPrivileges=yes",
    "ProtectSystem=full",
    "PrivateTmp=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictSUIDSGID=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "CapabilityBoundingSet=~CAP_SYS_MODULE CAP_SYS_BOOT CAP_SYS_RAWIO CAP_SYS_TIME CAP_MKNOD "
    "CAP_SYS_TTY_CONFIG CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_LEASE CAP_LINUX_IMMUTABLE "
    "CAP_MAC_ADMIN CAP_MAC_OVERRIDE CAP_AUDIT_CONTROL CAP_AUDIT_READ CAP_AUDIT_WRITE CAP_SYSLOG "
    "CAP_SYS_PACCT CAP_BPF",
    # Calls no task of a LAN cluster should make from under the agent.
    "SystemCallFilter=~@clock @cpu-emulation @module @obsolete @raw-io @reboot @swap",
    "UMask=0077",
)
"""Hardening that still lets the agent run arbitrary tasks (see inventory/README.md).

Deliberately loose, because tasks are the operator's programs: no
``ProtectHome``/``ProtectSystem=strict`` (tasks write where they like),
``PrivateDevices`` (GPU tasks need /dev), ``SystemCallFilter``,
``MemoryDenyWriteExecute`` (JITs) or ``RestrictNamespaces`` (containers);
no ``ProtectControlGroups`` (it would make the delegated cgroup read-only); the
agent keeps root's other capabilities to run tasks as their ``run_as`` user
and kill them.  ``tests/inventory/test_inventory_systemd_unit.py`` holds the
unit to ``systemd-analyze security`` exposure ``UNIT_EXPOSURE_LIMIT``.
"""

UNIT_EXPOSURE_LIMIT = 6.0
"""``systemd-analyze security --offline=true`` exposure the unit must stay at or below
(0 = locked down, 10 = unprotected; systemd calls >= 7 "exposed", 5-7 "medium").
The unit scores 5.7 (systemd 252); the limit leaves room for a small loosening, not a
regression to "exposed"."""


def render_systemd_unit(host: Host) -> str:
    return (
        "# Written by meshtui deploy.\n"
        "[Unit]\n"
        f"Description=meshtui mesh-agent ({host.name})\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        f"ExecStart={shlex.join(agent_argv(host))}\n"
        "Restart=always\n"
        "RestartSec=1\n"
        "KillMode=mixed\n"
        "TimeoutStopSec=20\n"
        + "".join(line + "\n" for line in UNIT_HARDENING)
        + "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def supervisor_path(host: Host) -> str:
    return f"{host.prefix}/supervise.sh"


def supervisor_pidfile(host: Host) -> str:
    return f"{host.prefix}/run/supervisor.pid"


def agent_pidfile(host: Host) -> str:
    return f"{host.prefix}/run/agent.pid"


def agent_log(host: Host) -> str:
    return f"{host.prefix}/log/agent.log"


def render_supervisor(host: Host) -> str:
    """A restart loop for hosts without systemd: ``setsid`` detaches it from SSH.

    It restarts the agent 1 s after it exits, backing off to 30 s while the
    agent keeps dying within 10 s of starting, and on SIGTERM stops the agent
    and exits.
    """
    q = shlex.quote
    return f"""#!/bin/sh
# mesh-agent supervisor written by meshtui deploy (systemd is not running here).
AGENT_PIDFILE={q(agent_pidfile(host))}
SUPERVISOR_PIDFILE={q(supervisor_pidfile(host))}
echo $$ > "$SUPERVISOR_PIDFILE"
child=
stop() {{
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null
        i=0
        while kill -0 "$child" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$child" 2>/dev/null
    fi
    rm -f "$AGENT_PIDFILE" "$SUPERVISOR_PIDFILE"
    exit 0
}}
trap stop TERM INT HUP
delay=1
while :; do
    started=$(date +%s)
    {shlex.join(agent_argv(host))} &
    child=$!
    echo "$child" > "$AGENT_PIDFILE"
    wait "$child"
    status=$?
    echo "$(date -u +%FT%TZ) mesh-agent exited with status $status; restarting in $delay s"
    if [ $(( $(date +%s) - started )) -ge 10 ]; then delay=1; fi
    sleep "$delay"
    delay=$((delay * 2)); if [ $delay -gt 30 ]; then delay=30; fi
done
"""


def supervisor_running_check(host: Host) -> str:
    """Shell test: the supervisor whose pid is in the pidfile is alive (not a reused pid)."""
    pidfile = shlex.quote(supervisor_pidfile(host))
    script = shlex.quote(supervisor_path(host))
    return (
        f'pid=$(cat {pidfile} 2>/dev/null) && [ -n "$pid" ] && '
        f"tr '\\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -qF {script}"
    )


def supervisor_start(host: Host) -> str:
    q = shlex.quote
    return (
        f"mkdir -p {q(host.prefix + '/run')} {q(host.prefix + '/log')} && "
        f"setsid -f sh {q(supervisor_path(host))} >> {q(agent_log(host))} 2>&1 < /dev/null"
    )


def supervisor_stop(host: Host) -> str:
    """Stop the supervisor (it stops the agent); waits up to 15 s, then kills both."""
    q = shlex.quote
    sup, agent = q(supervisor_pidfile(host)), q(agent_pidfile(host))
    return (
        f'if {supervisor_running_check(host)}; then kill -TERM "$pid"; '
        'i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 150 ]; '
        "do sleep 0.1; i=$((i+1)); done; "
        'kill -KILL "$pid" 2>/dev/null; fi; '
        f"apid=$(cat {agent} 2>/dev/null); "
        f'if [ -n "$apid" ] && kill -0 "$apid" 2>/dev/null; then kill -KILL "$apid"; fi; '
        f"rm -f {sup} {agent}; true"
    )


def status_command(host: Host) -> str:
    argv = [f"{host.venv}/bin/meshtui", "status", "--json"]
    if host.socket:
        argv[2:2] = ["-t", host.socket]
    return shlex.join(argv)


def meshtui_command(host: Host, *args: str) -> str:
    """``<venv>/bin/meshtui ARGS... [-t socket]`` run on the host against its own agent."""
    argv = [f"{host.venv}/bin/meshtui", *args]
    if host.socket:
        argv += ["-t", host.socket]
    return shlex.join(argv)
