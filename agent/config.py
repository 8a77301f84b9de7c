"""Agent configuration: frozen dataclasses, two profiles, a TOML file and flags.

Precedence (lowest to highest): the profile's defaults (``default_lan()`` or
``default_local()``), the TOML file given with ``--config``, then command-line
flags.  Every field documents its unit and default; ``validate()`` raises
``ConfigError(field, reason)`` whose ``str()`` is the one line the CLI prints
before exiting with code 2.

The protocol cores own their own tuning dataclasses (``SwimConfig``,
``RaftConfig``, ``SchedConfig``); this module composes them and maps the TOML
sections ``[swim]``, ``[raft]`` and ``[sched]`` onto their fields.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.durable import replace_file
from agent.errors import ConfigError
from agent.metrics.config import MetricsConfig
from agent.pbft.config import PbftConfig
from agent.raft.config import RaftConfig
from agent.runtime.event_loop import validate_event_loop
from agent.runtime_config import RuntimeConfig
from agent.sched.config import SchedConfig
from agent.swim.config import SwimConfig

DEFAULT_PORT = 7900
"""One port per agent, TCP and UDP."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything one ``mesh-agent`` process needs."""

    name: str = ""
    """Human name shown in the TUI and CLI. Default: the host name."""
    data_dir: str = ""
    """Directory for the node id, WAL, snapshots and task output.
    Default: ``/var/lib/mesh-agent`` as root, else ``~/.local/share/mesh-agent``."""
    bind: str = "0.0.0.0"
    """Address the UDP and TCP listeners bind to."""
    port: int = DEFAULT_PORT
    """Port for both UDP (SWIM) and TCP (streams). 0 picks a free port (tests)."""
    advertise: str = ""
    """Address peers use to reach us. Default: ``bind`` unless it is a wildcard,
    then the address of the interface holding the default route."""
    join: tuple[str, ...] = ()
    """Seed peers as ``HOST:PORT`` (DNS names allowed); retried forever with capped backoff."""
    mdns: bool = True
    """Register and browse ``_mesh-agent._tcp.local.`` with zeroconf."""
    key_file: str = ""
    """Path to the base64 cluster key (``mesh-agent keygen``). Required unless ``insecure_no_key``."""
    insecure_no_key: bool = False
    """Run unsealed. Only for experiments: anyone on the LAN can join and command the mesh."""
    socket: str = ""
    """Control socket path. Default per DESIGN.md; ``MESH_SOCKET`` overrides the default."""
    cluster: str = "default"
    """Cluster name; mDNS advertises a hash of it so clusters on one LAN ignore each other."""
    caps: tuple[str, ...] = ()
    """Capability tags of this host (``--cap gpu``) used by capability routing."""
    slots: int = 0
    """Concurrent task slots. 0 means ``os.cpu_count()``."""
    run_as: str = "nobody"
    """Unprivileged user tasks run as when the agent runs as root. Empty: run as the agent's user."""
    profile: str = "lan"
    """``lan`` (memberlist LAN timings) or ``local`` (loopback demo and tests)."""
    max_voters: int = 5
    """Raft voters; every other member is a non-voting learner."""
    consensus: str = "raft"
    """The engine a new cluster is formed with: ``raft`` (crash faults) or ``pbft``
    (Byzantine faults, issue 13; needs a data dir made for it: node ids derive from
    each node's key, ``agent/identity_key.py``)."""
    replicas: int = 4
    """PBFT only: the replica count n = 3f+1 (4 tolerates one lying or failed
    replica, 7 two); the first hosts that form the cluster are its replicas, the
    others follow.  Fewer than 4 cannot tolerate any Byzantine replica."""
    event_loop: str = "auto"
    """The event loop the agent runs on: ``auto`` (default: uvloop when installed,
    ``pip install 'meshtui[fast]'``, else the standard asyncio loop; the
    ``MESH_EVENT_LOOP`` environment variable, when set, decides instead),
    ``asyncio`` or ``uvloop`` (a config error if not installed).  Why auto:
    uvloop cuts the CPU each socket read, write and callback costs, which is most
    of a busy leader's CPU per committed write (issue 14); installing the extra
    is the opt-in, and the agent behaves the same on either loop
    (``agent/runtime/event_loop.py``)."""
    load_source: str = "system"
    """What ``cpu`` means for placement: ``system`` (psutil CPU of the whole host) or
    ``tasks`` (CPU used by this agent's own task processes, via psutil). Use ``tasks``
    when agents share one kernel (several agents on one machine, network namespaces):
    there the system figure is the same for all of them. The local profile uses ``tasks``."""
    swim: SwimConfig = field(default_factory=SwimConfig.lan)
    raft: RaftConfig = field(default_factory=RaftConfig.lan)
    sched: SchedConfig = field(default_factory=SchedConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig.lan)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """``[metrics]``: the Prometheus endpoint (off by default) and the history."""
    pbft: PbftConfig = field(default_factory=PbftConfig.lan)
    """``[pbft]``: PBFT's checkpoint interval, window and timeouts (``agent/pbft/config.py``)."""

    def effective_slots(self) -> int:
        return self.slots or os.cpu_count() or 1

    def _validate_engine(self) -> None:
        if self.consensus not in ("raft", "pbft"):
            raise ConfigError("consensus", f"must be 'raft' or 'pbft', got {self.consensus!r}")
        if self.consensus == "pbft" and self.replicas not in (4, 7):
            raise ConfigError(
                "replicas", f"PBFT needs 4 or 7 replicas (n = 3f+1, f >= 1), got {self.replicas}"
            )

    def validate(self) -> AgentConfig:
        if not self.name or len(self.name) > 63 or any(c.isspace() for c in self.name):
            raise ConfigError("name", f"must be 1-63 characters without spaces, got {self.name!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"must be 0-65535, got {self.port}")
        for seed in self.join:
            parse_host_port(seed, field_name="join")
        if self.slots < 0:
            raise ConfigError("slots", f"must be >= 0, got {self.slots}")
        if self.profile not in ("lan", "local"):
            raise ConfigError("profile", f"must be 'lan' or 'local', got {self.profile!r}")
        if not 1 <= self.max_voters <= 9 or self.max_voters % 2 == 0:
            raise ConfigError("max_voters", f"must be odd and 1-9, got {self.max_voters}")
        self._validate_engine()
        validate_event_loop(self.event_loop)
        if self.load_source not in ("system", "tasks"):
            raise ConfigError("load_source", f"must be 'system' or 'tasks', got {self.load_source!r}")
        if not self.key_file and not self.insecure_no_key:
            raise ConfigError(
                "key_file",
                "no cluster key: pass --key-file (make one with `mesh-agent keygen`) "
                "or --insecure-no-key",
            )
        for cap in self.caps:
            if not cap or "," in cap or any(c.isspace() for c in cap):
                raise ConfigError("caps", f"bad capability tag {cap!r}")
        self.swim.validate()
        self.raft.validate()
        self.sched.validate()
        self.runtime.validate()
        self.metrics.validate()
        self.pbft.validate()
        return self


def parse_host_port(value: str, field_name: str = "address") -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ConfigError otherwise."""
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(field_name, f"expected HOST:PORT, got {value!r}")
    return host, int(port_text)


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/mesh-agent"
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "mesh-agent")


def default_lan() -> AgentConfig:
    """memberlist's LAN timings; Raft heartbeat 100 ms, election 1-2 s."""
    return AgentConfig(
        name=socket.gethostname().split(".")[0],
        data_dir=default_data_dir(),
        swim=SwimConfig.lan(),
        raft=RaftConfig.lan(),
    )


def default_local() -> AgentConfig:
    """Loopback profile for the demo and tests: faster probes, no mDNS."""
    return dataclasses.replace(
        default_lan(),
        profile="local",
        bind="127.0.0.1",
        load_source="tasks",
        mdns=False,
        swim=SwimConfig.local(),
        raft=RaftConfig.local(),
        runtime=RuntimeConfig.local(),
        pbft=PbftConfig.local(),
    )


_SECTIONS = {"swim", "raft", "sched", "runtime", "metrics", "pbft"}


def _coerce(field_name: str, hint: Any, value: Any) -> Any:
    """Check a TOML value against a dataclass field's type; tuples accept lists."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(field_name, args[0], value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(field_name, f"expected a list, got {type(value).__name__}")
        (item_hint, *_rest) = typing.get_args(hint)
        return tuple(_coerce(field_name, item_hint, v) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if type(value) is not hint:
            raise ConfigError(
                field_name, f"expected {hint.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    raise ConfigError(field_name, "cannot be set from a config file")


def apply_mapping(obj: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Return ``obj`` (a dataclass) with ``values`` applied, each checked against its type."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        qualified = f"{prefix}{key}"
        if key in _SECTIONS and not prefix:
            if not isinstance(value, dict):
                raise ConfigError(qualified, "expected a table")
            changes[key] = apply_mapping(getattr(obj, key), value, prefix=f"{key}.")
            continue
        if key not in names:
            raise ConfigError(qualified, "unknown setting")
        changes[key] = _coerce(qualified, hints[key], value)
    return dataclasses.replace(obj, **changes)


def load_config(path: str | None, overrides: dict[str, Any], profile: str | None) -> AgentConfig:
    """Profile defaults ← TOML file ← flags (``overrides``: only flags the user gave)."""
    file_values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                file_values = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path}: {exc}") from None
    chosen = profile or overrides.get("profile") or file_values.get("profile") or "lan"
    if chosen not in ("lan", "local"):
        raise ConfigError("profile", f"must be 'lan' or 'local', got {chosen!r}")
    base = default_local() if chosen == "local" else default_lan()
    cfg = apply_mapping(base, file_values)
    cfg = apply_mapping(cfg, overrides)
    assert isinstance(cfg, AgentConfig)
    return cfg.validate()


def load_or_create_node_id(data_dir: str) -> str:
    """The node id is made once (16 random bytes, hex) and kept in ``<data_dir>/node_id``."""
    path = Path(data_dir) / "node_id"
    try:
        node_id = path.read_text().strip()
    except FileNotFoundError:
        node_id = ""
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot read {path}: {exc.strerror}") from None
    if node_id:
        if len(node_id) != 32 or any(c not in "0123456789abcdef" for c in node_id):
            raise ConfigError("data_dir", f"{path} holds a malformed node id {node_id!r}")
        return node_id
    node_id = secrets.token_hex(16)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, (node_id + "\n").encode(), mode=0o644)
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot write {path}: {exc.strerror}") from None
    return node_id
