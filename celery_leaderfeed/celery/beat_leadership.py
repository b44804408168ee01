"""Where a leader-gated beat's leadership comes from, as one :class:`Lease` per look.

* ``celery worker -B`` beside the worker step: the beat child follows its worker's lease,
  read from the worker's shared-memory segment (:class:`WorkerElection`);
* a standalone ``celery beat`` (or ``-B`` without the step): an election of its own, in
  ``leaderfeed_beat_name`` (:class:`OwnElection`).

A scheduler acts only on a leader's lease that is ``valid(now)`` and fences every claim with
its term and token (:func:`fence`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

from ..engine.election import Lease, Role
from ..engine.feed import LeaderFeed
from ..urls import redact_url
from .metrics import BeatMetrics
from .settings import LeaderfeedSettings, unknown_settings
from .worker_lease import current_lease

__all__ = ["Leadership", "OwnElection", "WorkerElection", "choose_leadership", "fence", "leading"]

logger = logging.getLogger("celery_leaderfeed.beat")


class Leadership(Protocol):
    """Where a scheduler's leadership comes from."""

    #: The election whose leader record fences the schedule state.
    election: str

    def start(self) -> None: ...

    def lease(self) -> Lease | None:
        """The current leader's lease, its term, token and ``member_id`` (the sender) set; None
        while following. The scheduler checks ``lease.valid(now)`` before it acts."""

    def close(self) -> None: ...


def leading(lease: Lease | None) -> Lease | None:
    """``lease`` if it is a leader's that can fence claims (it names a term and token)."""
    if lease is None or lease.role is not Role.LEADER or lease.term is None or not lease.token:
        return None
    return lease


def fence(lease: Lease) -> tuple[int, str]:
    """The term and token the store compares before it applies a claim under ``lease``."""
    assert lease.term is not None and lease.token is not None, "only a leader's lease fences"
    return lease.term, lease.token


class OwnElection:
    """Standalone beat: its own LeaderFeed (resigns on close so another beat takes over), and
    its metrics endpoint if ``metrics_port`` is set."""

    def __init__(self, feed: LeaderFeed, metrics_port: int | None = None) -> None:
        self.feed = feed
        self.election = feed.name
        self.metrics = None if metrics_port is None else BeatMetrics(feed, metrics_port)

    def start(self) -> None:
        if self.metrics is not None:
            self.metrics.start()
        self.feed.start(retry=True)

    def lease(self) -> Lease | None:
        lease = leading(self.feed.lease)
        return None if lease is None else dataclasses.replace(lease, member_id=self.feed.id)

    def close(self) -> None:
        try:
            self.feed.stop()
        finally:
            if self.metrics is not None:
                self.metrics.stop()


class WorkerElection:
    """Embedded beat of a worker with the LeaderFeedStep: follows the worker's shared lease."""

    def __init__(self, election: str, read: Callable[[], Lease | None]) -> None:
        self.election = election
        self._read = read

    def start(self) -> None:
        pass

    def lease(self) -> Lease | None:
        return leading(self._read())

    def close(self) -> None:
        pass


def choose_leadership(app: Any, settings: LeaderfeedSettings) -> Leadership:
    """The worker's lease when this beat runs beside a worker's step, else an election of its
    own."""
    if current_lease(app) is not None:
        # Its worker warned about the settings.
        return WorkerElection(settings.name, functools.partial(current_lease, app))
    _warn_about_settings(app, settings)
    member = f"beat@{socket.gethostname()}:{os.getpid()}"
    feed = settings.feed(member, election=settings.beat_name)
    return OwnElection(feed, settings.metrics_port)


def _warn_about_settings(app: Any, settings: LeaderfeedSettings) -> None:
    """Once, as a beat that elects on its own starts: keys no setting reads, a private store."""
    for warning in unknown_settings(app):
        logger.warning("leaderfeed: %s", warning)
    if not settings.shared_across_processes:
        logger.warning(
            "leaderfeed: leaderfeed_backend %s keeps this beat's election inside its process: "
            "another beat cannot see it and would send every run too (fine for one beat or "
            "tests)",
            redact_url(settings.backend_url),
        )
