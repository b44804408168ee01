"""The beat test app (:mod:`tests.celery_apps.beat_app`) inside the Django project.

``celery -A tests.django_project.celery_app beat -S leaderfeed-django``: Django is set up before
the app loads, as a Django project's ``celery.py`` does.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")
django.setup()

from tests.celery_apps.beat_app import app  # noqa: E402 - after Django is set up

__all__ = ["app"]
