"""The MCP tools' names, descriptions and input schemas: the original design's, kept.

Names and parameters are those of the mesh-coordinator design this project
implements (``swarm_init``, ``daa_consensus``, ...), so an MCP client written
for it works here; what the tools do is real (``tools.py``).  The schemas are
JSON Schema; the SDK validates every call against them before a tool runs, so
a bad enum or a missing required parameter is a tool error naming it.
"""

from __future__ import annotations

from typing import Any, Final

MONITOR_MAX_SAMPLES: Final = 10
"""``swarm_monitor`` takes at most this many samples..."""
MONITOR_MAX_SECONDS: Final = 10.0
"""...over at most this many seconds, so a call always returns (MCP calls are
request/response; a client wanting longer watches calls again)."""
MONITOR_MIN_INTERVAL_MS: Final = 100
"""Shortest sampling interval (ms): faster adds load, not information."""

TOPOLOGIES: Final = ("hierarchical", "mesh", "ring", "star")
STRATEGIES: Final = ("auto", "auction", "capability", "hash")
"""``swarm_init``'s strategy: this cluster's task placements (``auto``: auction unless
a task asks for capability routing or a hash key)."""

_SWARM_ID = {"type": "string", "description": "the swarm id swarm_init returned (the cluster name)"}


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "inputSchema": {"type": "object", "properties": properties, "required": required},
    }


TOOLS: Final[list[dict[str, Any]]] = [
    _tool(
        "swarm_init",
        "Attach to the real cluster at the server's target and describe it (id, members, consensus "
        "engine, leader). The cluster is a mesh (SWIM membership, Raft consensus); other "
        "topologies are refused.",
        {
            "topology": {"type": "string", "enum": list(TOPOLOGIES)},
            "maxAgents": {"type": "number", "default": 8, "minimum": 1,
                          "description": "flag the answer when more agents are alive than this"},
            "strategy": {"type": "string", "default": "auto", "enum": list(STRATEGIES),
                         "description": "task placement: auction, capability or hash (auto: auction)"},
        },
        ["topology"],
    ),
    _tool(
        "swarm_status",
        "Members (state, role, load, RTT), consensus (leader, term, commit index, voters) and "
        "tasks of the live cluster.",
        {"swarmId": _SWARM_ID},
        [],
    ),
    _tool(
        "swarm_monitor",
        f"Sample the cluster every `interval` ms and return the samples: at most "
        f"{MONITOR_MAX_SAMPLES} samples over at most {MONITOR_MAX_SECONDS:g} s (bounded, so the "
        "call returns); each has alive members, leader, term, commit index, task counts and "
        "mean CPU, with the changes between the first and the last.",
        {
            "swarmId": _SWARM_ID,
            "interval": {"type": "number", "default": 1000,
                         "minimum": MONITOR_MIN_INTERVAL_MS, "description": "milliseconds"},
        },
        [],
    ),
    _tool(
        "daa_communication",
        "Send a message to one node or to every node (`to`: a node name or \"all\") as a user "
        "event: gossiped, deduplicated, acknowledged; returns who received it. Nodes read "
        "received messages with `meshtui events list`.",
        {
            "from": {"type": "string", "description": "the sending agent (a member name or id)"},
            "to": {"type": "string", "description": "a member name or id, or \"all\""},
            "message": {"type": "object"},
        },
        ["from", "to", "message"],
    ),
    _tool(
        "daa_consensus",
        "With `proposal`: create a threshold proposal (`threshold` in the proposal, default "
        "0.67) the members vote on through Raft. With `vote` and `proposal_id`: cast the vote "
        "of the node this server is attached to.",
        {
            "agents": {"type": "array", "items": {"type": "string"},
                       "description": "the members asked to take part (names or ids)"},
            "proposal": {"type": "object",
                         "description": "title, optional threshold (0-1) and anything else"},
            "vote": {"type": "string", "enum": ["approve", "reject"]},
            "proposal_id": {"type": ["integer", "string"]},
        },
        ["agents"],
    ),
    _tool(
        "daa_fault_tolerance",
        "heartbeat_monitor: a member's health as SWIM sees it. failover_recovery: drain the "
        "member (no new tasks; its queued tasks move) and move Raft leadership off it; returns "
        "what was done.",
        {
            "agentId": {"type": "string", "description": "a member name or id"},
            "strategy": {"type": "string", "enum": ["heartbeat_monitor", "failover_recovery"],
                         "default": "heartbeat_monitor"},
        },
        ["agentId"],
    ),
    _tool(
        "memory_usage",
        "The replicated key-value store: store (optionally with a ttl in seconds; expiry is "
        "decided through consensus), retrieve, list (keys under `key` as a prefix), delete, "
        "search (the glob or prefix in `value`). Values are UTF-8 text.",
        {
            "action": {"type": "string", "enum": ["store", "retrieve", "list", "delete", "search"]},
            "key": {"type": "string"},
            "value": {"type": "string"},
            "namespace": {"type": "string", "default": "default"},
            "ttl": {"type": "number", "exclusiveMinimum": 0, "description": "seconds"},
        },
        ["action"],
    ),
    _tool(
        "performance_report",
        "The cluster's real metrics (connectivity, RTT, throughput, decision latency, elections, "
        "load variance, migrations, hotspots, utilisation) from the attached agent.",
        {
            "timeframe": {"type": "string", "enum": ["24h", "7d", "30d"], "default": "24h"},
            "format": {"type": "string", "enum": ["summary", "detailed", "json"],
                       "default": "summary"},
        },
        [],
    ),
    _tool(
        "topology_optimize",
        "Move Raft leadership to the voter with the lowest round-trip times to the other voters "
        "when that is a clear gain; reports the scores and what changed, or why nothing needed "
        "changing.",
        {"swarmId": _SWARM_ID},
        [],
    ),
]
"""Every tool: name, description, inputSchema (JSON Schema)."""

TOOL_NAMES: Final = tuple(t["name"] for t in TOOLS)
