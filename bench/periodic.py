"""Periodic runs across failover: every send of a 1 s periodic task, counted per occurrence.

For each system (celery-leaderfeed, RedBeat, single-beat) and each profile (``default``
settings, and ``fast``: tuned for fast failover, see :data:`EFFECTIVE`), a cluster of three
real nodes (``bench/periodic_nodes.py``) runs against the bench's one Redis, one session after
another. A session:

1. starts the nodes and waits for the first send, then runs ``steady`` seconds;
2. for each fault in turn - ``kill9`` (SIGKILL to the leader node's main process),
   ``sigterm`` (SIGTERM to it: Celery's warm shutdown, single-beat's stop) and ``sigstop``
   (SIGSTOP to every process of the node, a frozen machine, held until another node sent and
   ``hold`` seconds more, then SIGCONT) - aimed at the node that made the latest send, a
   random fraction of a period after a send: waits for a send by another node (the
   *takeover*) for at most ``horizon`` seconds, then observes ``observe`` seconds more. A
   killed or stopped node is replaced by a fresh one; processes a killed node left behind are
   counted, then killed. If nobody took over within the horizon, the outcome is "no takeover
   within N s" and the next fault runs on a fresh cluster.

Every send is read from the broker afterwards and judged twice: by the schedule-based
inference of ``bench/inference.py`` (the same for every system) and, for celery-leaderfeed,
by its occurrence headers with the independent checker ``tests/occurrence_checker.py``.
Duplicates are attributed to the window in which they were sent, a missed run to the window
in which its half-period tolerance ran out (nominal time + half a period) - so a run that was
due just before a fault but not yet sent when it struck belongs to the fault.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import statistics
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil

from bench.inference import Sent, infer
from bench.periodic_app import PROFILES, SINGLE_BEAT_ENV
from bench.periodic_nodes import PeriodicCluster
from bench.processes import wait_for
from tests.occurrence_checker import Send, check, due_of

SYSTEMS = ("leaderfeed", "redbeat", "single-beat")
FAULTS = ("kill9", "sigterm", "sigstop")
PERIOD = 1.0

#: Every setting that matters for failover, per system and profile, as the nodes ran.
EFFECTIVE = {
    "leaderfeed": {
        "default": "celery_leaderfeed defaults: leaderfeed_heartbeat_interval 1.0 s, "
        "leaderfeed_election_timeout_min/max 3.0/4.0 s, leaderfeed_misfire_policy run_once; "
        "nodes: celery worker -B (beat_scheduler LeaderScheduler)",
        "fast": "leaderfeed_heartbeat_interval 0.25 s, leaderfeed_election_timeout_min/max "
        "0.75/1.0 s, leaderfeed_misfire_policy run_once; nodes: celery worker -B",
    },
    "redbeat": {
        "default": "RedBeat defaults: redbeat_lock_timeout unset = 5 x beat_max_loop_interval "
        "= 1500 s; beat_max_loop_interval unset = 300 s (a standby retries the lock every "
        "300 s); nodes: celery beat -S redbeat.RedBeatScheduler",
        "fast": "redbeat_lock_timeout 2 s (whole seconds: RedBeat extends by int(timeout)), "
        "beat_max_loop_interval 0.5 s (lock extended and standbys retrying every 0.5 s); "
        "nodes: celery beat -S redbeat.RedBeatScheduler",
    },
    "single-beat": {
        "default": "single-beat defaults: SINGLE_BEAT_LOCK_TIME 5 s, "
        "SINGLE_BEAT_INITIAL_LOCK_TIME 10 s, SINGLE_BEAT_HEARTBEAT_INTERVAL 1 s, WAIT_MODE "
        "heartbeat; nodes: single-beat celery beat (PersistentScheduler, a schedule file "
        "per node)",
        "fast": "SINGLE_BEAT_LOCK_TIME 3 s, SINGLE_BEAT_INITIAL_LOCK_TIME 4 s, "
        "SINGLE_BEAT_HEARTBEAT_INTERVAL 1 s (whole seconds, and it must stay below half "
        "the lock time); nodes: single-beat celery beat",
    },
}


#: What a node's log says when it ended itself after SIGCONT, and what that means.
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
    exited_at: float | None = None
    leftovers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run(
    systems: list[str],
    profiles: list[str],
    durations: Durations,
    redis_url: str,
    workdir: Path,
) -> dict[str, Any]:
    sessions: dict[str, Any] = {}
    for system in systems:
        for profile in profiles:
            print(f"  periodic: {system} / {profile}", flush=True)
            started = time.monotonic()
            try:
                sessions[f"{system}/{profile}"] = _session(
                    system, profile, durations, redis_url, workdir
                )
            except Exception as exc:  # noqa: BLE001 - reported on the page
                sessions[f"{system}/{profile}"] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"    FAILED: {exc}", flush=True)
                continue
            for window in sessions[f"{system}/{profile}"]["windows"]:
                print(f"    {_line(window)}", flush=True)
            print(f"    ({time.monotonic() - started:.0f} s)", flush=True)
    return {
        "period": PERIOD,
        "durations": durations.__dict__,
        "settings": {
            system: {
                profile: {
                    "description": EFFECTIVE[system][profile],
                    "app_conf": PROFILES[system][profile],
                    **({"env": SINGLE_BEAT_ENV[profile]} if system == "single-beat" else {}),
                }
                for profile in profiles
            }
            for system in systems
        },
        "sessions": sessions,
    }


def _line(w: dict[str, Any]) -> str:
    takeover = w.get("takeover_s")
    taken = (
        f"takeover {takeover:.2f} s"
        if takeover is not None
        else ("-" if w["kind"] == "steady" else f"no takeover within {w['horizon_s']:g} s")
    )
    inferred = w["inferred"]
    text = (
        f"{w['kind']:<8} {taken:<28} sends {w['sends']:>3}  inferred dup {inferred['duplicates']}"
        f" missed {inferred['missed']}"
    )
    headers = w.get("headers")
    if headers:
        text += (
            f" | headers dup {headers['duplicates']} lost {headers['lost']} "
            f"coalesced {headers['coalesced']}"
        )
    if w.get("late_sends_by_faulted"):
        text += f" | late sends by faulted node {w['late_sends_by_faulted']}"
    return text


# -- one session ---------------------------------------------------------------------------------


def _fresh(
    system: str, profile: str, redis_url: str, workdir: Path, clusters: list[PeriodicCluster]
) -> tuple[PeriodicCluster, Sent]:
    cluster = PeriodicCluster(system, profile, redis_url, workdir, PERIOD)
    clusters.append(cluster)
    cluster.start()
    first = wait_for(cluster.last_send, 60, f"the first send of {system}/{profile}", 0.02)
    return cluster, first


def _current_sender(cluster: PeriodicCluster) -> Sent:
    def recent() -> Sent | None:
        last = cluster.last_send()
        fresh = last is not None and last.at > time.monotonic() - 1.5 * PERIOD
        return last if fresh and last is not None and last.node in cluster.nodes else None

    return wait_for(recent, 30, "a recent send by a live node", 0.01)


def _session(
    system: str, profile: str, d: Durations, redis_url: str, workdir: Path
) -> dict[str, Any]:
    clusters: list[PeriodicCluster] = []
    windows: list[Window] = []
    try:
        cluster, first = _fresh(system, profile, redis_url, workdir, clusters)
        steady = Window("steady", cluster, first.at - PERIOD / 2)
        windows.append(steady)
        time.sleep(d.steady)
        for kind in FAULTS:
            _current_sender(cluster)
            time.sleep(random.uniform(0, PERIOD))  # the fault lands anywhere between sends
            leader = _current_sender(cluster)
            window = Window(kind, cluster, 0.0, faulted=leader.node, last_before=leader)
            if not windows[-1].end:
                windows[-1].end = time.monotonic()
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
                continue
            if not node.proc.alive():
                cluster.retire(leader.node)
                replacement = cluster.start_node()
                cluster.wait_ready(replacement)
                time.sleep(d.settle)
        windows[-1].end = time.monotonic()
    finally:
        for each in clusters:
            each.close()
    return _analyse(system, windows, clusters, d)


def _await_takeover(cluster: PeriodicCluster, window: Window, horizon: float) -> Sent | None:
    deadline = window.start + horizon
    while time.monotonic() < deadline:
        found = cluster.first_send_after(window.start, other_than=window.faulted)
        if found is not None:
            return found
        time.sleep(0.01)
    return None


def _wrap_up(cluster: PeriodicCluster, window: Window) -> None:
    """After a fault's observation: did the node exit, did it leave processes behind?"""
    assert window.faulted is not None
    node = cluster.nodes[window.faulted]
    if window.kind == "sigterm":
        if node.proc.alive():
            window.notes.append("the node had not exited at the end of the window; killed")
            node.proc.stop()
        else:
            window.exited_at = time.monotonic()
    if window.kind in ("kill9", "sigterm"):
        left = cluster.leftovers(window.faulted)
        for process in left:
            with contextlib.suppress(psutil.Error):
                command = " ".join(process.cmdline()[1:8])
                window.leftovers.append(f"{command} (pid {process.pid})")
                process.kill()
        if left:
            window.notes.append(
                f"{len(left)} process(es) of the faulted node still ran at the end of the "
                "window; the bench killed them"
            )
    if window.kind == "sigstop" and not node.proc.alive():
        log = node.proc.log()
        reason = next((text for marker, text in EXIT_REASONS.items() if marker in log), "")
        because = f" ({reason})" if reason else ""
        window.notes.append(f"the resumed node exited by itself{because}")


