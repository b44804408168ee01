"""The worker's lease, shared with its child processes through one small shared-memory segment.

Prefork pool children and the embedded beat process (``celery worker -B``) must know whether
their worker leads without a store round trip per task. The worker's engine thread writes each
lease change (renewals included) into a segment named after the worker's PID; children attach
by their parent's PID, so replacement children and children started with ``spawn`` find it too,
and a child whose worker died (parent PID changed) finds nothing and stops acting at once.
``time.monotonic`` is CLOCK_MONOTONIC, one clock for every process on the machine, so a child
checks the deadline itself: a stalled or killed worker stops extending it.

Readers get the :class:`~celery_leaderfeed.engine.election.Lease` back, and judge it with
``lease.valid(now)`` like any other lease. The worker's main process reads its segment the same
way its children do, so every process of a worker sees one state: while the worker hands over,
the segment already says follower though its feed still renews.

The segment is a small file in ``/dev/shm`` (memory on Linux; the temp directory elsewhere),
memory-mapped by each process. ``multiprocessing.shared_memory`` is not used: before Python
3.13 it registers every attachment with a resource tracker that unlinks the segment when a
child exits, and the embedded beat process has closed the tracker's pipe anyway.

The segment file is also the worker's *admission lock*: a leader-only body runs holding a shared
``flock`` on it, and a worker handing over takes it exclusively, so it resigns exactly when
no admitted body still runs (a process that dies drops its lock with it).

Layout, written under a sequence lock (odd while a write is in progress)::

    seq u64 | writer pid i64 | term i64 | valid from f64 | deadline f64 | acquired at f64 |
    fenced from f64 | role u8 | token 32s | leader len u16 | leader 255s | member len u16 |
    member 255s

(``acquired at`` and ``fenced from`` are NaN when unknown or not set.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..engine.election import Lease, Role

__all__ = ["SharedLease", "segment_name"]

_SEQ = struct.Struct("<Q")
_BODY = struct.Struct("<qqddddB32sH255sH255s")
_SIZE = _SEQ.size + _BODY.size
_PREFIX = "leaderfeed-"
_LINUX_SHM = Path("/dev/shm")  # noqa: S108 - Linux's memory-backed file system, not a temp dir
_SHM_DIR = _LINUX_SHM if _LINUX_SHM.is_dir() else Path(tempfile.gettempdir())


def segment_name(election: str, owner_pid: int) -> str:
    """File name of ``owner_pid``'s lease in ``election`` (the name is hashed to keep it short)."""
    digest = hashlib.blake2s(election.encode(), digest_size=6).hexdigest()
    return f"{_PREFIX}{owner_pid}-{digest}"


def _encode(text: str | None, limit: int) -> bytes:
    return (text or "").encode("utf-8")[:limit]


