"""Periodic runs across failover: every send of a 1 s periodic task, counted per occurrence.

Per system and profile, one session on three nodes (``bench/periodic_nodes.py``): steady
state, then kill -9, SIGTERM and SIGSTOP of the node that sent last, each followed until
another node sends (or the horizon passes) and observed a while more. The sends are judged by
``bench/inference.py`` and, for celery-leaderfeed, by ``harness/occurrence_checker.py``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import random
import signal
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil

from bench.inference import Sent, infer
from bench.periodic_app import PROFILES, SINGLE_BEAT_ENV
from bench.periodic_nodes import PeriodicCluster
from bench.processes import attempt, wait_for
from harness.occurrence_checker import Send, check, due_of

SYSTEMS = ("leaderfeed", "redbeat", "single-beat")
FAULTS = ("kill9", "sigterm", "sigstop")
PERIOD = 1.0
#: What a node's log says when it ended itself after SIGCONT, and what that was.
EXIT_REASONS = {
    "LockNotOwnedError": "RedBeat raised LockNotOwnedError extending a lock it no longer held",
    "fence token did not match": "single-beat found its fence token replaced and terminated "
    "itself and its beat",
    "is gone; this beat stops sending": "its beat saw the worker gone",
}


@dataclass(frozen=True)
class Durations:
    steady: float = 8.0
    observe: float = 5.0
    hold: float = 2.0
    horizon: float = 30.0
    settle: float = 2.0


@dataclass
class Window:
    """One stage of a session: steady state, or one fault and what followed it."""

    kind: str
    cluster: PeriodicCluster
    start: float
    end: float = 0.0
    faulted: str | None = None
    last_before: Sent | None = None
    successor: Sent | None = None
    resumed_at: float | None = None
    leftovers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run(
    systems: list[str], profiles: list[str], durations: Durations, redis_url: str, workdir: Path
) -> dict[str, Any]:
    sessions = {}
    for system, profile in itertools.product(systems, profiles):
        key = f"{system}/{profile}"
        session = functools.partial(_session, system, profile, durations, redis_url, workdir)
        sessions[key] = attempt(f"periodic: {key}", session)
        for w in sessions[key].get("windows", []):
            figures = {k: w.get(k) for k in ("takeover_s", "gap_s", "sends", "inferred", "headers")}
            print(f"    {w['kind']}: {figures}", flush=True)
    settings = {
        system: {
            profile: {"app_conf": PROFILES[system][profile]}
            | ({"env": SINGLE_BEAT_ENV[profile]} if system == "single-beat" else {})
            for profile in profiles
        }
        for system in systems
    }
    return {
        "period": PERIOD,
        "durations": asdict(durations),
        "settings": settings,
        "sessions": sessions,
    }


# -- one session ---------------------------------------------------------------------------------


def _fresh(
    system: str, profile: str, redis_url: str, workdir: Path, clusters: list[PeriodicCluster]
) -> tuple[PeriodicCluster, Sent]:
    """A new cluster (listed in ``clusters`` at once, to be closed), and its first send."""
    cluster = PeriodicCluster(system, profile, redis_url, workdir, PERIOD)
    clusters.append(cluster)
    cluster.start()
    return cluster, wait_for(cluster.last_send, 60, f"the first send of {cluster.name}", 0.02)


def _current_sender(cluster: PeriodicCluster) -> Sent:
    def recent() -> Sent | None:
        last = cluster.last_send()
        if last and last.at > time.monotonic() - 1.5 * PERIOD and last.node in cluster.nodes:
            return last
        return None

    return wait_for(recent, 30, "a recent send by a live node", 0.01)


def _session(
    system: str, profile: str, d: Durations, redis_url: str, workdir: Path
) -> dict[str, Any]:
    clusters: list[PeriodicCluster] = []
    windows: list[Window] = []
    try:
        cluster, first = _fresh(system, profile, redis_url, workdir, clusters)
        windows.append(Window("steady", cluster, first.at - PERIOD / 2))
        time.sleep(d.steady)
        for kind in FAULTS:
            _current_sender(cluster)
            time.sleep(random.uniform(0, PERIOD))  # the fault lands anywhere between sends
            leader = _current_sender(cluster)
            windows[-1].end = windows[-1].end or time.monotonic()
            window = Window(kind, cluster, 0.0, faulted=leader.node, last_before=leader)
            window.start = cluster.fault(leader.node, kind)
            windows.append(window)
            window.successor = _await_takeover(cluster, window, d.horizon)
            node = cluster.nodes[leader.node]
            if kind == "sigstop":
                if window.successor is not None:
                    time.sleep(d.hold)
                window.resumed_at = node.proc.signal(signal.SIGCONT, family=True)
            time.sleep(d.observe)
            _wrap_up(cluster, window)
            if window.successor is None and kind != "sigstop":
                window.end = time.monotonic()
                window.notes.append("no takeover: the next fault runs on a fresh cluster")
                cluster.close()
                cluster, _ = _fresh(system, profile, redis_url, workdir, clusters)
                time.sleep(d.settle)
            elif not node.proc.alive():
                cluster.retire(leader.node)
                cluster.wait_ready(cluster.start_node())
                time.sleep(d.settle)
        windows[-1].end = time.monotonic()
    finally:
        for each in clusters:
            each.close()
    return _analyse(system, windows, clusters, d)


def _await_takeover(cluster: PeriodicCluster, window: Window, horizon: float) -> Sent | None:
    """The first send by another node after the fault, if one comes within ``horizon``."""
    while time.monotonic() < window.start + horizon:
        if found := cluster.first_send_after(window.start, window.faulted):
            return found
        time.sleep(0.01)
    return None


def _wrap_up(cluster: PeriodicCluster, window: Window) -> None:
    """After a fault's observation: did the node exit, did it leave processes behind?"""
    assert window.faulted is not None
    proc = cluster.nodes[window.faulted].proc
    if window.kind == "sigterm" and proc.alive():
        window.notes.append("the node had not exited at the end of the window; killed")
        proc.stop()
    if window.kind in ("kill9", "sigterm"):
        left = cluster.leftovers(window.faulted)
        for process in left:
            with contextlib.suppress(psutil.Error):
                window.leftovers.append(f"{' '.join(process.cmdline()[1:8])} (pid {process.pid})")
                process.kill()
        if left:
            window.notes.append(
                f"{len(left)} process(es) of the faulted node still ran at the end of the "
                "window; the bench killed them"
            )
    if window.kind == "sigstop" and not proc.alive():
        log = proc.log()
        reason = next((f" ({text})" for marker, text in EXIT_REASONS.items() if marker in log), "")
        window.notes.append(f"the resumed node exited by itself{reason}")


