"""SWIM + Lifeguard membership, sans-IO (see :mod:`agent.swim.core`)."""

from agent.swim.config import SwimConfig
from agent.swim.core import SwimNode
from agent.swim.members import MemberView
from agent.swim.messages import WIRE_TYPES, MemberState, NodeLoad, NodeMeta
from agent.swim.ready import MemberEvent, Outbound, SwimReady

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
