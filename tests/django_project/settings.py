"""Django settings of the test project: the database named by ``LEADERFEED_TEST_DJANGO_DB``."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit


def database(url: str) -> dict[str, Any]:
    """Django's DATABASES entry for a ``sqlite:///PATH`` or ``postgresql://`` URL."""
    if url.startswith("sqlite:///"):
        # Several beat processes share the file: wait for a writer's lock, do not fail at once.
        path = url.removeprefix("sqlite:///")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path, "OPTIONS": {"timeout": 20}}
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": {"connect_timeout": 3},
    }


SECRET_KEY = "leaderfeed-tests-only"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {"default": database(os.environ.get("LEADERFEED_TEST_DJANGO_DB", "sqlite:///:memory:"))}
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
