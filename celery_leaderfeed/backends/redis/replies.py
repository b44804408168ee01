"""Reading Redis replies: text, the record as an :class:`~celery_leaderfeed.Observation`."""

from __future__ import annotations

from ...record import Observation, decode_record

__all__ = ["observation", "text"]


def text(value: object) -> str | None:
    if value is None or value is False:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def observation(raw: object, store_time: float | None, suspect: bool = False) -> Observation:
    """What a script or a feed message says of the record."""
    found = text(raw)
    if found is None:
        return Observation(None, store_time=store_time)
    if found.startswith("type:"):  # the key holds a hash, list, ...: not ours
        return Observation(None, corrupt=True, store_time=store_time)
    try:
        return Observation(decode_record(found), store_time=store_time, suspect=suspect)
    except ValueError:
        return Observation(None, corrupt=True, store_time=store_time)
