"""``meshtui mcp``: the mesh-coordinator design's MCP tools, served for real.

``schemas.py`` (names, descriptions, JSON Schemas), ``tools.py`` (what each
tool does against the live cluster; no SDK import) and ``server.py`` (the
official ``mcp`` SDK's stdio server; needs ``pip install 'meshtui[mcp]'``).
"""
