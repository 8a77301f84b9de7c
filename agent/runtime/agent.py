"""One ``mesh-agent`` process: the composition root.

``Agent.start(config)`` builds every component in order, each from what is
built before it, inside one ``AsyncExitStack``; a component's ``close`` is
registered as soon as it exists, so if a later step fails everything built
so far is closed (in reverse) and nothing is left half-built:

1. the data-dir lock (first, before anything in the data dir is read), the
   node id and the keyring;
2. the peer router (``router.py``), which owns the sealed transport: bound
   first, so the port -- and the address we advertise -- is known;
3. the consensus driver (opens the WAL, restores the state);
4. the membership driver (SWIM), which is also the router's directory;
5. the task runtime;
6. the control server, with the control handlers (``handlers/``) and the
   status views (``views.py``) over narrow interfaces (``ports.py``).

Then the listeners that point back to components built later are attached
(consensus events to the control server, applied entries to the tasks, role
changes to SWIM's metadata, member events to everyone) and the message
routes registered, before anything starts: each component works without its
listeners (events go nowhere), it is just not started yet.  Start order:
control socket → membership → consensus → tasks → discovery (mDNS, seeds) →
the autopilot and metrics loops.  Stop (``stop()``) unwinds the stack:
background loops, discovery, control, tasks, membership (a graceful SWIM
leave, so peers mark us ``left`` instead of ``dead``), consensus, the router,
the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from agent import __version__
from agent.config import AgentConfig, load_or_create_node_id
from agent.control.paths import default_socket_path
from agent.control.server import ControlServer
from agent.crypto import Keyring, load_keyring
from agent.datadir import lock_data_dir
from agent.discovery import Discovery
from agent.errors import LocalError
from agent.identity_key import load_or_create_key, pbft_node_id
from agent.links.config import LinkConfig
from agent.metrics.service import MetricsService
from agent.pbft import messages as pbft_messages
from agent.raft import messages as raft_messages
from agent.runtime import event_loop, replica_messages
from agent.runtime.bootstrap import BootstrapGate, founding_voters
from agent.runtime.compat import batches_applied
from agent.runtime.consensus import ConsensusDriver
from agent.runtime.event_messages import WIRE_TYPES as EVENT_WIRE_TYPES
from agent.runtime.event_messages import EventAck, UserEvent
from agent.runtime.events_driver import UserEventsDriver
from agent.runtime.handlers import ControlPorts, build_handlers
from agent.runtime.kv_expiry import KvExpiry
from agent.runtime.leader_loss import LeaderLossWatch
from agent.runtime.membership import MembershipDriver
from agent.runtime.messages import ForwardPropose, ForwardResult, OutputChunk, OutputRequest
from agent.runtime.names import NodeNames
from agent.runtime.pbft_driver import PbftDriver
from agent.runtime.router import PeerRouter
from agent.runtime.tasks import TaskRuntime
from agent.runtime.topology import Topology
from agent.runtime.user_events import UserEvents
from agent.runtime.views import StatusSources, member_row, metrics_sample
from agent.sched import messages as sched_messages
from agent.swim import messages as swim_messages
from agent.swim.messages import NodeMeta
from agent.swim.ready import MemberEvent

log = logging.getLogger("agent")

INSECURE_KEY = bytes(32)
"""The publicly known all-zero key used with ``--insecure-no-key``: packets keep
their format, but anyone can forge them."""

TASK_EVENT_KINDS = ("submitted", "assigned", "started", "finished", "requeued", "cancelled", "lost")
"""``data.kind`` of the ``tasks`` topic's events (agent/state/tasks.py ``_event``)."""
TOPICS = {
    "members", "consensus", "tasks", "migrations", "metrics",
    # ``tasks:finished`` and the like: a subscription to those kinds only, filtered
    # by the agent before encoding (agent/control/session.py ``parse_topics``).
    *(f"tasks:{kind}" for kind in TASK_EVENT_KINDS),
}



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


def _keyring(config: AgentConfig) -> Keyring:
    if config.insecure_no_key:
        log.warning(
            "RUNNING WITHOUT A CLUSTER KEY (--insecure-no-key): anyone on the network "
            "can join this mesh and command it"
        )
        return Keyring.from_key(INSECURE_KEY)
    return load_keyring(config.key_file)


