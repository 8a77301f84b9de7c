"""The meshtui Textual app: connection worker, view-model, and the four area screens.

Theory of operation
-------------------
One worker owns the connection.  It calls ``client_factory()``, then ``status``
(plus ``members``, ``task.list``, ``proposal.list`` and ``consensus.progress``
where the agent has them), then ``subscribe`` to every topic, then
``consensus.log`` for the committed entries it has not shown yet (a bounded
backfill: asked after subscribing, so the live stream continues it without a
gap, and the model drops live entries the backfill already showed), and
re-polls the snapshot methods every ``status_interval`` seconds while events
stream.  Events are buffered and
a single ``EventsArrived`` message is posted per batch, so a burst of hundreds
of events costs one message; the handler folds the batch into ``MeshModel``
and schedules a redraw of the visible screen at most every ``REDRAW_INTERVAL``.
Any transport failure shows the banner and reconnects with capped exponential
backoff (0.5 s → 10 s).  The UI thread never waits on the network.

Several clusters (``meshtui attach -t A -t B``): one model per cluster and one
connection at a time; ``x`` switches, as k9s switches contexts.  Operations
(drain, undrain, transfer, cancel) are confirmed, sent, and then watched in the
model (``meshtui.ops``) in the ops bar of every screen.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen

from agent.errors import MeshError, ProtocolError
from meshtui.model import TOPICS, ClientLike, Connection, DemoControls, MeshModel
from meshtui.operator import Operator
from meshtui.ops import Operation
from meshtui.screens.base import AreaScreen
from meshtui.screens.consensus import ConsensusScreen
from meshtui.screens.dialogs import HelpScreen, NodePicker
from meshtui.screens.mesh import MeshScreen
from meshtui.screens.metrics import MetricsScreen
from meshtui.screens.migrations import MigrationsScreen
from meshtui.screens.palette import MeshCommands
from meshtui.screens.tasks import TasksScreen
from meshtui.widgets.bars import AREAS

ClientFactory = Callable[[], Awaitable[ClientLike]]
GC_THRESHOLDS = (5_000, 10, 100)
"""gc thresholds while the TUI runs (Python's default is 700, 10, 10); see tune_gc_for_ui."""
REDRAW_INTERVAL = 0.1
"""Seconds between redraws of the visible screen while events arrive."""
MAX_PENDING_EVENTS = 50_000
"""Events buffered between two folds; beyond this the oldest are dropped (and counted)."""
BACKFILL_ENTRIES = 200
"""Committed entries asked for on (re)attach (``consensus.log``; the agent caps it at 500)."""
OPTIONAL_METHODS = ("members", "task.list", "proposal.list", "consensus.progress")
"""Polled with ``status`` when the agent has them."""
# Errors that end a connection attempt: reconnect.  An error *reply* to `status` counts
# too (nothing can be shown without it); error replies to the optional methods do not.
LINK_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, MeshError)
# Client-side error codes (meshtui.client.ClientError.code) that mean the link itself failed.
LINK_ERROR_CODES = frozenset({"unavailable", "timeout"})


def is_link_error(exc: BaseException) -> bool:
    """True when ``exc`` means the connection failed, False for an error reply."""
    if isinstance(exc, OSError | EOFError | ProtocolError):
        return True
    return getattr(exc, "code", None) in LINK_ERROR_CODES


class FromConnection(Message):
    """A message from a connection worker; ``gen`` says which (stale after a cluster switch)."""

    gen = 0


class ConnectionChanged(FromConnection):
    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn


class SnapshotArrived(FromConnection):
    def __init__(self, snapshot: dict[str, Any]) -> None:
        super().__init__()
        self.snapshot = snapshot


class EventsArrived(Message):
    """Posted once per batch; the events themselves wait in ``MeshApp._pending``."""


class BackfillArrived(FromConnection):
    def __init__(self, reply: Any) -> None:
        super().__init__()
        self.reply = reply