# -- analysis --------------------------------------------------------------------------------


def _analyse(
    system: str, windows: list[Window], clusters: list[PeriodicCluster], d: Durations
) -> dict[str, Any]:
    origin = min(w.start for w in windows)
    ends = {id(c): max(w.end for w in windows if w.cluster is c) for c in clusters}
    inferred = {id(c): infer(c.sends, PERIOD, until=ends[id(c)]) for c in clusters}
    headers = {id(c): _header_check(c.sends) for c in clusters} if system == "leaderfeed" else {}
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
            "by_node": _count(s.node for s in sends),
            "inferred": {
                "duplicates": sum(w.start <= s.at < w.end for s in inf.duplicates),
                "missed": sum(w.start <= at + PERIOD / 2 < w.end for at in inf.missed),
            },
            "notes": w.notes,
        }
        if w.kind != "steady":
            entry |= _fault_figures(w, sends, d)
        else:
            spacing = [b.at - a.at for a, b in itertools.pairwise(sends)]
            entry["spacing_s"] = {
                "median": statistics.median(spacing) if spacing else None,
                "max": max(spacing) if spacing else None,
            }
        if headers:
            entry["headers"] = _header_window(headers[id(w.cluster)], w)
        out.append(entry)
    result: dict[str, Any] = {"windows": out, "clusters": len(clusters)}
    if system == "leaderfeed":
        result["timeline"] = _timeline(clusters[0], windows, origin)
    return result


