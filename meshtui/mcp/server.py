"""``meshtui mcp``: the tools of ``schemas.py``/``tools.py`` served with the official MCP SDK.

The low-level ``mcp.server.lowlevel.Server`` is used rather than FastMCP
because the tools keep the original design's parameter names (``from``,
``maxAgents``, ``swarmId``), which are not all Python identifiers: each tool
is declared with its JSON Schema as it is.  The SDK validates every call
against that schema (a bad enum is a tool error naming the allowed values)
and turns an exception raised by a tool into a tool error with its message;
a tool's dict result is sent as structured content and as JSON text.

Only ``meshtui mcp`` imports this module (the agent and the TUI never do).
"""

from __future__ import annotations

from typing import Any

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from meshtui import __version__
from meshtui.connect import ClientFactory, client_factory_for
from meshtui.mcp.schemas import TOOLS
from meshtui.mcp.tools import TOOL_FUNCTIONS, Cluster, ToolError
from meshtui.targets import ResolvedTarget

INSTRUCTIONS = (
    "These tools operate a real meshtui cluster (SWIM membership, Raft consensus, task "
    "placement). Start with swarm_init {topology: 'mesh'}; every answer is read from or "
    "committed to the live cluster, and failures (unknown agent, no quorum) are tool errors."
)


def build_server(factory: ClientFactory, label: str) -> tuple[Server[Any, Any], Cluster]:
    """The MCP server and the cluster connection its tools share (close it when done)."""
    cluster = Cluster(factory, label)
    server: Server[Any, Any] = Server("meshtui", version=__version__, instructions=INSTRUCTIONS)
    tools = [types.Tool(name=t["name"], description=t["description"], inputSchema=t["inputSchema"])
             for t in TOOLS]

    @server.list_tools()  # type: ignore[no-untyped-call,untyped-decorator]
    async def list_tools() -> list[types.Tool]:
        return tools

    @server.call_tool()  # type: ignore[untyped-decorator]
    async def call_tool(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        tool = TOOL_FUNCTIONS.get(name)
        if tool is None:
            raise ToolError(f"unknown tool {name!r}")
        return await tool(cluster, arguments)

    return server, cluster


def server_for(target: ResolvedTarget) -> tuple[Server[Any, Any], Cluster]:
    return build_server(client_factory_for(target), target.label)


def run_stdio(target: ResolvedTarget) -> int:
    """Serve on stdin/stdout until the client closes them."""
    server, cluster = server_for(target)

    async def main() -> None:
        try:
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())
        finally:
            await cluster.close()

    anyio.run(main)
    return 0