class StopSignal:
    """Why and when the agent should stop: set by a signal, ``shutdown``, or a
    component that cannot go on (its exit code and one line for stderr)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.exit_code = 0
        self.exit_line = ""

    def request(self) -> None:
        self._event.set()

    def fail(self, code: int, line: str) -> None:
        self.exit_code, self.exit_line = code, line
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


class Background:
    """Short-lived and looping tasks the agent runs on the side; cancelled on stop."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str | None = None) -> None:
        """Run ``coro``, keeping a reference until it ends (failures are logged)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %s", task.exception())

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _member_events_listener(
    sources: StatusSources,
    publish: Callable[[str, dict[str, Any]], None],
    on_member_down: Callable[[str], None],
    wake_consensus: Callable[[], None],
) -> Callable[[list[MemberEvent]], None]:
    """Member changes: to control subscribers, to task failover, and to Raft's
    autopilot (woken to reconsider the voter set)."""

    def on_events(events: list[MemberEvent]) -> None:
        for event in events:
            publish("members", {"kind": event.kind, "member": member_row(sources, event.member)})
            if event.kind in ("dead", "leave"):
                on_member_down(event.member.id)
        wake_consensus()

    return on_events


class Agent:
    """A started agent: its components, the loops that tie them, and ``stop``."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        node_id: str,
        started: float,
        membership: MembershipDriver,
        consensus: ConsensusDriver | PbftDriver,
        tasks: TaskRuntime,
        control: ControlServer,
        sources: StatusSources,
        stop_signal: StopSignal,
        stack: contextlib.AsyncExitStack,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.started = started
        self._membership = membership
        self._consensus = consensus
        self._tasks = tasks
        self._control = control
        self._sources = sources
        self._stop_signal = stop_signal
        self._stack = stack

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def start(cls, config: AgentConfig) -> Agent:
        """Build and start every component (module doc); ``OSError`` if a port is taken."""
        stack = contextlib.AsyncExitStack()
        try:
            return await cls._compose(config, stack)
        except BaseException:
            await stack.aclose()
            raise

    @classmethod
    async def _compose(cls, config: AgentConfig, stack: contextlib.AsyncExitStack) -> Agent:
        started = time.monotonic()
        stop_signal = StopSignal()
        # One process per data dir (agent/datadir.py); the kernel drops it if we die.
        stack.enter_context(lock_data_dir(config.data_dir))
        # The node's Ed25519 key (status shows its fingerprint); a PBFT node's id is
        # derived from it (agent/identity_key.py), a Raft data dir keeps its id.
        identity = load_or_create_key(config.data_dir)
        pbft = config.consensus == "pbft"
        node_id = pbft_node_id(config.data_dir, identity) if pbft else load_or_create_node_id(config.data_dir)
        keyring = _keyring(config)

        # No incarnation from the data dir: the transport draws a random boot id,
        # and peers' cookies prove freshness (agent/envelope.py), so a restart,
        # a data dir restored from a copy or a clock change never matters.
        links = LinkConfig.local() if config.profile == "local" else LinkConfig.lan()
        router = PeerRouter(bind=config.bind, port=config.port, keyring=keyring, node_id=node_id,
                            links=links)
        await router.start()
        stack.push_async_callback(router.close)
        host = _advertise_host(config)
        addr = f"{host}:{router.port}"
        router.advertise(addr)  # peers answer streams to this address

        consensus: ConsensusDriver | PbftDriver
        if pbft:  # issue 13: the Byzantine-tolerant engine (agent/runtime/pbft_driver.py)
            consensus = PbftDriver(config=config, node_id=node_id, key=identity,
                                   data_dir=config.data_dir, send=router.send_to_node)
        else:
            consensus = ConsensusDriver(
                config=config, node_id=node_id, data_dir=config.data_dir, send=router.send_to_node,
                # Damaged storage nobody repaired in time (runtime/recovery.py): exit 2.
                on_unrepairable=lambda line: stop_signal.fail(2, line),
            )
        stack.push_async_callback(consensus.close)

        def identity_conflict(at: str) -> None:
            # A copy of our data dir runs at ``at`` (agent/swim/identity.py): exit 2.
            stop_signal.fail(2, (
                f"node id {node_id} is already running at {at}: {config.data_dir} is a "
                "copy of a live node's data dir; start this host with an empty one"))

        meta = NodeMeta(
            name=config.name, addr=addr, caps=tuple(config.caps),
            slots=config.effective_slots(), version=__version__, role="none",
        )
        membership = MembershipDriver(
            config=config.swim, node_id=node_id, meta=meta, send=router.send_to_addr,
            use_task_cpu=config.load_source == "tasks", on_conflict=identity_conflict,
        )
        stack.push_async_callback(membership.close)
        # The router hears of lost connections; a leader whose port then refuses
        # connections is gone, and followers need not wait out the election timeout.
        leader_watch = LeaderLossWatch(membership, consensus)
        stack.push_async_callback(leader_watch.close)
        router.use_directory(leader_watch)
        if isinstance(consensus, ConsensusDriver):  # Raft's minority rule (leader_wait.py)
            consensus.use_reachability(router.reachable)
            # Group commit only once every member applies batch entries (a rolling
            # upgrade runs older releases beside this one: runtime/compat.py).
            consensus.use_batch_gate(batches_applied(membership.members))
        # Link state and relays (issue 20): the live members, SWIM's helper ranking and
        # probe paths; the leader's replication streams (every member is a voter or a
        # learner today) are outside the stream cap.
        router.use_members(
            lambda: [(m.id, m.addr) for m in membership.members()
                     if m.state == "alive" and m.id != node_id],
            max_streams=links.max_streams, replicating=lambda _node: consensus.is_leader())
        membership.use_links(router.relay_score, router.observe_probe)

        tasks = TaskRuntime(
            config=config, node_id=node_id, consensus=consensus, members=membership, peers=router,
        )
        stack.push_async_callback(tasks.close)

        # Metrics (agent/metrics/): sampled from every component's narrow view, with
        # a bounded history in the data dir and /metrics when [metrics] addr is set.
        metrics = MetricsService(
            config=config.metrics, data_dir=config.data_dir, node=config.name, node_id=node_id,
            version=__version__, members=membership, consensus=consensus, state=consensus.queries,
            traffic=router.stats, sched=config.sched,
        )
        stack.push_async_callback(metrics.close)
        names = NodeNames(membership, consensus.queries)
        # User events and leader placement by RTT (issue 16): both over the peer router.
        user_events = UserEventsDriver(
            UserEvents(node_id, config.name), router.send_to_node, membership, names)
        topology = Topology(node_id, router.send_to_node, membership, consensus, names)
        sources = StatusSources(
            cluster=config.cluster,
            name=config.name, node_id=node_id, addr=addr, started=started,
            members=membership, consensus=consensus, state=consensus.queries, names=names,
            tasks=tasks, traffic=router.stats, decode_errors=lambda: router.decode_errors,
            metrics=metrics,
            link_figures=router, under_replicated=tasks.replicas.under_replicated,
        )
        control = ControlServer(
            config.socket or default_socket_path(),
            build_handlers(ControlPorts(
                consensus=consensus, state=consensus.queries, names=names, keyring=keyring,
                sources=sources, tasks=tasks, node_id=node_id, node_name=config.name,
                eligible_voters=lambda: sum(1 for m in membership.members() if m.state == "alive"),
                stop=stop_signal.request, events=user_events, topology=topology, replicas=tasks.replicas,
            )),
            TOPICS,
            idle_timeout=config.runtime.control_idle_timeout,
        )
        stack.push_async_callback(control.close)

        # Listeners pointing back at components built later, and the routes.
        consensus.connect(
            publish=control.publish, wants=control.has_subscribers,
            on_applied=tasks.on_applied, on_role_change=membership.set_role,
        )
        membership.connect(
            on_events=metrics.tap(_member_events_listener(
                sources, control.publish, tasks.on_member_down, consensus.wake)),
            task_load=tasks.load_figures,
        )
        background = Background()

        router.route(swim_messages.WIRE_TYPES.values(), membership.on_message)
        if isinstance(consensus, PbftDriver):
            consensus.use_members(
                lambda: [m.id for m in membership.members() if m.state == "alive"])
            router.route(pbft_messages.WIRE_TYPES.values(), consensus.on_message)
        else:
            raft = consensus

            def serve_forward(from_addr: str, msg: ForwardPropose) -> None:
                background.spawn(_answer_forward(raft, router, from_addr, msg))

            router.route(raft_messages.WIRE_TYPES.values(), consensus.on_message)
            router.route([ForwardPropose], serve_forward)
            router.route([ForwardResult], consensus.on_forward_result)
        router.route([OutputRequest, OutputChunk], tasks.on_output_message)
        router.route(replica_messages.WIRE_TYPES.values(), tasks.on_replica_message)
        router.route(sched_messages.WIRE_TYPES.values(), tasks.on_sched_message)
        router.route([UserEvent, EventAck], user_events.on_message)
        router.route(
            [c for c in EVENT_WIRE_TYPES.values() if c not in (UserEvent, EventAck)],
            topology.on_message)

        discovery = Discovery(
            node_id=node_id, cluster=config.cluster, version=__version__, advertise_host=host,
            port=router.port, seeds=config.join, use_mdns=config.mdns, self_addrs={addr},
            on_candidate=membership.add_candidate,
        )
        stack.push_async_callback(_close_quietly, discovery)
        stack.push_async_callback(background.close)

        # Start, in order.
        await control.start()
        membership.start([])
        consensus.start()
        tasks.start()
        await discovery.start()
        await metrics.start()

        agent = cls(
            config=config, node_id=node_id, started=started, membership=membership,
            consensus=consensus, tasks=tasks, control=control, sources=sources,
            stop_signal=stop_signal, stack=stack,
        )
        background.spawn(agent._bootstrap_and_autopilot(), name="autopilot")
        background.spawn(agent._metrics_loop(), name="metrics")
        background.spawn(user_events.run(), name="user-events")
        background.spawn(KvExpiry(consensus, consensus.queries).run(), name="kv-expiry")
        log.info(
            "mesh-agent %s (%s) listening on %s, control socket %s",
            config.name, node_id[:12], addr, control.path,
        )
        return agent

    async def stop(self) -> None:
        """Close every component, in the reverse of the order they were built."""
        log.info("stopping")
        await self._stack.aclose()

    def request_stop(self) -> None:
        self._stop_signal.request()

    async def wait_stopped(self) -> None:
        await self._stop_signal.wait()

    @property
    def exit_code(self) -> int:
        return self._stop_signal.exit_code

    @property
    def exit_line(self) -> str:
        """One line for stderr when a component stopped the agent (else "")."""
        return self._stop_signal.exit_line

    # ------------------------------------------------------------ loops

    async def _bootstrap_and_autopilot(self) -> None:
        gate = BootstrapGate(
            self.node_id,
            self.config.runtime.bootstrap_grace,
            has_seeds=bool(self.config.join),
            now=self.started,
        )
        while True:
            await asyncio.sleep(0.5)
            members = self._membership.members()
            alive = {m.id for m in members if m.state == "alive"}
            dead = {m.id for m in members if m.state in ("dead", "left")}
            if not self._consensus.bootstrapped:
                clustered = any(m.meta.role != "none" for m in members if m.id != self.node_id)
                if gate.ready(time.monotonic(), alive, clustered):
                    self._consensus.bootstrap(
                        founding_voters(self.node_id, alive, self._consensus.config.max_voters)
                    )
                continue
            self._consensus.autopilot(alive, dead)
            await self._tasks.register_members(members)

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._control.has_subscribers("metrics"):
                self._control.publish("metrics", metrics_sample(self._sources))


