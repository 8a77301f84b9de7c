"""Deploy as real fleets are reached: unprivileged logins, sudo/su, a bastion, passwords (root, slow).

One lab for the module (namespaces share one filesystem, users and sudoers):

    ns0 operator  where ``meshtui`` runs, HOME = a test directory (never root's ~/.ssh)
    ns1 bastion   sshd, root by key, TCP forwarding on
    ns2 host a    login mt19a<k> by key; sudo NOPASSWD        } reachable only
    ns3 host b    login mt19b<k> by keyboard-interactive;     } through the
                  sudo with a password                        } bastion
    ns4 host c    login mt19c<k> by password; su to mt19s<k> (who owns c's paths)

plus ``bad``: host b's login with a wrong become password.  b's login
password comes from ``--ask-pass`` and its become password (sudo asks for the
login user's own) from an empty ``--ask-become-pass`` answer, which means "the
SSH password" (both fed on stdin: the process has no terminal); a needs none;
c's are inventory variables (su asks for the target user's password).  While
deploy and upgrade run, a thread scans every process's ``/proc/<pid>/cmdline``
for any of the passwords; afterwards the meshtui output, the sshd logs and the
agent logs are searched for them too.

Sequence (each step relies on the one before): deploy through ProxyJump from
``ansible_ssh_common_args`` -> ``--check --diff`` after changing one
variable -> upgrade -> keys install/list -> re-deploy through ProxyJump from
``~/.ssh/config`` with ``--forks 1`` -> undeploy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from netns.harness import NetnsLab
from support.sshd import PRIVSEP_DIR, SSHD, ssh_keygen
from support.wait import wait_until

from inventory.wheels import build_wheelhouse

pytestmark = [pytest.mark.root(tools=("sshd", "ssh-keygen", "sudo", "su", "useradd", "chpasswd")),
              pytest.mark.slow]

MESHTUI = str(Path(sys.executable).with_name("meshtui"))
OPERATOR, BASTION, HOST_A, HOST_B, HOST_C = range(5)
HOSTS = {"a": HOST_A, "b": HOST_B, "c": HOST_C}


@dataclass
class Fleet:
    lab: NetnsLab
    base: Path
    k: str
    env: dict[str, str]
    inv: Path
    users: dict[str, str]
    """role (a, b, c, s) -> user name."""
    passwords: dict[str, str]
    """what -> password: a-login, b-login, c-login, s-become (mt19s's), bad-become (wrong)."""
    outputs: list[str] = field(default_factory=list)
    ssh_logs: list[Path] = field(default_factory=list)

    def meshtui(self, *args: str, stdin: str = "", timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = self.lab.run(OPERATOR, [MESHTUI, *args], env=self.env, input=stdin, timeout=timeout,
                            start_new_session=True)  # no controlling terminal: getpass reads stdin
        text = f"$ meshtui {' '.join(args)}\n{done.stdout}{done.stderr}"
        print(text)  # shown on failure
        self.outputs.append(text)
        return done

    def prompted(self) -> str:
        """stdin for ``-k -K``: b's login password, then an empty become password, which
        (Ansible's rule) means the SSH password: sudo asks for the login user's own."""
        return f"{self.passwords['b-login']}\n\n"

    def path(self, host: str, *parts: str) -> Path:
        return self.base.joinpath(host, *parts)


def sh(*argv: str, input: str | None = None) -> None:
    subprocess.run(list(argv), input=input, text=True, check=True, capture_output=True, timeout=30)


def sshd_config(listen: str, host_key: Path, keys: Path, auth: str) -> str:
    """Own config (not support.sshd's, whose key-only lines come first and would win)."""
    lines = {
        "key": ["PubkeyAuthentication yes", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "UsePAM no"],
        "password": ["PubkeyAuthentication no", "PasswordAuthentication yes",
                     "KbdInteractiveAuthentication no", "UsePAM no"],
        # keyboard-interactive is PAM's conversation in OpenSSH on Linux
        "kbdint": ["PubkeyAuthentication no", "PasswordAuthentication no",
                   "KbdInteractiveAuthentication yes", "UsePAM yes"],
    }[auth]
    return "\n".join([
        f"ListenAddress {listen}", f"HostKey {host_key}", f"AuthorizedKeysFile {keys}",
        "PidFile none", "StrictModes no", "PermitRootLogin prohibit-password", *lines,
        "AllowTcpForwarding yes", "MaxSessions 64", "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE", "",
    ])


def start_sshd(fleet: Fleet, host: int, auth: str, authorized: str) -> str:
    """sshd on host's address:22; returns its host public key line for known_hosts."""
    work = fleet.base / f"sshd{host}"
    work.mkdir(mode=0o755)
    host_key = work / "host_ed25519"
    pub = ssh_keygen(host_key)
    keys = work / "authorized_keys"
    keys.write_text(authorized + "\n")
    keys.chmod(0o644)  # read by sshd as the logging-in (unprivileged) user
    config = work / "sshd_config"
    config.write_text(sshd_config(f"{fleet.lab.addr(host)}:22", host_key, keys, auth))
    log = work / "sshd.log"
    fleet.ssh_logs.append(log)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    with log.open("w") as out:
        fleet.lab.popen(host, [SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=out)
    fleet.lab.wait_tcp(host, fleet.lab.addr(host), 22)
    return pub


def inventory(fleet: Fleet, slots_behind: int, jump_in_inventory: bool) -> str:
    lab, u, pw = fleet.lab, fleet.users, fleet.passwords
    jump = f"-o ProxyJump=root@{lab.addr(BASTION)} " if jump_in_inventory else ""
    lines = [
        "all:",
        "  vars:",
        f"    ansible_ssh_private_key_file: {fleet.base}/home/.ssh/id_ed25519",
        "    ansible_become: true",
        "    mesh_profile: local",
        "    mesh_mdns: false",
        "    mesh_cluster: become",
        "    mesh_slots: 1",
        "    mesh_service_manager: supervisor",
        "  children:",
        "    behind:",
        "      vars:",
        f"        mesh_slots: {slots_behind}",
        f"        ansible_ssh_common_args: '{jump}-o StrictHostKeyChecking=no"
        " -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10'",
        "      hosts:",
        f"        a: {{ansible_host: {lab.addr(HOST_A)}, ansible_user: {u['a']}, mesh_seed: true}}",
        f"        b: {{ansible_host: {lab.addr(HOST_B)}, ansible_user: {u['b']}}}",
        "    direct:",
        "      hosts:",
        f"        c: {{ansible_host: {lab.addr(HOST_C)}, ansible_user: {u['c']},"
        f" ansible_password: {pw['c-login']}, ansible_become_method: su,"
        f" ansible_become_user: {u['s']}, ansible_become_password: {pw['s-become']},"
        " ansible_host_key_checking: false}",
        "    broken:",
        "      vars:",
        f"        ansible_ssh_common_args: '{jump}-o StrictHostKeyChecking=no'",
        "      hosts:",
        f"        bad: {{ansible_host: {lab.addr(HOST_B)}, ansible_user: {u['b']},"
        f" ansible_become_password: {pw['bad-become']}}}",
    ]
    text = "\n".join(lines) + "\n"
    for name in ("a", "b", "c", "bad"):
        # Each host's paths under its own directory (all namespaces share one filesystem).
        text = text.replace(
            f"        {name}: {{",
            f"        {name}: {{mesh_prefix: {fleet.base}/{name}/opt,"
            f" mesh_config_dir: {fleet.base}/{name}/etc, mesh_data_dir: {fleet.base}/{name}/data,"
            f" mesh_socket: {fleet.base}/{name}/agent.sock, ",
        )
    return text


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    k = secrets.token_hex(2)
    base = Path(tempfile.mkdtemp(prefix="mt-inv19-"))  # short: Unix socket paths are limited
    base.chmod(0o755)
    users = {role: f"mt19{role}{k}" for role in ("a", "b", "c", "s")}
    passwords = {what: f"Pw-{what}-{secrets.token_hex(8)}"
                 for what in ("a-login", "b-login", "c-login", "s-become")}
    passwords["bad-become"] = "wrong-" + secrets.token_hex(6)
    sudoers = Path(f"/etc/sudoers.d/mt19-{k}")
    made: list[str] = []
    try:
        for user in users.values():
            sh("useradd", "-m", "-d", str(base / f"home-{user}"), "-s", "/bin/sh", user)
            made.append(user)
        # Passwords on stdin (never argv); every account gets one (a locked one cannot log in).
        secret_of = {"a": "a-login", "b": "b-login", "c": "c-login", "s": "s-become"}
        sh("chpasswd", input="".join(f"{users[r]}:{passwords[secret_of[r]]}\n" for r in users))
        sudoers.write_text(f"{users['a']} ALL=(ALL) NOPASSWD: ALL\n{users['b']} ALL=(ALL) ALL\n"
                           f"Defaults:{users['b']} !lecture, !mail_badpass\n")
        sudoers.chmod(0o440)
        (base / "c").mkdir()
        shutil.chown(base / "c", users["s"], users["s"])  # c's become user owns c's paths
        built = asyncio.run(build_wheelhouse())
        wheels = base / "wheelhouse"
        wheels.mkdir()
        for name in built.files:
            shutil.copy(built.directory / name, wheels / name)
        home = base / "home"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        client_pub = ssh_keygen(home / ".ssh" / "id_ed25519")
        env = {**os.environ, "HOME": str(home), "MESHTUI_WHEELHOUSE": str(wheels)}
        with NetnsLab(5) as lab:
            fl = Fleet(lab, base, k, env, base / "fleet.yml", users, passwords)
            bastion_pub = start_sshd(fl, BASTION, "key", client_pub)
            start_sshd(fl, HOST_A, "key", client_pub)
            start_sshd(fl, HOST_B, "kbdint", "")
            start_sshd(fl, HOST_C, "password", "")
            (home / ".ssh" / "known_hosts").write_text(f"{lab.addr(BASTION)} {bastion_pub}\n")
            # a and b answer only the bastion: the operator's packets are dropped on arrival.
            lab.one_way(OPERATOR, HOST_A)
            lab.one_way(OPERATOR, HOST_B)
            fl.inv.write_text(inventory(fl, slots_behind=2, jump_in_inventory=True))
            yield fl
            if any(fl.path(h, "opt", "run").exists() for h in HOSTS):
                fl.meshtui("undeploy", "-i", str(fl.inv), "--limit", "a:b:c", "-k", "-K",
                           stdin=fl.prompted())
    finally:
        sudoers.unlink(missing_ok=True)
        for user in made:
            subprocess.run(["userdel", "-f", user], capture_output=True, timeout=30, check=False)
        shutil.rmtree(base, ignore_errors=True)


class ArgvWatch:
    """Scans every process's argv for any of ``secrets`` until stopped (checked while it runs)."""

    def __init__(self, secrets_: list[str]) -> None:
        self.secrets = [s.encode() for s in secrets_]
        self.hits: list[str] = []
        self.scans = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ArgvWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if any(s in argv for s in self.secrets):
                    shown = argv.replace(b"\0", b" ")[:200]
                    self.hits.append(f"{pid}: {shown!r}")
            self.scans += 1


def agent_pids(fleet: Fleet) -> dict[str, str]:
    return {h: fleet.path(h, "opt", "run", "agent.pid").read_text() for h in HOSTS}


def tree_hashes(fleet: Fleet) -> dict[str, str]:
    """sha256 of every file deploy manages (wheels, config, key, supervisor) on a, b and c."""
    found = {}
    for host in HOSTS:
        for sub in ("etc", "opt/wheels", "opt/supervise.sh"):
            root = fleet.path(host, sub)
            for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def lines_of(done: subprocess.CompletedProcess[str], prefix: str) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith(prefix)]


def test_deploy_as_unprivileged_users_through_a_bastion(fleet: Fleet) -> None:
    # The bastion really is the only way to a and b.
    for host in (HOST_A, HOST_B):
        sock = fleet.lab.socket(OPERATOR)
        sock.settimeout(1.0)
        with pytest.raises(OSError):
            sock.connect((fleet.lab.addr(host), 22))
        sock.close()
    with ArgvWatch(list(fleet.passwords.values())) as watch:
        done = fleet.meshtui("deploy", "-i", str(fleet.inv), "-k", "-K", stdin=fleet.prompted())
    assert watch.scans > 10 and watch.hits == [], watch.hits[:3]
    assert done.returncode == 1, done.stdout + done.stderr
    assert "deploy: 4 hosts: 3 changed, 1 failed" in done.stdout, done.stdout
    assert lines_of(done, "FAILED") == [
        "FAILED bad: failed: become: sudo to root: the become password was refused"
    ], done.stdout
    # Files are the become user's, with deploy's modes.
    s = pwd.getpwnam(fleet.users["s"]).pw_uid
    for host, uid in (("a", 0), ("b", 0), ("c", s)):
        key, config = fleet.path(host, "etc", "cluster.key"), fleet.path(host, "etc", "agent.toml")
        assert (key.stat().st_uid, key.stat().st_mode & 0o777) == (uid, 0o600), host
        assert (config.stat().st_uid, config.stat().st_mode & 0o777) == (uid, 0o644), host
        assert fleet.path(host, "opt", "wheels").stat().st_uid == uid
        pid = int(fleet.path(host, "opt", "run", "agent.pid").read_text())
        assert Path(f"/proc/{pid}").stat().st_uid == uid  # the agent runs as the become user
    status = json.loads(subprocess.run(
        [str(fleet.path("a", "opt", "venv", "bin", "meshtui")), "status", "--json",
         "-t", str(fleet.path("a", "agent.sock"))],
        capture_output=True, text=True, timeout=30, check=True).stdout)
    assert sorted(m["name"] for m in status["members"] if m["state"] == "alive") == ["a", "b", "c"]


def test_check_diff_shows_exactly_the_changed_variable(fleet: Fleet) -> None:
    pids, hashes = agent_pids(fleet), tree_hashes(fleet)
    fleet.inv.write_text(inventory(fleet, slots_behind=3, jump_in_inventory=True))
    done = fleet.meshtui("deploy", "-i", str(fleet.inv), "--limit", "a:b:c", "--check", "--diff",
                         "-k", "-K", stdin=fleet.prompted())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deploy --check: 3 hosts: 2 changed, 1 unchanged" in done.stdout, done.stdout
    changed = [line for line in done.stdout.splitlines() if re.match(r"^[-+](?!--|\+\+)", line)]
    assert changed == ["-slots = 2", "+slots = 3"] * 2, done.stdout
    for host in ("a", "b"):
        assert f"--- {host}:{fleet.path(host, 'etc', 'agent.toml')}" in done.stdout
        assert re.search(rf"^{host} .*CHANGED: would write {fleet.path(host, 'etc', 'agent.toml')};"
                         " restart the agent$", done.stdout, re.M), done.stdout
    rolled = fleet.meshtui("upgrade", "-i", str(fleet.inv), "--limit", "a", "--check")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert re.search(rf"^a .*CHANGED: would write {fleet.path('a', 'etc', 'agent.toml')};"
                     " drain, restart and undrain the agent$", rolled.stdout, re.M), rolled.stdout
    # undeploy --check (as su's target user on c) names what it would stop and remove.
    gone = fleet.meshtui("undeploy", "-i", str(fleet.inv), "--limit", "c", "--check")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert re.search(rf"^c .*REMOVED: would stop the agent and remove {fleet.path('c', 'opt', 'venv')}, ",
                     gone.stdout, re.M), gone.stdout
    assert agent_pids(fleet) == pids
    assert tree_hashes(fleet) == hashes


def test_upgrade_and_keys_through_become(fleet: Fleet) -> None:
    with ArgvWatch(list(fleet.passwords.values())) as watch:
        up = fleet.meshtui("upgrade", "-i", str(fleet.inv), "--limit", "a:b:c", "-k", "-K",
                           stdin=fleet.prompted())
    assert watch.hits == [], watch.hits[:3]
    assert up.returncode == 0, up.stdout + up.stderr
    assert "upgrade: 3 hosts: 2 changed, 1 unchanged" in up.stdout, up.stdout
    for host in ("a", "b"):
        assert "slots = 3" in fleet.path(host, "etc", "agent.toml").read_text()
    installed = fleet.meshtui("keys", "install", "-i", str(fleet.inv), "--limit", "a:b:c", "-k", "-K",
                              stdin=fleet.prompted())
    assert installed.returncode == 0, installed.stdout + installed.stderr
    kid = re.search(r"install ([0-9a-f]+)", installed.stdout)
    assert kid is not None, installed.stdout
    s = pwd.getpwnam(fleet.users["s"]).pw_uid
    for host, uid in (("a", 0), ("b", 0), ("c", s)):
        ring = fleet.path(host, "etc", "keyring", f"{kid[1]}.key")
        assert (ring.stat().st_uid, ring.stat().st_mode & 0o777) == (uid, 0o600), host
    listed = fleet.meshtui("keys", "list", "-i", str(fleet.inv), "--limit", "a:b:c", "-k", "-K",
                           stdin=fleet.prompted())
    assert listed.returncode == 0 and listed.stdout.count(kid[1]) == 3, listed.stdout
    # The agents' own logs (undeploy removes them) never saw a password.
    logs = [p.read_text(errors="replace") for p in fleet.base.glob("*/opt/log/*.log")]
    assert len(logs) == 3
    for what, secret in fleet.passwords.items():
        assert not [text for text in logs if secret in text], f"{what} password in an agent log"


def test_proxyjump_from_ssh_config_one_host_at_a_time(fleet: Fleet) -> None:
    lab = fleet.lab
    (fleet.base / "home" / ".ssh" / "config").write_text(
        f"Host {lab.addr(HOST_A)} {lab.addr(HOST_B)}\n    ProxyJump root@{lab.addr(BASTION)}\n"
    )
    fleet.inv.write_text(inventory(fleet, slots_behind=3, jump_in_inventory=False))
    done = fleet.meshtui("deploy", "-i", str(fleet.inv), "--limit", "a:b:c", "--forks", "1",
                         "-k", "-K", stdin=fleet.prompted())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deploy: 3 hosts: 3 unchanged" in done.stdout, done.stdout
    # --forks 1: each host finishes before the next one connects.
    events = [line.split()[0] + (" start" if "connecting" in line else " end")
              for line in done.stdout.splitlines() if "connecting" in line or "UNCHANGED" in line]
    assert events == ["a start", "a end", "b start", "b end", "c start", "c end"], done.stdout


def test_undeploy_and_no_password_anywhere(fleet: Fleet) -> None:
    done = fleet.meshtui("undeploy", "-i", str(fleet.inv), "--limit", "a:b:c", "-k", "-K",
                         stdin=fleet.prompted())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "undeploy: 3 hosts: 3 removed" in done.stdout, done.stdout
    for host in HOSTS:
        assert not fleet.path(host, "opt", "venv").exists()
        assert not fleet.path(host, "etc", "cluster.key").exists()

    def running() -> list[str]:
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if f"{fleet.base}/" in argv and "sshd" not in argv and "pytest" not in argv:
                    found.append(argv)
        return found

    wait_until("the agents to exit", lambda: not running(), 15, 0.2, detail=running)
    logs = [*fleet.outputs, *(p.read_text() for p in fleet.ssh_logs)]
    for what, secret in fleet.passwords.items():
        assert not [text for text in logs if secret in text], f"{what} password found in a log"
