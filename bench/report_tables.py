"""The tables of the generated page, one function per part, plus the periodic part's
observations and cross-check written out from the data."""

from __future__ import annotations

from typing import Any

from bench.cost import layout
from bench.report_format import (
    BACKEND_TITLES,
    FAULT_TITLES,
    PEER_VERSIONS,
    STORE_VERSIONS,
    SYSTEM_TITLES,
    ms,
    one_line,
    pct,
    sec,
    stamp,
    table,
)

#: The handover target (median <= 50 ms); single trials above it are listed with their logs.
HANDOVER_BOUND = 0.050


def handover_section(part: dict[str, Any]) -> str:
    rows = []
    for backend, result in part["backends"].items():
        title = BACKEND_TITLES.get(backend, backend)
        if "error" in result:
            rows.append([title, "not measured", "-", "-", "-", "-", one_line(result["error"])])
            continue
        s = result["summary"]
        rows.append(
            [
                title,
                ms(s["median"]),
                ms(s["p95"]),
                ms(s["max"]),
                str(s["n"]),
                str(len(result.get("aborted_trials", []))),
                "none"
                if not result["safety_violations"]
                else "; ".join(result["safety_violations"]),
            ]
        )
    st = part["settings"]
    settings = (
        f"heartbeat {st['heartbeat_interval']:g} s, election timeout "
        f"{st['election_timeout_min']:g}-{st['election_timeout_max']:g} s (package defaults), "
        f"{st['members']} members, {st['trials']} trials per backend"
    )
    return "\n\n".join(
        [
            table(
                [
                    "Backend",
                    "Median",
                    "p95",
                    "Max",
                    "Trials",
                    "Aborted trials",
                    "Safety violations (checker)",
                ],
                rows,
            ),
            *aborted_notes({BACKEND_TITLES.get(b, b): r for b, r in part["backends"].items()}),
            *slow_trials(
                {
                    BACKEND_TITLES.get(b, b): (r, HANDOVER_BOUND)
                    for b, r in part["backends"].items()
                    if "samples" in r
                }
            ),
            stamp(part, settings, STORE_VERSIONS),
        ]
    )


def slow_trials(cells: dict[str, tuple[dict[str, Any], float]]) -> list[str]:
    """Every trial slower than its cell's bound, with what the members logged meanwhile."""
    lines = []
    for label, (cell, bound) in cells.items():
        logged = {note["trial"]: note["logged"] for note in cell.get("trials_with_warnings", [])}
        for index, seconds in enumerate(cell.get("samples", []), start=1):
            if seconds <= bound:
                continue
            said = "; ".join(logged.get(index, [])) or "nothing"
            lines.append(
                f"* {label}, trial {index}: {seconds * 1000:.0f} ms (bound {bound * 1000:.0f} ms)"
                f" - the members logged during it: {one_line(said, 600)}"
            )
    if not lines:
        return []
    heading = "Trials over the bound, and what the members logged during them:"
    out = [heading + "\n\n" + "\n".join(lines)]
    if any("went quiet" in line for line in lines):
        out.append(QUIET_FEEDS)
    return out


#: Why "the change feed went quiet" goes with a slow failover (see the report of the bench).
QUIET_FEEDS = (
    '"The change feed went quiet" is what a follower logs when its claim is refused because '
    "the record's version moved although its feed reported nothing for at least a heartbeat "
    "(`celery_leaderfeed/election.py`, `_claim`); it then drops the subscription, re-reads "
    "the record and waits a full election timeout again. When *every* follower logs it, the "
    "record changed without any feed saying so - most likely because in capped mode a write "
    "and its announcement "
    "are two operations (the update, then an insert into the capped collection), so a leader "
    'killed between the two leaves its last renewal unannounced (the backend accepts that "a '
    'lost announcement only delays followers") and the failover takes about two election '
    "timeouts. When only one follower logs it, it lost a contested claim to the other one - "
    "after a crash every follower has seen no change for longer than a heartbeat, so the "
    "heuristic takes the loser of a race for a deaf feed."
)


