"""The one error the inventory package raises for bad input: file, line, reason.

``InventoryError`` is a ``ConfigError`` so the CLI prints it as one line and
exits with the usage/config code (2), never with a traceback.
"""

from __future__ import annotations

from agent.errors import ConfigError


class InventoryError(ConfigError):
    """A malformed inventory, a bad variable or an unknown host pattern.

    ``str()`` is ``"inv.yml:12: unknown key 'hots' in group 'web'"``; without a
    line (a ``--limit`` pattern, a missing file) it is ``"inv.yml: reason"``.
    """

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(where, reason)
        self.path = path
        self.line = line
