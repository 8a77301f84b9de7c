"""``meshtui demo``: N real ``mesh-agent`` processes on loopback, a workload, and the TUI.

Nothing here is canned: each node is a separate ``mesh-agent run --profile
local`` process with its own data dir, socket, key file and port; they find
each other through seeds on 127.0.0.1, elect a Raft leader, and run the
CPU-burning tasks the workload thread keeps submitting, so stealing,
migration and (with the ``k``/``r`` keys) failover show up live.

Quitting stops every process the demo started and removes its directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEMO_SLOTS = 1
"""Task slots per demo agent.  One slot makes a host's task CPU (the load the
scheduler compares, ``load_source = "tasks"``) read 1.0 when one burner gets a
whole core, whatever the machine's core count: one busy task is decisively hot."""

CYCLE_SECONDS = 45.0
"""The workload repeats every this many seconds (the first cycle starts at once)."""

HOT_BURN_SECONDS = 35.0
"""How long each cycle's burner keeps one core busy (an absolute deadline: a copy
moved to another host burns only what is left, so it does not heat that host for
long).  Well over the scheduler's 10 s hot window."""

QUEUED_BEHIND = 3
"""Short keyed tasks submitted behind the burner each cycle: they queue on the hot
host, so idle hosts have work to steal (a steal needs the victim's queue to be
2 longer than the thief's)."""

QUEUED_SLEEP = 8
"""Seconds each queued task runs (sleeping: stolen work must not heat the thief)."""

BACKGROUND_INTERVAL = 5.0
"""Seconds between background tasks (1-2 s sleeps placed by auction: activity on every host)."""

DEMO_NOTE = (
    "Demo workload: every 45 s a CPU burner (35 s) and 3 short tasks are pinned to one host by the "
    "key 'hot' (hash ring); a 1-2 s task is auctioned every 5 s.  Watch: the queued tasks are "
    "stolen by idle hosts (reason steal) within seconds; the burner's host reads ~100% CPU and, "
    "after 10 s hot, the leader moves its work to a cold host (reason hot-cold).  Moves and their "
    "reasons appear in recent changes here and on screen 4.  k kills a node (failover), r restarts it."
)


def burn_argv(until: float) -> list[str]:
    """A Python busy loop until the wall-clock time ``until`` (a multi-line command, on purpose)."""
    return [sys.executable, "-c", f"import time\nend = {until:.0f}\nwhile time.time() < end: pass"]


