"""What each MCP tool does, against the live cluster (no MCP SDK imported here).

Each tool takes the ``Cluster`` (one control connection to the agent at the
server's target) and the call's arguments (already checked against
``schemas.TOOLS`` by the SDK) and returns a JSON-able dict, or raises
``ToolError`` with one clear line: an unknown agent, a swarm id that is not
this cluster, no quorum, no agent to talk to.  Nothing is canned: every
answer is read from, or committed to, the cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from meshtui.connect import ClientFactory
from meshtui.mcp.schemas import (
    MONITOR_MAX_SAMPLES,
    MONITOR_MAX_SECONDS,
    MONITOR_MIN_INTERVAL_MS,
)
from meshtui.rpc import ClientError, ConnectionLost

MESSAGE_WAIT = 5.0
"""Seconds ``daa_communication`` waits for every node's acknowledgement."""
EVENT_NAME = "daa_communication"
"""The user-event name ``daa_communication`` messages carry (``meshtui events list --name``)."""
DEFAULT_THRESHOLD = 0.67
RETRY_PAUSE = 1.0
"""Seconds before failover asks once more for leadership to move off a node."""
REQUEST_TIMEOUT = 5.0
"""Seconds the agent may wait for a leader on each call (``meshtui --request-timeout``);
past it a write is a "no quorum" tool error."""
REPLY_SLACK = 10.0
"""Seconds beyond that the server waits for a reply (covers ``MESSAGE_WAIT``)."""


class ToolError(Exception):
    """A tool failed; ``str()`` is the one line the MCP client sees."""


class Cluster:
    """The control connection the tools share, opened on first use and reopened once
    when it drops."""

    def __init__(self, factory: ClientFactory, label: str) -> None:
        self._factory = factory
        self.label = label
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Any:
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await self._factory()
                except (ClientError, OSError) as exc:
                    raise ToolError(
                        f"no mesh-agent reachable at {self.label} ({exc}); start one with "
                        "`mesh-agent run` (or try `meshtui demo`) and point `meshtui mcp -t` "
                        "at its socket or ssh://host"
                    ) from None
            return self._client

    async def call(self, method: str, **params: Any) -> Any:
        for attempt in (1, 2):
            client = await self._connect()
            try:
                return await client.call(
                    method, timeout=REQUEST_TIMEOUT + REPLY_SLACK,
                    **{"request_timeout": REQUEST_TIMEOUT, **params})
            except ConnectionLost:
                await self.close()
                if attempt == 2:
                    raise ToolError(f"lost the connection to the agent at {self.label}") from None
            except ClientError as exc:
                raise ToolError(_error_line(method, exc)) from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _error_line(method: str, exc: ClientError) -> str:
    if exc.code in ("no_quorum", "not_leader"):
        return f"no quorum: the cluster cannot commit right now ({exc.message})"
    if exc.code == "not_found":
        return exc.message
    return f"{method}: {exc.message}"


# ---------------------------------------------------------------- helpers


def _rid() -> str:
    return uuid.uuid4().hex


async def _members(cluster: Cluster) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await cluster.call("members")
    return rows


def _find(members: list[dict[str, Any]], who: str, what: str = "agent") -> dict[str, Any]:
    for m in members:
        if who in (m["name"], m["id"]):
            return m
    names = ", ".join(sorted(m["name"] for m in members))
    raise ToolError(f"unknown {what} {who!r}: the cluster's members are {names}")


async def _swarm(cluster: Cluster, swarm_id: str | None) -> dict[str, Any]:
    """The status, after checking ``swarm_id`` (when given) names this cluster."""
    status: dict[str, Any] = await cluster.call("status")
    own = status.get("cluster") or "default"
    if swarm_id and swarm_id != own:
        raise ToolError(f"unknown swarm {swarm_id!r}: the agent at {cluster.label} is in swarm {own!r}")
    return status


def _member_row(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "id", "addr", "state", "role", "cpu", "mem", "tasks", "rtt_ms", "draining")
    return {k: m.get(k) for k in keys}


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# ---------------------------------------------------------------- swarm_*


