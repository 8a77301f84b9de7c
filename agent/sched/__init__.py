"""Placement policies: pure functions over a ``ClusterSnapshot`` (no I/O, no clock).

The leader's runtime builds the snapshot, calls ``plan_round`` (which runs the
policies below in order), and proposes every decision as a committed log entry
(``agent.state``).
"""

from agent.sched.balance import (
    HeatState,
    may_move,
    plan_drain,
    plan_failover,
    plan_rebalance,
    plan_steals,
    settle_heat,
    update_heat,
)
from agent.sched.config import SchedConfig
from agent.sched.messages import WIRE_TYPES, Bid, BidRequest
from agent.sched.placement import (
    Placement,
    auction_score,
    auction_scores,
    capability_match,
    eligible_nodes,
    is_eligible,
    place,
    place_by_capability,
    place_by_hash,
    place_many,
    preference_list,
    ring_for,
    run_auction,
)
from agent.sched.ring import HashRing, replica_key, ring_hash
from agent.sched.round import (
    MAX_DECISIONS_PER_ROUND,
    MAX_INFLIGHT_DECISIONS,
    Assign,
    Decision,
    FailNode,
    Migrate,
    RoundPlan,
    needs_bids,
    plan_round,
)
from agent.sched.snapshot import (
    ClusterSnapshot,
    Move,
    MoveReason,
    NodeView,
    Strategy,
    TaskView,
)

__all__ = [
    "MAX_DECISIONS_PER_ROUND",
    "MAX_INFLIGHT_DECISIONS",
    "WIRE_TYPES",
    "Assign",
    "Bid",
    "BidRequest",
    "ClusterSnapshot",
    "Decision",
    "FailNode",
    "HashRing",
    "HeatState",
    "Migrate",
    "Move",
    "MoveReason",
    "NodeView",
    "Placement",
    "RoundPlan",
    "SchedConfig",
    "Strategy",
    "TaskView",
    "auction_score",
    "auction_scores",
    "capability_match",
    "eligible_nodes",
    "is_eligible",
    "may_move",
    "needs_bids",
    "place",
    "place_by_capability",
    "place_by_hash",
    "place_many",
    "plan_drain",
    "plan_failover",
    "plan_rebalance",
    "plan_round",
    "plan_steals",
    "preference_list",
    "replica_key",
    "ring_for",
    "ring_hash",
    "run_auction",
    "settle_heat",
    "update_heat",
]
