"""meshtui: the operator's TUI and CLI for a mesh-agent cluster."""

__version__ = "0.4.0"
