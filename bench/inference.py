"""Which scheduled occurrence each periodic send stands for, inferred from send times alone.

RedBeat and single-beat stamp no occurrence id on their messages, so occurrences are inferred
from the schedule - the same way for every system, celery-leaderfeed included, whose own
headers are then checked independently (``tests/occurrence_checker.py``) as a cross-check.

The method follows what an interval schedule promises: the next run is due one period after
the last one. Sends are taken in CLOCK_MONOTONIC order; the first one opens slot 0. For each
later send, ``k = floor(d / period + 1/2)`` with ``d`` the time since the previous send - the
send falls within half a period of the ``k``-th nominal slot after the previous send:

* ``k = 0``: a second send in the same slot - a *duplicate*;
* ``k = 1``: the next slot, on time;
* ``k >= 2``: ``k - 1`` slots passed without a send - *missed* (a send that stands for
  several runs, as RedBeat's and leaderfeed's catch-up sends do, still counts as one).

Each send re-anchors the grid, as Celery's interval schedule does (``last_run_at`` is the send
time), so slow drift is not mistaken for a missed run. The price: a catch-up send followed by a
send back on the original grid less than half a period later counts as a duplicate here,
although the first stands for runs missed in a gap (leaderfeed's ``run_once`` does exactly
this, and says so in its ``leaderfeed_coalesced`` header).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sent:
    """One message the periodic entry sent, as found in the broker."""

    at: float  #: CLOCK_MONOTONIC at publish (``bench_sent_mono``)
    wall: float  #: time.time() at publish
    node: str  #: the node whose process published it
    pid: int
    occurrence: str | None = None  #: leaderfeed's ``leaderfeed_occurrence`` header
    coalesced: tuple[str, ...] = ()  #: leaderfeed's ``leaderfeed_coalesced`` header
    term: int | None = None
    sender: str | None = None


@dataclass
class Inference:
    """What the send times say."""

    #: (slot, send) for every send.
    slots: list[tuple[int, Sent]] = field(default_factory=list)
    #: Sends that fell into a slot already sent.
    duplicates: list[Sent] = field(default_factory=list)
    #: Monotonic nominal times of the slots nobody sent.
    missed: list[float] = field(default_factory=list)


def infer(sends: Iterable[Sent], period: float, until: float | None = None) -> Inference:
    """Slots, duplicates and missed slots of ``sends``; with ``until``, the slots after the
    last send whose half-period window closed before ``until`` count as missed too."""
    result = Inference()
    previous: Sent | None = None
    slot = 0
    for send in sorted(sends, key=lambda s: s.at):
        if previous is not None:
            k = math.floor((send.at - previous.at) / period + 0.5)
            if k == 0:
                result.duplicates.append(send)
            else:
                result.missed.extend(previous.at + j * period for j in range(1, k))
                slot += k
        result.slots.append((slot, send))
        previous = send
    if previous is not None and until is not None:
        k = math.floor((until - previous.at) / period - 0.5)
        result.missed.extend(previous.at + j * period for j in range(1, k + 1))
    return result
