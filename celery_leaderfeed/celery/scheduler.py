"""``LeaderScheduler``: Celery's in-memory beat scheduler, leader-gated (``-S leaderfeed``).

The entries come from ``beat_schedule``; everything else - the election, the claims, the
misfire policy - is :class:`~celery_leaderfeed.celery.leader_gated.LeaderGatedMixin`'s.
"""

from __future__ import annotations

from ._extras import celery_extra

with celery_extra():
    from celery.beat import Scheduler

from .leader_gated import LeaderGatedMixin

__all__ = ["LeaderScheduler"]


class LeaderScheduler(LeaderGatedMixin, Scheduler):  # type: ignore[misc]  # celery is untyped
    """Beat scheduler that sends ``beat_schedule``'s due entries only while leader.

    It plans what is due, claims each run in its
    :class:`~celery_leaderfeed.celery.ledger.OccurrenceLedger`, then sends it.
    """
