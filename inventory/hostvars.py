"""Typed reading of the connection and meshtui variables of one host.

Inventory values arrive as YAML scalars or INI text, so each reader accepts
both (``mesh_slots: 4`` and ``mesh_slots=4``; ``mesh_seed: yes`` and
``mesh_seed=True``; capabilities as a list or ``gpu,ssd``) and raises an
``InventoryError`` at the line that set the bad value.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from inventory.become import METHODS, Become
from inventory.model import Origin
from inventory.sshargs import SshArgsError, SshOptions, parse_ssh_args

DEFAULT_PREFIX = "/opt/meshtui"
DEFAULT_DATA_DIR = "/var/lib/mesh-agent"
DEFAULT_CONFIG_DIR = "/etc/mesh-agent"
DEFAULT_MESH_PORT = 7900
DEFAULT_SSH_PORT = 22

_TRUE = {"yes", "true", "on", "1", "y", "t"}
_FALSE = {"no", "false", "off", "0", "n", "f"}


@dataclass(frozen=True, slots=True)
class Host:
    """One inventory host with everything deploy needs, resolved and checked."""

    name: str
    """The inventory name; also the agent's ``name``."""
    address: str
    """``ansible_host``, else the name."""
    ssh_port: int
    """``ansible_port`` (22)."""
    user: str | None
    """``ansible_user``; None lets SSH config / the local user decide."""
    key_file: str | None
    """``ansible_ssh_private_key_file``."""
    host_key_checking: bool
    """``ansible_host_key_checking`` (true): check ``known_hosts``."""
    groups: tuple[str, ...]
    capabilities: tuple[str, ...]
    """``mesh_capabilities``: list or comma-separated text."""
    slots: int
    """``mesh_slots`` (0 = the host's CPU count)."""
    seed: bool
    """``mesh_seed``: other agents join through this host."""
    prefix: str
    """``mesh_prefix`` (/opt/meshtui): wheels, venv and supervisor live here."""
    data_dir: str
    """``mesh_data_dir`` (/var/lib/mesh-agent)."""
    config_dir: str
    """``mesh_config_dir`` (/etc/mesh-agent): agent.toml and cluster.key."""
    mesh_port: int
    """``mesh_port`` (7900), UDP and TCP."""
    cluster: str
    """``mesh_cluster`` ("default")."""
    socket: str
    """``mesh_socket``: control socket path; empty = the agent's default."""
    advertise: str
    """``mesh_advertise``; default ``ansible_host`` when it is an IP address."""
    bind: str
    """``mesh_bind`` (0.0.0.0)."""
    mdns: bool
    """``mesh_mdns`` (true)."""
    python: str
    """``mesh_python``, else ``ansible_python_interpreter``, else python3: makes the venv."""
    profile: str
    """``mesh_profile`` (lan)."""
    cluster_key_file: str | None
    """``mesh_cluster_key_file``: local file with the cluster key (else ``<inventory>.key``)."""
    vars: dict[str, Any]
    """Every merged variable, for anything else a caller wants (passwords left out)."""
    consensus: str = "raft"
    """``mesh_consensus``: ``raft`` (default) or ``pbft`` (issue 13; the agent's ``consensus``)."""
    replicas: int = 4
    """``mesh_replicas``: PBFT replicas, 4 or 7 (the agent's ``replicas``; PBFT only)."""
    ssh: SshOptions = field(default_factory=SshOptions)
    """``ansible_ssh_common_args`` + ``ansible_ssh_extra_args`` (see ``inventory.sshargs``)."""
    password: str | None = field(default=None, repr=False)
    """``ansible_password`` (or ``--ask-pass``): SSH password / keyboard-interactive."""
    become: Become | None = None
    """``ansible_become`` and friends; None = run as the login user."""

    @property
    def seed_address(self) -> str:
        host = self.advertise or self.address
        return f"[{host}]:{self.mesh_port}" if ":" in host else f"{host}:{self.mesh_port}"

    @property
    def venv(self) -> str:
        return f"{self.prefix}/venv"

    @property
    def config_path(self) -> str:
        return f"{self.config_dir}/agent.toml"

    @property
    def key_path(self) -> str:
        return f"{self.config_dir}/cluster.key"


class _Reader:
    def __init__(self, host: str, merged: dict[str, tuple[Any, Origin]], fallback: Origin) -> None:
        self.host = host
        self.merged = merged
        self.fallback = fallback

    def _get(self, key: str) -> tuple[Any, Origin] | None:
        item = self.merged.get(key)
        if item is None or item[0] is None:
            return None
        return item

    def _fail(self, key: str, origin: Origin, want: str, value: Any) -> Exception:
        return origin.error(f"host {self.host!r}: {key} must be {want}, got {value!r}")

    def text(self, key: str, default: str) -> str:
        item = self._get(key)
        if item is None:
            return default
        value, origin = item
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self._fail(key, origin, "text", value)
        return str(value)

    def optional_text(self, key: str) -> str | None:
        value = self.text(key, "")
        return value or None

    def path(self, key: str, default: str) -> str:
        value = self.text(key, default)
        if not value.startswith("/") or not value.strip("/"):
            raise self._fail(key, self.merged[key][1], "an absolute path other than /", value)
        return value.rstrip("/")

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        item = self._get(key)
        if item is None:
            return default
        value, origin = item
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._fail(key, origin, f"an integer in {low}..{high}", item[0])
        return value

    def boolean(self, key: str, default: bool) -> bool:
        item = self._get(key)
        if item is None:
            return default
        value, origin = item
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise self._fail(key, origin, "a boolean", value)

    def tags(self, key: str) -> tuple[str, ...]:
        item = self._get(key)
        if item is None:
            return ()
        value, origin = item
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            items = [v.strip() for v in value]
        else:
            raise self._fail(key, origin, "a list of tags or comma-separated text", value)
        for tag in items:
            if not tag or any(c.isspace() for c in tag):
                raise self._fail(key, origin, "tags without spaces", value)
        return tuple(items)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_PASSWORD_VARS = ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password")
