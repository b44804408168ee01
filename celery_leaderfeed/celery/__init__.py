"""The Celery integration: settings, the worker step and its shared lease, ``@leader_only``,
the leader-gated beat scheduler, ``install(app)`` and the ``celery leaderfeed`` commands.

Everything here may import Celery; the engine and the backends never import from here.
"""
