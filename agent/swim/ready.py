"""What a SwimNode hands the runtime: messages to send and events to publish."""

from __future__ import annotations

from dataclasses import dataclass

from agent.swim.members import MemberView


@dataclass(frozen=True, slots=True)
class Outbound:
    """Send ``msg`` to address ``to`` ("host:port"); ``reliable``: over sealed TCP."""

    to: str
    msg: object
    reliable: bool


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """``kind``: join | suspect | alive | dead | leave | update | partitioned | healed.
    For partitioned/healed, ``member`` is the local node."""

    kind: str
    member: MemberView
    at: float


@dataclass(frozen=True, slots=True)
class SwimReady:
    """What the runtime must do: send ``outbound``, publish ``events``, then advance."""

    outbound: list[Outbound]
    events: list[MemberEvent]
