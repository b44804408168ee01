"""Celery signals sent when this worker gains or loses leadership.

They are sent from the worker's main process by a listener on its feed, so on the feed's
listener thread (never on the election thread: a slow receiver cannot delay a renewal), in the
order the changes happened. Pool children and the embedded beat process do not send them::

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

from collections.abc import Callable

from celery.utils.dispatch import Signal

from ..engine.election import Role
from ..engine.feed import LeaderFeed
from ..engine.listeners import Event

__all__ = ["leadership_gained", "leadership_lost", "send_leadership_signals"]

leadership_gained = Signal(name="leadership_gained", providing_args={"term", "leader_id"})
leadership_lost = Signal(name="leadership_lost", providing_args={"term", "leader_id"})


def send_leadership_signals(feed: LeaderFeed) -> Callable[[], None]:
    """Send both signals for ``feed``'s changes of role, ``feed.id`` as the sender.

    Returns the function that stops sending them.
    """
    member = feed.id

    def on_new_state(role: Role, term: int) -> None:
        # Signal.send logs and swallows what a receiver raises.
        if role is Role.LEADER:
            leadership_gained.send(sender=member, term=term, leader_id=member)
        else:
            leader = feed.leader_id
            leader = None if leader == member else leader
            leadership_lost.send(sender=member, term=term, leader_id=leader)

    return feed.on(Event.NEW_STATE, on_new_state)
