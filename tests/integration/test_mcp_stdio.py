"""Issue 16: ``meshtui mcp`` as an MCP client starts it -- a subprocess spoken to over
stdio by the SDK's own client -- and what it says when no agent is there."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

if os.environ.get("CI") != "true":  # under CI the extra is installed: a missing SDK fails
    pytest.importorskip("mcp", reason="the MCP SDK is the 'mcp' extra: pip install -e '.[mcp]'")

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from meshtui.mcp.schemas import TOOL_NAMES

pytestmark = pytest.mark.timeout(60)


async def test_meshtui_mcp_over_stdio_without_an_agent(tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "meshtui.cli", "mcp", "-t", str(tmp_path / "agent.sock")],
        env={**os.environ},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        assert init.serverInfo.name == "meshtui"
        tools = (await session.list_tools()).tools
        assert [t.name for t in tools] == list(TOOL_NAMES)
        result = await session.call_tool("swarm_init", {"topology": "mesh"})
        assert result.isError
        text = result.content[0].text  # type: ignore[union-attr]
        assert "no mesh-agent reachable" in text and "mesh-agent run" in text
        bad = await session.call_tool("swarm_init", {"topology": "blob"})
        assert bad.isError and "is not one of" in bad.content[0].text  # type: ignore[union-attr]


def test_the_cli_and_the_agent_never_import_the_extras() -> None:
    """The CLI imports the SDK lazily: ``meshtui status`` and friends never load it."""
    import subprocess

    code = ("import sys, meshtui.cli, meshtui.commands, meshtui.task_commands; "
            "assert 'mcp' not in sys.modules and 'textual_serve' not in sys.modules; "
            "import agent.runtime.agent; assert 'mcp' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
