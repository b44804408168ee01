"""Prometheus metrics of a worker or a standalone beat (extra ``prometheus``).

``leaderfeed_metrics_port`` (or ``--leaderfeed-metrics-port`` of ``celery worker`` and ``celery
beat``) serves ``/metrics`` on that port, on every interface, from a registry of its own (only
these metrics; the application's own ``prometheus_client`` metrics are left alone). A port in
use is one warning, and the process runs on without metrics; the setting without
``prometheus_client`` installed stops the worker or beat at start with one line naming the extra.
An embedded beat (``worker -B``) serves nothing itself: its worker's endpoint shows its entries.

Nothing runs between scrapes: each scrape reads the figures where they already are - the
feed's counters (:class:`~celery_leaderfeed.engine.election.Stats`), the lease the worker's
processes share, the ``@leader_only`` counts every process of the worker adds to
(:mod:`~celery_leaderfeed.celery.body_counts`), and what this process's (or the embedded beat
process's) scheduler recorded of its entries. ``celery inspect leaderfeed`` shows the same
figures under ``"metrics"``.

Per member (labels ``election``, ``member``)::

    leaderfeed_is_leader                       gauge    1 while this member may act as leader
    leaderfeed_term                            gauge    the term it holds, else the last one seen
    leaderfeed_lease_remaining_seconds         gauge    until its lease ends unless renewed
    leaderfeed_claims_won_total                counter  claims the store accepted (terms begun)
    leaderfeed_claims_lost_total               counter  claims refused or failed
    leaderfeed_renewals_failed_total           counter  renewals refused or failed
    leaderfeed_resubscribes_total              counter  change feeds lost or dropped as deaf
    leaderfeed_feed_events_total               counter  events the change feed delivered
    leaderfeed_leadership_changes_total        counter  new terms this member saw begin
    leaderfeed_leader_only_admitted_total      counter  @leader_only bodies run (worker only)
    leaderfeed_leader_only_skipped_total       counter  ... not run: not the leader (worker only)

Per beat entry (labels ``election``, ``member``, ``entry``), of the runs this beat handled::

    leaderfeed_beat_last_due_timestamp_seconds gauge    nominal due time of the last claimed run
    leaderfeed_beat_runs_sent_total            counter  runs sent
    leaderfeed_beat_runs_missed_total          counter  runs missed in a gap and not sent (skip)
    leaderfeed_beat_runs_coalesced_total       counter  missed runs a send stood for (run_once)
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from ..engine.election import Lease
from ..engine.feed import LeaderFeed
from ..errors import ConfigurationError
from .body_counts import BodyCounts
from .occurrences import PlannedRun
from .shared_lease import _SHM_DIR, SharedLease, segment_name

__all__ = [
    "BeatMetrics",
    "LeadershipChanges",
    "MetricsEndpoint",
    "WorkerMetrics",
    "record_beat_run",
]

logger = logging.getLogger("celery_leaderfeed")

Figures = dict[str, Any]

#: (figure, metric name without ``_total``, type, help) of each member figure.
_MEMBER = (
    ("is_leader", "leaderfeed_is_leader", "gauge", "1 while this member may act as leader"),
    ("term", "leaderfeed_term", "gauge", "Term this member holds, else the last one it saw"),
    (
        "lease_remaining_seconds",
        "leaderfeed_lease_remaining_seconds",
        "gauge",
        "Seconds until this member's lease ends unless renewed (0 when not leading)",
    ),
    ("claims_won", "leaderfeed_claims_won", "counter", "Claims the store accepted"),
    ("claims_lost", "leaderfeed_claims_lost", "counter", "Claims the store refused, or failed"),
    ("renewals_failed", "leaderfeed_renewals_failed", "counter", "Renewals refused or failed"),
    ("resubscribes", "leaderfeed_resubscribes", "counter", "Change feeds lost or dropped as deaf"),
    ("feed_events", "leaderfeed_feed_events", "counter", "Events the change feed delivered"),
    (
        "leadership_changes",
        "leaderfeed_leadership_changes",
        "counter",
        "New terms this member saw begin (a leader elected, or re-elected after a lapse)",
    ),
    (
        "leader_only_admitted",
        "leaderfeed_leader_only_admitted",
        "counter",
        "@leader_only bodies run by this worker's processes",
    ),
    (
        "leader_only_skipped",
        "leaderfeed_leader_only_skipped",
        "counter",
        "@leader_only bodies not run by this worker's processes: not the leader",
    ),
)
#: The same, per beat entry.
_ENTRY = (
    (
        "last_due",
        "leaderfeed_beat_last_due_timestamp_seconds",
        "gauge",
        "Nominal due time (Unix seconds) of the entry's last run this beat claimed",
    ),
    ("sent", "leaderfeed_beat_runs_sent", "counter", "Runs of the entry this beat sent"),
    (
        "missed",
        "leaderfeed_beat_runs_missed",
        "counter",
        "Runs of the entry missed in a failover gap and not sent (misfire policy skip)",
    ),
    (
        "coalesced",
        "leaderfeed_beat_runs_coalesced",
        "counter",
        "Missed runs of the entry a send stood for (misfire policy run_once)",
    ),
)


# -- figures --------------------------------------------------------------------------------------


class LeadershipChanges:
    """Feed observer counting the new terms its member sees begin (engine thread)."""

    def __init__(self) -> None:
        self.count = 0
        self._term: int | None = None

    def __call__(self, feed: LeaderFeed) -> None:
        known = feed.known
        record = known.record if known is not None else None
        term = record.term if record is not None else None
        if term is None or term == self._term:
            return
        if self._term is not None:
            self.count += 1
        self._term = term


def member_figures(feed: LeaderFeed, lease: Lease | None, changes: LeadershipChanges) -> Figures:
    """What one member's metrics show: ``lease`` is the one its processes act on."""
    now = time.monotonic()
    leading = lease is not None and lease.valid(now)
    stats = feed.stats
    return {
        "is_leader": leading,
        "term": feed.term,
        "lease_remaining_seconds": round(max(0.0, lease.deadline - now), 3)
        if lease is not None and leading
        else 0.0,
        "claims_won": stats.claims_won,
        "claims_lost": stats.claims - stats.claims_won,
        "renewals_failed": stats.renewals_failed,
        "resubscribes": stats.resubscribes,
        "feed_events": stats.feed_events,
        "leadership_changes": changes.count,
    }


