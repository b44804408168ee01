"""Independent checker of leader-only executions: per argument, per worker, per term.

Fed only what the task bodies recorded (argument, worker, term, start and end on the
machine's monotonic clock) and the arguments that were sent; it trusts nothing the workers
say about leadership. It reports:

* ``lost``: arguments sent and never executed; ``duplicated``: executed more than once;
* ``overlaps``: pairs of bodies on two different workers whose intervals intersect;
* ``shared_terms``: terms under which more than one worker ran bodies;
* ``out_of_order``: a body of a lower term starting after a body of a higher term started on
  another worker (an old leader acting after its successor began - a non-leader executing).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Run:
    arg: int
    host: str
    term: int
    start: float
    end: float


@dataclass
class Report:
    sent: int
    executed: int
    lost: list[int] = field(default_factory=list)
    duplicated: dict[int, int] = field(default_factory=dict)
    overlaps: list[tuple[Run, Run]] = field(default_factory=list)
    shared_terms: dict[int, set[str]] = field(default_factory=dict)
    out_of_order: list[tuple[Run, Run]] = field(default_factory=list)
    terms: list[tuple[int, str]] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        """No two workers acted at once, and each term had one worker."""
        return not (self.overlaps or self.shared_terms or self.out_of_order)

    @property
    def exactly_once(self) -> bool:
        return not (self.lost or self.duplicated)

    def summary(self) -> str:
        return (
            f"sent {self.sent}, executions {self.executed}, lost {len(self.lost)}, executed "
            f"twice or more {len(self.duplicated)}, overlapping bodies {len(self.overlaps)}, "
            f"terms with two workers {len(self.shared_terms)}, old-term bodies after a newer "
            f"term began {len(self.out_of_order)}, leaders {self.terms}"
        )


def runs_from(records: Iterable[Mapping[str, Any]]) -> list[Run]:
    return [
        Run(int(r["arg"]), str(r["host"]), int(r["term"]), float(r["start"]), float(r["end"]))
        for r in records
    ]


def check(sent: Iterable[int], runs: Iterable[Run]) -> Report:
    sent = list(sent)
    runs = sorted(runs, key=lambda run: run.start)
    counts = Counter(run.arg for run in runs)
    report = Report(sent=len(sent), executed=len(runs))
    report.lost = sorted(arg for arg in set(sent) if counts[arg] == 0)
    report.duplicated = {arg: n for arg, n in sorted(counts.items()) if n > 1}

    hosts_by_term: dict[int, set[str]] = defaultdict(set)
    for run in runs:
        hosts_by_term[run.term].add(run.host)
    report.shared_terms = {t: hosts for t, hosts in hosts_by_term.items() if len(hosts) > 1}
    report.terms = sorted((t, min(hosts)) for t, hosts in hosts_by_term.items())

    # Overlaps between workers: sweep by start time, keeping the latest end seen per worker.
    latest_end: dict[str, Run] = {}
    for run in runs:
        for host, other in latest_end.items():
            if host != run.host and other.end > run.start:
                report.overlaps.append((other, run))
        previous = latest_end.get(run.host)
        if previous is None or run.end > previous.end:
            latest_end[run.host] = run

    # A body of an older term may not start once a newer term's body started elsewhere.
    newest: Run | None = None
    for run in runs:
        if newest is not None and run.term < newest.term and run.host != newest.host:
            report.out_of_order.append((newest, run))
        if newest is None or run.term > newest.term:
            newest = run
    return report