async def swarm_init(cluster: Cluster, args: dict[str, Any]) -> dict[str, Any]:
    topology = args["topology"]
    if topology != "mesh":
        raise ToolError(
            f"this cluster is a mesh (every agent knows every member through SWIM gossip and "
            f"every decision goes through Raft); a {topology!r} topology cannot be set up. "
            "Call swarm_init with topology 'mesh' to attach to it."
        )
    status = await _swarm(cluster, None)
    max_agents = int(args.get("maxAgents", 8))
    alive = [m for m in status["members"] if m["state"] == "alive"]
    cons = status["consensus"]
    return {
        "swarmId": status.get("cluster") or "default",
        "topology": "mesh",
        "attached_to": status["node"],
        "engine": cons["engine"],
        "leader": cons["leader"],
        "term": cons["term"],
        "voters": cons["voters"],
        "members": [_member_row(m) for m in status["members"]],
        "alive": len(alive),
        "maxAgents": max_agents,
        "over_max_agents": len(alive) > max_agents,
        "strategy": args.get("strategy", "auto"),
        "read_only": status["read_only"],
    }


async def swarm_status(cluster: Cluster, args: dict[str, Any]) -> dict[str, Any]:
    status = await _swarm(cluster, args.get("swarmId"))
    tasks = await cluster.call("task.list", stale=True)
    active = [t for t in tasks if t["state"] in ("queued", "assigned", "running")]
    return {
        "swarmId": status.get("cluster") or "default",
        "attached_to": status["node"],
        "members": [_member_row(m) for m in status["members"]],
        "consensus": status["consensus"],
        "tasks": status["tasks"],
        "active_tasks": active[:50],
        "read_only": status["read_only"],
        "partitioned": status["partitioned"],
        "alarms": status.get("alarms", []),
    }


def _sample(status: dict[str, Any], t0: float) -> dict[str, Any]:
    members = status["members"]
    cpus = [m["cpu"] for m in members if m["state"] == "alive" and m.get("cpu") is not None]
    cons = status["consensus"]
    return {
        "t_ms": round((time.monotonic() - t0) * 1000),
        "alive": sorted(m["name"] for m in members if m["state"] == "alive"),
        "leader": cons["leader"],
        "term": cons["term"],
        "commit_index": cons["commit_index"],
        "tasks": status["tasks"],
        "cpu_mean": round(sum(cpus) / len(cpus), 4) if cpus else None,
    }


async def swarm_monitor(cluster: Cluster, args: dict[str, Any]) -> dict[str, Any]:
    interval_ms = max(MONITOR_MIN_INTERVAL_MS, float(args.get("interval", 1000)))
    count = max(1, min(MONITOR_MAX_SAMPLES, math.floor(MONITOR_MAX_SECONDS * 1000 / interval_ms)))
    t0 = time.monotonic()
    samples = []
    for i in range(count):
        samples.append(_sample(await _swarm(cluster, args.get("swarmId")), t0))
        if i + 1 < count:
            await asyncio.sleep(max(0.0, t0 + (i + 1) * interval_ms / 1000 - time.monotonic()))
    first, last = samples[0], samples[-1]
    leaders = [s["leader"] for s in samples]
    return {
        "interval_ms": interval_ms,
        "samples": samples,
        "bounded": f"{count} samples (at most {MONITOR_MAX_SAMPLES} over {MONITOR_MAX_SECONDS:g} s)",
        "changes": {
            "leader_changes": sum(1 for a, b in itertools.pairwise(leaders) if a != b),
            "commits": (last["commit_index"] or 0) - (first["commit_index"] or 0),
            "joined": sorted(set(last["alive"]) - set(first["alive"])),
            "left": sorted(set(first["alive"]) - set(last["alive"])),
        },
    }


# ---------------------------------------------------------------- daa_*


async def daa_communication(cluster: Cluster, args: dict[str, Any]) -> dict[str, Any]:
    members = await _members(cluster)
    sender = _find(members, args["from"])["name"]
    to = args["to"]
    if to not in ("all", "*"):
        to = _find(members, to)["name"]
    payload = json.dumps(args["message"], separators=(",", ":"), sort_keys=True).encode()
    res = await cluster.call(
        "events.send", name=EVENT_NAME, payload=payload, to=to, wait=MESSAGE_WAIT,
        **{"from": sender},
    )
    return {**res, "from": sender, "delivered_count": len(res["delivered"]),
            "expected_count": len(res["expected"])}


