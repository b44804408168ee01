"""The beat app of :mod:`tests.celery_apps.beat_app` with RedBeat imported beside it.

Importing ``redbeat.schedulers`` connects RedBeat's module-level ``beat_init`` handler, which
reads ``scheduler.lock_key`` in every beat of the process, whichever scheduler it runs: a beat of
this app with the plain ``LeaderScheduler`` (``-S leaderfeed``) must start and send without an
error in its log.
"""

from __future__ import annotations

import redbeat.schedulers  # noqa: F401 - connects RedBeat's beat_init handler

from tests.celery_apps.beat_app import app, pulse

__all__ = ["app", "pulse"]
