"""python -m bench: run the benchmarks, write the results JSON and render the page from it.

A full run writes bench/results/results.json and docs/benchmarks.md; --quick, a smoke run of
every part, writes bench/results/results-quick.json and benchmarks-quick.md instead. --only
reruns some parts and merges them into the results; --report only renders the page. Every
process the bench starts is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from bench import (
    cost,
    elect,
    fast_failover,
    leader_only,
    leader_queue,
    metrics,
    periodic,
    report,
    send_cost,
    takeover,
)
from bench.background_load import BackgroundLoad
from bench.environment import describe, now_utc
from bench.processes import REPO, stop_all
from bench.servers import BACKENDS, redis_server
from bench.targets import targets

STORES = BACKENDS[:-1]  # all but memory
#: How much of each part a full and a quick run measure: each part's arguments.
PLANS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "handover": {"backends": list(BACKENDS), "trials": 50},
        "failover": {"backends": list(STORES), "trials": {"default": 10, "fast": 15}},
        "periodic": {
            "systems": list(periodic.SYSTEMS),
            "profiles": ["default", "fast"],
            "durations": periodic.Durations(),
        },
        # PostgreSQL: two or three connections (server processes) per member; 200 would
        # measure the 2-core machine forking 400 backends rather than the members.
        "cost": {
            "sizes": {b: [3, 50] if b.startswith("postgresql") else [3, 50, 200] for b in STORES},
            "window": 12.0,
            "settle": 3.0,
        },
        "leader_only": {"tasks": 2000, "rounds": 4},
        "leader_queue": {"samples": 100, "handovers": 5},
        "metrics": {"window": 60.0, "burst": 500},
        "elect": {"trials": 50},
        "send_cost": {"sends": 4000, "rounds": 8},
        "fast_failover": {"trials": 50, "control_trials": 10},
    },
    "quick": {
        "handover": {"backends": ["redis", "memory"], "trials": 5},
        "failover": {"backends": ["redis"], "trials": {"default": 2, "fast": 3}},
        "periodic": {
            "systems": list(periodic.SYSTEMS),
            "profiles": ["fast"],
            "durations": periodic.Durations(steady=3, observe=2, hold=1, horizon=8, settle=1),
        },
        "cost": {"sizes": {"redis": [3, 50]}, "window": 4.0, "settle": 1.0},
        "leader_only": {"tasks": 200, "rounds": 2},
        "leader_queue": {"samples": 30, "handovers": 2},
        "metrics": {"window": 15.0, "burst": 100},
        "elect": {"trials": 5},
        "send_cost": {"sends": 800, "rounds": 4},
        "fast_failover": {"trials": 5, "control_trials": 2},
    },
}
RUNS: dict[str, Callable[..., dict[str, Any]]] = {
    "handover": takeover.handover,
    "failover": takeover.failover,
    "periodic": periodic.run,
    "cost": cost.run,
    "leader_only": leader_only.run,
    "leader_queue": leader_queue.run,
    "metrics": metrics.run,
    "elect": elect.run,
    "send_cost": send_cost.run,
    "fast_failover": fast_failover.run,
}
#: The parts that run against the bench's one Redis (broker, and store of the periodic part).
ON_REDIS = (
    "periodic",
    "leader_only",
    "leader_queue",
    "metrics",
    "elect",
    "send_cost",
    "fast_failover",
)


#: The parts measured per store backend, which ``--backend`` narrows.
PER_BACKEND = ("handover", "failover", "cost")


def _for_backends(arguments: dict[str, Any], backends: list[str]) -> dict[str, Any]:
    """A part's arguments narrowed to ``backends`` (parts not per backend are unchanged)."""
    if "backends" in arguments:
        return {**arguments, "backends": [b for b in backends if b in BACKENDS]}
    if "sizes" in arguments:
        sizes = {b: arguments["sizes"][b] for b in backends if b in arguments["sizes"]}
        return {**arguments, "sizes": sizes}
    return arguments


def _measure(name: str, arguments: dict[str, Any], workdir: Path) -> dict[str, Any]:
    if name not in ON_REDIS:
        return RUNS[name](**arguments, workdir=workdir)
    with redis_server() as server:
        return RUNS[name](**arguments, redis_url=server.url, workdir=workdir)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)


def _run(args: argparse.Namespace, path: Path, results: dict[str, Any]) -> None:
    """Measure the parts ``args`` name into ``results``, saved to ``path`` after every part."""
    parts = args.only or list(RUNS)
    plan = PLANS["quick" if args.quick else "full"]
    if args.backend:
        plan = {name: _for_backends(arguments, args.backend) for name, arguments in plan.items()}
    command = "python -m bench" + " --quick" * args.quick
    command += "".join(f" --only {part}" for part in args.only or [])
    command += "".join(f" --backend {backend}" for backend in args.backend or [])
    workdir = Path(tempfile.mkdtemp(prefix="leaderfeed-bench-"))
    began = time.monotonic()
    print(f"bench: {command}; logs in {workdir}")
    try:
        results["environment"] = describe()
        for name in parts:
            print(f"[{name}]", flush=True)
            part_began, environment = time.monotonic(), describe()
            with BackgroundLoad() as load:
                data = _measure(name, plan[name], workdir)
            duration = round(time.monotonic() - part_began, 1)
            if args.backend and name in PER_BACKEND and name in results:
                # Other backends keep the figures of their own (earlier) run.
                data = {**data, "backends": {**results[name]["backends"], **data["backends"]}}
            results[name] = {
                "date": environment["date"],
                "environment": environment,
                "duration_s": duration,
                "quick": args.quick,
                "background_load": load.summary(),
                **data,
            }
            print(f"  ({duration:.0f} s)", flush=True)
            _save(path, results)
        duration = round(time.monotonic() - began, 1)
        results["run"] = {
            "command": command,
            "finished": now_utc(),
            "duration_s": duration,
            "parts": parts,
        }
        _save(path, results)
    finally:
        stop_all()
        if args.keep:
            print(f"bench: logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"bench: finished in {time.monotonic() - began:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (a few minutes)")
    parser.add_argument("--only", action="append", choices=list(RUNS), help="run only this part")
    parser.add_argument("--report", action="store_true", help="only render the page")
    parser.add_argument("--keep", action="store_true", help="keep the logs of the processes")
    parser.add_argument(
        "--backend",
        action="append",
        choices=list(BACKENDS),
        help="measure the per-store parts (handover, failover, cost) on this backend only, "
        "keeping the other backends' earlier figures",
    )
    args = parser.parse_args(argv)

    results_dir = REPO / "bench" / "results"
    suffix = "-quick" if args.quick else ""
    path = results_dir / f"results{suffix}.json"
    page = results_dir / "benchmarks-quick.md" if args.quick else REPO / "docs/benchmarks.md"
    image = (results_dir if args.quick else REPO / "docs/img") / f"failover-timeline{suffix}.png"
    results = json.loads(path.read_text()) if path.exists() and (args.only or args.report) else {}
    if not args.report:
        signal.signal(signal.SIGTERM, _terminate)
        try:
            _run(args, path, results)
        except KeyboardInterrupt:
            print("bench: interrupted; every process it started was stopped", file=sys.stderr)
            return 130
    report.write(results, page, image, str(path.relative_to(REPO)))
    for target, measured, verdict in targets(results):
        print(f"  {verdict.strip('*'):<12} {target}: {measured}")
    written = (str(each.relative_to(REPO)) for each in (path, page, image))
    print(f"bench: wrote {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
