"""The metrics component of a running agent: sampling, history, ``/metrics``.

Theory of operation
-------------------
``MetricsService`` is built by the composition root (``agent/runtime/agent.py``)
from narrow views of the other components (the Protocols below), and started
after them.  Once a second (``SAMPLE_INTERVAL``) its loop reads one ``Inputs``
(the member list, committed figures, counters), lets ``MetricsEngine.tick``
feed the rate windows and trackers, and adds the returned values to the
``History``.  SWIM's member events reach it through ``on_member_events`` (the
partition-recovery tracker needs their exact times, not a 1 s poll).

The history is loaded from ``<data_dir>/metrics/history.bin`` when the service
is built, before consensus starts replaying its log (a damaged file is logged
and set aside, never fatal) and saved at most every
``metrics.persist_interval`` seconds and on stop: the image is built on the
loop (a copy of the buffers, compressed: a few ms) and written and fsynced in
a worker thread.  The leader-change count's checkpoint rides along
(``trackers.LeaderTerms``).

With ``metrics.addr`` set, ``MetricsHTTPServer`` serves ``/metrics`` from the
same loop (``http.py``, ``prom.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.metrics import prom
from agent.metrics.config import SAMPLE_INTERVAL, MetricsConfig
from agent.metrics.engine import Inputs, MetricsEngine
from agent.metrics.history import History, HistoryFile, parse_timeframe
from agent.metrics.http import MetricsHTTPServer
from agent.metrics.trackers import LeaderTerms
from agent.sched.config import SchedConfig
from agent.swim.members import MemberView
from agent.swim.ready import MemberEvent

log = logging.getLogger(__name__)


class MetricsMembers(Protocol):
    """What the metrics read of membership (``MembershipDriver``)."""

    def members(self) -> list[MemberView]: ...

    @property
    def cpu_now(self) -> float: ...

    @property
    def partitioned(self) -> bool: ...


class MetricsConsensus(Protocol):
    """What the metrics read of consensus (``ConsensusDriver``)."""

    @property
    def leader_terms(self) -> LeaderTerms: ...

    @property
    def commit_latencies(self) -> list[float]: ...

    def status(self) -> dict[str, Any]: ...


class MetricsState(Protocol):
    """What the metrics read of the committed state (``StateQueries``)."""

    def proposal_rows(self) -> list[dict[str, Any]]: ...

    def decision_latencies(self) -> list[float]: ...

    def migration_times(self) -> list[float]: ...

    def sched_config(self, base: SchedConfig | None = None) -> SchedConfig: ...


class MetricsTraffic(Protocol):
    """The transport's counters (``TransportStats``)."""

    @property
    def datagrams_in(self) -> int: ...

    @property
    def stream_msgs_in(self) -> int: ...

    def as_dict(self) -> dict[str, Any]: ...