def aborted_notes(cells: dict[str, dict[str, Any]]) -> list[str]:
    """One paragraph listing every aborted trial and why (nothing if there was none)."""
    lines = [
        f"* {label}: {reason}"
        for label, cell in cells.items()
        for reason in cell.get("aborted_trials", [])
    ]
    if not lines:
        return []
    return [
        "Aborted trials (not counted; each was replaced by another trial):\n\n"
        + "\n".join(one_line(line, 1500) for line in lines)
    ]


def failover_section(part: dict[str, Any]) -> str:
    rows = []
    for backend, cells in part["backends"].items():
        title = BACKEND_TITLES.get(backend, backend)
        if "error" in cells:
            failed = one_line(cells["error"])
            rows.append([title, "-", "not measured", "-", "-", "-", "-", "-", failed])
        for name, timing in part["settings"].items():
            cell = cells.get(name)
            if not cell:
                continue
            s = cell["summary"]
            bound = timing["election_timeout_max"] + 0.1
            rows.append(
                [
                    title,
                    f"{timing['heartbeat_interval']:g} s / {timing['election_timeout_min']:g}-"
                    f"{timing['election_timeout_max']:g} s",
                    sec(s["median"], 3),
                    sec(s["p95"], 3),
                    sec(s["max"], 3),
                    str(s["n"]),
                    f"{sec(bound)}: {'met' if s['max'] <= bound else 'MISSED'}",
                    str(len(cell.get("aborted_trials", []))),
                    "none"
                    if not cell["safety_violations"]
                    else "; ".join(cell["safety_violations"]),
                ]
            )
    settings = ", ".join(
        f"{name}: heartbeat {t['heartbeat_interval']:g} s, election timeout "
        f"{t['election_timeout_min']:g}-{t['election_timeout_max']:g} s "
        f"({part['trials'][name]} trials)"
        for name, t in part["settings"].items()
    )
    return "\n\n".join(
        [
            table(
                [
                    "Backend",
                    "Heartbeat / election timeout",
                    "Median",
                    "p95",
                    "Max",
                    "Trials",
                    "Target (max + 100 ms)",
                    "Aborted trials",
                    "Safety violations",
                ],
                rows,
            ),
            *aborted_notes(
                {
                    f"{BACKEND_TITLES.get(backend, backend)}, {name}": cell
                    for backend, cells in part["backends"].items()
                    for name, cell in cells.items()
                    if isinstance(cell, dict)
                }
            ),
            *slow_trials(
                {
                    f"{BACKEND_TITLES.get(backend, backend)}, {name}": (
                        cell,
                        part["settings"][name]["election_timeout_max"] + 0.1,
                    )
                    for backend, cells in part["backends"].items()
                    for name, cell in cells.items()
                    if isinstance(cell, dict) and "samples" in cell
                }
            ),
            stamp(part, f"{part['members']} members; {settings}", STORE_VERSIONS),
        ]
    )


def _takeover(w: dict[str, Any]) -> str:
    if w["kind"] == "steady":
        return "-"
    if w.get("takeover_s") is None:
        return f"no takeover within {w['horizon_s']:g} s"
    return sec(w["takeover_s"])


def _faulted_after(w: dict[str, Any]) -> str:
    if w["kind"] == "steady":
        return "-"
    text = str(w.get("late_sends_by_faulted", 0))
    if w.get("sends_after_resume_by_faulted"):
        text += f" ({w['sends_after_resume_by_faulted']} after SIGCONT)"
    return text


