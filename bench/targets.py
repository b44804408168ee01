"""The targets: every bound is defined here once, and judged against a results file.

:func:`targets` gives the rows of the page's targets table (``python -m bench`` also prints
them); the failover table and the lists of slow trials use the same bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.stats import ms, pct, sec

#: Graceful handover on Redis: the median, in seconds.
HANDOVER_MEDIAN = 0.050
#: Graceful handover on PostgreSQL (one statement and a NOTIFY delivered at commit).
HANDOVER_MEDIAN_POSTGRES = 0.015
#: Crash failover on Redis: the slowest trial may exceed election_timeout_max by this much.
FAILOVER_SLACK = 0.100
#: The busier idle follower process at N = 3 on Redis, in % of one core.
IDLE_CPU_PCT = 1.0
#: 200 members on Redis hold one leader within this many election timeouts (upper end).
CONVERGE_TIMEOUTS = 2
CONVERGE_MEMBERS = "200"
#: delay() to the body starting on the leader, median: @leader_only may add this to a plain task.
LEADER_QUEUE_EXTRA = 0.002
#: A handover (elect, SIGTERM) moves consumption of the leader queue within this many heartbeats.
LEADER_QUEUE_MOVE_HEARTBEATS = 1
#: ``celery leaderfeed elect NODE`` to NODE leading, median on Redis, in seconds.
ELECT_MEDIAN = 0.050
#: The metrics endpoint, scraped every 15 s, adds at most this to an idle worker (% of a core).
METRICS_CPU_PCT = 0.1
#: With fast_failover (PostgreSQL), kill -9 of the leader to the first fenced beat send.
FAST_FAILOVER_MEDIAN = 0.150
FAST_FAILOVER_P95 = 0.300

Row = list[str]


def failover_bound(timing: dict[str, float]) -> float:
    return timing["election_timeout_max"] + FAILOVER_SLACK


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**MET**" if ok else "**MISSED**")


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _row(label: str, measured: str | None, ok: bool | None) -> Row:
    return [label, measured or "-", verdict(None if measured is None else ok)]


#: The stores whose handover, failover and idle cost have targets, with their handover bound.
_TARGET_STORES = {
    "redis": ("Redis", HANDOVER_MEDIAN),
    "postgresql": ("PostgreSQL", HANDOVER_MEDIAN_POSTGRES),
    "postgresql-fast": ("PostgreSQL, fast_failover", HANDOVER_MEDIAN_POSTGRES),
}


def _handover(results: dict[str, Any]) -> list[Row]:
    rows = []
    for backend, (shown, bound) in _TARGET_STORES.items():
        label = f"Graceful handover median <= {bound * 1000:g} ms ({shown})"
        s = _get(results, "handover", "backends", backend, "summary")
        if not s:
            rows.append(_row(label, None, None))
            continue
        measured = (
            f"median {ms(s['median'])} (p95 {ms(s['p95'])}, max {ms(s['max'])}, {s['n']} trials)"
        )
        rows.append(_row(label, measured, s["median"] <= bound))
    return rows


def _failover(results: dict[str, Any]) -> list[Row]:
    rows = []
    for name, timing in (_get(results, "failover", "settings") or {}).items():
        bound = failover_bound(timing)
        for backend, (shown, _) in _TARGET_STORES.items():
            label = (
                f"Crash failover <= election timeout max + {FAILOVER_SLACK * 1000:g} ms = "
                f"{bound:.2f} s ({shown}, heartbeat {timing['heartbeat_interval']:g} s, timeout "
                f"{timing['election_timeout_min']:g}-{timing['election_timeout_max']:g} s)"
            )
            s = _get(results, "failover", "backends", backend, name, "summary")
            measured = s and (
                f"max {sec(s['max'], 3)} (median {sec(s['median'], 3)}, p95 "
                f"{sec(s['p95'], 3)}, {s['n']} trials)"
            )
            rows.append(_row(label, measured, bool(s) and s["max"] <= bound))
    return rows


def _periodic(results: dict[str, Any]) -> list[Row]:
    rows = []
    for profile in ("default", "fast"):
        label = (
            "Zero duplicate and zero lost runs across kill -9, SIGTERM and SIGSTOP, default "
            f"misfire policy run_once (celery-leaderfeed, {profile} timing)"
        )
        windows = _get(results, "periodic", "sessions", f"leaderfeed/{profile}", "windows")
        if not windows:
            rows.append(_row(label, None, None))
            continue
        total = {k: sum(w["headers"][k] for w in windows) for k in ("duplicates", "lost")}
        coalesced = sum(w["headers"]["coalesced"] for w in windows)
        measured = (
            f"{total['duplicates']} duplicate, {total['lost']} lost "
            f"({sum(w['sends'] for w in windows)} sends; {coalesced} coalesced)"
        )
        rows.append(_row(label, measured, not any(total.values())))
    return rows


def _idle(results: dict[str, Any]) -> list[Row]:
    rows = []
    heartbeat = _get(results, "cost", "settings", "heartbeat_interval") or 0.25
    for backend, (shown, _) in _TARGET_STORES.items():
        idle = _get(results, "cost", "backends", backend, "3", "steady", "cpu_pct_idle_follower")
        label = (
            f"An idle member <= {IDLE_CPU_PCT:g} % of a core at a {heartbeat:g} s heartbeat "
            f"({shown})"
        )
        measured = (
            None
            if idle is None
            else (f"{pct(idle)} of a core (the busier idle follower process of N = 3)")
        )
        rows.append(_row(label, measured, idle is not None and idle <= IDLE_CPU_PCT))
    return rows


def _converge(results: dict[str, Any]) -> list[Row]:
    label = (
        f"{CONVERGE_MEMBERS} members converge to one leader within {CONVERGE_TIMEOUTS} "
        "election timeouts"
    )
    cold = _get(results, "cost", "backends", "redis", CONVERGE_MEMBERS, "cold_start")
    high = _get(results, "cost", "settings", "election_timeout_max")
    if not cold or not high:
        return [_row(label, None, None)]
    bound = CONVERGE_TIMEOUTS * high
    measured = (
        f"one member holds the record after {sec(cold['holds_s'], 3)}, the leader may act after "
        f"{sec(cold['acts_s'], 3)}; {cold['leaders']} member(s) ever held it; "
        f"{cold['claims']} claims sent, {cold['claims_won']} won"
    )
    ok = cold["leaders"] == 1 and max(cold["holds_s"], cold["acts_s"]) <= bound
    return [_row(f"{label} ({CONVERGE_TIMEOUTS} x {high:g} s = {bound:g} s; Redis)", measured, ok)]


def _leader_queue(results: dict[str, Any]) -> list[Row]:
    part = _get(results, "leader_queue") or {}
    latency, moved = part.get("latency"), part.get("handover")
    label = (
        f"`delay()` to the body starting on the leader, median: @leader_only <= plain + "
        f"{LEADER_QUEUE_EXTRA * 1000:g} ms (Redis broker)"
    )
    rows = [_row(label, None, None)]
    if latency:
        g, p = latency["leader_only"], latency["plain"]
        extra = latency["difference_median_s"]
        measured = f"{ms(g['median'])} vs {ms(p['median'])}: {ms(extra)} ({g['n']} of each)"
        rows = [_row(label, measured, extra <= LEADER_QUEUE_EXTRA)]
    heartbeat = _get(part, "settings", "heartbeat_interval")
    bound = LEADER_QUEUE_MOVE_HEARTBEATS * (heartbeat or 0.0)
    for how, name in (("elect", "`elect`"), ("sigterm", "SIGTERM")):
        label = (
            f"A handover by {name} moves consumption of the leader queue within "
            f"{LEADER_QUEUE_MOVE_HEARTBEATS} heartbeat"
            + (f" ({heartbeat:g} s)" if heartbeat else "")
            + ": first body on the new leader, slowest trial (Redis broker)"
        )
        s = _get(part, "handover", how, "summary") if moved else None
        if not s or not s.get("n"):
            rows.append(_row(label, None, None))
            continue
        trials = f"max {sec(s['max'], 3)} (median {sec(s['median'], 3)}, {s['n']} trials)"
        rows.append(_row(label, trials, s["max"] <= bound))
    return rows


def _metrics(results: dict[str, Any]) -> list[Row]:
    part = _get(results, "metrics") or {}
    interval = _get(part, "settings", "scrape_interval_s") or 15.0
    label = (
        f"The metrics endpoint adds <= {METRICS_CPU_PCT:g} % of a core to an idle worker at a "
        f"{interval:g} s scrape interval (Redis)"
    )
    added = part.get("added_cpu_pct")
    if added is None:
        return [_row(label, None, None)]
    measured = (
        f"{added:.4f} % ({part['endpoint_idle_cpu_pct']:.4f} % idle endpoint + "
        f"{part['per_scrape_cpu_s'] * 1000:.2f} ms per scrape / {interval:g} s)"
    )
    return [_row(label, measured, added <= METRICS_CPU_PCT)]


def _elect(results: dict[str, Any]) -> list[Row]:
    label = (
        f"`celery leaderfeed elect NODE` to NODE leading: median <= {ELECT_MEDIAN * 1000:g} ms "
        "(Redis)"
    )
    s = _get(results, "elect", "summary")
    if not s:
        return [_row(label, None, None)]
    measured = f"median {ms(s['median'])} (p95 {ms(s['p95'])}, max {ms(s['max'])}, {s['n']} trials)"
    return [_row(label, measured, s["median"] <= ELECT_MEDIAN)]


def _fast_failover(results: dict[str, Any]) -> list[Row]:
    label = (
        f"With `fast_failover`, kill -9 of the leader to the first fenced beat send: median <= "
        f"{FAST_FAILOVER_MEDIAN * 1000:g} ms, p95 <= {FAST_FAILOVER_P95 * 1000:g} ms "
        "(PostgreSQL, `celery worker -B`)"
    )
    s = _get(results, "fast_failover", "sessions", "fast_failover", "summary")
    if not s or not s.get("n"):
        return [_row(label, None, None)]
    measured = f"median {ms(s['median'])}, p95 {ms(s['p95'])} (max {ms(s['max'])}, {s['n']} trials)"
    ok = s["median"] <= FAST_FAILOVER_MEDIAN and s["p95"] <= FAST_FAILOVER_P95
    return [_row(label, measured, ok)]


#: The targets, in the order the page lists them.
TARGETS: tuple[Callable[[dict[str, Any]], list[Row]], ...] = (
    _handover,
    _failover,
    _periodic,
    _idle,
    _converge,
    _leader_queue,
    _metrics,
    _elect,
    _fast_failover,
)


def targets(results: dict[str, Any]) -> list[Row]:
    """``[target, measured, verdict]`` for every target."""
    return [row for judge in TARGETS for row in judge(results)]