def _proposal_id(raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ToolError(f"proposal_id must be a proposal number, got {raw!r}") from None


async def daa_consensus(cluster: Cluster, args: dict[str, Any]) -> dict[str, Any]:
    members = await _members(cluster)
    agents = [_find(members, a)["name"] for a in args["agents"]]
    proposal, vote, raw_id = args.get("proposal"), args.get("vote"), args.get("proposal_id")
    if proposal is None and (vote is None or raw_id is None):
        raise ToolError("give `proposal` to create a proposal, or `vote` and `proposal_id` to vote")
    result: dict[str, Any] = {"agents": agents}
    if proposal is not None:
        threshold = proposal.get("threshold", DEFAULT_THRESHOLD)
        if not isinstance(threshold, int | float) or not 0 < threshold <= 1:
            raise ToolError(f"proposal threshold must be a number in (0, 1], got {threshold!r}")
        title = str(proposal.get("title") or proposal.get("name") or json.dumps(proposal))[:200]
        created = await cluster.call(
            "proposal.create", title=title.replace("\n", " "), threshold=float(threshold),
            body=json.dumps(proposal, sort_keys=True), rid=_rid(),
        )
        raw_id = created["id"]
        result.update(proposal_id=raw_id, threshold=float(threshold), created=True)
    if vote is not None:
        voted = await cluster.call(
            "proposal.vote", id=_proposal_id(raw_id), approve=vote == "approve", rid=_rid())
        result.update(proposal_id=_proposal_id(raw_id), vote=vote, tally=voted.get("tally"))
    rows = await cluster.call("proposal.list")
    row = next((r for r in rows if r["id"] == _proposal_id(raw_id)), None)
    if row is None:
        raise ToolError(f"no proposal {raw_id}")
    result.update(state=row["state"], yes=row["yes"], no=row["no"], eligible=row["eligible"],
                  threshold=row["threshold"], voters=row["voters"])
    return result


async def daa_fault_tolerance(cluster: Cluster, args: dict[str, Any]) -> dict[str, Any]:
    status = await cluster.call("status")
    member = _find(status["members"], args["agentId"])
    name = member["name"]
    leader = status["consensus"]["leader"]
    health = {**_member_row(member), "incarnation": member.get("incarnation"),
              "healthy": member["state"] == "alive", "leader": name == leader}
    strategy = args.get("strategy", "heartbeat_monitor")
    if strategy == "heartbeat_monitor":
        return {"agent": name, "strategy": strategy, "health": health}
    actions = []
    await cluster.call("node.drain", node=name, rid=_rid())
    actions.append(f"drained {name}: no new tasks are placed there and its queued tasks move")
    if name == leader:
        moved = await cluster.call("topology.optimize", apply=True, avoid=name)
        if not moved["changed"]:  # the leader was busy or changing: one more try
            await asyncio.sleep(RETRY_PAUSE)
            moved = await cluster.call("topology.optimize", apply=True, avoid=name)
        actions.append(moved["action"] if moved["changed"] else f"leadership stays: {moved['reason']}")
    # Read locally: leadership may be moving this very moment (a linearizable read
    # would wait for the new leader); the list only says what is still there.
    tasks = await cluster.call("task.list", stale=True)
    still = [t["id"] for t in tasks if t["node"] == name and t["state"] in ("assigned", "running")]
    if still:
        actions.append(f"{len(still)} task(s) still on {name}: running tasks finish there unless "
                       "restartable; they move if the node dies")
    return {"agent": name, "strategy": strategy, "health": health, "actions": actions,
            "tasks_on_node": still}


# ---------------------------------------------------------------- memory_usage


def _need(args: dict[str, Any], name: str, action: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise ToolError(f"memory_usage {action} needs `{name}`")
    return value


async def memory_usage(cluster: Cluster, args: dict[str, Any]) -> dict[str, Any]:
    action, ns = args["action"], args.get("namespace") or "default"
    base = {"action": action, "namespace": ns}
    if action == "store":
        key, value = _need(args, "key", action), args.get("value")
        if not isinstance(value, str):
            raise ToolError("memory_usage store needs `value` (a string)")
        ttl = args.get("ttl")
        extra = {} if ttl is None else {"ttl": float(ttl)}
        res = await cluster.call("kv.put", ns=ns, key=key, value=value.encode(), rid=_rid(), **extra)
        return {**base, "key": key, "stored": True, **res}
    if action == "retrieve":
        key = _need(args, "key", action)
        got = await cluster.call("kv.get", ns=ns, key=key)
        return {**base, "key": key, **{k: _text(v) for k, v in got.items()}}
    if action == "delete":
        key = _need(args, "key", action)
        res = await cluster.call("kv.delete", ns=ns, key=key, rid=_rid())
        return {**base, "key": key, **res}
    if action == "list":
        res = await cluster.call("kv.list", ns=ns, prefix=args.get("key") or "")
    else:
        pattern = _need(args, "value", action)
        res = await cluster.call("kv.search", ns=ns, pattern=pattern)
        base["pattern"] = pattern
    items = [{"key": k, "value": _text(v)} for k, v in res["items"]]
    return {**base, "count": len(items), "items": items}


# ---------------------------------------------------------------- report, topology


SUMMARY_FIELDS = (
    "connectivity_pct", "members", "latency_ms", "throughput_msgs_per_s", "partition_recovery_s",
    "decision_latency_ms", "commit_latency_ms", "leader_changes", "leader_elections",
    "vote_participation", "byzantine_tolerance_f", "crash_tolerance_f", "load_variance_stddev",
    "migrations_per_minute", "hotspots", "utilisation", "alarms",
)
"""The report's figures a summary shows (those the agent has; the rest are in ``detailed``)."""


def _coverage(report: dict[str, Any], timeframe: str, uptime: float) -> str:
    """What span of time the history in ``report`` really covers, in one line."""
    history = report.get("history")
    if not isinstance(history, dict):
        return (f"no metrics history on this agent: figures are current, over its uptime "
                f"({uptime:.0f} s), not {timeframe}")
    step = float(history.get("step") or 0)
    slots = max((int(v.get("slots") or 0) for v in (history.get("series") or {}).values()),
                default=0)
    covered = slots * step
    part = "" if covered >= float(history.get("timeframe") or 0) else \
        f" (the agent has history for {covered:.0f} s of it)"
    return f"history over {timeframe} in {step:g} s buckets{part}"


async def performance_report(cluster: Cluster, args: dict[str, Any]) -> dict[str, Any]:
    timeframe, form = args.get("timeframe", "24h"), args.get("format", "summary")
    report = await cluster.call("report", timeframe=timeframe)
    status = await cluster.call("status")
    # The metrics history (issue 15: min/mean/max/last per series over the timeframe)
    # comes with the report when the agent keeps one; the answer says what it covers.
    head = {"timeframe": timeframe, "node": status["node"],
            "coverage": _coverage(report, timeframe, float(status.get("uptime") or 0))}
    if form == "json":
        return {**head, "report": report}
    if form == "detailed":
        return {**head, "report": report, "consensus": status["consensus"], "tasks": status["tasks"]}
    summary = {k: report[k] for k in SUMMARY_FIELDS if k in report}
    history = report.get("history")
    if isinstance(history, dict):
        summary["history"] = {
            name: {k: row.get(k) for k in ("min", "mean", "max", "last")}
            for name, row in (history.get("series") or {}).items()
        }
    return {**head, **summary}


async def topology_optimize(cluster: Cluster, args: dict[str, Any]) -> dict[str, Any]:
    status = await _swarm(cluster, args.get("swarmId"))
    result: dict[str, Any] = await cluster.call("topology.optimize", apply=True)
    return {"swarmId": status.get("cluster") or "default", **result}


Tool = Callable[[Cluster, dict[str, Any]], Awaitable[dict[str, Any]]]

TOOL_FUNCTIONS: dict[str, Tool] = {
    "swarm_init": swarm_init,
    "swarm_status": swarm_status,
    "swarm_monitor": swarm_monitor,
    "daa_communication": daa_communication,
    "daa_consensus": daa_consensus,
    "daa_fault_tolerance": daa_fault_tolerance,
    "memory_usage": memory_usage,
    "performance_report": performance_report,
    "topology_optimize": topology_optimize,
}
