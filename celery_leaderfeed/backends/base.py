"""The base class every backend extends.

A backend stores the leader record and tells members when it changes; it never starts timers
and never decides a role - the engine (:mod:`~celery_leaderfeed.engine.election`) makes every
decision.
This is the original leaderfeed's "Extending" section in Python terms:

================  ==============================================================================
original          here
================  ==============================================================================
``_start``        :meth:`Backend._connect`
``_create``       :meth:`Backend._create` (idempotent, safe when many members start at once)
``_heartbeat``    :meth:`Backend._renew` (compare-and-set on term and token)
``_elect``        :meth:`Backend._claim`, :meth:`Backend._resign` (with a nominee),
                  :meth:`Backend._nominate`
(none)            :meth:`Backend._read` (the record as it is now)
``_subscribe``    :meth:`Backend._subscribe` returning a :class:`Subscription`
``_unsubscribe``  :meth:`Subscription.close`
================  ==============================================================================

Each write is one atomic compare-and-set in the store with the semantics spelled out in
:mod:`celery_leaderfeed.backends.transitions`; the in-memory backend applies those functions
directly and is the reference implementation. The shared contract suite in ``tests/contract``
runs unchanged against every backend.

Subclasses implement the ``_``-prefixed methods (``_configure`` parses options at
construction). The public methods wrap them so that every
driver error listed in :attr:`Backend.connection_errors` reaches the engine as
:class:`~celery_leaderfeed.errors.BackendUnavailable`, with the password hidden - or, when
:meth:`Backend._refusal` recognises one that retrying cannot fix (credentials, TLS, a key of
the wrong type...), as :class:`~celery_leaderfeed.errors.StoreRefused` naming the cause and
the fix.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import BackendUnavailable, ConfigurationError, StoreRefused
from ..record import Observation, WriteResult
from ..urls import redact, redact_url

__all__ = [
    "Backend",
    "DataChanged",
    "FeedEvent",
    "HolderWatch",
    "RecordChanged",
    "Refusal",
    "Subscription",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,199}")


@dataclass(frozen=True, slots=True)
class RecordChanged:
    """The feed saw a new version of the leader record (or its deletion)."""

    observation: Observation


@dataclass(frozen=True, slots=True)
class DataChanged:
    """The feed saw a change to other data it watches (the original's ``change`` event)."""

    change: object


FeedEvent = RecordChanged | DataChanged


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a store refuses us for good, in words for an operator (never with a password)."""

    #: What the store refused, e.g. "the store refused the password for user 'default'".
    cause: str
    #: What to change, e.g. "check the user and password in leaderfeed_backend".
    fix: str


class Subscription(abc.ABC):
    """An open change feed; the engine's feed thread calls :meth:`poll` in a loop."""

    @abc.abstractmethod
    def poll(self, timeout: float) -> list[FeedEvent]:
        """Wait up to ``timeout`` seconds and return what arrived (possibly nothing).

        Raise :class:`~celery_leaderfeed.errors.BackendUnavailable` (or one of the backend's
        ``connection_errors``) once the feed is broken; the engine then reads the record at the
        heartbeat interval and subscribes again with backoff.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the feed. Must be idempotent and must make a blocked :meth:`poll` return."""


class HolderWatch(abc.ABC):
    """Whether the leader's *session* with the store lives, where the store can tell: the
    leader holds a lock that the server drops when its session ends, and followers wait for
    that lock on sessions of their own. Offered by :meth:`Backend.holder_watch` (PostgreSQL's
    ``fast_failover``); most stores have none.

    The engine thread says after each turn what this member is (:meth:`lead`, :meth:`follow`);
    the watch works on a thread of its own and calls the ``report`` it was made with, once per
    term, when it saw the session holding that term's lock end. A report only brings a claim
    forward: a session also ends while its process lives on (terminated by an operator, a
    server restart, a pooler), so it never shortens how long a new leader waits before its
    lease is valid.
    """

    @abc.abstractmethod
    def lead(self, term: int) -> None:
        """This member holds ``term``: hold that term's lock (release any other)."""

    @abc.abstractmethod
    def follow(self, term: int | None) -> None:
        """Another member holds ``term``: wait for its lock to be let go (None: nobody to
        watch - a vacant, missing or doubtful record)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Let go of everything; idempotent, never raises."""


class Backend(abc.ABC):
    """Storage primitives for one election, named ``name``, in the store at ``url``."""

    #: URL schemes served by this backend.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Driver exceptions that mean the store is unreachable or refused the call.
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Options accepted in ``options`` (anything else is a configuration error).
    option_names: ClassVar[frozenset[str]] = frozenset()
    #: False for a store that lives inside one process (``memory://``): members in other
    #: processes (other workers, an embedded beat) cannot see its election.
    shared_across_processes: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        name: str = "default",
        timeout: float = 1.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"election name must be 1-200 characters of letters, digits and _.:@- "
                f"(starting with a letter or digit), got {name!r}"
            )
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigurationError(
                f"timeout must be a positive number of seconds, got {timeout!r}"
            )
        unknown = set(options or ()) - self.option_names
        if unknown:
            allowed = ", ".join(sorted(self.option_names)) or "none"
            raise ConfigurationError(
                f"unknown option(s) for the {type(self).__name__}: {', '.join(sorted(unknown))} "
                f"(allowed: {allowed})"
            )
        self.url = url
        self.name = name
        self.timeout = float(timeout)
        self.options: dict[str, Any] = dict(options or {})
        self._configure()

    def _configure(self) -> None:
        """Read this backend's ``self.options`` and URL; raise ConfigurationError on bad ones.

        Called at construction, before any connection: a backend never connects here (the
        engine connects in its own thread, after a Celery worker's fork).
        """
        return

    @property
    def display_url(self) -> str:
        """The URL with its password hidden: the only form that may be logged."""
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.display_url} name={self.name!r}>"

    def redact(self, text: str) -> str:
        """``text`` (a driver's message, say) without this backend's password in any form."""
        return redact(text, self.url)

    def shown_cause(self, exc: BaseException) -> BaseException | None:
        """``exc`` to chain with ``raise ... from``, or None when a traceback would print a
        password: when its message, or that of an error it chains, shows one."""
        seen: set[int] = set()
        link: BaseException | None = exc
        while link is not None and id(link) not in seen:
            seen.add(id(link))
            if self.redact(str(link)) != str(link):
                return None
            link = link.__cause__ or link.__context__
        return exc

    # -- lifecycle ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Open connections. Called once by ``start()``, in the engine's thread."""
        with self.mapped_errors("connect"):
            self._connect()

    def create(self) -> None:
        """Create what the election needs (tables, collections); safe to race."""
        with self.mapped_errors("create"):
            self._create()

    def close(self) -> None:
        """Release every connection; never raises."""
        try:
            self._close()
        except Exception:
            logger.debug("error while closing %r", self, exc_info=True)

    # -- the leader record -------------------------------------------------------------------

    def read(self) -> Observation:
        """The record as the store holds it now (authoritative)."""
        with self.mapped_errors("read"):
            return self._read()

    def claim(
        self, expected_version: int, holder: str, token: str, *, min_term: int, min_version: int
    ) -> WriteResult:
        """Take the record if its version is still ``expected_version``; raises the term."""
        with self.mapped_errors("claim"):
            return self._claim(expected_version, holder, token, min_term, min_version)

    def renew(self, term: int, token: str) -> WriteResult:
        """Extend our lease if the record still names ``term`` and ``token``."""
        with self.mapped_errors("renew"):
            return self._renew(term, token)

    def resign(self, term: int, token: str, nominee: str | None = None) -> WriteResult:
        """Leave the record vacant (optionally naming who should take over)."""
        with self.mapped_errors("resign"):
            return self._resign(term, token, nominee)

    def nominate(self, expected_version: int, nominee: str) -> WriteResult:
        """Ask for ``nominee`` to lead; the leader (or nobody, if vacant) acts on it."""
        with self.mapped_errors("nominate"):
            return self._nominate(expected_version, nominee)

    def subscribe(self) -> Subscription:
        """Open a feed of record changes (and other data changes, where supported)."""
        with self.mapped_errors("subscribe"):
            return self._subscribe()

    def holder_watch(self, report: Callable[[int], None]) -> HolderWatch | None:
        """A :class:`HolderWatch` calling ``report(term)``, or None: this store has none, or
        it is not enabled. Called by ``start()`` in the engine's thread, after :meth:`connect`;
        raises :class:`~celery_leaderfeed.errors.ConfigurationError` for a set-up it cannot
        work in."""
        del report
        return None

    # -- schedule state (used by the beat scheduler) ----------------------------------------

    def read_entries(self) -> dict[str, str]:
        """Every stored schedule entry state, as the raw strings that were written."""
        with self.mapped_errors("read schedule state"):
            return self._read_entries()

    def write_entry(
        self, term: int, token: str, entry: str, expected: str | None, new: str
    ) -> bool:
        """Replace one entry's state, fenced: only while ``term``/``token`` hold the record
        and only if the entry still holds ``expected`` (None: absent). One atomic step."""
        with self.mapped_errors("write schedule state"):
            return self._write_entry(term, token, entry, expected, new)

    # -- once-only marks (consumer-side deduplication) ----------------------------------------

    def mark_once(self, key: str, value: str, ttl: float) -> str | None:
        """Set ``key`` (in this election's namespace) to ``value`` unless it is set: None when
        this call set it, else the value already there. A mark expires ``ttl`` seconds after it
        was set, by the store's clock. Not fenced: any process may mark. One atomic step."""
        if not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        if "\x00" in key or "\x00" in value:  # PostgreSQL text cannot hold it: none may
            raise ValueError("a mark's key and value cannot contain NUL characters")
        with self.mapped_errors("mark once"):
            return self._mark_once(key, value, ttl)

    def _mark_once(self, key: str, value: str, ttl: float) -> str | None:
        """Backends that support once-only marks override this."""
        raise NotImplementedError(f"{type(self).__name__} keeps no once-only marks")

    # -- error mapping -----------------------------------------------------------------------

    @contextlib.contextmanager
    def mapped_errors(self, operation: str) -> Iterator[None]:
        """Turn this driver's errors into :class:`BackendUnavailable` (or
        :class:`StoreRefused`, see :meth:`_refusal`), password hidden."""
        try:
            yield
        except BackendUnavailable:
            raise
        except self.connection_errors as exc:
            detail = self.redact(f"{type(exc).__name__}: {exc}")
            cause = self.shown_cause(exc)
            refusal = self._refusal(exc, operation)
            if refusal is not None:
                raise self.refused(refusal, f"{operation}: {detail}") from cause
            raise BackendUnavailable(
                f"{operation} failed on {self.display_url}: {detail}"
            ) from cause

    def refused(self, refusal: Refusal, detail: str) -> StoreRefused:
        """The :class:`StoreRefused` for ``refusal``; ``detail`` is the driver's redacted words."""
        return StoreRefused(
            self.redact(f"{refusal.cause} at {self.display_url}: {refusal.fix} ({detail})"),
            cause=refusal.cause,
            fix=refusal.fix,
        )

    def _refusal(self, exc: BaseException, operation: str) -> Refusal | None:
        """A driver error that retrying cannot fix, described; None for one that may heal.

        Backends override this for their driver's permanent errors (credentials, permissions,
        TLS, data of the wrong type). The base class knows none: every error is retried.
        """
        del exc, operation
        return None

    # -- what a backend implements -----------------------------------------------------------

    @abc.abstractmethod
    def _connect(self) -> None: ...

    @abc.abstractmethod
    def _create(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    @abc.abstractmethod
    def _read(self) -> Observation: ...

    @abc.abstractmethod
    def _claim(
        self, expected_version: int, holder: str, token: str, min_term: int, min_version: int
    ) -> WriteResult: ...

    @abc.abstractmethod
    def _renew(self, term: int, token: str) -> WriteResult: ...

    @abc.abstractmethod
    def _resign(self, term: int, token: str, nominee: str | None) -> WriteResult: ...

    @abc.abstractmethod
    def _nominate(self, expected_version: int, nominee: str) -> WriteResult: ...

    @abc.abstractmethod
    def _subscribe(self) -> Subscription: ...

    @abc.abstractmethod
    def _read_entries(self) -> dict[str, str]: ...

    @abc.abstractmethod
    def _write_entry(
        self, term: int, token: str, entry: str, expected: str | None, new: str
    ) -> bool: ...
