"""The change feed of the PostgreSQL backend: ``LISTEN`` on a connection of its own."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from ...errors import BackendUnavailable
from ...record import Observation, decode_record
from ..base import FeedEvent, RecordChanged, Subscription

if TYPE_CHECKING:
    from .backend import PostgresBackend

__all__ = ["ListenSubscription", "observation_of_payload"]


def observation_of_payload(payload: str) -> Observation:
    """The record a notification carries (written by this backend, so of the current history)."""
    try:
        return Observation(decode_record(json.loads(payload)))
    except (ValueError, TypeError):
        return Observation(None, corrupt=True)


class ListenSubscription(Subscription):
    """``LISTEN`` on the election's channel, on a connection used for nothing else.

    Liveness: a server that goes away closes the socket and ``poll`` raises at once; a
    connection that is silently gone (a dropped route, a proxy that lost it) is found by a
    ``SELECT 1`` sent after ``ping_every`` seconds without traffic, bounded like every call
    of the backend by ``statement_timeout`` and ``tcp_user_timeout``. Notifications that
    arrive during the ping are kept by psycopg and returned by the next ``notifies()``.
    """

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend
        self._closed = False
        self._ping_every = max(backend.timeout, 0.5)
        self._conn = backend.open_connection()
        try:
            # LISTEN is registered when it returns (autocommit): the engine's read that follows
            # cannot miss a write.
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(backend.channel)))
        except BaseException:
            self._conn.close()
            raise
        self._heard_at = time.monotonic()

    def poll(self, timeout: float) -> list[FeedEvent]:
        if self._closed:
            raise BackendUnavailable("the change feed is closed")
        with self._backend.mapped_errors("change feed"):
            if time.monotonic() - self._heard_at > self._ping_every:
                self._conn.execute("SELECT 1")
                self._heard_at = time.monotonic()
            wait = max(0.0, min(timeout, self._ping_every))
            notes = list(self._conn.notifies(timeout=wait, stop_after=1))
            if notes:
                notes += self._conn.notifies(timeout=0)
                self._heard_at = time.monotonic()
            if self._closed:
                raise BackendUnavailable("the change feed is closed")
            return [
                RecordChanged(observation_of_payload(note.payload))
                for note in notes
                if note.channel == self._backend.channel
            ]

    def close(self) -> None:
        self._closed = True
        conn = self._conn
        if conn.closed:
            return
        with contextlib.suppress(OSError, psycopg.Error):
            # Wakes a poll blocked in another thread; close() alone would pull the socket
            # from under it.
            fd = os.dup(conn.fileno())
            with socket.socket(fileno=fd) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):  # it may be broken already
            conn.close()
