"""PBFT: the Byzantine-tolerant consensus engine (sans-IO core, signed messages)."""

from agent.pbft.config import PbftConfig
from agent.pbft.core import PbftReplica

__all__ = ["PbftConfig", "PbftReplica"]
