"""Exceptions raised by celery-leaderfeed.

Every exception derives from :class:`LeaderfeedError`::

    LeaderfeedError
    ├── ConfigurationError      bad URL, option, setting or missing driver (raised at construction)
    ├── BackendUnavailable      the store could not be reached or did not answer in time
    ├── NotLeaderError          an operation that needs leadership ran on a follower
    └── LeaderfeedTimeout       a wait (start, elect, wait_for_leader) ran out of time

Backends map their driver's errors to :class:`BackendUnavailable` with ``raise ... from exc`` so
the engine never needs to know a driver's exception types.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "ConfigurationError",
    "LeaderfeedError",
    "LeaderfeedTimeout",
    "NotLeaderError",
]


class LeaderfeedError(Exception):
    """Root of every error this package raises."""


class ConfigurationError(LeaderfeedError, ValueError):
    """An option, URL or setting is invalid, or a backend's driver is not installed."""


class BackendUnavailable(LeaderfeedError, ConnectionError):
    """The store could not be reached, refused the operation, or timed out."""


class NotLeaderError(LeaderfeedError):
    """Raised where leadership is required and this member does not hold it."""

    def __init__(self, message: str = "this member is not the leader", *, term: int | None = None):
        super().__init__(message)
        self.term = term


class LeaderfeedTimeout(LeaderfeedError, TimeoutError):
    """A bounded wait ran out before the condition it waited for came true."""
