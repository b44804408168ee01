"""Timing options, validated loudly: a bad value raises instead of being silently replaced."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import ConfigurationError

__all__ = ["MIN_INTERVAL", "Timing"]

#: Shortest ``heartbeat_interval`` and ``operation_timeout`` accepted, in seconds. A renewal is a
#: store round trip (a few ms to a store on another host) plus the wait before a Python thread
#: runs again (the GIL hands over every 5 ms, and the OS scheduler adds its own delay on a busy
#: machine); with less than this, renewals overrun the lease and leadership flaps.
MIN_INTERVAL = 0.02
_WHY_FLOOR = "a store round trip plus a Python thread's scheduling delay take several ms"


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"{name} must be a positive, finite number of seconds, got {value!r}"
        )
    return float(value)


def _at_least_floor(name: str, value: object) -> float:
    seconds = _seconds(name, value)
    if seconds < MIN_INTERVAL:
        raise ConfigurationError(
            f"{name} ({seconds:g} s) must be at least {MIN_INTERVAL:g} s: {_WHY_FLOOR}, "
            "so a shorter one makes leadership flap"
        )
    return seconds


@dataclass(frozen=True, slots=True)
class Timing:
    """How often the leader renews and how long followers wait before taking over.

    A follower claims the record once it has seen no change for a random time drawn from
    ``[election_timeout_min, election_timeout_max]``, measured on its own monotonic clock from
    when it saw the last change. The leader stops acting by itself when no renewal has been
    acknowledged for :attr:`lease_duration`, which is shorter than any follower's wait, so the
    old leader has always stopped before a follower's claim can succeed.

    ``heartbeat_interval`` and ``operation_timeout`` must be at least :data:`MIN_INTERVAL`
    (20 ms): below that a renewal cannot reliably finish in time and leadership flaps.
    """

    heartbeat_interval: float = 1.0
    election_timeout_min: float = 3.0
    election_timeout_max: float = 4.0
    #: Bound on every store call; defaults to ``heartbeat_interval``.
    operation_timeout: float | None = None
    #: Fraction by which two machines' monotonic clocks may disagree over one lease.
    clock_drift: float = 0.01
    lease_duration: float = field(init=False)

    def __post_init__(self) -> None:
        heartbeat = _at_least_floor("heartbeat_interval", self.heartbeat_interval)
        low = _seconds("election_timeout_min", self.election_timeout_min)
        high = _seconds("election_timeout_max", self.election_timeout_max)
        if low < 2 * heartbeat:
            raise ConfigurationError(
                f"election_timeout_min ({low:g} s) must be at least twice heartbeat_interval "
                f"({heartbeat:g} s), so a leader can miss a renewal without losing its lease"
            )
        if high <= low:
            raise ConfigurationError(
                f"election_timeout_max ({high:g} s) must be greater than "
                f"election_timeout_min ({low:g} s)"
            )
        timeout = heartbeat if self.operation_timeout is None else self.operation_timeout
        timeout = _at_least_floor("operation_timeout", timeout)
        if timeout > low - heartbeat:
            raise ConfigurationError(
                f"operation_timeout ({timeout:g} s) must not exceed election_timeout_min minus "
                f"heartbeat_interval ({low - heartbeat:g} s), or one hung renewal outlives "
                "the lease"
            )
        drift = self.clock_drift
        if isinstance(drift, bool) or not isinstance(drift, int | float) or not 0 <= drift < 0.5:
            raise ConfigurationError(f"clock_drift must be a fraction in [0, 0.5), got {drift!r}")
        for name, value in (
            ("heartbeat_interval", heartbeat),
            ("election_timeout_min", low),
            ("election_timeout_max", high),
            ("operation_timeout", timeout),
            ("clock_drift", float(drift)),
            ("lease_duration", low * (1 - drift)),
        ):
            object.__setattr__(self, name, value)

    @property
    def timeout(self) -> float:
        """The bound on one store call, in seconds."""
        assert self.operation_timeout is not None  # set in __post_init__
        return self.operation_timeout