def sleep_argv(seconds: float, label: str) -> list[str]:
    return [sys.executable, "-c", f"import time\nprint('{label} start', flush=True)\n"
            f"time.sleep({seconds})\nprint('{label} done')"]


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (the agent uses one port for both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise OSError("no free port for TCP+UDP on 127.0.0.1")


def _die_with_parent() -> None:
    """Linux PR_SET_PDEATHSIG: the agent gets SIGTERM if the demo dies, however it dies."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class DemoNode:
    name: str
    port: int
    data_dir: Path
    socket_path: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_file = self.data_dir / "agent.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalMesh:
    """Start, kill, restart and stop N loopback agents (also used by tests)."""

    def __init__(
        self,
        nodes: int,
        base_dir: Path | None = None,
        slots: int = 2,
        run_as: str = "",
        extra_args: list[str] | None = None,
    ) -> None:
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="meshtui-demo-"))
        self._owns_dir = base_dir is None
        self.key_file = self.base_dir / "cluster.key"
        ports = [free_port() for _ in range(nodes)]
        seeds = [f"127.0.0.1:{p}" for p in ports[: min(3, nodes)]]
        self.nodes: list[DemoNode] = []
        for i, port in enumerate(ports, start=1):
            data_dir = self.base_dir / f"n{i}"
            sock = str(data_dir / "agent.sock")
            argv = [
                sys.executable, "-m", "agent.cli", "run", "--profile", "local",
                "--name", f"n{i}", "--data-dir", str(data_dir), "--bind", "127.0.0.1",
                "--port", str(port), "--key-file", str(self.key_file), "--socket", sock,
                "--slots", str(slots), "--no-mdns",
                # The demo's tasks run as the user who started it (also as root:
                # its interpreter and files may not be readable by "nobody").
                "--run-as", run_as,
                *(extra_args or []),
            ]
            for seed in seeds:
                if seed != f"127.0.0.1:{port}":
                    argv += ["--join", seed]
            self.nodes.append(DemoNode(f"n{i}", port, data_dir, sock, argv))

    def start(self) -> None:
        from agent.crypto import generate_key
        from agent.keyfile import write_key_file

        self.base_dir.mkdir(parents=True, exist_ok=True)
        write_key_file(self.key_file, generate_key(), overwrite=True)  # born 0600
        for node in self.nodes:
            node.start()

    def node(self, name: str) -> DemoNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        node = self.node(name)
        if node.proc is not None and node.running:
            os.killpg(node.proc.pid, sig)
            if sig == signal.SIGKILL:
                node.proc.wait(timeout=10)

    def restart(self, name: str) -> None:
        node = self.node(name)
        if not node.running:
            node.start()

    def wait_ready(self, timeout: float = 20.0) -> bool:
        """Until every socket answers ``status`` (bounded by ``timeout``)."""
        from meshtui.client import call_sync

        deadline = time.monotonic() + timeout
        pending = {n.name for n in self.nodes}
        while pending and time.monotonic() < deadline:
            for node in self.nodes:
                if node.name in pending:
                    with contextlib.suppress(Exception):
                        call_sync(node.socket_path, "status", {}, 1.0)
                        pending.discard(node.name)
            time.sleep(0.2)
        return not pending

    def wait_voters(self, count: int, timeout: float = 30.0) -> bool:
        """Until the first running node reports ``count`` Raft voters and a leader."""
        from meshtui.client import ClientError, call_sync

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.running:
                    continue
                try:
                    cons = call_sync(node.socket_path, "status", {}, 2.0)["consensus"]
                except ClientError:
                    continue
                if len(cons["voters"]) == count and cons["leader"]:
                    return True
                break
            time.sleep(0.2)
        return False

    def wait_leader(self, timeout: float = 30.0) -> bool:
        """Until some running node names a Raft leader (bounded by ``timeout``)."""
        from meshtui.client import ClientError, call_sync

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.running:
                    continue
                with contextlib.suppress(ClientError):
                    if call_sync(node.socket_path, "status", {}, 2.0)["consensus"]["leader"]:
                        return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        for node in self.nodes:
            if node.running and node.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(timeout=5)
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)


class Workload(threading.Thread):
    """Submits the demo's workload (see ``DEMO_NOTE``) through whichever node answers."""

    def __init__(self, mesh: LocalMesh, clock: Callable[[], float] = time.time) -> None:
        super().__init__(name="demo-workload", daemon=True)
        self.mesh = mesh
        self.clock = clock
        self.stopping = threading.Event()
        self.submitted = 0

    def run(self) -> None:
        self.mesh.wait_leader(timeout=30.0)  # the first cycle's submits need a leader
        next_cycle = self.clock()
        counter = 0
        while not self.stopping.is_set():
            now = self.clock()
            if now >= next_cycle:
                counter += 1
                self._hot_cycle(now, counter)
                next_cycle = now + CYCLE_SECONDS
            else:
                counter += 1
                self._submit(sleep_argv(1 + counter % 2, f"bg{counter}"), key="", restartable=True)
            self.stopping.wait(BACKGROUND_INTERVAL)

    def _hot_cycle(self, now: float, counter: int) -> None:
        """One burner and ``QUEUED_BEHIND`` short tasks keyed onto the same host."""
        self._submit(burn_argv(now + HOT_BURN_SECONDS), key="hot", restartable=True)
        for i in range(QUEUED_BEHIND):
            self._submit(sleep_argv(QUEUED_SLEEP, f"queued{counter}.{i}"), key="hot", restartable=True)

    def _submit(self, argv: list[str], key: str, restartable: bool) -> bool:
        from meshtui.client import call_sync

        params = {
            "argv": argv, "shell": "", "env": {}, "cwd": "", "caps": [],
            "key": key, "strategy": "hash" if key else "auction",
            "priority": 0, "retries": 2, "timeout": 120.0, "restartable": restartable,
            "rid": uuid.uuid4().hex,
        }
        for node in self.mesh.nodes:
            if not node.running:
                continue
            try:
                call_sync(node.socket_path, "task.submit", params, 5.0)
            except Exception:  # no quorum yet, node down: try the next node
                continue
            self.submitted += 1
            return True
        return False


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(nodes: int, tui: bool = True, workload: bool = True) -> int:
    mesh = LocalMesh(nodes, slots=DEMO_SLOTS)
    # A closed terminal (SIGHUP) or a kill (SIGTERM) still stops every agent.
    signal.signal(signal.SIGHUP, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    print(f"meshtui demo: starting {nodes} agents in {mesh.base_dir} …", flush=True)
    mesh.start()
    load = Workload(mesh)
    try:
        if not mesh.wait_ready():
            sys.stderr.write(
                f"meshtui demo: agents did not start; logs are in {mesh.base_dir}/n*/agent.log\n"
            )
            for node in mesh.nodes:
                with contextlib.suppress(OSError):
                    sys.stderr.write(f"--- {node.name}\n{node.log_file.read_text()[-2000:]}\n")
            return 1
        if workload:
            load.start()
        if tui:
            from meshtui.app import run_app
            from meshtui.connect import client_factory_for
            from meshtui.targets import ResolvedTarget

            first = mesh.nodes[0]
            target = ResolvedTarget("unix", f"demo {first.name}", first.socket_path)
            run_app(client_factory_for(target), target.label, demo_controls=mesh)
        else:
            print("demo running headless; Ctrl-C stops it", flush=True)
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        load.stopping.set()
        mesh.stop()
        print("meshtui demo: stopped every agent and removed its files", flush=True)
    return 0