class BeatEntries:
    """What one beat process recorded of its entries' runs, across its terms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, float | int]] = {}

    def record(self, name: str, run: PlannedRun) -> None:
        with self._lock:
            entry = self._entries.setdefault(
                name, {"last_due": 0.0, "sent": 0, "missed": 0, "coalesced": 0}
            )
            entry["last_due"] = run.advance_to.timestamp()
            entry["sent"] += 1 if run.send is not None else 0
            entry["missed"] += run.skipped
            entry["coalesced"] += run.coalesced_count

    def figures(self) -> dict[str, dict[str, float | int]]:
        with self._lock:
            return {name: dict(entry) for name, entry in self._entries.items()}


#: This process's beat entries, by election (a beat process runs one scheduler).
_beat_entries: dict[str, BeatEntries] = {}


class _LeadershipSource(Protocol):
    election: str


def record_beat_run(leadership: _LeadershipSource | None, name: str, run: PlannedRun) -> None:
    """Record a run the beat claimed (``LeaderGatedMixin._report``). An embedded beat also
    leaves its entries where its worker's endpoint reads them."""
    if leadership is None:
        return
    entries = _beat_entries.setdefault(leadership.election, BeatEntries())
    entries.record(name, run)
    if not hasattr(leadership, "feed"):  # WorkerElection: the worker that forked us shows them
        _write_entries(_entries_path(leadership.election, os.getppid()), entries.figures())


def _entries_path(election: str, worker_pid: int) -> Path:
    return _SHM_DIR / f"{segment_name(election, worker_pid)}.beat"


def _write_entries(path: Path, figures: dict[str, dict[str, float | int]]) -> None:
    spare = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        spare.write_text(json.dumps(figures))
        spare.replace(path)  # a reader sees the old file or the new one, never half
    except OSError as exc:
        logger.debug("leaderfeed: beat metrics not written: %r", exc)


def _read_entries(path: Path) -> dict[str, dict[str, float | int]]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


# -- the endpoint ---------------------------------------------------------------------------------


