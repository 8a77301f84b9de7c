"""One ``mesh-agent`` process: the transport, the cores' drivers, the control socket.

Start order: transport (so the port is known) → membership → consensus →
tasks → control socket → discovery.  Stop order is the reverse, with a
graceful SWIM leave so peers mark us ``left`` instead of ``dead``.

Every inbound packet is opened by the transport (sealed, replay-checked),
decoded by ``agent.wire`` (``ProtocolError`` → dropped and counted, the agent
stays up) and routed by message class to the core that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from typing import Any

from agent import __version__, wire
from agent.config import AgentConfig, load_or_create_node_id
from agent.control.paths import default_socket_path
from agent.control.server import ControlServer
from agent.crypto import Keyring, load_keyring
from agent.datadir import lock_data_dir
from agent.discovery import Discovery
from agent.errors import LocalError, ProtocolError
from agent.raft import messages as raft_messages
from agent.runtime import messages as runtime_messages
from agent.runtime.bootstrap import BootstrapGate
from agent.runtime.consensus import ConsensusDriver
from agent.runtime.membership import MembershipDriver
from agent.runtime.transport import Transport
from agent.swim import messages as swim_messages
from agent.swim.messages import NodeMeta
from agent.swim.ready import MemberEvent

log = logging.getLogger("agent")

INSECURE_KEY = bytes(32)
"""The publicly known all-zero key used with ``--insecure-no-key``: packets keep
their format, but anyone can forge them."""

TOPICS = {"members", "consensus", "tasks", "migrations", "metrics"}

BOOTSTRAP_GRACE = {"lan": 5.0, "local": 1.5}
"""Seconds the alive set must stay the same before a node with an empty log may
found a cluster (see agent/runtime/bootstrap.py for the rules)."""


def _advertise_host(config: AgentConfig) -> str:
    if config.advertise:
        return config.advertise.rpartition(":")[0] or config.advertise
    if config.bind not in ("0.0.0.0", "::", ""):
        return config.bind
    # The address of the interface holding the default route (no packet is sent).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.18.0.1", 9))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        # First, before anything in the data dir is read: one process per dir
        # (agent/datadir.py).  Held until stop(); the kernel drops it if we die.
        self.data_lock = lock_data_dir(config.data_dir)
        self.node_id = load_or_create_node_id(config.data_dir)
        if config.insecure_no_key:
            log.warning(
                "RUNNING WITHOUT A CLUSTER KEY (--insecure-no-key): anyone on the network "
                "can join this mesh and command it"
            )
            keyring = Keyring.from_key(INSECURE_KEY)
        else:
            keyring = load_keyring(config.key_file)
        # No incarnation from the data dir: the transport draws a random boot id,
        # and peers' cookies prove freshness (agent/envelope.py), so a restart,
        # a data dir restored from a copy or a clock change never matters.
        self.transport = Transport(
            config.bind,
            config.port,
            keyring,
            self.node_id,
            self._on_packet,
            self._on_packet,
            on_connection_lost=self._on_connection_lost,
        )
        self.socket_path = config.socket or default_socket_path()
        self.started = time.monotonic()
        self.decode_errors = 0
        self._stopping = asyncio.Event()
        self.exit_code = 0
        self.exit_line = ""
        self._bg: list[asyncio.Task[None]] = []
        self._routes: dict[type, Any] = {}
        # Filled in by start(); typed here for readers.
        self.membership: MembershipDriver
        self.consensus: ConsensusDriver
        self.control: ControlServer
        self.discovery: Discovery
        self.tasks: Any

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        from agent.runtime.handlers import build_handlers
        from agent.runtime.tasks import TaskRuntime

        await self.transport.start()
        host = _advertise_host(self.config)
        self.addr = f"{host}:{self.transport.port}"
        self.transport.advertise = self.addr  # peers answer streams to this address
        self.tasks = TaskRuntime(self)
        meta = NodeMeta(
            name=self.config.name,
            addr=self.addr,
            caps=tuple(self.config.caps),
            slots=self.config.effective_slots(),
            version=__version__,
            role="none",
        )
        self.membership = MembershipDriver(
            config=self.config.swim,
            node_id=self.node_id,
            meta=meta,
            send=self._send_swim,
            on_events=self._on_member_events,
            task_load=self.tasks.load_figures,
            use_task_cpu=self.config.load_source == "tasks",
            on_conflict=self._on_identity_conflict,
        )
        self.consensus = ConsensusDriver(
            config=self.config,
            node_id=self.node_id,
            data_dir=self.config.data_dir,
            send=self.send_to_node,
            publish=self.publish,
            on_applied=self.tasks.on_applied,
            on_role_change=self._on_role_change,
            wants=lambda topic: self.control.has_subscribers(topic),
        )
        self.consensus.on_unrepairable = self._stop_unrepairable
        self._build_routes()
        self.control = ControlServer(self.socket_path, build_handlers(self), TOPICS)
        await self.control.start()
        self.membership.start([])
        self.consensus.start()
        self.tasks.start()
        self.discovery = Discovery(
            node_id=self.node_id,
            cluster=self.config.cluster,
            version=__version__,
            advertise_host=host,
            port=self.transport.port,
            seeds=self.config.join,
            use_mdns=self.config.mdns,
            self_addrs={self.addr},
            on_candidate=self.membership.add_candidate,
        )
        await self.discovery.start()
        self._bg = [
            asyncio.create_task(self._bootstrap_and_autopilot(), name="autopilot"),
            asyncio.create_task(self._metrics_loop(), name="metrics"),
        ]
        log.info(
            "mesh-agent %s (%s) listening on %s, control socket %s",
            self.config.name, self.node_id[:12], self.addr, self.socket_path,
        )

    async def stop(self) -> None:
        log.info("stopping")
        for task in self._bg:
            task.cancel()
        for task in self._bg:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.discovery.close()
        await self.control.close()
        await self.tasks.close()
        await self.membership.close()
        await self.consensus.close()
        await self.transport.close()
        self.data_lock.release()

    def request_stop(self) -> None:
        self._stopping.set()

    def _stop_unrepairable(self, line: str) -> None:
        """Damaged storage nobody repaired in time (runtime/recovery.py): stop, exit 2."""
        self.exit_code, self.exit_line = 2, line
        self.request_stop()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    # ------------------------------------------------------------ packets

    def _build_routes(self) -> None:
        for cls in swim_messages.WIRE_TYPES.values():
            self._routes[cls] = self.membership.on_message
        for cls in raft_messages.WIRE_TYPES.values():
            self._routes[cls] = lambda _addr, msg: self.consensus.step(msg)
        self._routes[runtime_messages.ForwardPropose] = self._serve_forward
        self._routes[runtime_messages.ForwardResult] = (
            lambda _addr, msg: self.consensus.forward_result(msg)
        )
        for cls in (runtime_messages.OutputRequest, runtime_messages.OutputChunk):
            self._routes[cls] = self.tasks.output.on_message
        from agent.sched import messages as sched_messages

        for cls in sched_messages.WIRE_TYPES.values():
            self._routes[cls] = self.tasks.on_sched_message

    def _on_packet(self, from_addr: str, payload: bytes) -> None:
        try:
            msg = wire.decode(payload)
        except ProtocolError as exc:
            self.decode_errors += 1
            log.debug("dropped a malformed message from %s: %s", from_addr, exc)
            return
        route = self._routes.get(type(msg))
        if route is None:
            self.decode_errors += 1
            return
        try:
            route(from_addr, msg)
        except LocalError as exc:
            log.warning("message from %s refused: %s", from_addr, exc)

    def _on_connection_lost(self, addr: str) -> None:
        membership = getattr(self, "membership", None)  # None before start()
        if membership is not None:
            membership.connection_lost(addr)

    def _send_swim(self, addr: str, msg: object, reliable: bool) -> None:
        data = wire.encode(msg)
        if reliable:
            self.transport.send_stream(addr, data)
        else:
            self.transport.send_datagram(addr, data)

    def addr_of(self, node_id: str) -> str | None:
        member = self.membership.swim.member(node_id)
        return member.addr if member is not None else None

    def send_to_node(self, node_id: str, msg: object) -> None:
        addr = self.addr_of(node_id)
        if addr is not None:
            self.transport.send_stream(addr, wire.encode(msg))

    def _serve_forward(self, from_addr: str, msg: runtime_messages.ForwardPropose) -> None:
        async def serve() -> None:
            result = await self.consensus.serve_forward(msg)
            self.transport.send_stream(from_addr, wire.encode(result))

        self.spawn(serve())

    def spawn(self, coro: Any) -> None:
        """Run a short-lived coroutine, keeping a reference until it ends."""
        task = asyncio.create_task(coro)
        self._bg.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._bg.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %s", task.exception())

    # ------------------------------------------------------------ events

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        self.control.publish(topic, data)

    def _on_member_events(self, events: list[MemberEvent]) -> None:
        from agent.runtime.views import member_row

        for event in events:
            self.publish("members", {"kind": event.kind, "member": member_row(self, event.member)})
            if event.kind in ("dead", "leave"):
                self.tasks.on_member_down(event.member.id)
        self.consensus.wake()

    def _on_identity_conflict(self, addr: str) -> None:
        """SWIM found a live process at ``addr`` with our node id (a copy of our
        data dir runs there, agent/swim/identity.py): stop, exit 2."""
        self.exit_code, self.exit_line = 2, (
            f"node id {self.node_id} is already running at {addr}: {self.config.data_dir} is a "
            "copy of a live node's data dir; start this host with an empty one")
        self.request_stop()

    def _on_role_change(self, role: str) -> None:
        self.membership.update_meta(role=role)

    async def _bootstrap_and_autopilot(self) -> None:
        gate = BootstrapGate(
            self.node_id,
            BOOTSTRAP_GRACE.get(self.config.profile, 5.0),
            has_seeds=bool(self.config.join),
            now=self.started,
        )
        while True:
            await asyncio.sleep(0.5)
            members = self.membership.members()
            alive = {m.id for m in members if m.state == "alive"}
            dead = {m.id for m in members if m.state in ("dead", "left")}
            if not self.consensus.bootstrapped:
                clustered = any(m.meta.role != "none" for m in members if m.id != self.node_id)
                if gate.ready(time.monotonic(), alive, clustered):
                    self.consensus.bootstrap_single()
                continue
            self.consensus.autopilot(alive, dead)
            await self.tasks.register_members(members)

    async def _metrics_loop(self) -> None:
        from agent.runtime.views import metrics_sample

        while True:
            await asyncio.sleep(1.0)
            if self.control.has_subscribers("metrics"):
                self.publish("metrics", metrics_sample(self))


def run_agent(config: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""

    async def main() -> int:
        agent = Agent(config)
        try:
            await agent.start()
        except OSError as exc:
            raise LocalError(
                f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}"
            ) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.request_stop)
        await agent.wait_stopped()
        await agent.stop()
        if agent.exit_line:
            sys.stderr.write(f"mesh-agent: {agent.exit_line}\n")
        return agent.exit_code

    return asyncio.run(main())
