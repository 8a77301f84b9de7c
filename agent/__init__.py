"""mesh-agent: the meshtui daemon that runs on every host."""

__version__ = "0.4.0"
