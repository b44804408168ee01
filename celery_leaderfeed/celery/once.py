"""Consumer-side deduplication of periodic runs: a run published twice is executed once.

The leader-gated beat publishes each run under a deterministic task id, with the headers
``leaderfeed_election``, ``leaderfeed_occurrence`` and a ``leaderfeed_publish_id`` that is new
for every publish attempt (see :mod:`~celery_leaderfeed.celery.leader_gated`). A run is
published a second time only when its first publish was not confirmed: the publish failed, or
the leader died before confirming - and then the first message may have reached the broker.

Right before the body of such a message runs, the worker marks the run once in the store
(``Backend.mark_once``: key ``once:<occurrence>`` in the election's namespace, value the publish
id, kept ``leaderfeed_dedup_window`` seconds):

* no mark yet: this delivery is the first to start - the body runs;
* the same publish id: the broker delivered this very publish again (``acks_late`` after a
  worker was lost, a visibility timeout) - the body runs, as Celery intends;
* another publish id: a duplicate publish of a run that already started - the body does not
  run; one WARNING line, and Celery's ``Ignore`` (the tracer's state ``IGNORED``; nothing is
  stored, so the original's result under the same task id stays).

Where: ``install(app)`` wraps the ``before_start`` of every task of the app once it is
finalized; the tracer calls it inside the ``try`` that handles ``Ignore``, right before the
body (a ``task_prerun`` handler cannot veto a run: Celery logs and swallows its exceptions). A
task's own ``before_start`` still runs, after this check. ``@leader_only`` tasks are checked by
their wrapper instead, once the leader admitted the body: a message that reaches a follower is
sent back to the leader queue unmarked, with the same publish id.

The store unreachable: the body does not run now. The message is published again, unchanged
(same task id, headers and publish id), ``leaderfeed_retry_delay`` seconds later, and this
delivery ends as ``IGNORED`` - so the run is delayed, never run twice: running it unmarked
could repeat a run whose duplicate another worker runs at the same moment, and dropping it
would lose it. A message older than the dedup window (counted from its first mark) whose
duplicate arrives later runs again: the window must outlive any queue backlog.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any, NoReturn

from ._extras import celery_extra

with celery_extra():
    from celery.app.trace import task_has_custom
    from celery.exceptions import Ignore
    from celery.signals import worker_init

from ..backends.base import Backend
from ..errors import BackendUnavailable

__all__ = [
    "ELECTION_HEADER",
    "PUBLISH_ID_HEADER",
    "REPUBLISHED_HEADER",
    "admit_once",
    "install_dedup",
    "once_key",
]

logger = logging.getLogger("celery_leaderfeed")

#: Headers of a periodic run sent by the leader-gated beat (with ``leaderfeed_occurrence``).
ELECTION_HEADER = "leaderfeed_election"
PUBLISH_ID_HEADER = "leaderfeed_publish_id"
REPUBLISHED_HEADER = "leaderfeed_republished"
_OCCURRENCE_HEADER = "leaderfeed_occurrence"
#: Marks a ``before_start`` this module wrapped (so a class is wrapped once).
_WRAPPED = "_leaderfeed_once"

_stores: dict[tuple[int, str, str], Backend] = {}
_stores_lock = threading.Lock()
#: The ``worker_init`` receivers of installed apps (held here: the signal keeps weak references,
#: so an app that is gone leaves only a receiver that does nothing).
_worker_init_handlers: list[Any] = []


def once_key(occurrence: str) -> str:
    """The store key (in the election's namespace) of ``occurrence``'s once-only mark."""
    return f"once:{occurrence}"


def install_dedup(app: Any) -> None:
    """Check every task of ``app`` for duplicate periodic runs (see the module docstring).

    Tasks are wrapped when the app is finalized, and again when a worker of the app has
    imported its task modules (``worker_init``): a worker finalizes the app before it imports
    ``include``/``imports`` modules, whose tasks then register one by one."""
    if app.finalized:
        _wrap_tasks(app)
    app.on_after_finalize.connect(_wrap_tasks, weak=False)
    this_app = weakref.ref(app)

    def on_worker_init(sender: Any = None, **kwargs: Any) -> None:
        if this_app() is not None and getattr(sender, "app", None) is this_app():
            _wrap_tasks(this_app())

    _worker_init_handlers.append(on_worker_init)  # signals hold receivers weakly by default
    worker_init.connect(on_worker_init)


def _wrap_tasks(sender: Any = None, **kwargs: Any) -> None:
    for task in list(sender.tasks.values()):
        if task.name.startswith("celery."):
            continue
        cls = type(task)
        if getattr(getattr(cls, "before_start", None), _WRAPPED, False):
            continue  # wrapped here, or inherits a wrapped one (it checks once)
        own = cls.before_start if task_has_custom(task, "before_start") else None

        def before_start(self: Any, task_id: str, args: Any, kwargs: Any, _own: Any = own) -> None:
            from .leader_queue import LEADER_ONLY_MARK  # noqa: PLC0415 - avoid an import cycle

            if not getattr(self.run, LEADER_ONLY_MARK, False):
                admit_once(self)
            if _own is not None:
                _own(self, task_id, args, kwargs)

        setattr(before_start, _WRAPPED, True)
        cls.before_start = before_start


def _header(request: Any, name: str) -> Any:
    headers = getattr(request, "headers", None) or {}
    return headers.get(name, getattr(request, name, None))


def admit_once(task: Any) -> None:
    """Return if the body of ``task``'s current message may run; raise ``Ignore`` if it is a
    duplicate publish of a periodic run that already started (see the module docstring)."""
    request = getattr(task, "request", None)
    if request is None or request.called_directly or request.is_eager:
        return
    publish_id = _header(request, PUBLISH_ID_HEADER)
    occurrence = _header(request, _OCCURRENCE_HEADER)
    election = _header(request, ELECTION_HEADER)
    if not (
        isinstance(publish_id, str) and isinstance(occurrence, str) and isinstance(election, str)
    ):
        return  # not a periodic run of the leader-gated beat
    from .worker_lease import worker_settings  # noqa: PLC0415 - avoid an import cycle

    settings = worker_settings(task.app)
    if settings is None:
        logger.warning(
            "periodic run %s[%s]: no leaderfeed settings here, so it runs without its "
            "duplicate check",
            occurrence,
            request.id,
        )
        return
    try:
        held = _store(settings, election).mark_once(
            once_key(occurrence), publish_id, settings.dedup_window
        )
    except BackendUnavailable as exc:
        _delay(task, request, occurrence, settings.retry_delay, exc)
    except NotImplementedError as exc:  # a backend that keeps no marks (yet)
        _warn_unsupported(exc)
        return
    if held is None or held == publish_id:
        return
    logger.warning(
        "periodic run %s[%s] not run: a duplicate publish (%s%s) of a run that already started "
        "(publish %s)",
        occurrence,
        request.id,
        publish_id,
        f", republished from term {_header(request, REPUBLISHED_HEADER)}"
        if _header(request, REPUBLISHED_HEADER) is not None
        else "",
        held,
    )
    raise Ignore()


def _delay(task: Any, request: Any, occurrence: str, delay: float, exc: Exception) -> NoReturn:
    """The store is unreachable: publish this message again, unchanged, ``delay`` s later."""
    task.signature_from_request(request, countdown=delay, retries=request.retries).apply_async()
    logger.warning(
        "periodic run %s[%s] delayed %g s: its duplicate check cannot reach the store (%s)",
        occurrence,
        request.id,
        delay,
        exc,
    )
    raise Ignore()


def _warn_unsupported(exc: Exception) -> None:
    global _warned_unsupported  # noqa: PLW0603 - once per process
    if _warned_unsupported != os.getpid():
        _warned_unsupported = os.getpid()
        logger.warning("periodic runs are not checked for duplicates here: %s", exc)


_warned_unsupported: int | None = None


def _store(settings: Any, election: str) -> Backend:
    """One connected backend per process, store and election (opened after a fork)."""
    key = (os.getpid(), settings.backend_url, election)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = settings.store(election)
            store.connect()
            _stores[key] = store
        return store
