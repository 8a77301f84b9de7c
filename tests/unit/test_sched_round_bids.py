"""``AuctionBoard.ranks`` with a round's bids (issue 14, session 8): when every bid is a
round bid (``task == ""``, what ``LeaderScheduler`` asks for), each host's wait and
score without the capability match are the same for every task of the round, so the
board works them out once per bids mapping and ``bump`` updates the host that took a
decision.  These tests hold that fast path to the per-task computation it replaces
(``reference_ranks``, the code before it), decision by decision: random clusters,
round bids, task bids, mixed, missing, bids from unknown hosts, capabilities."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sched import Bid, NodeView, SchedConfig, TaskView
from agent.sched.placement import (
    SCORE_DIGITS,
    AuctionBoard,
    bid_applies,
    bid_load,
    place_many,
    queue_wait,
)
from agent.sched.snapshot import ClusterSnapshot


def reference_ranks(
    board: AuctionBoard, task: TaskView, bids: Mapping[str, Bid] | None
) -> dict[str, tuple[float, float]]:
    """``AuctionBoard.ranks`` as it was before the round table (2806b5e)."""
    cfg = board.cfg
    fresh: dict[str, Bid] = {}
    for node_id, bid in (bids or {}).items():
        if node_id in board._views and bid_applies(bid, task):
            fresh[node_id] = bid
    fastest = board.fastest
    bid_means = [b.mean_duration for b in fresh.values() if b.mean_duration]
    bid_means = [m for m in bid_means if m > 0]
    if bid_means and (fastest is None or min(bid_means) < fastest):
        fastest = min(bid_means)
    reuse = fastest == board.fastest
    required = task.caps
    need = len(required)
    ranks: dict[str, tuple[float, float]] = {}
    for node_id, caps in board._schedulable:
        match = len(required & caps) / need if need else 1.0
        if match < cfg.min_capability_match:
            continue
        offered = fresh.get(node_id) if fresh else None
        if offered is not None:
            busy = bid_load(board._views[node_id], offered) + board._added.get(node_id, 0)
            wait = queue_wait(offered.slots, busy)
            base = board._base_from(
                offered.cpu, offered.mem_free, offered.slots, busy,
                offered.success_rate, offered.mean_duration, fastest,
            )  # fmt: skip
        else:
            wait = board._wait[node_id]
            base = (
                board._base_now(node_id) if reuse
                else board._base_of(board._views[node_id], fastest, board._added.get(node_id, 0))
            )  # fmt: skip
        ranks[node_id] = (wait, round(cfg.weight_capability * match + base, SCORE_DIGITS))
    return ranks


CAPS = ["gpu", "ssd", "arm"]
_caps = st.frozensets(st.sampled_from(CAPS), max_size=2)
_mean = st.none() | st.sampled_from([0.0, 0.5, 1.0, 2.0, 8.0])


@st.composite
def nodes(draw: st.DrawFn) -> tuple[NodeView, ...]:
    count = draw(st.integers(1, 5))
    return tuple(
        NodeView(
            id=f"n{i}", name=f"n{i}", alive=draw(st.booleans()) or i == 0,
            draining=draw(st.booleans()) and i > 0, caps=draw(_caps),
            slots=draw(st.integers(1, 4)), running=draw(st.integers(0, 4)),
            queued=draw(st.integers(0, 6)), cpu=draw(st.sampled_from([0.0, 0.3, 0.9, 1.2])),
            mem_free=draw(st.sampled_from([0.1, 0.5, 1.0])),
            success_rate=draw(st.sampled_from([0.5, 1.0])), mean_duration=draw(_mean),
        )
        for i in range(count)
    )


def bid_for(draw: st.DrawFn, node: str, task: str, epoch: int) -> Bid:
    return Bid(1, task, node, epoch, draw(st.sampled_from([0.0, 0.4, 0.95])),
               draw(st.sampled_from([0.2, 0.9])), draw(st.integers(1, 4)),
               draw(st.integers(0, 3)), draw(st.integers(0, 5)),
               draw(st.sampled_from([0.7, 1.0])), draw(_mean))


@st.composite
def rounds(draw: st.DrawFn) -> tuple[tuple[NodeView, ...], list[TaskView], dict[str, Bid] | None]:
    views = draw(nodes())
    tasks = [TaskView(id=f"t{i}", caps=draw(_caps), epoch=draw(st.integers(0, 2)),
                      created_at=float(i)) for i in range(draw(st.integers(1, 12)))]
    kind = draw(st.sampled_from(["none", "round", "task", "mixed"]))
    if kind == "none":
        return views, tasks, None
    bids: dict[str, Bid] = {}
    for node in [*views, NodeView(id="ghost", name="ghost")]:  # a bid from an unknown host too
        if draw(st.booleans()):
            continue  # this host did not answer
        if kind == "round" or (kind == "mixed" and draw(st.booleans())):
            bids[node.id] = bid_for(draw, node.id, "", 0)
        else:
            task = draw(st.sampled_from(tasks))
            bids[node.id] = bid_for(draw, node.id, task.id, task.epoch + draw(st.integers(0, 1)))
    return views, tasks, bids


@settings(max_examples=200, deadline=None)
@given(rounds(), st.sampled_from([0.0, 0.5, 1.0]))
def test_ranks_match_the_per_task_computation_decision_by_decision(
    case: tuple[tuple[NodeView, ...], list[TaskView], dict[str, Bid] | None], min_match: float
) -> None:
    views, tasks, bids = case
    cfg = SchedConfig(min_capability_match=min_match)
    board = AuctionBoard(views, cfg)
    for task in tasks:
        expected = reference_ranks(board, task, bids)
        assert board.ranks(task, bids) == expected
        if expected:
            node = min(expected, key=lambda n: (expected[n][0], -expected[n][1], n))
            assert board.winner(task, bids) == node
            board.bump(node)


def test_round_bids_are_worked_out_once_per_mapping_and_follow_bumps() -> None:
    views = tuple(NodeView(id=f"n{i}", name=f"n{i}", slots=2, cpu=0.1 * i) for i in range(3))
    bids = {v.id: Bid(1, "", v.id, 0, 0.2, 0.5, 2, 0, 0, 1.0, None) for v in views}
    board = AuctionBoard(views, SchedConfig())
    task = TaskView(id="t1")
    board.ranks(task, bids)
    table = board._round
    assert table is not None and table.bids is bids
    winner = board.winner(task, bids)
    board.bump(winner)
    assert board._round is table  # kept, the winner's entry brought up to date
    assert board.ranks(task, bids) == reference_ranks(board, task, bids)
    other = dict(bids)
    board.ranks(task, other)
    assert board._round is not None and board._round.bids is other


def test_place_many_spreads_a_round_as_before() -> None:
    # 3 hosts x 2 slots, a burst of 9 with round bids: 3 each, hosts with free slots first.
    views = tuple(NodeView(id=f"n{i}", name=f"n{i}", slots=2, cpu=0.2 * i) for i in range(3))
    bids = {v.id: Bid(1, "", v.id, 0, v.cpu, 0.5, 2, 0, 0, 1.0, None) for v in views}
    tasks = [TaskView(id=f"t{i}", created_at=float(i)) for i in range(9)]
    snap = ClusterSnapshot(views, tuple(tasks), 0.0)
    placed = place_many(tasks, snap, SchedConfig(), {t.id: bids for t in tasks})
    hosts = [p.node or "" for p in placed]
    assert hosts[:6].count("n0") == hosts[:6].count("n1") == hosts[:6].count("n2") == 2
    assert sorted(hosts) == ["n0"] * 3 + ["n1"] * 3 + ["n2"] * 3