async def _answer_forward(
    consensus: ConsensusDriver, router: PeerRouter, from_addr: str, msg: ForwardPropose
) -> None:
    """A follower's forwarded write: commit it here, answer with the result."""
    result = await consensus.serve_forward(msg)
    router.send_to_addr(from_addr, result)


async def _close_quietly(discovery: Discovery) -> None:
    # mDNS teardown errors must not keep the rest from closing.
    with contextlib.suppress(Exception):
        await discovery.close()


def run_agent(config: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT on the configured event loop (``event_loop.py``;
    ``ConfigError`` if uvloop is asked for and not installed); returns the exit code."""
    choice = event_loop.resolve_event_loop(config.event_loop)
    event_loop.tune_gc()

    async def main() -> int:
        try:
            agent = await Agent.start(config)
        except OSError as exc:
            raise LocalError(
                f"cannot listen on {config.bind}:{config.port}: {exc.strerror or exc}"
            ) from None
        log.info("event loop: %s", event_loop.describe(choice))
        event_loop.freeze_startup_heap()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.request_stop)
        await agent.wait_stopped()
        await agent.stop()
        if agent.exit_line:
            sys.stderr.write(f"mesh-agent: {agent.exit_line}\n")
        return agent.exit_code

    return event_loop.run(main(), choice)
