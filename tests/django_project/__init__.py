"""A small Django project with django-celery-beat, for the leader-gated database scheduler's tests.

Its database comes from ``LEADERFEED_TEST_DJANGO_DB``: ``sqlite:///PATH`` or a PostgreSQL URL
(``postgresql://user@host:port/name``); ``edit`` migrates it and edits its periodic tasks the way
the admin does (model saves, so django-celery-beat's change signal fires).
"""
