"""Celery app modules for the real-worker tests, configured from environment variables."""
