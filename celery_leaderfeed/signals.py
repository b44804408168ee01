"""The worker's leadership signals at their public path: ``celery_leaderfeed.signals``."""

from __future__ import annotations

from .celery.signals import leadership_gained, leadership_lost

__all__ = ["leadership_gained", "leadership_lost"]
