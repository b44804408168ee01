"""The Celery layer is an optional extra: say how to install it when its imports fail.

Imports nothing but the standard library, so it works where Celery is missing::

    with celery_extra():
        from celery import current_app
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["CELERY_EXTRA", "celery_extra", "needs_extra"]

#: The packages ``pip install 'celery-leaderfeed[celery]'`` brings (Celery pulls in billiard).
CELERY_EXTRA = frozenset({"celery", "kombu", "click", "billiard"})


@contextlib.contextmanager
def needs_extra(extra: str, packages: frozenset[str], what: str) -> Iterator[None]:
    """Turn a failed import of one of ``packages`` into an error naming the pip ``extra``.

    Any other import error (a broken install, a bug) passes through unchanged.
    """
    try:
        yield
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in packages:
            raise
        raise ImportError(
            f"{what} needs {missing!r}, which cannot be imported ({exc}): "
            f"pip install 'celery-leaderfeed[{extra}]'",
            name=exc.name,
        ) from exc


def celery_extra() -> contextlib.AbstractContextManager[None]:
    """:func:`needs_extra` for the Celery integration."""
    return needs_extra("celery", CELERY_EXTRA, "celery-leaderfeed's Celery integration")
