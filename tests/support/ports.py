"""Free loopback ports for tests.

One implementation for the whole suite: the demo's ``free_port``, which
``LocalMesh`` uses for its agents.  An agent serves TCP and UDP on one port, so
the port must be free for both; a TCP-only server (sshd) is served by it too.
The port is free when returned, not reserved: bind it soon.
"""

from __future__ import annotations

from meshtui.demo import free_port

__all__ = ["free_port"]
