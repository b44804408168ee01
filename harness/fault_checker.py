"""The independent checker of the safety property, reading the acts the members recorded.

It trusts nothing the members say about roles; it only sees, per process, the instants at
which that process acted as leader and under which term:

* no term is acted on by two members;
* no two members act at overlapping times: within one term a member leads continuously, so
  its acts span an interval, and intervals of different members must be disjoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Act:
    at: float
    member: str
    term: int


@dataclass(frozen=True)
class Tenure:
    """One member's acts under one term."""

    member: str
    term: int
    start: float
    end: float


def load_acts(path: Path) -> list[Act]:
    if not path.exists():
        return []
    acts = []
    for line in path.read_text().splitlines():
        at, member, term = line.split()
        acts.append(Act(float(at), member, int(term)))
    return acts


def tenures(acts: list[Act]) -> list[Tenure]:
    spans: dict[tuple[str, int], list[float]] = {}
    for act in acts:
        span = spans.setdefault((act.member, act.term), [act.at, act.at])
        span[0] = min(span[0], act.at)
        span[1] = max(span[1], act.at)
    return sorted(
        (Tenure(member, term, start, end) for (member, term), (start, end) in spans.items()),
        key=lambda tenure: tenure.start,
    )


def violations(acts: list[Act]) -> list[str]:
    """Every breach of the safety property, described; empty when none."""
    found = []
    holders: dict[int, set[str]] = {}
    for act in acts:
        holders.setdefault(act.term, set()).add(act.member)
    for term, members in sorted(holders.items()):
        if len(members) > 1:
            found.append(f"term {term} was acted on by {sorted(members)}")
    spans = tenures(acts)
    for index, first in enumerate(spans):
        for second in spans[index + 1 :]:
            if second.member != first.member and second.start <= first.end:
                found.append(
                    f"{first.member} (term {first.term}, {first.start:.4f}-{first.end:.4f}) "
                    f"overlaps {second.member} (term {second.term}, "
                    f"{second.start:.4f}-{second.end:.4f})"
                )
    return found


def first_act_after(acts: list[Act], moment: float) -> Act | None:
    later = [act for act in acts if act.at > moment]
    return min(later, key=lambda act: act.at) if later else None


def leader_at_end(acts: list[Act]) -> str | None:
    return max(acts, key=lambda act: act.at).member if acts else None