# -- analysis: windows of sends ------------------------------------------------------------------


def _analyse(
    system: str, windows: list[Window], clusters: list[PeriodicCluster], d: Durations
) -> dict[str, Any]:
    origin = min(w.start for w in windows)
    inferred = {
        id(c): infer(c.sends, PERIOD, until=max(w.end for w in windows if w.cluster is c))
        for c in clusters
    }
    headers = {id(c): _Headers(c.sends) for c in clusters if system == "leaderfeed"}
    out = []
    for w in windows:
        sends = sorted((s for s in w.cluster.sends if w.start <= s.at < w.end), key=_at)
        inf = inferred[id(w.cluster)]
        entry: dict[str, Any] = {
            "kind": w.kind,
            "cluster": clusters.index(w.cluster),
            "start_s": w.start - origin,
            "end_s": w.end - origin,
            "sends": len(sends),
            "by_node": dict(collections.Counter(s.node for s in sends)),
            "inferred": {
                "duplicates": sum(w.start <= s.at < w.end for s in inf.duplicates),
                "missed": sum(w.start <= at + PERIOD / 2 < w.end for at in inf.missed),
            },
            "notes": w.notes,
        }
        if w.kind == "steady":
            spacing = [b.at - a.at for a, b in itertools.pairwise(sends)]
            entry["spacing_s"] = {
                "median": statistics.median(spacing) if spacing else None,
                "max": max(spacing, default=None),
            }
        else:
            entry |= _fault_figures(w, sends, d)
        if headers:
            entry["headers"] = headers[id(w.cluster)].within(w)
        out.append(entry)
    result: dict[str, Any] = {"windows": out, "clusters": len(clusters)}
    if system == "leaderfeed":
        result["timeline"] = _timeline(clusters[0], windows, origin)
    return result


