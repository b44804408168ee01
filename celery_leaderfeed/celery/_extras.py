"""The Celery layer is an optional extra: say how to install it when its imports fail.

Imports nothing but the standard library, so it works where Celery is missing::

    with celery_extra():
        from celery import current_app
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["CELERY_EXTRA", "celery_extra"]

#: The packages ``pip install 'celery-leaderfeed[celery]'`` brings (Celery pulls in billiard).
CELERY_EXTRA = frozenset({"celery", "kombu", "click", "billiard"})


@contextlib.contextmanager
def celery_extra() -> Iterator[None]:
    """Turn a failed import of a package of the extra into an error naming the extra.

    Any other import error (a broken install, a bug) passes through unchanged.
    """
    try:
        yield
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in CELERY_EXTRA:
            raise
        raise ImportError(
            f"celery-leaderfeed's Celery integration needs {missing!r}, which cannot be "
            f"imported ({exc}): pip install 'celery-leaderfeed[celery]'",
            name=exc.name,
        ) from exc