def periodic_section(part: dict[str, Any]) -> str:
    rows = []
    for key, session in part["sessions"].items():
        system, profile = key.split("/")
        title = f"{SYSTEM_TITLES.get(system, system)}, {profile}"
        if "error" in session:
            failed = one_line(session["error"])
            rows.append([title, "-", "not measured", "-", "-", "-", "-", "-", "-", failed])
            continue
        for w in session["windows"]:
            headers = w.get("headers")
            rows.append(
                [
                    title,
                    FAULT_TITLES[w["kind"]],
                    _takeover(w),
                    sec(w.get("gap_s")) if w["kind"] != "steady" else "-",
                    str(w["sends"]),
                    str(w["inferred"]["duplicates"]),
                    str(w["inferred"]["missed"]),
                    (
                        f"{headers['duplicates']} / {headers['lost']} / {headers['coalesced']}"
                        if headers
                        else "no headers"
                    ),
                    _faulted_after(w),
                    "; ".join(w["notes"]) or "",
                ]
            )
    settings = "; ".join(
        f"{SYSTEM_TITLES[system]} {profile}: {conf['description']}"
        for system, profiles in part["settings"].items()
        for profile, conf in profiles.items()
    )
    d = part["durations"]
    settings += (
        f". Periodic task every {part['period']:g} s; {d['steady']:g} s of steady state; "
        f"each fault observed {d['observe']:g} s after the takeover; SIGSTOP held "
        f"{d['hold']:g} s past the takeover; horizon {d['horizon']:g} s"
    )
    return "\n\n".join(
        [
            table(
                [
                    "System, settings",
                    "Window",
                    "Takeover",
                    "Gap",
                    "Sends",
                    "Duplicates (inferred)",
                    "Missed (inferred)",
                    "Duplicates / lost / coalesced (headers)",
                    "Sends by the faulted node after the fault",
                    "Notes",
                ],
                rows,
            ),
            stamp(part, settings, PEER_VERSIONS),
        ]
    )


def cross_check(part: dict[str, Any]) -> str:
    """Where inference and headers disagree for celery-leaderfeed, and why."""
    lines = []
    for key, session in part["sessions"].items():
        if not key.startswith("leaderfeed/") or "windows" not in session:
            continue
        for w in session["windows"]:
            h, i = w["headers"], w["inferred"]
            if (h["duplicates"], h["lost"] + h["coalesced"]) != (i["duplicates"], i["missed"]):
                lines.append(
                    f"* {key.split('/')[1]}, {FAULT_TITLES[w['kind']]}: inference "
                    f"{i['duplicates']} duplicate(s) / {i['missed']} missed; headers "
                    f"{h['duplicates']} duplicate(s), {h['lost']} lost, {h['coalesced']} "
                    "coalesced."
                )
            else:
                lines.append(
                    f"* {key.split('/')[1]}, {FAULT_TITLES[w['kind']]}: both agree "
                    f"({i['duplicates']} duplicate(s), {i['missed']} run(s) not sent on time, "
                    f"{h['coalesced']} of them coalesced into a catch-up send)."
                )
    return "\n".join(lines)


def cost_section(part: dict[str, Any]) -> tuple[str, str]:
    steady_rows = []
    cold_rows = []
    for backend, cells in part["backends"].items():
        title = BACKEND_TITLES.get(backend, backend)
        if "error" in cells:
            failed = "not measured: " + one_line(cells["error"])
            steady_rows.append([title, "-", failed, *["-"] * 10])
        for size, cell in cells.items():
            if size == "error":
                continue
            if "error" in cell:
                failed = "not measured: " + one_line(cell["error"])
                steady_rows.append([title, size, failed, *["-"] * 10])
                continue
            s, c = cell["steady"], cell["cold_start"]
            shape = (
                f"{len(cell['layout'])} processes"
                if max(cell["layout"]) == 1
                else f"threads in {len(cell['layout'])} processes"
            )
            ops = s["store_ops_per_s"]
            steady_rows.append(
                [
                    title,
                    f"{size} ({shape})",
                    pct(s["cpu_pct_per_member"]),
                    pct(s["cpu_pct_idle_follower"]),
                    pct(s["cpu_pct_leader_process"]),
                    pct(s["server_cpu_pct"]),
                    "not measured" if ops is None else f"{ops:g}",
                    f"{s['engine_calls_per_s']:.1f}",
                    f"{s['feed_events_per_s']:.0f}",
                    f"{s['rss_mib_per_process']:.1f} MiB",
                    f"{s['rss_mib_per_member']:.1f} MiB",
                    f"{s['renewals_failed']} / {s['resubscribes']} / {s['terms']}",
                    (
                        f"{s['in_window']['claims']} / {s['in_window']['resubscribes']}"
                        if "in_window" in s
                        else "-"
                    ),
                ]
            )
            cold_rows.append(
                [
                    title,
                    size,
                    sec(c["holds_s"], 3),
                    sec(c["acts_s"], 3),
                    f"{c['claims']} / {c['claims_won']} ({c['contested_claims']} contested)",
                    str(c["leaders"]),
                ]
            )
    st = part["settings"]
    settings = (
        f"heartbeat {st['heartbeat_interval']:g} s, election timeout "
        f"{st['election_timeout_min']:g}-{st['election_timeout_max']:g} s; steady window "
        f"{st['window_s']:g} s after {st['settle_s']:g} s of settling; N = 3: one member per "
        f"process; larger N: threads over {st['threads_over_processes']} processes "
        f"(50 -> {layout(50)}, 200 -> {layout(200)})"
    )
    steady = table(
        [
            "Backend",
            "Members",
            "CPU per member",
            "Idle follower process",
            "Leader's process",
            "Server CPU",
            "Store ops/s (server side)",
            "Engine store calls/s",
            "Feed events/s",
            "RSS per process (max)",
            "RSS per member",
            "From T0 to the window's end: renewals failed / feeds lost / terms",
            "In the window: claims / feeds lost",
        ],
        steady_rows,
    )
    cold = table(
        [
            "Backend",
            "Members",
            "One member holds the record",
            "The leader may act",
            "Claims sent / won",
            "Members that ever held it",
        ],
        cold_rows,
    )
    line = stamp(part, settings, STORE_VERSIONS)
    return steady + "\n\n" + line, cold + "\n\n" + line


