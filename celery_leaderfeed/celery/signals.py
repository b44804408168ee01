"""Celery signals sent when this worker gains or loses leadership.

They are sent from the worker's main process, on a thread of the worker step (never on the
election thread, so a slow receiver cannot delay a renewal), in the order the changes happened.
Pool children and the embedded beat process do not send them::

    from celery_leaderfeed.celery.signals import leadership_gained

    @leadership_gained.connect
    def on_gained(sender: str, term: int, leader_id: str, **kwargs: object) -> None:
        ...

``sender`` is the worker's node name (``worker.hostname``, its member id in the election).

* ``leadership_gained(term, leader_id)``: this worker now leads; ``term`` is its fencing token
  and ``leader_id`` its own node name.
* ``leadership_lost(term, leader_id)``: this worker stopped leading ``term`` (lease ran out, a
  newer leader, a handover or the worker stopping); ``leader_id`` is who leads now as far as
  this worker knows (often ``None`` at that moment).
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = ["leadership_gained", "leadership_lost"]

leadership_gained = Signal(name="leadership_gained", providing_args={"term", "leader_id"})
leadership_lost = Signal(name="leadership_lost", providing_args={"term", "leader_id"})
