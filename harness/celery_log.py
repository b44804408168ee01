"""Reading what a Celery process logged: each line's time, level, process and message.

Celery's default format is ``[2026-01-02 03:04:05,678: INFO/MainProcess] message`` in the
machine's local time, to the millisecond.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import NamedTuple

__all__ = ["LogLine", "lines", "logged_at"]

_LINE = re.compile(
    r"^\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): (?P<level>\w+)/(?P<process>[^\]]*)\] "
    r"(?P<message>.*)$",
    re.M,
)


class LogLine(NamedTuple):
    at: datetime  #: local time, naive, as logged
    level: str
    process: str  #: "MainProcess", "Beat", "ForkPoolWorker-1"...
    message: str

    @property
    def wall(self) -> float:
        """``at`` as ``time.time()`` would have said it."""
        return self.at.timestamp()


def logged_at(stamp: str) -> datetime:
    """The time in a line's ``[...]`` prefix (``2026-01-02 03:04:05,678``)."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")


def lines(log: str) -> Iterator[LogLine]:
    """Every line of ``log`` in Celery's format (continuation lines are skipped)."""
    for match in _LINE.finditer(log):
        yield LogLine(logged_at(match["at"]), match["level"], match["process"], match["message"])
