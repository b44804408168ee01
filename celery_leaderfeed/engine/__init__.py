"""The election engine: the state machine, the thread that drives it, its events and pacing.

Imports neither Celery nor any store driver; the store is reached only through
:class:`~celery_leaderfeed.backends.base.Backend`.
"""