def ops_sources(part: dict[str, Any]) -> str:
    lines = []
    for backend, cells in part["backends"].items():
        for size, cell in cells.items():
            if size == "error" or "steady" not in cell:
                continue
            s = cell["steady"]
            kinds = s["store_ops_by_kind"]
            detail = ", ".join(f"{k} {v:g}" for k, v in kinds.items()) if kinds else "-"
            if backend == "redis":
                detail += " - hello counts connection handshakes"
            elif backend.startswith("mongodb"):
                detail += " - command includes the drivers' monitoring (hello) and handshakes"
            lines.append(
                f"* {BACKEND_TITLES.get(backend, backend)}, N = {size}: {detail} "
                f"({s['store_ops_source']})"
            )
    return "\n".join(lines)


def leader_only_section(part: dict[str, Any]) -> str:
    p, g, d = part["plain"], part["guarded"], part["difference"]
    check = part["check_in_pool_process"]

    def us(seconds: float) -> str:
        return f"{seconds * 1e6:.1f} us"

    rows = [
        [
            "Celery's task runtime, median",
            us(p["runtime_median_s"]),
            us(g["runtime_median_s"]),
            us(d["runtime_median_s"]),
        ],
        [
            "Celery's task runtime, mean",
            us(p["runtime_mean_s"]),
            us(g["runtime_mean_s"]),
            us(d["runtime_mean_s"]),
        ],
        [
            "Wall time per task (throughput, median of rounds)",
            us(p["wall_per_task_s"]),
            us(g["wall_per_task_s"]),
            us(d["wall_per_task_s"]),
        ],
        [
            "Direct call of the task body in the pool process",
            us(check["plain.run(0)"]),
            us(check["guarded.run(0)"]),
            us(d["direct_call_s"]),
        ],
    ]
    text = table(["Per task", "plain", "@leader_only", "difference"], rows)
    text += (
        "\n\nThe leadership check alone, in the pool process (best of 5 x "
        f"timeit): `current_lease(app)` {us(check['current_lease(app)'])}, "
        f"`current_lease(app).is_leader()` {us(check['current_lease(app).is_leader()'])} per "
        f"call (leader: {check['is_leader']}). Wall times per round: plain "
        + ", ".join(us(x) for x in p["wall_per_task_by_round_s"])
        + "; @leader_only "
        + ", ".join(us(x) for x in g["wall_per_task_by_round_s"])
        + ". "
    )
    spread = max(p["wall_per_task_by_round_s"]) - min(p["wall_per_task_by_round_s"])
    if abs(d["wall_per_task_s"]) < spread:
        text += (
            f"The wall-time difference ({us(d['wall_per_task_s'])}) is smaller than the spread "
            f"between rounds of the same kind ({us(spread)}): per task, the decorator is lost in "
            "the broker round trip; the runtime rows isolate it."
        )
    settings = (
        f"{part['tasks_per_kind']} tasks of each kind in {part['rounds']} alternating rounds; "
        f"{part['pool']}; Redis broker on loopback; leaderfeed defaults"
    )
    return text + "\n\n" + stamp(part, settings)


