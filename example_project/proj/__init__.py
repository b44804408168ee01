"""The example Celery project: ``celery -A example_project.proj worker -B``."""

from .celery import app

__all__ = ["app"]
