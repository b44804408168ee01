"""Exceptions raised by celery-leaderfeed.

Every exception derives from :class:`LeaderfeedError`::

    LeaderfeedError
    ├── ConfigurationError      bad URL, option, setting or missing driver (raised at construction)
    ├── UsageError              the API was used the wrong way (also a TypeError)
    ├── BackendUnavailable      the store could not be reached or did not answer in time
    │   └── StoreRefused        the store answered but refuses us; retrying alone cannot fix it
    ├── InvalidRecord           the store holds something that is not a leader record of ours
    ├── ScheduleError           a beat schedule cannot name its next run (celery.occurrences)
    ├── CorruptState            a stored schedule state is not one we wrote (celery.occurrences)
    ├── NotLeaderError          an operation that needs leadership ran on a follower
    └── LeaderfeedTimeout       a wait (start, elect, wait_for_leader) ran out of time

Outside the tree on purpose: the plain ``ImportError`` naming the extra to install when the
Celery layer is imported without Celery, and Python's and Celery's own protocol exceptions
(``AttributeError`` from the package's lazy ``__getattr__``, a task's ``Retry``/``Ignore``).

Backends map their driver's errors to :class:`BackendUnavailable` with ``raise ... from exc`` so
the engine never needs to know a driver's exception types. Errors that may heal by themselves (a
server restarting, a network blip, a timeout) stay :class:`BackendUnavailable`: the engine logs a
WARNING and retries with backoff. Errors that only a change of configuration or data can fix (a
password or user refused, a TLS mismatch, a key of the wrong type, an unknown database) are
:class:`StoreRefused`, which says what is wrong and how to fix it: the engine logs an ERROR at a
bounded rate and keeps retrying slowly, so a fix made in the store takes effect without a restart.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "ConfigurationError",
    "InvalidRecord",
    "LeaderfeedError",
    "LeaderfeedTimeout",
    "NotLeaderError",
    "StoreRefused",
    "UsageError",
]


class LeaderfeedError(Exception):
    """Root of every error this package raises."""


class ConfigurationError(LeaderfeedError, ValueError):
    """An option, URL or setting is invalid, or a backend's driver is not installed."""


class UsageError(LeaderfeedError, TypeError):
    """The API was used the wrong way, e.g. ``@leader_only`` put above ``@app.task``."""


class BackendUnavailable(LeaderfeedError, ConnectionError):
    """The store could not be reached, refused the operation, or timed out."""


class StoreRefused(BackendUnavailable):
    """The store answered, but refuses this client in a way retrying cannot change.

    ``cause`` says what the store refused (never a password), ``fix`` what to change; the
    message carries both, the store's redacted URL and the driver's own words.
    """

    def __init__(self, message: str, *, cause: str, fix: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.fix = fix


class InvalidRecord(LeaderfeedError, ValueError):
    """What the store holds for an election is not a leader record of ours (the message says
    why). Backends read it as no leader, and a claim replaces it."""


class NotLeaderError(LeaderfeedError):
    """Raised where leadership is required and this member does not hold it."""

    def __init__(self, message: str = "this member is not the leader", *, term: int | None = None):
        super().__init__(message)
        self.term = term


class LeaderfeedTimeout(LeaderfeedError, TimeoutError):
    """A bounded wait ran out before the condition it waited for came true."""