class MetricsService:
    """Samples, keeps history, serves ``/metrics`` (module doc)."""

    def __init__(
        self,
        *,
        config: MetricsConfig,
        data_dir: str,
        node: str,
        node_id: str,
        version: str,
        members: MetricsMembers,
        consensus: MetricsConsensus,
        state: MetricsState,
        traffic: MetricsTraffic,
        sched: SchedConfig,
    ) -> None:
        self.config = config
        self._node, self._node_id, self._version = node, node_id, version
        self._members = members
        self._consensus = consensus
        self._state = state
        self._traffic = traffic
        self._sched = sched
        self.engine = MetricsEngine()
        self.history = History()
        self._file = HistoryFile(data_dir) if config.history else None
        self._task: asyncio.Task[None] | None = None
        self._saving: asyncio.Task[None] | None = None
        self._last_save = time.monotonic()
        self._http: MetricsHTTPServer | None = None
        # Before consensus starts: the leader-change checkpoint must be in place
        # before the log replay reaches it (trackers.LeaderTerms).
        self._load()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start sampling, and serve ``/metrics`` if configured (the history was
        loaded when this was built)."""
        self._task = asyncio.create_task(self._loop(), name="metrics")
        if self.config.addr:
            host, _, port = self.config.addr.rpartition(":")
            reg = prom.registry(self.scrape_view)
            self._http = MetricsHTTPServer(
                host, int(port), lambda: prom.render(reg), self.config.max_scrapers
            )
            await self._http.start()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            if self._saving is not None:
                with contextlib.suppress(Exception):
                    await self._saving
            await self._save()

    @property
    def http_port(self) -> int | None:
        """The port ``/metrics`` is served on (None when off)."""
        return self._http.port if self._http is not None else None

    def _load(self) -> None:
        if self._file is None:
            return
        try:
            loaded = self._file.load_into(self.history)
        except (ValueError, OSError) as exc:
            aside = self._file.path.with_suffix(".damaged")
            log.warning("metrics history %s unreadable (%s); starting a new one, old file kept as %s",
                        self._file.path, exc, aside)
            with contextlib.suppress(OSError):
                os.replace(self._file.path, aside)
            self.history = History()
            return
        if loaded:
            ckpt = self.history.checkpoint.get("leader_terms")
            if isinstance(ckpt, list) and len(ckpt) == 3:
                self._consensus.leader_terms.resume(int(ckpt[0]), int(ckpt[1]), int(ckpt[2]))

    async def _save(self) -> None:
        if self._file is None:
            return
        self.history.checkpoint["leader_terms"] = list(self._consensus.leader_terms.checkpoint())
        blob = self.history.encode()
        self._last_save = time.monotonic()
        try:
            await asyncio.to_thread(self._file.save, blob)
        except OSError as exc:
            log.warning("cannot save the metrics history to %s: %s", self._file.path, exc)

    # ------------------------------------------------------------ sampling

    def on_member_events(self, events: list[MemberEvent]) -> None:
        """SWIM member changes (the agent's member-event listener)."""
        for event in events:
            self.engine.on_member(event.at, event.member.id, event.member.state)

    def tap(
        self, listener: Callable[[list[MemberEvent]], None]
    ) -> Callable[[list[MemberEvent]], None]:
        """``listener`` with these metrics hearing the same member events first."""

        def both(events: list[MemberEvent]) -> None:
            self.on_member_events(events)
            listener(events)

        return both

    def inputs(self) -> Inputs:
        cons = self._consensus.status()
        engine_f = cons.get("byzantine_f")
        return Inputs(
            members=tuple(self._members.members()),
            messages_in=self._traffic.datagrams_in + self._traffic.stream_msgs_in,
            leader_changes=self._consensus.leader_terms.changes,
            engine=str(cons.get("engine", "raft")),
            voters=len(cons.get("voters", ())),
            engine_byzantine_f=int(engine_f) if isinstance(engine_f, int) else None,
            cpu=self._members.cpu_now,
            decision_latencies=self._state.decision_latencies()[-1000:],
            commit_latencies=list(self._consensus.commit_latencies),
            participation={
                int(row["id"]): float(row.get("participation", 0.0))
                for row in self._state.proposal_rows()
            },
            migration_times=self._state.migration_times(),
            sched=self._state.sched_config(self._sched),
        )

    def sample(self, mono: float, wall: float) -> None:
        """One tick: trackers, windows and the history (the loop's body)."""
        values = self.engine.tick(mono, wall, self.inputs())
        if self.config.history:
            self.history.add(wall, values)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                self.sample(time.monotonic(), time.time())
            except Exception:
                log.exception("metrics sample failed")
            due = time.monotonic() - self._last_save >= self.config.persist_interval
            if self._file is not None and due and (self._saving is None or self._saving.done()):
                self._saving = asyncio.create_task(self._save(), name="metrics-save")
            next_at += SAMPLE_INTERVAL
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    # ------------------------------------------------------------ views

    def figures(self) -> dict[str, Any]:
        """The report's metric part (``engine.figures``), now."""
        return self.engine.figures(time.time(), self.inputs())

    def report(self, timeframe: str | None = None) -> dict[str, Any]:
        """``figures()``, plus the history's summary over ``timeframe`` when asked."""
        out = self.figures()
        if timeframe:
            out["history"] = self.history.summary(parse_timeframe(timeframe), time.time())
        return out

    def history_view(self, timeframe: str, points: int = 120) -> dict[str, Any]:
        """The ``metrics.history`` method: every series bucketed for sparklines."""
        return self.history.series_view(parse_timeframe(timeframe), time.time(), points)

    def scrape_view(self) -> prom.ScrapeView:
        cons = self._consensus.status()
        inputs = self.inputs()
        return prom.ScrapeView(
            node=self._node, node_id=self._node_id, version=self._version,
            engine=str(cons.get("engine", "raft")), role=str(cons.get("role", "")),
            term=int(cons.get("term") or 0), commit_index=int(cons.get("commit_index") or 0),
            voters=len(cons.get("voters", ())), partitioned=self._members.partitioned,
            members=tuple(inputs.members), hot=frozenset(self.engine.hotspots.hot()),
            figures=self.engine.figures(time.time(), inputs), messages_in=inputs.messages_in,
            traffic=self._traffic.as_dict(), history_bytes=self.history.nbytes,
            latencies={"commit": inputs.commit_latencies, "decision": inputs.decision_latencies},
        )


class MetricsReport(Protocol):
    """What the control API's ``report`` and ``metrics.history`` read (``MetricsService``)."""

    def report(self, timeframe: str | None = None) -> dict[str, Any]: ...

    def history_view(self, timeframe: str, points: int = 120) -> dict[str, Any]: ...
