"""A ``LeaderScheduler`` that kills its whole node at a fault point: the tests' crash injection.

Only the real-process tests name it (``beat_scheduler``); production code never reads these
variables. ``LEADERFEED_TEST_CRASH_AT`` is ``claimed`` (between claim and publish) or
``published`` (between publish and confirm); at the ``LEADERFEED_TEST_CRASH_AFTER``-th time
(default 3) this process reaches that point it SIGKILLs its worker (``worker -B``: the parent)
and exits at once, as a node whose power went off: nothing after the fault point runs.
"""

from __future__ import annotations

import logging
import os
import signal

from celery_leaderfeed.celery.scheduler import LeaderScheduler

_AT = os.environ.get("LEADERFEED_TEST_CRASH_AT")
_AFTER = int(os.environ.get("LEADERFEED_TEST_CRASH_AFTER", "3"))


class CrashingScheduler(LeaderScheduler):
    _reached = 0

    def fault_point(self, where: str, occurrence: str) -> None:
        if where != _AT:
            return
        CrashingScheduler._reached += 1
        if CrashingScheduler._reached >= _AFTER:
            logging.getLogger("celery_leaderfeed.beat").error(
                "crash injected %s %s", where, occurrence
            )
            os.kill(os.getppid(), signal.SIGKILL)
            os._exit(137)