def _at(send: Sent) -> float:
    return send.at


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _fault_figures(w: Window, sends: list[Sent], d: Durations) -> dict[str, Any]:
    late = [s for s in sends if s.node == w.faulted]
    figures: dict[str, Any] = {
        "faulted": w.faulted,
        "horizon_s": d.horizon,
        "takeover_s": None if w.successor is None else w.successor.at - w.start,
        "successor": None if w.successor is None else w.successor.node,
        "gap_s": _gap(w),
        "late_sends_by_faulted": len(late),
        "leftovers": w.leftovers,
    }
    if w.resumed_at is not None:
        figures["stopped_for_s"] = w.resumed_at - w.start
        figures["sends_after_resume_by_faulted"] = sum(s.at >= w.resumed_at for s in late)
    return figures


def _gap(w: Window) -> float | None:
    """The longest time between consecutive sends, from the last send before the fault to
    the successor's first: the hole the fault left in the schedule."""
    if w.successor is None or w.last_before is None:
        return None
    first, last = w.last_before.at, w.successor.at
    times = sorted(s.at for s in w.cluster.sends if first <= s.at <= last)
    return max(b - a for a, b in itertools.pairwise(times))


@dataclass
class _HeaderCheck:
    offset: float  #: wall clock minus monotonic clock
    duplicates: dict[str, int]
    missing: list[str]
    off_grid: list[str]
    coalesced: list[str]
    unlabelled: int


def _header_check(sends: list[Sent]) -> _HeaderCheck:
    labelled = [s for s in sends if s.occurrence]
    report = check(
        (
            Send(s.occurrence or "", s.coalesced, s.term or 0, s.sender or "", s.at)
            for s in labelled
        ),
        timedelta(seconds=PERIOD),
    )
    coalesced = [o for s in labelled for o in s.coalesced]
    offset = statistics.median(s.wall - s.at for s in sends) if sends else 0.0
    return _HeaderCheck(
        offset,
        report.duplicates,
        report.missing,
        report.off_grid,
        coalesced,
        len(sends) - len(labelled),
    )


def _header_window(found: _HeaderCheck, w: Window) -> dict[str, Any]:
    def inside(occurrence: str) -> bool:
        late_at = due_of(occurrence).timestamp() - found.offset + PERIOD / 2
        return w.start <= late_at < w.end

    return {
        "duplicates": sum(n - 1 for o, n in found.duplicates.items() if inside(o)),
        "lost": sum(inside(o) for o in found.missing),
        "coalesced": sum(inside(o) for o in found.coalesced),
        "off_grid": sum(inside(o) for o in found.off_grid),
        "unlabelled_sends": found.unlabelled,
    }


def _timeline(cluster: PeriodicCluster, windows: list[Window], origin: float) -> dict[str, Any]:
    """Leadership changes, sends and faults of the first cluster, relative to ``origin``."""
    changes: list[list[Any]] = []
    for at, holder, term in cluster.leadership:
        if not changes or changes[-1][1] != holder:
            changes.append([at - origin, holder, term])
    if cluster.leadership:
        at, holder, term = cluster.leadership[-1]
        changes.append([at - origin, holder, term])
    return {
        "origin_monotonic": origin,
        #: time.time() minus time.monotonic(), to place nominal due times on this axis.
        "clock_offset": statistics.median(s.wall - s.at for s in cluster.sends)
        if cluster.sends
        else 0.0,
        "leadership": changes,
        #: [node, started, removed (killed or stopped by SIGTERM) or None], seconds.
        "nodes": [
            [
                node.name,
                node.proc.started_at - origin,
                next(
                    (
                        w.start - origin
                        for w in windows
                        if w.cluster is cluster and w.faulted == node.name and w.kind != "sigstop"
                    ),
                    None,
                ),
            ]
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
            for w in windows
            if w.kind != "steady" and w.cluster is cluster
        ],
    }