class MetricsEndpoint:
    """``/metrics`` on ``port``, rendering ``figures()`` (labels ``election``, ``member``)."""

    def __init__(self, port: int, figures: Callable[[], Figures]) -> None:
        try:
            import prometheus_client  # noqa: F401, PLC0415 - optional extra
        except ImportError:
            raise ConfigurationError(
                f"leaderfeed_metrics_port is {port} but prometheus_client is not installed: "
                "pip install 'celery-leaderfeed[prometheus]'"
            ) from None
        self.port = port
        self._figures = figures
        self._server: Any = None

    def start(self) -> bool:
        """Serve; on a port in use (or any socket error) warn once and serve nothing."""
        from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self._figures))
        try:
            self._server, _ = start_http_server(self.port, registry=registry)
        except OSError as exc:
            logger.warning(
                "leaderfeed: cannot serve metrics on port %d (%s); running without metrics",
                self.port,
                exc.strerror or exc,
            )
            return False
        # A process forked later (a replacement pool child) must not keep the port open.
        os.register_at_fork(after_in_child=functools.partial(_close_in_child, weakref.ref(self)))
        logger.info("leaderfeed: Prometheus metrics on port %d (/metrics)", self.port)
        return True

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def _close_in_child(endpoint: weakref.ref[MetricsEndpoint]) -> None:
    found = endpoint()
    if found is not None and found._server is not None:
        found._server.socket.close()  # the parent's socket: only this process's copy closes
        found._server = None


class _Collector:
    """Turns the figures into metric families at each scrape."""

    def __init__(self, figures: Callable[[], Figures]) -> None:
        self._figures = figures

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration: the registry is ours alone

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (  # noqa: PLC0415 - optional extra
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        figures = self._figures()
        labels = [figures["election"], figures["member"]]
        kinds = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}
        for key, name, kind, text in _MEMBER:
            value = figures.get(key)
            if value is None:
                continue
            family = kinds[kind](name, text, labels=["election", "member"])
            family.add_metric(labels, float(value))
            yield family
        entries: dict[str, dict[str, float | int]] = figures.get("beat_entries") or {}
        for key, name, kind, text in _ENTRY:
            family = kinds[kind](name, text, labels=["election", "member", "entry"])
            for entry, values in sorted(entries.items()):
                family.add_metric([*labels, entry], float(values.get(key, 0)))
            yield family


# -- what a worker and a standalone beat serve ----------------------------------------------------


class _WorkerSide(Protocol):
    """What :class:`WorkerMetrics` reads of the worker step (``bootstep.WorkerLeadership``)."""

    @property
    def hostname(self) -> str: ...

    @property
    def owner_pid(self) -> int: ...

    @property
    def feed(self) -> LeaderFeed: ...

    @property
    def shared(self) -> SharedLease: ...

    @property
    def body_counts(self) -> BodyCounts: ...


class WorkerMetrics:
    """A worker's figures, and its endpoint when ``metrics_port`` is set (created with the
    step, before the pool forks; served from :meth:`start`, after it forked)."""

    def __init__(self, worker: _WorkerSide, election: str, port: int | None) -> None:
        self._worker = worker
        self._election = election
        self._changes = LeadershipChanges()
        worker.feed.add_observer(self._changes)
        self._endpoint = None if port is None else MetricsEndpoint(port, self.figures)

    def start(self) -> None:
        if self._endpoint is not None:
            self._endpoint.start()

    def stop(self) -> None:
        if self._endpoint is not None:
            self._endpoint.stop()
        with contextlib.suppress(FileNotFoundError):
            _entries_path(self._election, self._worker.owner_pid).unlink()

    def figures(self) -> Figures:
        worker = self._worker
        # The lease every process of the worker acts on (follower while it stands down).
        lease = worker.shared.read(worker.owner_pid)
        admitted, skipped = worker.body_counts.read()
        return {
            "election": self._election,
            "member": worker.hostname,
            **member_figures(worker.feed, lease, self._changes),
            "leader_only_admitted": admitted,
            "leader_only_skipped": skipped,
            "beat_entries": _read_entries(_entries_path(self._election, worker.owner_pid)),
        }


class BeatMetrics:
    """A standalone beat's figures and endpoint (its own election member)."""

    def __init__(self, feed: LeaderFeed, port: int) -> None:
        self._feed = feed
        self._changes = LeadershipChanges()
        feed.add_observer(self._changes)
        self._endpoint = MetricsEndpoint(port, self.figures)

    def start(self) -> None:
        self._endpoint.start()

    def stop(self) -> None:
        self._endpoint.stop()

    def figures(self) -> Figures:
        feed = self._feed
        entries = _beat_entries.get(feed.name)
        return {
            "election": feed.name,
            "member": feed.id,
            **member_figures(feed, feed.lease, self._changes),
            "beat_entries": entries.figures() if entries is not None else {},
        }
