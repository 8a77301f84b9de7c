"""Threshold proposals: create, vote, tally, and the local validation agents run
before voting.

A proposal passes when the yes votes reach ``threshold * eligible`` (eligible:
the voting members, given by the proposer and refreshed by votes) and is
rejected as soon as that can no longer happen.  Each voter votes once; the
record keeps who voted, so participation (votes cast / eligible) is reported.

A ``config`` proposal carries TOML whose ``[sched]`` table changes scheduling
tuning cluster-wide once it passes; it must parse and validate before anyone
votes for it.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ConfigError
from agent.sched.config import SchedConfig
from agent.state.commands import MAX_BODY_BYTES, MAX_TITLE_LEN, PROPOSAL_KINDS

# Float tolerance so 0.67 * 3 = 2.01 is reached by 3 votes but not 2, on every replica.
_EPSILON = 1e-9


@dataclass(slots=True)
class Proposal:
    id: int
    title: str
    body: str
    proposer: str
    threshold: float = 0.67
    kind: str = "text"
    eligible: int = 1
    created_at: float = 0.0
    votes: dict[str, bool] = field(default_factory=dict)
    state: str = "open"
    """open | passed | rejected"""
    decided_at: float | None = None

    @property
    def yes(self) -> int:
        return sum(1 for v in self.votes.values() if v)

    @property
    def no(self) -> int:
        return sum(1 for v in self.votes.values() if not v)

    @property
    def participation(self) -> float:
        return len(self.votes) / max(1, self.eligible)

    def tally(self) -> dict[str, Any]:
        return {
            "yes": self.yes,
            "no": self.no,
            "eligible": self.eligible,
            "voters": sorted(self.votes),
            "participation": self.participation,
            "state": self.state,
        }

    def row(self) -> dict[str, Any]:
        """The ``proposal.list`` row."""
        return {
            "id": self.id,
            "title": self.title,
            "kind": self.kind,
            "proposer": self.proposer,
            "threshold": self.threshold,
            **self.tally(),
        }

    def decide(self, at: float) -> None:
        """Move to passed/rejected once the tally settles it."""
        if self.state != "open":
            return
        need = self.threshold * self.eligible - _EPSILON
        if self.yes >= need:
            self.state, self.decided_at = "passed", at
        elif self.eligible - self.no < need:
            self.state, self.decided_at = "rejected", at

    def dump(self) -> list[Any]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    @classmethod
    def load(cls, row: list[Any]) -> Proposal:
        return cls(*row)


def validate_proposal(proposal: Proposal) -> str | None:
    """Why an agent should refuse to vote for ``proposal``, or None if it is well-formed."""
    if not proposal.title.strip():
        return "empty title"
    if len(proposal.title) > MAX_TITLE_LEN or "\n" in proposal.title:
        return f"title must be one line of at most {MAX_TITLE_LEN} characters"
    if len(proposal.body.encode()) > MAX_BODY_BYTES:
        return f"body exceeds {MAX_BODY_BYTES} bytes"
    if not 0.0 < proposal.threshold <= 1.0:
        return "threshold must be in (0, 1]"
    if proposal.kind not in PROPOSAL_KINDS:
        return f"unknown kind {proposal.kind!r}"
    if proposal.kind == "config":
        try:
            sched_overrides(proposal.body)
        except ConfigError as exc:
            return f"config change does not validate: {exc}"
    return None


def sched_overrides(body: str, base: SchedConfig | None = None) -> dict[str, Any]:
    """Parse a config proposal body: TOML with one ``[sched]`` table whose fields exist,
    have the right types, and validate.  Returns the overrides; raises ``ConfigError``."""
    try:
        doc = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("body", f"not TOML: {exc}") from None
    if set(doc) != {"sched"} or not isinstance(doc["sched"], dict):
        raise ConfigError("body", "a config change must contain exactly one [sched] table")
    hints = typing.get_type_hints(SchedConfig)
    overrides: dict[str, Any] = {}
    for key, value in doc["sched"].items():
        if key not in hints:
            raise ConfigError(f"sched.{key}", "unknown setting")
        hint = hints[key]
        if hint is float and type(value) is int:
            value = float(value)
        if type(value) is not hint:
            raise ConfigError(f"sched.{key}", f"expected {hint.__name__}")
        overrides[key] = value
    dataclasses.replace(base or SchedConfig(), **overrides).validate()
    return overrides
