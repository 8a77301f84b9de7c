"""SWIM + Lifeguard membership, sans-IO (see :mod:`agent.swim.core`)."""

from agent.swim.config import SwimConfig
from agent.swim.core import MemberEvent, Outbound, SwimNode, SwimReady
from agent.swim.members import MemberView
from agent.swim.messages import WIRE_TYPES, MemberState, NodeLoad, NodeMeta

__all__ = [
    "WIRE_TYPES",
    "MemberEvent",
    "MemberState",
    "MemberView",
    "NodeLoad",
    "NodeMeta",
    "Outbound",
    "SwimConfig",
    "SwimNode",
    "SwimReady",
]
