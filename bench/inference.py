"""Which scheduled occurrence each periodic send stands for, from send times alone.

The same rule for every system (bench/README.md, "Counting occurrences"): with ``d`` the time
since the previous send, ``k = floor(d / period + 1/2)``; ``k = 0`` is a duplicate, ``k = 1``
the next slot, ``k >= 2`` means ``k - 1`` slots without a send. Each send re-anchors the grid.
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

    #: Sends that fell into a slot already sent.
    duplicates: list[Sent] = field(default_factory=list)
    #: Monotonic nominal times of the slots nobody sent.
    missed: list[float] = field(default_factory=list)


def infer(sends: Iterable[Sent], period: float, until: float | None = None) -> Inference:
    """Duplicates and missed slots of ``sends``; with ``until``, the slots after the last
    send whose half-period window closed before ``until`` count as missed too."""
    result = Inference()
    previous: Sent | None = None
    for send in sorted(sends, key=lambda s: s.at):
        if previous is not None:
            k = math.floor((send.at - previous.at) / period + 0.5)
            if k == 0:
                result.duplicates.append(send)
            result.missed.extend(previous.at + j * period for j in range(1, k))
        previous = send
    if previous is not None and until is not None:
        k = math.floor((until - previous.at) / period - 0.5)
        result.missed.extend(previous.at + j * period for j in range(1, k + 1))
    return result
