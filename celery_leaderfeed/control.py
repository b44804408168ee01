"""``celery inspect leaderfeed``: each worker's role, leader, term and lease age.

``@inspect_command`` registers into Celery's process-global command table, and ``celery
inspect`` refuses names it does not know locally; so ``install(app)`` imports this module, in
the worker and in the process running the CLI alike. Registering is this module's only effect.

Reply of each worker (``WorkerLeadership.report``)::

    {"name": "billing", "member": "w1@host", "status": "started", "role": "leader",
     "leader": "w1@host", "term": 7, "backend": "redis://:***@host:6379/0",
     "lease_age": 0.12, "lease_remaining": 2.85, "leading_for": 341.2}
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import inspect_command

from .bootstep import leadership_report

__all__ = ["leaderfeed"]


@inspect_command()  # type: ignore[untyped-decorator]
def leaderfeed(state: Any, **kwargs: Any) -> dict[str, Any]:
    """Role, leader, term and lease age of this worker's leader election."""
    report = leadership_report(state.app)
    if report is None:
        return {
            "error": "no leaderfeed step runs in this worker (call celery_leaderfeed.install(app))"
        }
    return report
