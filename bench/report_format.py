"""Formatting shared by the generated page: units, tables, and the stamp under every figure.

The stamp names the date, machine, versions, background load and settings a figure was
measured with; each part of the results keeps its own, as ``--only`` reruns one part.
"""

from __future__ import annotations

from typing import Any

BACKEND_TITLES = {
    "redis": "Redis",
    "mongodb-changestream": "MongoDB, change stream",
    "mongodb-capped": "MongoDB, capped collection",
    "rethinkdb": "RethinkDB",
    "memory": "memory (floor)",
}
SYSTEM_TITLES = {
    "leaderfeed": "celery-leaderfeed",
    "redbeat": "RedBeat",
    "single-beat": "single-beat",
}
FAULT_TITLES = {
    "steady": "steady state",
    "kill9": "kill -9",
    "sigterm": "SIGTERM",
    "sigstop": "SIGSTOP past the lease",
}
#: Versions that matter to every part, and to the periodic part only.
CORE_VERSIONS = ("python", "celery", "kombu", "redis-py", "redis-server", "celery-leaderfeed")
STORE_VERSIONS = ("pymongo", "SecantusDB", "rethinkdb driver")
PEER_VERSIONS = ("celery-redbeat", "single-beat")


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def sec(seconds: float | None, digits: int = 2) -> str:
    return "-" if seconds is None else f"{seconds:.{digits}f} s"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**MET**" if ok else "**MISSED**")


def one_line(text: str, limit: int = 240) -> str:
    """``text`` fit for a table cell: one line, no pipes, at most ``limit`` characters."""
    flat = " ".join(str(text).split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine(environment: dict[str, Any]) -> str:
    m = environment["machine"]
    vm = f", {m['hypervisor']} VM" if m.get("hypervisor") else ""
    return (
        f"{m['cpu']}{vm}, {m['cores']} cores, {m['memory_gib']} GiB RAM, "
        f"Linux {m['kernel']} ({m['os']})"
    )


def stamp(part: dict[str, Any], settings: str, versions: tuple[str, ...] = ()) -> str:
    """The line under every figure: date, machine, versions, settings."""
    environment = part["environment"]
    found = environment["versions"]
    listed = ", ".join(f"{name} {found.get(name, '?')}" for name in (*CORE_VERSIONS, *versions))
    quick = " (smoke run: `--quick`)" if part.get("quick") else ""
    load = part.get("background_load")
    other = (
        f" - other work on the machine meanwhile: {load['other_processes_cpu_pct']:g} % of a "
        f"core (load average {load['load_average_before'][0]:g} -> "
        f"{load['load_average_after'][0]:g})"
        if load
        else ""
    )
    return (
        f"> Measured {part['date']}{quick} in {part['duration_s']:.0f} s - {machine(environment)}"
        f" - {listed} (commit {environment['commit']}){other} - settings: {settings}"
    )
