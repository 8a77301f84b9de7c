"""``[metrics]``: the Prometheus endpoint and the history (one frozen dataclass).

Every field has its unit, default and why, like ``agent/swim/config.py``.
Set them in the ``[metrics]`` table of the agent's TOML file; ``mesh-agent run
--metrics-addr HOST:PORT`` sets ``addr``.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import ConfigError

SAMPLE_INTERVAL = 1.0
"""Seconds between metric samples (not a knob: the history's finest tier is 1 s)."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    addr: str = ""
    """``HOST:PORT`` to serve Prometheus' ``/metrics`` on, from the agent's event loop
    (default "": off).  Off by default because it is a network port: the control API
    is a Unix socket on purpose, and metrics name the cluster's hosts.  Bind it to a
    management address (``127.0.0.1:9464``, a VPN address), not a public one."""

    history: bool = True
    """Keep the bounded metrics history (``agent/metrics/history.py``: about 1.4 MB
    of memory, a few tens of KB on disk) and save it in ``<data_dir>/metrics/``
    (default true).  Off: ``report --timeframe`` and the TUI's sparklines have
    nothing to show."""

    persist_interval: float = 60.0
    """Seconds between saves of the history to the data dir (default 60 s; also saved
    on a clean stop).  Each save is one compressed file written atomically (fsync and
    rename), so this bounds the disk writes; a crash loses at most this much."""

    max_scrapers: int = 8
    """Concurrent ``/metrics`` connections served (default 8); more are closed at
    once, so a misbehaving scraper cannot pile up work on the agent's event loop."""

    def validate(self) -> MetricsConfig:
        if self.addr:
            host, sep, port = self.addr.rpartition(":")
            if not sep or not host.strip("[]") or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ConfigError("metrics.addr", f"expected HOST:PORT, got {self.addr!r}")
        if not self.persist_interval >= 1.0:
            raise ConfigError("metrics.persist_interval", f"must be >= 1 s, got {self.persist_interval}")
        if not 1 <= self.max_scrapers <= 1024:
            raise ConfigError("metrics.max_scrapers", f"must be 1-1024, got {self.max_scrapers}")
        return self