def observations(part: dict[str, Any]) -> str:
    """What the periodic sessions show beyond the table, in words generated from the data."""
    lines = []
    for key, session in part["sessions"].items():
        if "windows" not in session:
            continue
        system, profile = key.split("/")
        title = f"{SYSTEM_TITLES.get(system, system)} ({profile})"
        for w in session["windows"]:
            if w["kind"] == "steady":
                continue
            fault = FAULT_TITLES[w["kind"]]
            if w.get("takeover_s") is None and not w.get("sends_after_resume_by_faulted"):
                lines.append(
                    f"* {title}, {fault}: no other node sent within {w['horizon_s']:g} s "
                    f"({w['inferred']['missed']} runs missed in the window)."
                )
            late = w.get("late_sends_by_faulted", 0)
            if late and w["kind"] == "kill9":
                lines.append(
                    f"* {title}, kill -9: the killed node's processes kept sending: {late} "
                    f"send(s) after the kill, {w['inferred']['duplicates']} duplicate(s) "
                    f"inferred; still running at the end of the window: "
                    f"{', '.join(w['leftovers']) or 'nothing'}."
                )
            if late and w["kind"] == "sigterm" and system == "leaderfeed":
                lines.append(
                    f"* {title}, SIGTERM: the stopping node sent {late} more run(s) after "
                    "SIGTERM - sent under its lease before its hand-over (which begins at the "
                    "signal) marked it follower, so these are its own runs, not duplicates "
                    f"(headers: {w['headers']['duplicates']} duplicate(s)); the gap stayed "
                    f"{sec(w.get('gap_s'))}."
                )
            after_resume = w.get("sends_after_resume_by_faulted")
            if after_resume and w.get("takeover_s") is not None:
                lines.append(
                    f"* {title}, SIGSTOP: after SIGCONT the paused node sent {after_resume} "
                    f"run(s) although another node had taken over "
                    f"({w['inferred']['duplicates']} duplicate(s) inferred in the window)."
                )
            elif after_resume:
                lines.append(
                    f"* {title}, SIGSTOP: no other node sent within {w['horizon_s']:g} s; after "
                    f"SIGCONT the paused node went on sending ({after_resume} run(s) in the "
                    f"window, {w['inferred']['missed']} runs missed)."
                )
            for note in w["notes"]:
                if "exited by itself" in note:
                    lines.append(f"* {title}, {fault}: {note}.")
    return "\n".join(lines)


def cost_observations(part: dict[str, Any]) -> str:
    """Cells where the store did not keep up, in words generated from the data."""
    lines = []
    for backend, cells in part["backends"].items():
        for size, cell in cells.items():
            if size == "error" or "steady" not in cell:
                continue
            s, c = cell["steady"], cell["cold_start"]
            window = s.get("in_window", {})
            trouble = (
                c["leaders"] > 1
                or s["terms"] > 1
                or s["renewals_failed"]
                or s["resubscribes"]
                or c["contested_claims"] > max(2, int(size) // 10)
            )
            if not trouble:
                continue
            lines.append(
                f"* {BACKEND_TITLES.get(backend, backend)}, N = {size}: server CPU "
                f"{pct(s['server_cpu_pct'])}; from the cold start to the end of the window "
                f"{c['claims']} claims ({c['contested_claims']} contested), {c['leaders']} "
                f"member(s) held the record, {s['terms']} term(s), {s['renewals_failed']} "
                f"renewal(s) failed and feeds were lost {s['resubscribes']} time(s) (the member "
                "logs show subscribes, claims and reads timing out at the 0.25 s operation "
                "timeout while the server is this busy)"
                + (
                    f"; inside the steady window alone {window['claims']} claim(s) and "
                    f"{window['resubscribes']} lost feed(s) - a member whose feed is down reads "
                    "the record every heartbeat and, when those reads time out too, claims once "
                    "its election timer runs out, which adds to the load that slowed it down"
                    if window
                    else ""
                )
                + "."
            )
    return "\n".join(lines) or "Every cell converged to one term with no failed renewal."
