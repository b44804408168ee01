"""How many ``@leader_only`` bodies a worker admitted and skipped, counted across its processes.

A prefork worker runs bodies in child processes, which come and go (``max_tasks_per_child``,
a killed child replaced), so the counts cannot live in any one of them. They live in a file of
two unsigned 64-bit counters beside the worker's lease segment
(:mod:`~celery_leaderfeed.celery.shared_lease`), created by the worker before its pool forks
and found by a child the same way as the lease: by its parent's PID and the election's name.
An increment is a read-modify-write under a POSIX record lock on the counter's 8 bytes (and a
thread lock, as record locks do not exclude threads of one process): a few microseconds per
body, next to the ~30 us the admission check costs. A count survives the child that made it,
and the file goes away with its worker (the lease segment's orphan sweep removes it after a
``kill -9``: its name starts with the segment's).

Why not ``prometheus_client``'s multiprocess mode: it must be switched on by an environment
variable before anything imports ``prometheus_client`` in every process, which changes how
the application's own metrics in those processes are collected; it needs a directory wiped at
every worker start and a file per child PID that piles up as children are replaced; and it
makes every child import ``prometheus_client`` on the task path. This file needs nothing in the
children, and ``celery inspect leaderfeed`` shows the same counts without the extra installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

from .shared_lease import _SHM_DIR, segment_name
from .worker_lease import ELECTION_ENV, running_worker

__all__ = ["ADMITTED", "SKIPPED", "BodyCounts", "count_body"]

#: Counter indexes.
ADMITTED = 0
SKIPPED = 1
_COUNTER = struct.Struct("<Q")
_SIZE = 2 * _COUNTER.size
_SUFFIX = ".bodies"
#: How long a process that found no counter file waits before looking again.
_ATTACH_RETRY_SECONDS = 1.0


def counts_path(election: str, owner_pid: int) -> Path:
    return _SHM_DIR / f"{segment_name(election, owner_pid)}{_SUFFIX}"


class BodyCounts:
    """The counter file of one worker: the worker creates it, every process of it adds."""

    def __init__(self, path: Path, descriptor: int, *, owner: bool) -> None:
        self._path = path
        self._descriptor = descriptor
        self._memory = mmap.mmap(descriptor, _SIZE)
        self._owner = owner
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @classmethod
    def create(cls, election: str) -> BodyCounts:
        """This worker's counters at zero (before the pool forks)."""
        path = counts_path(election, os.getpid())
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by an earlier process that had our PID
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(descriptor, _SIZE)
        return cls(path, descriptor, owner=True)

    @classmethod
    def attach(cls, election: str, owner_pid: int) -> BodyCounts | None:
        """The counters of the worker ``owner_pid`` (None: it has none, or is gone)."""
        try:
            descriptor = os.open(counts_path(election, owner_pid), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return cls(counts_path(election, owner_pid), descriptor, owner=False)

    def add(self, index: int) -> None:
        """Add one to counter ``index`` (``ADMITTED`` or ``SKIPPED``)."""
        if self._memory.closed:
            return
        offset = index * _COUNTER.size
        with self._lock:
            fcntl.lockf(self._descriptor, fcntl.LOCK_EX, _COUNTER.size, offset)
            try:
                (value,) = _COUNTER.unpack_from(self._memory, offset)
                _COUNTER.pack_into(self._memory, offset, value + 1)
            finally:
                fcntl.lockf(self._descriptor, fcntl.LOCK_UN, _COUNTER.size, offset)

    def read(self) -> tuple[int, int]:
        """(admitted, skipped) so far, by every process of the worker."""
        if self._memory.closed:
            return 0, 0
        with self._lock:
            fcntl.lockf(self._descriptor, fcntl.LOCK_SH, _SIZE, 0)
            try:
                admitted, skipped = struct.unpack_from("<QQ", self._memory, 0)
            finally:
                fcntl.lockf(self._descriptor, fcntl.LOCK_UN, _SIZE, 0)
        return int(admitted), int(skipped)

    def close(self) -> None:
        """Detach; the owner also removes the file."""
        if self._memory.closed:
            return
        self._memory.close()
        os.close(self._descriptor)
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()


#: Counter files this process attached to, by (our PID, parent PID, election).
_attached: dict[tuple[int, int, str], BodyCounts] = {}
_absent_until: dict[tuple[int, int, str], float] = {}
_attach_lock = threading.Lock()


def _parent_counts(election: str) -> BodyCounts | None:
    key = (os.getpid(), os.getppid(), election)
    with _attach_lock:
        counts = _attached.get(key)
        if counts is not None:
            return counts
        now = time.monotonic()
        if now < _absent_until.get(key, -1.0):
            return None
        counts = BodyCounts.attach(election, key[1])
        if counts is None:
            _absent_until[key] = now + _ATTACH_RETRY_SECONDS
            return None
        _absent_until.pop(key, None)
        _attached[key] = counts
        return counts


def count_body(app: Any, *, admitted: bool) -> None:
    """Count one ``@leader_only`` body of ``app`` as admitted or skipped, for the worker of this
    process: its own counters in the worker's main process (solo and thread pools), its
    parent's in a prefork child. Nothing where neither exists (no worker step, an eager run)."""
    worker = running_worker(app)
    counts: BodyCounts | None = getattr(worker, "body_counts", None)
    if counts is None and worker is None:
        election = os.environ.get(ELECTION_ENV)
        counts = _parent_counts(election) if election else None
    if counts is not None:
        counts.add(ADMITTED if admitted else SKIPPED)
