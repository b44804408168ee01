"""``celery inspect leaderfeed``, and the backend URL as Celery's own commands show it.

``@inspect_command`` registers into Celery's process-global command table, and ``celery
inspect`` refuses names it does not know locally; so ``install(app)`` imports this module, in
the worker and in the process running the CLI alike. That, and the masking below, are this
module's only effects.

Reply of each worker (``WorkerLeadership.report``)::

    {"name": "billing", "member": "w1@host", "status": "started", "role": "leader",
     "leader": "w1@host", "term": 7, "backend": "redis://:***@host:6379/0",
     "lease_age": 0.12, "lease_remaining": 2.85, "leading_for": 341.2, "store_error": None,
     "leader_queue": "billing.leader", "consuming_leader_queue": true,
     "leader_queue_messages": 3, "metrics": {"is_leader": true, "term": 7, ...}}

``leader_queue_messages`` counts the leader-queue messages the worker holds: prefetched and
waiting, or running. ``metrics`` holds the figures its Prometheus endpoint shows (present
without the ``prometheus`` extra too; see :mod:`~celery_leaderfeed.celery.metrics`):
``is_leader``, ``term``, ``lease_remaining_seconds``, ``claims_won``, ``claims_lost``,
``renewals_failed``, ``resubscribes``, ``feed_events``, ``leadership_changes``,
``leader_only_admitted``, ``leader_only_skipped`` and ``beat_entries`` (its embedded beat's, by
entry: ``last_due``, ``sent``, ``missed``, ``coalesced``).

``role`` is ``"standing down"`` (and ``standing_down`` true) while the worker still holds its
lease but admits no leader-only work any more: during a warm shutdown, until its running
leader-only bodies end (it answers from a mailbox of its own then, as Celery's remote control
has stopped), and during an ``elect`` of another worker.

Two control commands carry ``celery leaderfeed elect NODE``; each replies at once -
``{"ok": ..., "leader": ...}`` or ``{"error": ...}`` - and the command watches the store for the
outcome:

``leaderfeed_elect`` (sent to ``NODE`` alone)
    With ``nominate=False``: whether this worker can lead (a live member of the election, not
    shutting down, joined) and who leads. Otherwise it also asks for leadership through the
    engine's transfer (``LeaderFeed.elect``): it nominates itself in the record, the leader's
    engine stops its leader-only work (bounded by one heartbeat) and resigns naming it, and it
    claims at once. Used when no live leader answers.
``leaderfeed_hand_over`` (sent to the leader, ``node=NODE``)
    The leader stops admitting leader-only work and consuming the leader queue, waits for its
    running leader-only bodies while it keeps renewing (up to ``timeout``), then hands over with
    ``LeaderFeed.elect(NODE)``: it resigns naming ``NODE``, who claims at once. If the bodies
    outlast ``timeout``, nothing is written and it leads on.

``celery inspect conf`` and ``celery report`` print the configuration through Celery's
``filter_hidden_settings``, which masks a key holding "backend" with kombu-style URL parsing: a
password in the query string (``?password=``) or one holding an unencoded ``/``, ``?`` or ``#``
passes through it in clear. Celery offers no hook for this, so the same import also makes that
function show ``leaderfeed_backend`` (also Django's ``CELERY_LEADERFEED_BACKEND``) the way this
package shows every URL (:func:`~celery_leaderfeed.urls.redact_url`); every other key is left to
Celery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import celery.app.utils
from celery.utils.serialization import strtobool
from celery.worker.control import control_command, inspect_command

from ..urls import redact_url
from .worker_lease import leadership_report, running_worker

__all__ = ["leaderfeed", "leaderfeed_elect", "leaderfeed_hand_over"]

_SETTING = "leaderfeed_backend"
_CELERY_MASK = "*" * 8  # what Celery puts in place of a secret


@inspect_command()  # type: ignore[untyped-decorator]
def leaderfeed(state: Any, **kwargs: Any) -> dict[str, Any]:
    """Role, leader, term and lease age of this worker's leader election."""
    report = leadership_report(state.app)
    if report is None:
        return {
            "error": "no leaderfeed step runs in this worker (call celery_leaderfeed.install(app))"
        }
    return report


@control_command(  # type: ignore[untyped-decorator]
    args=[("election", str), ("nominate", strtobool)], signature="[election] [nominate=True]"
)
def leaderfeed_elect(
    state: Any, election: str | None = None, nominate: bool = True, **kwargs: Any
) -> dict[str, Any]:
    """Make this worker the leader of its election (the leader hands over first); with
    nominate=False only say whether it can lead, and who leads."""
    worker = running_worker(state.app)
    if worker is None:
        return {
            "error": "no leaderfeed step runs in this worker (call celery_leaderfeed.install(app))"
        }
    return worker.request_leadership(election, nominate=bool(nominate))


@control_command(  # type: ignore[untyped-decorator]
    args=[("node", str), ("election", str), ("timeout", float)],
    signature="<node> [election] [timeout]",
)
def leaderfeed_hand_over(
    state: Any,
    node: str,
    election: str | None = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Hand this worker's leadership to ``node`` once its leader-only tasks have ended."""
    worker = running_worker(state.app)
    if worker is None:
        return {
            "error": "no leaderfeed step runs in this worker (call celery_leaderfeed.install(app))"
        }
    return worker.hand_over_to(node, election, timeout)


def _hiding_backend_urls(
    celery_filter: Callable[[Mapping[Any, Any]], dict[Any, Any]],
) -> Callable[[Mapping[Any, Any]], dict[Any, Any]]:
    def filter_hidden_settings(conf: Mapping[Any, Any]) -> dict[Any, Any]:
        shown = celery_filter(conf)
        for key, value in conf.items():
            if isinstance(key, str) and key.lower().endswith(_SETTING) and isinstance(value, str):
                shown[key] = redact_url(value, mask=_CELERY_MASK)
        return shown

    filter_hidden_settings.hides_leaderfeed_backend = True  # type: ignore[attr-defined]
    return filter_hidden_settings


def _hide_backend_urls_from_celery() -> None:
    # Settings.table() looks the function up in its module at every call; nested mappings
    # (leaderfeed_backend_options) come back through it too.
    current = celery.app.utils.filter_hidden_settings
    if not getattr(current, "hides_leaderfeed_backend", False):
        celery.app.utils.filter_hidden_settings = _hiding_backend_urls(current)


_hide_backend_urls_from_celery()