class MeshApp(App[None]):
    """The operator TUI.  ``client_factory`` opens a fresh connection on every (re)connect."""

    CSS_PATH = "meshtui.tcss"
    TITLE = "meshtui"
    MODES: ClassVar[dict[str, str | Callable[[], Screen[Any]]]] = {
        "mesh": MeshScreen,
        "consensus": ConsensusScreen,
        "tasks": TasksScreen,
        "migrations": MigrationsScreen,
        "metrics": MetricsScreen,
    }
    DEFAULT_MODE = "mesh"
    COMMANDS = App.COMMANDS | {MeshCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "cycle_area(1)", "Next", show=False, priority=True),
        Binding("shift+tab", "cycle_area(-1)", "Prev", show=False, priority=True),
        Binding("1", "switch_area('mesh')", "Mesh", show=False),
        Binding("2", "switch_area('consensus')", "Consensus", show=False),
        Binding("3", "switch_area('tasks')", "Tasks", show=False),
        Binding("4", "switch_area('migrations')", "Migrations", show=False),
        Binding("5", "switch_area('metrics')", "Metrics", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("colon", "command_palette", "Commands"),
        Binding("k", "demo_kill", "Kill node"),
        Binding("r", "demo_restart", "Restart node"),
        Binding("x", "switch_cluster", "Cluster"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        client_factory: ClientFactory,
        target_label: str,
        demo_controls: DemoControls | None = None,
        *,
        clock: Callable[[], float] = time.time,
        status_interval: float = 2.0,
        backoff: tuple[float, float] = (0.5, 10.0),
        tune_gc: bool = False,
        clusters: Sequence[tuple[str, ClientFactory]] = (),
    ) -> None:
        super().__init__()
        self._tune_gc = tune_gc
        self.clusters: list[tuple[str, ClientFactory]] = [(target_label, client_factory), *clusters]
        self.cluster_index = 0
        self.client_factory = client_factory
        self.target_label = target_label
        self.demo_controls = demo_controls
        self._models = [MeshModel() for _ in self.clusters]
        self.model = self._models[0]
        self.operator = Operator(self, self)
        self._generation = 0
        """Bumped on each cluster switch: messages of an older connection are dropped."""
        self.client: ClientLike | None = None
        self._clock = clock
        self._status_interval = status_interval
        self._backoff = backoff
        self._pending: list[Mapping[str, Any]] = []
        self._batch_posted = False
        self._redraw_scheduled = False
        self.dropped_events = 0

    def now(self) -> float:
        return self._clock()

    @property
    def cluster_labels(self) -> tuple[str, ...]:
        return tuple(label for label, _ in self.clusters)

    def on_mount(self) -> None:
        if self._tune_gc:
            tune_gc_for_ui()
        self._connect()

    def _connect(self) -> None:
        self._generation += 1
        self.run_worker(self._connection_loop(), name="connection", group="connection")

    # --- connection worker -------------------------------------------------
    async def _connection_loop(self) -> None:
        gen, factory = self._generation, self.client_factory

        def post(message: FromConnection) -> None:
            message.gen = gen  # a message of a replaced connection is dropped on arrival
            self.post_message(message)

        delay = self._backoff[0]
        reason = ""
        while True:
            client: ClientLike | None = None
            try:
                # After a failure keep saying so (no flicker back to "connecting").
                state = Connection("reconnecting", None, reason) if reason else Connection()
                post(ConnectionChanged(state))
                client = await factory()
                post(SnapshotArrived(await self._snapshot(client)))
                if gen == self._generation:
                    self.client = client
                post(ConnectionChanged(Connection("connected")))
                delay = self._backoff[0]
                reason = ""
                await self._stream(client, post, gen)
                raise ConnectionError("event stream ended")
            except LINK_ERRORS as exc:
                reason = str(exc) or type(exc).__name__
                post(ConnectionChanged(Connection("disconnected", delay, reason)))
            except Exception as exc:
                # Not a link error, but the UI must stay up: show it and retry.
                reason = f"{type(exc).__name__}: {exc}"
                post(ConnectionChanged(Connection("disconnected", delay, reason)))
            finally:
                if self.client is client:
                    self.client = None
                if client is not None:
                    await _close_quietly(client)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    async def _snapshot(self, client: ClientLike) -> dict[str, Any]:
        """``status`` (required) plus the optional list methods; one dict for one message."""
        snap: dict[str, Any] = {"status": await client.call("status")}
        for method in OPTIONAL_METHODS:
            try:
                snap[method] = await client.call(method)
            except MeshError as exc:
                if is_link_error(exc):
                    raise
                # An agent without this method (or refusing it): show what status gives.
        return snap

    async def _stream(self, client: ClientLike, post: Callable[[FromConnection], None], gen: int) -> None:
        """Read events and re-poll the snapshot until either fails."""

        async def events() -> None:
            stream: Any = client.subscribe(list(TOPICS))
            if inspect.isawaitable(stream):
                stream = await stream
            await self._backfill(client, post)
            async for event in stream:
                if event.get("event") == "overflow":
                    # The client dropped events: re-read state instead of trusting the gaps.
                    post(SnapshotArrived(await self._snapshot(client)))
                    continue
                if gen != self._generation:
                    return  # another cluster took over
                if len(self._pending) >= MAX_PENDING_EVENTS:
                    del self._pending[0]
                    self.dropped_events += 1
                self._pending.append(event)
                if not self._batch_posted:
                    self._batch_posted = True
                    self.post_message(EventsArrived())

        async def poll() -> None:
            while True:
                await asyncio.sleep(self._status_interval)
                post(SnapshotArrived(await self._snapshot(client)))

        tasks = [asyncio.create_task(events()), asyncio.create_task(poll())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise the failure that ended the stream
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _backfill(self, client: ClientLike, post: Callable[[FromConnection], None]) -> None:
        """After subscribing: the committed entries not shown yet (bounded), as one message."""
        try:
            reply = await client.call("consensus.log", after=self.model.entry_high, limit=BACKFILL_ENTRIES)
        except MeshError as exc:
            if is_link_error(exc):
                raise
            return  # an agent without consensus.log: the live stream only
        post(BackfillArrived(reply))

    # --- folding -----------------------------------------------------------
    def on_backfill_arrived(self, message: BackfillArrived) -> None:
        if message.gen != self._generation:
            return
        self.model.apply_backfill(message.reply)
        self._schedule_redraw()
    def on_connection_changed(self, message: ConnectionChanged) -> None:
        if message.gen != self._generation:
            return
        self.model.set_connection(message.conn)
        self._schedule_redraw()

    def on_snapshot_arrived(self, message: SnapshotArrived) -> None:
        if message.gen != self._generation:
            return
        snap = message.snapshot
        members = snap.get("members")
        status = snap.get("status")
        if isinstance(status, Mapping):
            self.model.apply_status(status, sample_cpu=not isinstance(members, list), now=self.now())
        if isinstance(members, list):
            self.model.apply_members(members)
        tasks = snap.get("task.list")
        if isinstance(tasks, list):
            self.model.apply_tasks(tasks)
        proposals = snap.get("proposal.list")
        if isinstance(proposals, list):
            self.model.apply_proposals(proposals)
        if "consensus.progress" in snap:
            self.model.apply_progress(snap["consensus.progress"])
        self._schedule_redraw()

    def on_events_arrived(self, _message: EventsArrived) -> None:
        batch, self._pending = self._pending, []
        self._batch_posted = False
        now = self.now()
        for event in batch:
            self.model.apply_event(event, now)
        self._schedule_redraw()

    def _schedule_redraw(self) -> None:
        if not self._redraw_scheduled:
            self._redraw_scheduled = True
            self.set_timer(REDRAW_INTERVAL, self._redraw)

    def _redraw(self) -> None:
        self._redraw_scheduled = False
        for screen in reversed(self.screen_stack):
            if isinstance(screen, AreaScreen):
                if screen.is_attached:
                    screen.refresh_from(self.model)
                return

    # --- actions -----------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Demo keys exist (and show in the footer) only when the demo gave its controls;
        the cluster switch only with several clusters."""
        if action == "switch_cluster":
            return len(self.clusters) > 1
        return not (action in ("demo_kill", "demo_restart") and self.demo_controls is None)

    # --- clusters ----------------------------------------------------------
    def action_switch_cluster(self) -> None:
        if len(self.clusters) < 2 or not isinstance(self.screen, AreaScreen):
            return

        def chosen(label: str | None) -> None:
            if label is not None and label in self.cluster_labels:
                self.use_cluster(self.cluster_labels.index(label))

        self.push_screen(NodePicker("Switch to which cluster?", list(self.cluster_labels)), chosen)

    def use_cluster(self, index: int) -> None:
        """Drop the current connection and attach to cluster ``index`` (its model is kept)."""
        if index == self.cluster_index:
            return
        self.workers.cancel_group(self, "connection")
        self.cluster_index = index
        self.target_label, self.client_factory = self.clusters[index]
        self.model = self._models[index]
        self.client = None
        self._pending.clear()
        self.operator.operations.clear()
        self._connect()
        for screen in self.screen_stack:
            if isinstance(screen, AreaScreen):
                screen.forget_drawn()
        if isinstance(self.screen, AreaScreen) and self.screen.is_attached:
            self.screen.refresh_from(self.model, force=True)
        self.notify(f"attached to {self.target_label}")

    # --- operations (meshtui.operator) -------------------------------------
    @property
    def operations(self) -> list[Operation]:
        return self.operator.operations

    def start_operation(self, kind: str, target: str) -> None:
        self.operator.start(kind, target)

    def request_redraw(self) -> None:
        self._schedule_redraw()

    def action_switch_area(self, area: str) -> None:
        if self.current_mode != area:
            self.switch_mode(area)

    def action_cycle_area(self, step: int) -> None:
        if not isinstance(self.screen, AreaScreen):
            return  # a dialog is open: tab belongs to it
        names = [a for a, _ in AREAS]
        i = names.index(self.current_mode) if self.current_mode in names else 0
        self.switch_mode(names[(i + step) % len(names)])

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(demo=self.demo_controls is not None))

    def action_demo_kill(self) -> None:
        self._demo_pick("Kill which node? (SIGKILL)", "kill")

    def action_demo_restart(self) -> None:
        self._demo_pick("Restart which node?", "restart")

    def _demo_pick(self, title: str, verb: str) -> None:
        demo = self.demo_controls
        if demo is None:
            return

        async def chosen(name: str | None) -> None:
            if name is None:
                return
            try:
                result = demo.kill(name) if verb == "kill" else demo.restart(name)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self.notify(f"{verb} {name}: {exc}", severity="error")
            else:
                self.notify(f"{verb} {name}: done")

        self.push_screen(NodePicker(title, list(demo.names())), chosen)

    def call_client(
        self,
        method: str,
        params: dict[str, Any],
        done: str | Callable[[Any], Awaitable[None] | None] | None = None,
    ) -> None:
        """Run one RPC in a worker; success is reported by ``done``, failure as a toast."""

        async def run() -> None:
            client = self.client
            if client is None:
                self.notify(f"{method}: not connected", severity="error")
                return
            try:
                result = await client.call(method, **params)
            except Exception as exc:
                self.notify(f"{method}: {exc}", severity="error", timeout=8)
                return
            if isinstance(done, str):
                shown = f" {result.get('id')}" if isinstance(result, Mapping) and "id" in result else ""
                self.notify(f"{done}{shown}")
            elif done is not None:
                maybe = done(result)
                if inspect.isawaitable(maybe):
                    await maybe

        self.run_worker(run(), group="rpc")


def tune_gc_for_ui() -> None:
    """Keep full garbage collections from freezing the UI.

    With tens of thousands of live objects (a 10,000-line log, 200 members,
    render caches) a full collection takes 50-400 ms on a loaded host, which
    shows as a stalled screen.  Objects alive after start-up are frozen out of
    collection and the older generations are collected far less often; the UI
    makes few reference cycles, and every cache it keeps is bounded.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])


async def _close_quietly(client: ClientLike) -> None:
    try:
        await client.close()
    except Exception:
        return  # closing a broken link can fail; nothing more to release


def run_app(
    client_factory: ClientFactory,
    target_label: str,
    demo_controls: DemoControls | None = None,
    clusters: Sequence[tuple[str, ClientFactory]] = (),
) -> None:
    """Run the TUI in the terminal until the operator quits (``clusters``: more targets, ``x``)."""
    MeshApp(client_factory, target_label, demo_controls, tune_gc=True, clusters=clusters).run()
