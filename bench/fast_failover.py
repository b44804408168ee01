"""Fast failover on PostgreSQL: kill -9 of the leader to the first fenced periodic send.

Three ``celery worker -B`` nodes of ``bench/periodic_app.py`` (the "fast" timings, a periodic
task every 0.1 s) elect on a private PostgreSQL server with the backend option
``fast_failover``; the broker is the bench's Redis. Each trial kills the node that sent last
with SIGKILL and measures the first send by another node against the kill, or against the
nominal due time of the earliest run that send delivers (its occurrence, or the first run it
coalesced) when that came later. A control session runs the same trials with
``fast_failover`` off. Every send of a session is judged by ``harness/occurrence_checker.py``.
The method: bench/README.md (section "Fast failover on PostgreSQL").
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil

from bench.inference import Sent
from bench.periodic_app import PROFILES
from bench.periodic_nodes import PeriodicCluster
from bench.processes import wait_for
from bench.servers import Store, store
from bench.stats import summary
from harness import celery_log
from harness.occurrence_checker import Send, check, due_of

PERIOD = 0.1
PROFILE = "fast"
NODES = 3
#: What the engine logs for a claim brought forward by the holder's session ending.
EARLY_CLAIM = "as its holder's session ended"
#: Seconds a trial waits for another node's send after the kill.
HORIZON = 10.0
#: Seconds the cluster runs after a replacement node is ready, before the next trial: the new
#: node's watch finds the leader's lock (it looks every operation timeout, 0.25 s here).
SETTLE = 1.0
#: Seconds the killed node's orphaned beat child gets to exit by itself.
ORPHAN_GRACE = 3.0
#: The sends that make a node the steady sender: all of the last second's, at least this many.
STEADY_SENDS = 7
#: Where a trial's time went, from the successor's log (1 ms resolution): kill -> its claim
#: (or, without the fast path, its lease valid) -> its beat taking the term -> the send.
BREAKDOWN = (
    "claim_logged_after_kill_s",
    "beat_leading_after_claim_s",
    "send_after_beat_leading_s",
)


@dataclass(frozen=True)
class _Clock:
    """time.time() minus time.monotonic(), to put wall times on the monotonic axis."""

    offset: float

    @classmethod
    def now(cls) -> _Clock:
        return cls(time.time() - time.monotonic())

    def mono(self, wall: float) -> float:
        return wall - self.offset


def run(trials: int, control_trials: int, redis_url: str, workdir: Path) -> dict[str, Any]:
    with store("postgresql") as server:
        sessions = {}
        plan = (("fast_failover", True, trials), ("control", False, control_trials))
        for key, fast, count in plan:
            print(f"  {key}: {count} trials", flush=True)
            sessions[key] = _session(server.fresh(), fast, count, redis_url, workdir)
            s = sessions[key]["summary"]
            if s.get("n"):
                print(
                    f"    median {s['median'] * 1000:.1f} ms, p95 {s['p95'] * 1000:.1f} ms, "
                    f"max {s['max'] * 1000:.1f} ms; fast path {sessions[key]['fast_path']}/"
                    f"{s['n']}; checker: {sessions[key]['checker']['verdict']}",
                    flush=True,
                )
        version = _server_version(server.url)
    return {
        "period": PERIOD,
        "settings": {
            "nodes": NODES,
            "app_conf": PROFILES["leaderfeed"][PROFILE],
            "store": f"PostgreSQL {version} (private server, loopback)",
            "broker": "redis-server (loopback)",
            "horizon_s": HORIZON,
            "settle_s": SETTLE,
        },
        "trials": {"fast_failover": trials, "control": control_trials},
        "sessions": sessions,
    }


def _server_version(url: str) -> str:
    import psycopg

    with contextlib.suppress(psycopg.Error), psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]).split()[0] if row else "?"
    return "?"


# -- one session ---------------------------------------------------------------------------------


def _session(pg: Store, fast: bool, trials: int, redis_url: str, workdir: Path) -> dict[str, Any]:
    options = {**pg.options, "fast_failover": fast}
    cluster = PeriodicCluster(
        "leaderfeed", PROFILE, redis_url, workdir, PERIOD, store_url=pg.url, store_options=options
    )
    done: list[dict[str, Any]] = []
    aborted: list[dict[str, Any]] = []
    leftovers = 0
    try:
        cluster.start(NODES)
        time.sleep(SETTLE)
        while len(done) < trials and len(aborted) <= trials:
            try:
                trial, left = _trial(cluster)
            except TimeoutError as exc:
                aborted.append({"trial": len(done) + len(aborted) + 1, "reason": str(exc)})
                print(f"    aborted: {exc}", flush=True)
                _restore(cluster)
                continue
            leftovers += left
            done.append(trial)
            print(
                f"    {len(done)}: {trial['latency_s'] * 1000:.1f} ms ({trial['path']}, "
                f"claim logged {_ms(trial['claim_logged_after_kill_s'])} after the kill)",
                flush=True,
            )
            _restore(cluster)
    finally:
        cluster.close()
    latencies = [t["latency_s"] for t in done]
    return {
        "fast_failover": fast,
        "options": {k: v for k, v in options.items() if k != "table"},
        "trials": done,
        "summary": summary(latencies),
        "fast_path": sum(t["path"] == "fast" for t in done),
        "breakdown": {
            key: summary([t[key] for t in done if t.get(key) is not None])
            for key in (*BREAKDOWN, "after_kill_s")
        },
        "aborted": aborted,
        "orphans_killed": leftovers,
        "checker": _judge(cluster.sends),
    }


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


def _steady_sender(cluster: PeriodicCluster) -> Sent:
    """The last send, once one live node made every send of the last second (7 or more)."""

    def steady() -> Sent | None:
        sends = cluster.refresh()
        now = time.monotonic()
        recent = [s for s in sends if s.at > now - 1.0]
        if len(recent) < STEADY_SENDS or len({s.node for s in recent}) != 1:
            return None
        last = max(recent, key=lambda s: s.at)
        if last.node not in cluster.nodes or last.at < now - 1.5 * PERIOD:
            return None
        return last

    return wait_for(steady, 30, "one node sending steadily", 0.01)


def _trial(cluster: PeriodicCluster) -> tuple[dict[str, Any], int]:
    """Kill the node that sent last; the first send of another node; the orphans killed."""
    _steady_sender(cluster)
    time.sleep(random.uniform(0, PERIOD))  # the kill lands anywhere between two sends
    leader = _steady_sender(cluster)
    name = leader.node
    node = cluster.nodes[name]
    clock = _Clock.now()
    killed = cluster.fault(name, "kill9")  # SIGKILL to the worker; its beat child is left
    cluster.retire(name)

    def successor() -> Sent | None:
        return cluster.first_send_after(killed, name)

    sent = wait_for(successor, HORIZON, f"a send by another node within {HORIZON:g} s", 0.002)
    # The earliest run the send delivers: its own occurrence, or the first it coalesced.
    covered = [o for o in (sent.occurrence, *sent.coalesced) if o]
    due = min((clock.mono(due_of(o).timestamp()) for o in covered), default=None)
    origin = killed if due is None else max(killed, due)
    path, line, claimed, leading = _log_times(cluster, sent)
    trial = {
        "killed": name,
        "killed_pid": node.proc.pid,
        "kill_monotonic": killed,
        "kill_wall": killed + clock.offset,
        "successor": sent.node,
        "term": sent.term,
        "occurrence": sent.occurrence,
        "coalesced": len(sent.coalesced),
        "sent_monotonic": sent.at,
        "due_after_kill_s": None if due is None else due - killed,
        "measured_from": "kill" if origin == killed else "due",
        "latency_s": sent.at - origin,
        "after_kill_s": sent.at - killed,
        "path": path,
        "log_line": line,
        "claim_logged_after_kill_s": None if claimed is None else clock.mono(claimed) - killed,
        "beat_leading_after_claim_s": None
        if claimed is None or leading is None
        else leading - claimed,
        "send_after_beat_leading_s": None if leading is None else sent.at - clock.mono(leading),
    }
    return trial, _orphans(cluster, name)


def _log_times(
    cluster: PeriodicCluster, sent: Sent
) -> tuple[str, str | None, float | None, float | None]:
    """How the successor's log says it took ``sent``'s term: ("fast", the line, its wall
    time) for a claim brought forward, ("timeout", ...) for a lease after the election
    timeout; and the wall time its beat said it leads in that term."""
    node = cluster.nodes.get(sent.node)
    if node is None or sent.term is None:
        return "unknown", None, None, None
    markers = (
        ("fast", f"claimed term {sent.term} {EARLY_CLAIM}"),
        ("timeout", f"became leader (term {sent.term})"),
    )
    deadline = time.monotonic() + 2.0
    while True:
        lines = [(line.wall, line.message.strip()) for line in celery_log.lines(node.proc.log())]
        leading = next((at for at, m in lines if f"beat: leading in term {sent.term}" in m), None)
        for path, marker in markers:
            for at, message in lines:
                if marker in message:
                    return path, message, at, leading
        if time.monotonic() > deadline:
            return "unknown", None, None, leading
        time.sleep(0.05)


def _orphans(cluster: PeriodicCluster, name: str) -> int:
    """Wait for the killed node's processes to exit by themselves; kill what is left."""
    deadline = time.monotonic() + ORPHAN_GRACE
    while (left := cluster.leftovers(name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return len(left)


def _restore(cluster: PeriodicCluster) -> None:
    """Back to three nodes (a replacement for each one gone), ready and settled."""
    for name in [n for n, node in cluster.nodes.items() if not node.proc.alive()]:
        cluster.retire(name)
    while len(cluster.nodes) < NODES:
        cluster.wait_ready(cluster.start_node())
    time.sleep(SETTLE)


def _judge(sends: list[Sent]) -> dict[str, Any]:
    """The harness checker over every send of the session."""
    labelled = [s for s in sends if s.occurrence]
    judged = [
        Send(s.occurrence or "", s.coalesced, s.term or 0, s.sender or "", s.at) for s in labelled
    ]
    report = check(judged, timedelta(seconds=PERIOD))
    return {
        "sends": len(sends),
        "occurrences": len(report.coverage),
        "duplicated": len(report.duplicates),
        "missed": len(report.missing),
        "off_grid": len(report.off_grid),
        "coalesced": sum(len(s.coalesced) for s in labelled),
        "unlabelled": len(sends) - len(labelled),
        "verdict": "clean" if report.ok and len(labelled) == len(sends) else report.summary(),
        "examples": {
            "duplicated": sorted(report.duplicates)[:5],
            "missed": report.missing[:5],
            "off_grid": report.off_grid[:5],
        },
    }
