"""The scheduler's public path: ``beat_scheduler = "celery_leaderfeed.beat:LeaderScheduler"``."""

from __future__ import annotations

from .celery.scheduler import LeaderScheduler

__all__ = ["LeaderScheduler"]
