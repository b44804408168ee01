"""An independent judge of periodic sends: was every scheduled occurrence covered exactly once?

It shares no code with the scheduler on purpose - it parses occurrence ids (``entry@due``, due
as ``%Y-%m-%dT%H:%M:%S.%fZ``) itself and builds the grid of nominal due times from the period
alone - so a bug in the scheduler's arithmetic cannot hide in the check.

A send covers its own occurrence and every id in its ``coalesced`` list. Over the observed span
(first to last covered due time) each grid slot must be covered exactly once: twice is a
duplicate, never is a missed run, and an id off the grid means the leaders disagreed on names.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

__all__ = ["Report", "Send", "check", "due_of"]


@dataclass(frozen=True)
class Send:
    """One periodic task run, as its body recorded it."""

    occurrence: str
    coalesced: tuple[str, ...] = ()
    term: int = 0
    sender: str = ""
    at: float = 0.0


def due_of(occurrence: str) -> datetime:
    """The nominal due time named by an occurrence id."""
    _, sep, due = occurrence.rpartition("@")
    if not sep:
        raise ValueError(f"not an occurrence id: {occurrence!r}")
    return datetime.strptime(due, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


@dataclass
class Report:
    """What :func:`check` found."""

    #: Occurrence id -> every send covering it (own send or coalesced list), over the grid.
    coverage: dict[str, list[Send]] = field(default_factory=dict)
    #: Ids covered more than once, with how many times.
    duplicates: dict[str, int] = field(default_factory=dict)
    #: Grid slots inside the observed span that no send covered.
    missing: list[str] = field(default_factory=list)
    #: Ids whose due time is not on the grid.
    off_grid: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.missing or self.off_grid)

    def summary(self) -> str:
        return (
            f"{len(self.coverage)} occurrences, {len(self.duplicates)} duplicated, "
            f"{len(self.missing)} missed, {len(self.off_grid)} off the grid"
        )

    def table(self) -> str:
        """One line per occurrence: id, how it was covered, by whom, in which term."""
        lines = [f"{'occurrence':<42} {'covered by':<11} {'sender':<28} term  note"]
        for occurrence, sends in sorted(self.coverage.items(), key=lambda item: due_of(item[0])):
            if not sends:
                lines.append(f"{occurrence:<42} {'-':<11} {'-':<28} {'-':>4}  MISSED")
                continue
            for send in sends:
                how = "own send" if send.occurrence == occurrence else "coalesced"
                note = "DUPLICATE" if len(sends) > 1 else ""
                lines.append(f"{occurrence:<42} {how:<11} {send.sender:<28} {send.term:>4}  {note}")
        return "\n".join(lines)


def check(sends: Iterable[Send], period: timedelta, *, require_complete: bool = True) -> Report:
    """Judge ``sends`` of one entry scheduled every ``period``.

    ``require_complete=False`` (the ``skip`` policy) reports gaps but does not count them as
    missing; duplicates and off-grid ids are always errors.
    """
    sends = list(sends)
    covering: dict[str, list[Send]] = defaultdict(list)
    for send in sends:
        for occurrence in (send.occurrence, *send.coalesced):
            covering[occurrence].append(send)
    report = Report()
    if not covering:
        return report
    entries = {occurrence.rpartition("@")[0] for occurrence in covering}
    if len(entries) != 1:
        raise ValueError(f"sends of several entries: {sorted(entries)}")
    (entry,) = entries
    dues = {occurrence: due_of(occurrence) for occurrence in covering}
    anchor = min(dues.values())
    last = max(dues.values())
    step = period // timedelta(microseconds=1)

    def offset(due: datetime) -> int:
        return (due - anchor) // timedelta(microseconds=1)

    report.off_grid = sorted(o for o, due in dues.items() if offset(due) % step)
    counts = Counter({occurrence: len(covered) for occurrence, covered in covering.items()})
    report.duplicates = {occurrence: n for occurrence, n in counts.items() if n > 1}
    by_slot = {offset(due) // step: occurrence for occurrence, due in dues.items()}
    for slot in range(offset(last) // step + 1):
        occurrence = by_slot.get(slot)
        if occurrence is None:
            occurrence = f"{entry}@{(anchor + slot * period):%Y-%m-%dT%H:%M:%S.%fZ}"
            report.coverage[occurrence] = []
            if require_complete:
                report.missing.append(occurrence)
        else:
            report.coverage[occurrence] = covering[occurrence]
    return report
