"""``@leader_only``: a task whose body runs only on the worker that currently leads.

::

    from celery_leaderfeed import leader_only
    from celery_leaderfeed.celery.decorators import current_term

    @app.task
    @leader_only
    def rebuild_index() -> None: ...

    @app.task(bind=True, max_retries=None)
    @leader_only(policy="retry")
    def settle(self, batch: str) -> None:
        ledger.write(batch, fencing_token=current_term())

Put ``@leader_only`` *below* ``@app.task``. Leadership is checked when the body is about to
run - after any prefetch, ETA or countdown wait - from this worker's lease
(:func:`~celery_leaderfeed.celery.worker_lease.current_lease`), which every process of the
worker reads from its shared-memory segment: the main process (solo and thread pools) and
prefork children, under ``fork`` or ``spawn`` and in replacement children alike. No store round
trip per task. A body
runs holding its worker's admission lock (a shared ``flock``), so a worker shutting down
resigns only once its leader-only bodies have ended.

``install(app)`` routes these tasks to the election's leader queue, which only the leading
worker consumes (:mod:`~celery_leaderfeed.celery.leader_queue`), so as a rule a body reaches
only the leader. The check here is the safety net for a message that races a leadership change
(prefetched just before a handover, or taken by a paused leader whose lease ran out). On a
follower the body does not run; what happens is the task's ``policy``, else the
``leaderfeed_follower_policy`` setting:

=========== ====================================================================================
policy      what happens, and what the result backend shows
=========== ====================================================================================
``requeue`` The default: the message goes back to the leader queue for the leader, with the
            same task id, arguments and headers, and the retry count unchanged - not a retry,
            nothing stored. An ``acks_late`` message taken from the leader queue is rejected
            with requeue (the broker puts it back); any other is published again to the leader
            queue and this delivery acknowledged. Use it whenever the work must happen.
``skip``    For work that may be dropped when it lands on a follower (a cache refresh the
            next run redoes). One INFO log line with the reason, then Celery's ``Ignore``:
            the worker stores nothing itself. If the task stores results, its state is
            ``SKIPPED`` (:data:`SKIPPED`) with meta ``{"reason": "not_leader", "worker": ...,
            "leader": ...}``. Celery does not count ``SKIPPED`` as ready:
            ``AsyncResult.get()`` keeps waiting (give it a timeout), a chain stops there and a
            chord with it in its header never completes - use ``raise`` where a caller waits
            for the result. Monitors fed by events (Flower) see no final event.
``retry``   For work that may wait and must give up at some point: ``self.retry(countdown=
            leaderfeed_retry_delay, exc=NotLeaderError(...))``, state ``RETRY``; the message
            goes to the queue it came from (the leader queue, as a rule). ``max_retries``
            applies (default 3; then ``FAILURE`` with the ``NotLeaderError``).
``raise``   For a caller that must learn at once that it reached a non-leader:
            ``NotLeaderError`` is raised, state ``FAILURE``, ``get()`` raises it. Add
            ``throws=(NotLeaderError,)`` to the task to log it without a traceback.
=========== ====================================================================================

A periodic run sent by the leader-gated beat is checked for a duplicate publish once the leader
admitted its body (:mod:`~celery_leaderfeed.celery.once`): a duplicate does not run.

A body that runs reads the term it was admitted under with :func:`current_term` - pass it as a
fencing token to whatever it writes, so the receiver can refuse writes from an older term.
Where no leaderfeed step runs (``install(app)`` not called, or outside a worker) a message a
worker delivered counts as running on a follower, and a warning says so once per process.

A body run *in the caller* - ``task_always_eager``, ``task.apply()``, or a direct call
``task(...)`` - where no worker lease is visible follows ``leaderfeed_eager_policy``, never
silently: ``error`` (the default) raises :class:`~celery_leaderfeed.errors.NotLeaderError`
saying what to do; ``run`` runs the body with :func:`current_term` = :data:`EAGER_TERM`;
``follower`` applies the follower policy (``requeue`` cannot requeue in the caller: it skips,
and an eager result is ``IGNORED``). The pytest plugin (:mod:`celery_leaderfeed.testing`) makes
the test's process leader or follower under a chosen term instead; its lease then decides, as a
worker's would.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ._extras import celery_extra

with celery_extra():
    from celery import current_app
    from celery._state import get_current_task
    from celery.app.task import Task, get_actual_ignore_result
    from celery.backends.base import DisabledBackend
    from celery.exceptions import Ignore, Reject
    from celery.local import Proxy

from ..engine.election import Lease, Role
from ..errors import ConfigurationError, NotLeaderError, UsageError
from .body_counts import count_body
from .leader_queue import LEADER_ONLY_MARK, leader_queue
from .once import admit_once
from .settings import FOLLOWER_POLICIES, FollowerPolicy, eager_policy, leader_queue_name
from .worker_lease import leader_admission, worker_settings

__all__ = ["EAGER_TERM", "SKIPPED", "current_term", "leader_only"]

logger = logging.getLogger("celery_leaderfeed")

#: State stored for a leader-only task skipped on a follower (see the module docstring).
SKIPPED = "SKIPPED"
#: The term :func:`current_term` returns in a body run in the caller under the ``run`` eager
#: policy.
EAGER_TERM = 1

F = TypeVar("F", bound=Callable[..., Any])

_term: contextvars.ContextVar[int | None] = contextvars.ContextVar("leaderfeed_term", default=None)
_warned_pid: int | None = None
#: Countdown of the retry policy where no settings resolve (the default election_timeout_max).
_FALLBACK_RETRY_DELAY = 4.0


def current_term() -> int:
    """The term the running ``@leader_only`` body was admitted under: its fencing token.

    Raises :class:`~celery_leaderfeed.errors.NotLeaderError` outside such a body.
    """
    term = _term.get()
    if term is None:
        raise NotLeaderError("current_term() is only available while a @leader_only body runs")
    return term


@overload
def leader_only(fn: F, /) -> F: ...


@overload
def leader_only(*, policy: FollowerPolicy | None = None) -> Callable[[F], F]: ...


def leader_only(fn: F | None = None, /, *, policy: FollowerPolicy | None = None) -> Any:
    """Run the task body only on the current leader; see the module docstring.

    ``policy`` (``"requeue"``, ``"skip"``, ``"retry"`` or ``"raise"``) overrides the
    ``leaderfeed_follower_policy`` setting for this task.
    """
    if policy is not None and policy not in FOLLOWER_POLICIES:
        raise ConfigurationError(
            f"leader_only policy must be one of {', '.join(FOLLOWER_POLICIES)}; got {policy!r}"
        )
    if fn is None:
        return lambda function: _wrap(function, policy)
    return _wrap(fn, policy)


def _wrap(fn: F, policy: FollowerPolicy | None) -> F:
    if issubclass(type(fn), Proxy) or isinstance(fn, Task):
        raise UsageError("put @leader_only below @app.task (it wraps the task's function)")
    if not callable(fn):
        raise UsageError(f"@leader_only needs a function, got {fn!r}")

    @functools.wraps(fn)
    def leader_only_body(*args: Any, **kwargs: Any) -> Any:
        task = get_current_task()
        app = task.app if task is not None else current_app
        # A leader's body runs under the admission lock, which a worker handing over waits for.
        with leader_admission(app) as lease:
            if lease is not None and lease.term is not None and lease.valid():
                admit_once(task)  # a duplicate publish of a periodic run: Ignore
                count_body(app, admitted=True)
                return _run(fn, lease.term, args, kwargs)
        if lease is not None:
            count_body(app, admitted=False)  # a worker's follower: the metrics' "skipped"
        if lease is None and _in_caller(task) and _eager(task, app, fn) == "run":
            return _run(fn, EAGER_TERM, args, kwargs)
        return _on_follower(task, app, fn, policy, lease)

    # Celery checks call arguments against the signature it reads from the task function.
    leader_only_body.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    setattr(leader_only_body, LEADER_ONLY_MARK, True)  # routed to the leader queue
    return leader_only_body  # type: ignore[return-value]


def _run(fn: Callable[..., Any], term: int, args: Any, kwargs: Any) -> Any:
    token = _term.set(term)
    try:
        return fn(*args, **kwargs)
    finally:
        _term.reset(token)


def _in_caller(task: Any) -> bool:
    """True for a body run by its caller (eager, ``apply()``, a direct call), not a worker."""
    request = task.request if task is not None else None
    return request is None or bool(request.called_directly or request.is_eager)


def _eager(task: Any, app: Any, fn: Callable[..., Any]) -> str:
    """The eager policy of ``app`` (``run`` or ``follower``); raises for ``error``."""
    chosen = eager_policy(app)
    if chosen == "error":
        name = task.name if task is not None else fn.__qualname__
        raise NotLeaderError(
            f"leader-only task {name} ran in the caller (task_always_eager, apply() or a "
            "direct call) where no worker leads, so its body would not run: set "
            "leaderfeed_eager_policy = 'run' to run it (current_term() is 1) or 'follower' "
            "to treat the caller as a follower, or make the test's process leader or follower "
            "with the celery_leaderfeed pytest fixtures (leaderfeed_leader, leaderfeed_follower)"
        )
    return chosen


def _on_follower(
    task: Any,
    app: Any,
    fn: Callable[..., Any],
    policy: FollowerPolicy | None,
    lease: Lease | None,
) -> Any:
    settings = worker_settings(app)
    chosen = policy or (settings.follower_policy if settings is not None else "requeue")
    request = task.request if task is not None else None
    worker = lease.member_id if lease is not None else getattr(request, "hostname", None)
    leader = lease.leader_id if lease is not None else None
    term = lease.term if lease is not None else None
    if lease is None:
        _warn_no_step()
    name = task.name if task is not None else fn.__qualname__
    task_id = getattr(request, "id", None)
    if lease is not None and lease.role is Role.LEADER:  # claimed but not (or no longer) valid
        reason = f"{worker} may not act on its lease of term {term} now"
    else:
        reason = f"{worker or 'this process'} is not the leader (leader: {leader or 'unknown'})"

    if chosen == "raise" or (chosen == "retry" and task is None):
        raise NotLeaderError(f"leader-only task {name}: {reason}", term=term)
    if (
        chosen == "requeue"
        and task is not None
        and request is not None
        and not request.called_directly
        and not request.is_eager
    ):
        _requeue(task, app, request, name, task_id, reason)
    if chosen == "retry":
        delay = settings.retry_delay if settings is not None else _FALLBACK_RETRY_DELAY
        logger.info("leader-only task %s[%s]: %s; retrying in %g s", name, task_id, reason, delay)
        raise task.retry(
            countdown=delay, exc=NotLeaderError(f"leader-only task {name}: {reason}", term=term)
        )

    logger.info("leader-only task %s[%s] skipped: %s", name, task_id, reason)
    if task is None or request is None or request.called_directly:
        return None  # a plain function call: nothing to record, nothing to ignore
    if _stores_result(task, request):
        meta = {"reason": "not_leader", "worker": worker, "leader": leader}
        try:
            task.update_state(state=SKIPPED, meta=meta)
        except Exception as exc:  # noqa: BLE001 - a flaky result backend must not fail a skip
            logger.warning(
                "leader-only task %s[%s]: could not store SKIPPED: %r", name, task_id, exc
            )
    raise Ignore()


def _requeue(task: Any, app: Any, request: Any, name: str, task_id: Any, reason: str) -> None:
    """Send this delivery back to the leader queue (the ``requeue`` policy); always raises."""
    queue = leader_queue_name(app)
    info = request.delivery_info or {}
    if task.acks_late and info.get("routing_key") == queue:
        logger.info(
            "leader-only task %s[%s]: %s; rejected back to %s", name, task_id, reason, queue
        )
        raise Reject(reason, requeue=True)
    # Acknowledged already (acks early), or it came from another queue: publish it again,
    # same id, arguments, headers and retry count; this delivery is then acknowledged.
    task.signature_from_request(
        request, queue=leader_queue(app), retries=request.retries
    ).apply_async()
    logger.info("leader-only task %s[%s]: %s; sent back to %s", name, task_id, reason, queue)
    raise Ignore()


def _stores_result(task: Any, request: Any) -> bool:
    return bool(
        request.id
        and not request.is_eager
        and not get_actual_ignore_result(task, request)
        and not isinstance(task.backend, DisabledBackend)
    )


def _warn_no_step() -> None:
    global _warned_pid  # noqa: PLW0603 - once per process
    if _warned_pid != os.getpid():
        _warned_pid = os.getpid()
        logger.warning(
            "a leader-only task ran where no worker lease is visible (celery_leaderfeed"
            ".install(app) not called for this worker, or the worker is gone); treating this "
            "process as a follower"
        )
