"""Pacing and reporting of store calls that keep failing.

Every loop that calls the store again after a failure first waits a :class:`Backoff` delay. A
fault that may heal (:class:`~.errors.BackendUnavailable`) is retried at the loop's usual pace
at most; a refusal that retrying cannot fix (:class:`~.errors.StoreRefused`) slowly, at
:func:`refused_pace` - but still retried, so a password fixed in the store takes effect without
a restart.

A :class:`FaultLog` reports a fault when it starts (a WARNING, or an ERROR for a refusal or a
bug), then at most once per :func:`report_interval` while it lasts, with the count of attempts
that failed meanwhile, and once (INFO) when it ends: an outage of an hour is a handful of lines.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from ..errors import BackendUnavailable, StoreRefused
from ..timing import Timing

__all__ = ["Backoff", "FaultLog", "refused_pace", "report_interval"]

#: A lasting fault is reported again every this many election timeouts (a minute by default).
REPORT_TIMEOUTS = 15


def report_interval(timing: Timing) -> float:
    """Seconds between two reports of one lasting fault: 60 s at the default timings."""
    return REPORT_TIMEOUTS * timing.election_timeout_max


def refused_pace(timing: Timing) -> float:
    """Longest wait between two attempts the store refused: 4 election timeouts, >= 5 s."""
    return max(5.0, 4 * timing.election_timeout_max)


class Backoff:
    """Exponential backoff with jitter: each delay is drawn from ``[ceiling / 2, ceiling]``,
    the ceiling doubling from ``initial`` up to ``cap`` (``refused_cap`` after a refusal)."""

    def __init__(
        self,
        rng: random.Random,
        initial: float,
        cap: float,
        *,
        refused_cap: float | None = None,
    ) -> None:
        self._rng = rng
        self._initial = initial
        self._cap = cap
        self._refused_cap = max(cap, refused_cap if refused_cap is not None else cap)
        self._attempt = 0

    def next(self, error: BaseException | None = None) -> float:
        """The delay before the next attempt, after one more failure (``error``, if known)."""
        cap = self._refused_cap if isinstance(error, StoreRefused) else self._cap
        ceiling = min(cap, self._initial * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 30)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """The last attempt succeeded: start again from ``initial``."""
        self._attempt = 0


@dataclass(slots=True)
class _Fault:
    started_at: float
    reported_at: float
    failures: int = 1
    unreported: int = 0


def _kind(error: BaseException) -> tuple[str, ...]:
    """What makes two failures the same fault: the cause of a refusal, any outage, a bug."""
    if isinstance(error, StoreRefused):
        return ("refused", error.cause)
    if isinstance(error, BackendUnavailable):
        return ("unavailable",)
    return ("error", type(error).__name__, str(error))


class FaultLog:
    """Logs the faults of one kind of store call (``what``) without flooding.

    Not thread-safe: each loop owns its own. ``now`` is any monotonic clock.
    """

    def __init__(self, logger: logging.Logger, label: str, every: float) -> None:
        self._logger = logger
        self._label = label
        self._every = every
        self._faults: dict[tuple[str, ...], _Fault] = {}
        self._last: str | None = None

    @property
    def current(self) -> str | None:
        """The last failure's message while a fault lasts (None once the call succeeded)."""
        return self._last

    def failed(self, now: float, what: str, error: BaseException, *, note: str = "") -> None:
        """``what`` failed with ``error``; ``note`` ends the first report (e.g. what happens
        meanwhile)."""
        self._last = f"{what} failed: {error}"
        level = logging.WARNING
        if isinstance(error, StoreRefused) or not isinstance(error, BackendUnavailable):
            level = logging.ERROR
        kind = _kind(error)
        fault = self._faults.get(kind)
        if fault is None:
            self._faults[kind] = _Fault(started_at=now, reported_at=now)
            bug = not isinstance(error, BackendUnavailable)
            self._logger.log(
                level, "%s: %s%s", self._label, self._last, note, exc_info=error if bug else None
            )
            return
        fault.failures += 1
        fault.unreported += 1
        if now - fault.reported_at >= self._every:
            self._logger.log(
                level,
                "%s: %s; still failing: %d more failed attempt(s) in the last %.0f s (%d since "
                "it began %.0f s ago)",
                self._label,
                self._last,
                fault.unreported,
                now - fault.reported_at,
                fault.failures,
                now - fault.started_at,
            )
            fault.reported_at = now
            fault.unreported = 0

    def recovered(self, now: float, what: str) -> None:
        """``what`` succeeded: report the end of any fault (once)."""
        self._last = None
        if not self._faults:
            return
        failures = sum(fault.failures for fault in self._faults.values())
        began = min(fault.started_at for fault in self._faults.values())
        self._faults.clear()
        self._logger.info(
            "%s: %s works again, after %d failed attempt(s) over %.1f s",
            self._label,
            what,
            failures,
            now - began,
        )