class SharedLease:
    """A lease segment: the worker creates and writes it, its children attach and read it."""

    def __init__(self, path: Path, memory: mmap.mmap, *, owner: bool) -> None:
        self._path = path
        self._memory = memory
        self._owner = owner
        self._seq = 0
        #: One descriptor per thread for the admission lock: flock conflicts between open file
        #: descriptions, so threads of one process (the threads pool) exclude each other too.
        self._local = threading.local()

    @property
    def name(self) -> str:
        return self._path.name

    @classmethod
    def create(cls, election: str, member_id: str) -> SharedLease:
        """Create this process's segment (before the pool forks), initially follower."""
        _remove_orphans()
        path = _SHM_DIR / segment_name(election, os.getpid())
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by an earlier process that had our PID
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(descriptor, _SIZE)
            memory = mmap.mmap(descriptor, _SIZE)
        finally:
            os.close(descriptor)
        lease = cls(path, memory, owner=True)
        lease.revoke(member_id)
        return lease

    @classmethod
    def attach(cls, election: str, owner_pid: int | None = None) -> SharedLease | None:
        """Attach to the segment of ``owner_pid`` (default: the parent process); None if absent."""
        pid = os.getppid() if owner_pid is None else owner_pid
        path = _SHM_DIR / segment_name(election, pid)
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            memory = mmap.mmap(descriptor, _SIZE, prot=mmap.PROT_READ)
        finally:
            os.close(descriptor)
        return cls(path, memory, owner=False)

    # -- writing (the worker's engine thread) -----------------------------------------------------

    def write(self, lease: Lease) -> None:
        """Publish ``lease`` (with its ``leader_id`` and ``member_id``) to every reader."""
        buffer = self._memory
        if buffer.closed:
            return  # retired: its readers saw the follower lease written before closing
        leader = _encode(lease.leader_id, 255)
        member = _encode(lease.member_id, 255)
        self._seq += 1  # odd: readers retry until the write is complete
        _SEQ.pack_into(buffer, 0, self._seq)
        _BODY.pack_into(
            buffer,
            _SEQ.size,
            os.getpid(),
            lease.term or 0,
            lease.valid_from,
            lease.deadline,
            math.nan if lease.acquired_at is None else lease.acquired_at,
            math.nan if lease.fenced_from is None else lease.fenced_from,
            1 if lease.role is Role.LEADER else 0,
            _encode(lease.token, 32),
            len(leader),
            leader,
            len(member),
            member,
        )
        self._seq += 1
        _SEQ.pack_into(buffer, 0, self._seq)

    def revoke(self, member_id: str) -> None:
        """Mark the worker as follower (before resigning, or when its engine stops)."""
        self.write(Lease(Role.FOLLOWER, member_id=member_id))

    # -- the admission lock --------------------------------------------------------------------

    @contextlib.contextmanager
    def admission(self) -> Iterator[bool]:
        """Hold the shared admission lock: a handover waits until this block ends.

        Yields False, holding nothing, when the segment is gone (its worker stopped): nothing
        may be admitted then.
        """
        try:
            descriptor = self._lock_descriptor()
        except FileNotFoundError:
            yield False
            return
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        try:
            yield True
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)

    def wait_admitted(
        self,
        on_wait: Callable[[], None] | None = None,
        poll: float = 0.01,
        timeout: float | None = None,
    ) -> bool:
        """Return once no process holds the admission lock (the owner, while handing over).

        The caller first marks the lease follower, so whoever takes the lock afterwards reads
        that and leaves at once; the wait is for bodies admitted before. ``on_wait`` is called
        once if there is anything to wait for. With ``timeout``, gives up after that many
        seconds; False then.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        descriptor = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        return False
                    if on_wait is not None:
                        on_wait()
                        on_wait = None
                    time.sleep(poll)  # a sleep Celery's shutdown signals can interrupt
        finally:
            os.close(descriptor)  # drops the lock

    def _lock_descriptor(self) -> int:
        cached: tuple[int, int] | None = getattr(self._local, "descriptor", None)
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        descriptor = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        self._local.descriptor = (os.getpid(), descriptor)
        return descriptor

    # -- reading (any process) ------------------------------------------------------------------

    def read(self, owner_pid: int) -> Lease | None:
        """One consistent reading of the lease, if process ``owner_pid`` wrote it.

        None once this segment is closed, or if another process wrote it: a child passes its
        current parent's PID, so a child whose worker died (its parent PID changed) finds no
        lease even if the segment's name has been reused.
        """
        buffer = self._memory
        if buffer.closed:
            return None
        while True:
            before = _SEQ.unpack_from(buffer, 0)[0]
            fields = _BODY.unpack_from(buffer, _SEQ.size)
            if before % 2 == 0 and _SEQ.unpack_from(buffer, 0)[0] == before:
                break
        writer, term, valid_from, deadline, acquired_at, fenced_from, role, token, *names = fields
        if writer != owner_pid:
            return None
        leader_len, leader, member_len, member = names
        return Lease(
            role=Role.LEADER if role else Role.FOLLOWER,
            term=term or None,
            token=token.rstrip(b"\0").decode("ascii", "replace") or None,
            deadline=deadline,
            acquired_at=None if math.isnan(acquired_at) else acquired_at,
            valid_from=valid_from,
            fenced_from=None if math.isnan(fenced_from) else fenced_from,
            leader_id=leader[:leader_len].decode("utf-8", "replace") or None,
            member_id=member[:member_len].decode("utf-8", "replace") or None,
        )

    def close(self) -> None:
        """Detach; the owner also removes the segment."""
        self._memory.close()
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()


def _remove_orphans() -> None:
    """Unlink segments whose worker died without cleaning up (kill -9)."""
    if not _SHM_DIR.is_dir():
        return
    for path in _SHM_DIR.glob(f"{_PREFIX}*"):
        pid_text = path.name[len(_PREFIX) :].partition("-")[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                path.unlink()
        except PermissionError:
            continue  # alive, owned by someone else
