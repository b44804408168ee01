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
     "leader_queue_messages": 3}

``leader_queue_messages`` counts the leader-queue messages the worker holds: prefetched and
waiting, or running.

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
from celery.worker.control import inspect_command

from ..urls import redact_url
from .worker_lease import leadership_report

__all__ = ["leaderfeed"]

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