def _at(send: Sent) -> float:
    return send.at


def _clock_offset(sends: list[Sent]) -> float:
    """time.time() minus time.monotonic(), to place nominal due times on the monotonic axis."""
    return statistics.median(s.wall - s.at for s in sends) if sends else 0.0


def _fault_figures(w: Window, sends: list[Sent], d: Durations) -> dict[str, Any]:
    late = [s for s in sends if s.node == w.faulted]
    figures: dict[str, Any] = {
        "faulted": w.faulted,
        "horizon_s": d.horizon,
        "takeover_s": None if w.successor is None else w.successor.at - w.start,
        "successor": None if w.successor is None else w.successor.node,
        "gap_s": None,
        "late_sends_by_faulted": len(late),
        "leftovers": w.leftovers,
    }
    if w.successor is not None and w.last_before is not None:
        # The longest hole between sends, from the last before the fault to the successor's.
        first, last = w.last_before.at, w.successor.at
        times = sorted(s.at for s in w.cluster.sends if first <= s.at <= last)
        figures["gap_s"] = max(b - a for a, b in itertools.pairwise(times))
    if w.resumed_at is not None:
        figures["stopped_for_s"] = w.resumed_at - w.start
        figures["sends_after_resume_by_faulted"] = sum(s.at >= w.resumed_at for s in late)
    return figures


class _Headers:
    """celery-leaderfeed's occurrence headers of one cluster, judged by the harness checker."""

    def __init__(self, sends: list[Sent]) -> None:
        labelled = [s for s in sends if s.occurrence]
        judged = [
            Send(s.occurrence or "", s.coalesced, s.term or 0, s.sender or "", s.at)
            for s in labelled
        ]
        self.report = check(judged, timedelta(seconds=PERIOD))
        self.coalesced = [o for s in labelled for o in s.coalesced]
        self.offset = _clock_offset(sends)
        self.unlabelled = len(sends) - len(labelled)

    def within(self, w: Window) -> dict[str, int]:
        """Counts for the occurrences whose half-period tolerance ran out inside ``w``."""

        def inside(occurrence: str) -> bool:
            late_at = due_of(occurrence).timestamp() - self.offset + PERIOD / 2
            return w.start <= late_at < w.end

        r = self.report
        return {
            "duplicates": sum(n - 1 for o, n in r.duplicates.items() if inside(o)),
            "lost": sum(map(inside, r.missing)),
            "coalesced": sum(map(inside, self.coalesced)),
            "off_grid": sum(map(inside, r.off_grid)),
            "unlabelled_sends": self.unlabelled,
        }


def _timeline(cluster: PeriodicCluster, windows: list[Window], origin: float) -> dict[str, Any]:
    """Leadership changes, nodes, sends and faults of the first cluster, from ``origin``."""
    changes: list[list[Any]] = []
    for at, holder, term in cluster.leadership:
        if not changes or changes[-1][1] != holder:
            changes.append([at - origin, holder, term])
    if cluster.leadership:
        at, holder, term = cluster.leadership[-1]
        changes.append([at - origin, holder, term])
    faults = [w for w in windows if w.kind != "steady" and w.cluster is cluster]
    removed = {w.faulted: w.start - origin for w in reversed(faults) if w.kind != "sigstop"}
    return {
        "origin_monotonic": origin,
        "clock_offset": _clock_offset(cluster.sends),
        "leadership": changes,
        "nodes": [
            [node.name, node.proc.started_at - origin, removed.get(node.name)]
            for node in [*cluster.nodes.values(), *cluster.retired]
        ],
        "sends": [[s.at - origin, s.node, list(s.coalesced), s.occurrence] for s in cluster.sends],
        "faults": [
            {
                "kind": w.kind,
                "at": w.start - origin,
                "node": w.faulted,
                "resumed_at": None if w.resumed_at is None else w.resumed_at - origin,
            }
            for w in faults
        ],
    }
