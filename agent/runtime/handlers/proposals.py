"""``proposal.*``: proposals the members vote on, validated locally before approving."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent.errors import TaskError
from agent.runtime.handlers.common import committer, param_str, reader, request_id
from agent.runtime.ports import Handler, ProposalReads, Proposer
from agent.state import builders
from agent.state.proposals import validate_proposal


def handlers(
    raft: Proposer,
    state: ProposalReads,
    *,
    voter_name: str,
    eligible_voters: Callable[[], int],
) -> dict[str, Handler]:
    """``voter_name``: who this node votes as (its name); ``eligible_voters()``:
    how many members may vote now (the alive ones)."""
    commit, read = committer(raft), reader(raft)

    async def proposal_create(params: dict[str, Any]) -> Any:
        threshold = float(params.get("threshold", 0.67))
        cmd = builders.cmd_proposal_create(
            param_str(params, "title"), param_str(params, "body", ""), voter_name,
            request_id(params), time.time(), threshold=threshold, eligible=eligible_voters(),
        )
        return (await commit(cmd)).value

    async def proposal_vote(params: dict[str, Any]) -> Any:
        raw_id = params.get("id")
        try:
            proposal_id = int(raw_id)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"bad proposal id {raw_id!r}") from None
        proposal = state.proposal(proposal_id)
        if proposal is None:
            raise TaskError(f"no proposal {proposal_id}")
        problem = validate_proposal(proposal)
        if problem is not None and params.get("approve"):
            # Agents validate a proposal locally before approving it.
            raise ValueError(f"refusing to approve proposal {proposal_id}: {problem}")
        cmd = builders.cmd_proposal_vote(
            proposal_id, voter_name, bool(params.get("approve")), request_id(params),
            time.time(), eligible=eligible_voters(),
        )
        return (await commit(cmd)).value

    async def proposal_list(params: dict[str, Any]) -> Any:
        await read(params)
        return state.proposal_rows()

    return {
        "proposal.create": proposal_create,
        "proposal.vote": proposal_vote,
        "proposal.list": proposal_list,
    }
