"""Real ``mesh-agent run`` processes inside a :class:`NetnsLab` (root only).

Theory of operation
-------------------
``LabAgents(lab, key_file, base_dir)`` starts one agent per lab host with
``ip netns exec``: the agent binds ``0.0.0.0:port`` inside host ``i``'s
namespace and advertises ``lab.addr(i)``, so peers reach it over the lab
bridge (and through any nft/netem fault the test applies).  Each agent gets
its own data directory, log file and control socket under ``base_dir/h<i>/``.
The control socket is a Unix socket *file*, and Unix sockets do not care
about network namespaces, so the test talks to every agent from the root
namespace with :func:`meshtui.client.call_sync` or a ``ControlClient``.

Every wait is bounded by a timeout; a failed wait raises ``AssertionError``
whose message carries the last status seen and the tail of every agent's log,
so a red test explains itself.  ``stop_all()`` always kills what it started
(SIGKILL after a short grace period) and is safe to call twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.wait import wait_until

from meshtui.client import ClientError, ControlClient, call_sync
from netns.harness import NetnsLab

AGENT_PORT = 7900
"""The port every lab agent uses (each host has its own address, so no clash)."""

LOG_TAIL_CHARS = 2500
"""How much of each agent's log a failure message carries."""


def keygen(path: Path) -> Path:
    """Write a fresh cluster key to ``path`` (mode 0600) with ``mesh-agent keygen -o``."""
    path.unlink(missing_ok=True)  # keygen -o never overwrites a key
    subprocess.run(
        [sys.executable, "-m", "agent.cli", "keygen", "-o", str(path)],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return path


def pin_to(cpus: Iterable[int]) -> Callable[[], None]:
    """A ``preexec_fn`` pinning the child (and everything it execs) to ``cpus``."""
    allowed = frozenset(cpus)

    def pin() -> None:
        os.sched_setaffinity(0, allowed)

    return pin


@dataclass(slots=True)
class LabAgent:
    """One agent process slot in a lab host (kept across restarts)."""

    host: int
    name: str
    data_dir: Path
    socket_path: Path
    log_path: Path
    argv: list[str] = field(default_factory=list)
    cpus: frozenset[int] | None = None
    """CPUs the agent (and its children) are pinned to; None: no pinning."""
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False
    """True while the process is SIGSTOPped (so cleanup resumes it before killing)."""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LabAgents:
    """Agents in a lab's hosts: start, signal, restart, query and wait on them."""

    def __init__(
        self,
        lab: NetnsLab,
        key_file: Path,
        base_dir: Path,
        *,
        port: int = AGENT_PORT,
        mdns: bool = True,
        seeds: Sequence[int] = (),
        profile: str = "lan",
        common_args: Sequence[str] = (),
    ) -> None:
        """``seeds``: host indexes every agent joins (``--join``); with ``mdns=False``
        give at least one.  ``common_args`` are appended to every agent's argv."""
        self.lab = lab
        self.key_file = Path(key_file)
        self.base_dir = Path(base_dir)
        self.port = port
        self.mdns = mdns
        self.seeds = list(seeds)
        self.profile = profile
        self.common_args = list(common_args)
        self.agents: dict[int, LabAgent] = {}

    # ------------------------------------------------------------ naming

    def name(self, host: int) -> str:
        return f"h{host}"

    def socket(self, host: int) -> str:
        return str(self.agents[host].socket_path)

    def addr(self, host: int) -> str:
        return f"{self.lab.addr(host)}:{self.port}"

    @property
    def running_hosts(self) -> list[int]:
        return sorted(h for h, a in self.agents.items() if a.running)

    # ------------------------------------------------------------ lifecycle

    def argv(
        self, host: int, extra_args: Sequence[str] = (), key_file: Path | None = None
    ) -> list[str]:
        agent_dir = self.base_dir / self.name(host)
        argv = [
            sys.executable, "-m", "agent.cli", "run",
            "--name", self.name(host),
            "--data-dir", str(agent_dir / "data"),
            "--bind", "0.0.0.0",
            "--advertise", self.lab.addr(host),
            "--port", str(self.port),
            "--key-file", str(key_file or self.key_file),
            "--socket", str(agent_dir / "agent.sock"),
            "--profile", self.profile,
            # Lab hosts share one kernel: system CPU is the same for all of them.
            "--load-source", "tasks",
        ]
        if not self.mdns:
            argv.append("--no-mdns")
        for seed in self.seeds:
            if seed != host:
                argv += ["--join", self.addr(seed)]
        return argv + self.common_args + list(extra_args)

    def start(
        self,
        host: int,
        extra_args: Sequence[str] = (),
        key_file: Path | None = None,
        *,
        cpus: Iterable[int] | None = None,
    ) -> LabAgent:
        """Start the agent of ``host`` (fresh data dir the first time); returns at once.

        ``cpus`` pins the agent to those CPUs (``sched_setaffinity`` before exec),
        which is how a lab gives one "host" a CPU of its own: namespaces share
        the kernel's CPUs otherwise."""
        if host in self.agents and self.agents[host].running:
            raise RuntimeError(f"agent h{host} is already running")
        agent_dir = self.base_dir / self.name(host)
        (agent_dir / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
        agent = LabAgent(
            host=host,
            name=self.name(host),
            data_dir=agent_dir / "data",
            socket_path=agent_dir / "agent.sock",
            log_path=agent_dir / "agent.log",
            argv=self.argv(host, extra_args, key_file),
            cpus=None if cpus is None else frozenset(cpus),
        )
        self._spawn(agent)
        self.agents[host] = agent
        return agent

    def _spawn(self, agent: LabAgent) -> None:
        with contextlib.suppress(FileNotFoundError):
            agent.socket_path.unlink()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with agent.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}: {' '.join(agent.argv)}\n".encode())
            log.flush()
            agent.proc = self.lab.popen(
                agent.host, agent.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=str(Path(__file__).resolve().parents[2]),
                preexec_fn=None if agent.cpus is None else pin_to(agent.cpus),
            )
        agent.stopped = False

    def kill(self, host: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the agent's process group (SIGSTOP/SIGCONT are tracked)."""
        agent = self.agents[host]
        assert agent.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.proc.pid, sig)
        if sig == signal.SIGSTOP:
            agent.stopped = True
        elif sig == signal.SIGCONT:
            agent.stopped = False
        elif sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.proc.wait(timeout=10)

    def stop(self, host: int, grace: float = 5.0) -> None:
        """SIGTERM (graceful leave), SIGKILL after ``grace`` seconds."""
        agent = self.agents.get(host)
        if agent is None or agent.proc is None or agent.proc.poll() is not None:
            return
        if agent.stopped:
            self.kill(host, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.proc.pid, signal.SIGTERM)
        try:
            agent.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill(host, signal.SIGKILL)

    def restart(self, host: int) -> LabAgent:
        """Kill (if running) and start again with the same argv and data dir."""
        agent = self.agents[host]
        if agent.running:
            self.kill(host, signal.SIGCONT)
            self.kill(host, signal.SIGKILL)
        self._spawn(agent)
        return agent

    def stop_all(self, grace: float = 3.0) -> None:
        """Stop every agent: SIGCONT, SIGTERM, then SIGKILL the stragglers. Idempotent."""
        live = [a for a in self.agents.values() if a.running]
        for agent in live:
            assert agent.proc is not None
            for sig in (signal.SIGCONT, signal.SIGTERM):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(agent.proc.pid, sig)
            agent.stopped = False
        deadline = time.monotonic() + grace
        for agent in live:
            assert agent.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if agent.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(agent.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    agent.proc.wait(timeout=5)

    def __enter__(self) -> LabAgents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # ------------------------------------------------------------ queries

    def call(self, host: int, method: str, params: Mapping[str, Any] | None = None,
             timeout: float = 2.0) -> Any:
        return call_sync(self.socket(host), method, dict(params or {}), timeout)

    def status(self, host: int, timeout: float = 2.0) -> dict[str, Any]:
        result: dict[str, Any] = self.call(host, "status", {}, timeout)
        return result

    def try_status(self, host: int, timeout: float = 2.0) -> dict[str, Any] | None:
        """``status`` or None when the agent is not answering (yet)."""
        try:
            return self.status(host, timeout)
        except ClientError:
            return None

    def member_states(self, host: int) -> dict[str, str] | None:
        """``{name: state}`` as ``host`` sees the membership, or None if it does not answer."""
        status = self.try_status(host)
        if status is None:
            return None
        return {m["name"]: m["state"] for m in status["members"]}

    def logs(self, hosts: Iterable[int] | None = None, tail: int = LOG_TAIL_CHARS) -> str:
        parts = []
        for host in sorted(self.agents if hosts is None else hosts):
            agent = self.agents.get(host)
            if agent is None or not agent.log_path.exists():
                continue
            text = agent.log_path.read_text(errors="replace")
            parts.append(f"===== h{host} log (last {tail} chars) =====\n{text[-tail:]}")
        return "\n".join(parts)

    # ------------------------------------------------------------ waits

    def wait_ready(self, hosts: Iterable[int] | None = None, timeout: float = 30.0) -> None:
        """Wait until every agent answers ``status``."""
        targets = list(self.running_hosts if hosts is None else hosts)
        self._wait(
            lambda: all(self.try_status(h, 1.0) is not None for h in targets),
            timeout, f"agents {targets} answer status", lambda: "",
        )

    def wait_members(
        self,
        host: int,
        expect: Mapping[str, str],
        timeout: float,
        *,
        exact: bool = False,
    ) -> dict[str, str]:
        """Wait until ``host`` sees every ``name: state`` in ``expect``.

        With ``exact=True`` the member list must also contain no other names
        (a state of "absent" in ``expect`` means the name must not be listed).
        Returns the last seen ``{name: state}``.
        """
        last: list[dict[str, str] | None] = [None]

        def check() -> bool:
            seen = self.member_states(host)
            last[0] = seen
            if seen is None:
                return False
            for name, state in expect.items():
                if state == "absent":
                    if name in seen:
                        return False
                elif seen.get(name) != state:
                    return False
            if exact:
                wanted = {n for n, s in expect.items() if s != "absent"}
                return set(seen) == wanted
            return True

        self._wait(check, timeout, f"h{host} sees {dict(expect)}", lambda: f"last seen: {last[0]}")
        assert last[0] is not None
        return last[0]

    def wait_all_members(
        self, hosts: Iterable[int], expect: Mapping[str, str], timeout: float,
        *, exact: bool = False,
    ) -> None:
        """``wait_members`` on each of ``hosts``, sharing one deadline."""
        deadline = time.monotonic() + timeout
        for host in hosts:
            self.wait_members(host, expect, max(0.5, deadline - time.monotonic()), exact=exact)

    def wait_status(
        self, host: int, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """Wait until ``predicate(status)`` holds on ``host``; returns that status."""
        last: list[dict[str, Any] | None] = [None]

        def check() -> bool:
            last[0] = self.try_status(host)
            return last[0] is not None and predicate(last[0])

        self._wait(check, timeout, f"h{host}: {what}", lambda: f"last status: {last[0]}")
        assert last[0] is not None
        return last[0]

    def _wait(
        self, predicate: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str]
    ) -> None:
        def everything() -> str:
            dead = [
                f"h{h} exited with {a.proc.returncode}"
                for h, a in sorted(self.agents.items())
                if a.proc is not None and a.proc.poll() is not None
            ]
            return f"{detail()}; exited: {dead or 'none'}\n{self.logs()}"

        wait_until(what, predicate, timeout, 0.25, detail=everything)

    def expect_all(self, hosts: Iterable[int], state: str = "alive") -> dict[str, str]:
        """``{name: state}`` for ``hosts`` — the usual ``expect`` argument."""
        return {self.name(h): state for h in hosts}


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """One ``members`` event as a subscriber on ``host`` received it."""

    at: float
    """``time.monotonic()`` when the recorder received it."""
    host: int
    kind: str
    member: str
    state: str


class MemberEventRecorder:
    """Subscribes to the ``members`` topic of several agents and keeps every event.

    A background thread runs one asyncio loop with a ``ControlClient`` per
    host; a dropped connection (agent restarted) is re-opened every 0.5 s
    until ``stop()``.  ``overflow`` markers are recorded as kind "overflow"
    so a test can refuse to conclude "never dead" from a lossy stream.
    """

    RECONNECT_DELAY = 0.5

    def __init__(self, agents: LabAgents, hosts: Iterable[int]) -> None:
        self.agents = agents
        self.hosts = list(hosts)
        self._events: list[MemberEvent] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._subscribed: set[int] = set()

    def start(self, timeout: float = 10.0) -> MemberEventRecorder:
        """Start and wait (bounded) until every host's subscription is open."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name="member-events")
        self._thread.start()
        if not ready.wait(5.0):
            raise AssertionError("event recorder loop did not start")
        try:
            wait_until(
                "a members subscription on every host",
                lambda: self._subscribed >= set(self.hosts), timeout,
                detail=lambda: f"not subscribed: {sorted(set(self.hosts) - self._subscribed)}",
            )
        except AssertionError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> MemberEventRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def events(
        self, *, kinds: Iterable[str] | None = None, member: str | None = None,
        hosts: Iterable[int] | None = None, since: float = 0.0,
    ) -> list[MemberEvent]:
        kind_set = None if kinds is None else set(kinds)
        host_set = None if hosts is None else set(hosts)
        with self._lock:
            return [
                e for e in self._events
                if (kind_set is None or e.kind in kind_set)
                and (member is None or e.member == member)
                and (host_set is None or e.host in host_set)
                and e.at >= since
            ]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    # ------------------------------------------------------------ loop thread

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        finally:
            loop.close()

    async def _main(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        ready.set()
        tasks = [asyncio.create_task(self._follow(h)) for h in self.hosts]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, host: int) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            client: ControlClient | None = None
            try:
                client = await ControlClient.connect_unix(self.agents.socket(host), timeout=2.0)
                sub = await client.subscribe(["members"])
                self._subscribed.add(host)
                async for item in sub:
                    self._record(host, item)
            except ClientError:
                pass
            finally:
                self._subscribed.discard(host)
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.RECONNECT_DELAY)

    def _record(self, host: int, item: Mapping[str, Any]) -> None:
        now = time.monotonic()
        data = item.get("data") or {}
        if item.get("event") == "overflow":
            event = MemberEvent(now, host, "overflow", "", "")
        else:
            member = data.get("member") or {}
            event = MemberEvent(now, host, str(data.get("kind")), str(member.get("name")),
                                str(member.get("state")))
        with self._lock:
            self._events.append(event)