_BECOME_PASSWORD_VARS = ("ansible_become_password", "ansible_become_pass", "ansible_sudo_pass",
                         "ansible_su_pass")

SECRET_VARS = frozenset(_PASSWORD_VARS + _BECOME_PASSWORD_VARS)
"""Kept out of ``Host.vars`` (and so out of any repr or log of it)."""


def _first_secret(read: _Reader, names: tuple[str, ...]) -> str | None:
    for name in names:
        item = read.merged.get(name)
        if item is not None and item[0] is not None:
            return read.text(name, "")
    return None


def _ssh_options(name: str, read: _Reader, origin: Origin) -> SshOptions:
    texts = []
    for key in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        text = read.text(key, "")
        try:
            parse_ssh_args(text)  # alone first, to point at the variable's own line
        except SshArgsError as exc:
            raise read.merged[key][1].error(f"host {name!r}: {key}: {exc}") from None
        texts.append(text)
    try:
        return parse_ssh_args(*texts)
    except SshArgsError as exc:  # pragma: no cover - each text parsed alone above
        raise origin.error(f"host {name!r}: {exc}") from None


def _become(name: str, read: _Reader) -> Become | None:
    if not read.boolean("ansible_become", False):
        return None
    method = read.text("ansible_become_method", "sudo")
    if method not in METHODS:
        raise read.merged["ansible_become_method"][1].error(
            f"host {name!r}: ansible_become_method must be one of {', '.join(METHODS)}, got {method!r}"
        )
    user = read.text("ansible_become_user", "root")
    if not user or any(c.isspace() for c in user):
        raise read.merged["ansible_become_user"][1].error(f"host {name!r}: bad ansible_become_user {user!r}")
    return Become(method, user, _first_secret(read, _BECOME_PASSWORD_VARS))


def resolve_host(
    name: str, groups: tuple[str, ...], merged: dict[str, tuple[Any, Origin]], origin: Origin
) -> Host:
    read = _Reader(name, merged, origin)
    # ansible_ssh_host/_port/_user are the pre-2.0 spellings, still found in old inventories.
    address = read.text("ansible_host", read.text("ansible_ssh_host", name))
    cluster = read.text("mesh_cluster", "default")
    if not cluster or any(c.isspace() for c in cluster):
        raise origin.error(f"host {name!r}: mesh_cluster must be a name without spaces")
    profile = read.text("mesh_profile", "lan")
    if profile not in ("lan", "local"):
        raise merged["mesh_profile"][1].error(
            f"host {name!r}: mesh_profile must be 'lan' or 'local', got {profile!r}"
        )
    consensus = read.text("mesh_consensus", "raft")
    if consensus not in ("raft", "pbft"):
        raise merged["mesh_consensus"][1].error(
            f"host {name!r}: mesh_consensus must be 'raft' or 'pbft', got {consensus!r}"
        )
    replicas = read.integer("mesh_replicas", 4, 4, 7)
    if replicas not in (4, 7):
        raise merged["mesh_replicas"][1].error(
            f"host {name!r}: mesh_replicas must be 4 or 7 (n = 3f + 1), got {replicas}"
        )
    ssh = _ssh_options(name, read, origin)
    # ansible_port/ansible_user win over -o Port/-o User (Ansible puts them first on
    # ssh's command line, and ssh keeps the first value of an option).
    port_default = ssh.port or DEFAULT_SSH_PORT
    return Host(
        name=name,
        address=address,
        ssh_port=read.integer(
            "ansible_port", read.integer("ansible_ssh_port", port_default, 1, 65535), 1, 65535
        ),
        user=read.optional_text("ansible_user") or read.optional_text("ansible_ssh_user") or ssh.user,
        key_file=read.optional_text("ansible_ssh_private_key_file"),
        host_key_checking=read.boolean("ansible_host_key_checking", True)
        and ssh.strict_host_key_checking is not False,
        groups=groups,
        capabilities=read.tags("mesh_capabilities"),
        slots=read.integer("mesh_slots", 0, 0, 4096),
        seed=read.boolean("mesh_seed", False),
        prefix=read.path("mesh_prefix", DEFAULT_PREFIX),
        data_dir=read.path("mesh_data_dir", DEFAULT_DATA_DIR),
        config_dir=read.path("mesh_config_dir", DEFAULT_CONFIG_DIR),
        mesh_port=read.integer("mesh_port", DEFAULT_MESH_PORT, 1, 65535),
        cluster=cluster,
        socket=read.text("mesh_socket", ""),
        advertise=read.text("mesh_advertise", address if _is_ip(address) else ""),
        bind=read.text("mesh_bind", "0.0.0.0"),
        mdns=read.boolean("mesh_mdns", True),
        python=read.text("mesh_python", read.text("ansible_python_interpreter", "python3")),
        profile=profile,
        consensus=consensus,
        replicas=replicas,
        cluster_key_file=read.optional_text("mesh_cluster_key_file"),
        vars={key: value for key, (value, _) in merged.items() if key not in SECRET_VARS},
        ssh=ssh,
        password=_first_secret(read, _PASSWORD_VARS),
        become=_become(name, read),
    )
