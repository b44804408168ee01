"""``python -m bench``: run every benchmark, write ``bench/results/results.json`` and
``docs/benchmarks.md`` (with ``docs/img/failover-timeline.png``).

``--quick`` runs a short smoke version of every part (a few trials, short windows) and writes
``bench/results/results-quick.json`` and ``bench/results/benchmarks-quick.md`` instead, so the
published page only ever shows a full run. ``--only NAME`` (repeatable) runs some parts and
merges them into the existing results; ``--report`` only renders the page from the results.
Every server and process the bench starts is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import cost, failover, handover, leader_only, periodic, report
from bench.background_load import BackgroundLoad
from bench.environment import REPO, describe, now_utc
from bench.processes import stop_all
from bench.servers import BACKENDS, redis_server

PARTS = ("handover", "failover", "periodic", "cost", "leader_only")
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs"


@dataclass(frozen=True)
class Plan:
    """How much of each part to run."""

    handover_trials: int
    handover_backends: tuple[str, ...]
    failover_trials: dict[str, int]
    failover_backends: tuple[str, ...]
    periodic_systems: tuple[str, ...]
    periodic_profiles: tuple[str, ...]
    periodic_durations: periodic.Durations
    cost_sizes: dict[str, list[int]]
    cost_window: float
    cost_settle: float
    leader_only_tasks: int
    leader_only_rounds: int


SERVER_BACKENDS = tuple(b for b in BACKENDS if b != "memory")

FULL = Plan(
    handover_trials=50,
    handover_backends=BACKENDS,
    failover_trials={"default": 10, "fast": 15},
    failover_backends=SERVER_BACKENDS,
    periodic_systems=periodic.SYSTEMS,
    periodic_profiles=("default", "fast"),
    periodic_durations=periodic.Durations(),
    cost_sizes={backend: [3, 50, 200] for backend in SERVER_BACKENDS},
    cost_window=12.0,
    cost_settle=3.0,
    leader_only_tasks=2000,
    leader_only_rounds=4,
)
QUICK = Plan(
    handover_trials=5,
    handover_backends=("redis", "memory"),
    failover_trials={"default": 2, "fast": 3},
    failover_backends=("redis",),
    periodic_systems=periodic.SYSTEMS,
    periodic_profiles=("fast",),
    periodic_durations=periodic.Durations(steady=3, observe=2, hold=1, horizon=8, settle=1),
    cost_sizes={"redis": [3, 50]},
    cost_window=4.0,
    cost_settle=1.0,
    leader_only_tasks=200,
    leader_only_rounds=2,
)


def _part(name: str, plan: Plan, workdir: Path) -> dict[str, Any]:
    if name == "handover":
        return handover.run(list(plan.handover_backends), plan.handover_trials, workdir)
    if name == "failover":
        return failover.run(list(plan.failover_backends), plan.failover_trials, workdir)
    if name == "cost":
        return cost.run(
            list(plan.cost_sizes), plan.cost_sizes, plan.cost_window, plan.cost_settle, workdir
        )
    with redis_server() as server:
        if name == "periodic":
            result = periodic.run(
                list(plan.periodic_systems),
                list(plan.periodic_profiles),
                plan.periodic_durations,
                server.url,
                workdir,
            )
        else:
            result = leader_only.run(
                server.url, plan.leader_only_tasks, plan.leader_only_rounds, workdir
            )
    return result


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 3 min)")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only this part")
    parser.add_argument("--report", action="store_true", help="only render the page")
    parser.add_argument("--keep", action="store_true", help="keep the logs of the processes")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    results_path = RESULTS / ("results-quick.json" if args.quick else "results.json")
    page = RESULTS / "benchmarks-quick.md" if args.quick else DOCS / "benchmarks.md"
    image = (
        RESULTS / "failover-timeline-quick.png"
        if args.quick
        else DOCS / "img/failover-timeline.png"
    )
    results: dict[str, Any] = {}
    if results_path.exists() and (args.only or args.report):
        results = json.loads(results_path.read_text())

    if not args.report:
        signal.signal(signal.SIGTERM, _terminate)
        workdir = Path(tempfile.mkdtemp(prefix="leaderfeed-bench-"))
        parts = args.only or list(PARTS)
        began = time.monotonic()
        kind = "quick" if args.quick else "full"
        print(f"bench: {kind} run of {', '.join(parts)}; logs in {workdir}")
        try:
            results["environment"] = describe()
            for name in parts:
                print(f"[{name}]", flush=True)
                part_began = time.monotonic()
                environment = describe()
                with BackgroundLoad() as load:
                    data = _part(name, plan, workdir)
                results[name] = {
                    "date": environment["date"],
                    "environment": environment,
                    "duration_s": round(time.monotonic() - part_began, 1),
                    "quick": args.quick,
                    "background_load": load.summary(),
                    **data,
                }
                print(f"  ({results[name]['duration_s']:.0f} s)", flush=True)
                _save(results_path, results)
            results["run"] = {
                "command": "python -m bench"
                + (" --quick" if args.quick else "")
                + "".join(f" --only {p}" for p in args.only or []),
                "finished": now_utc(),
                "duration_s": round(time.monotonic() - began, 1),
                "parts": parts,
            }
            _save(results_path, results)
        except KeyboardInterrupt:
            print("bench: interrupted; stopping every process it started", file=sys.stderr)
            return 130
        finally:
            stop_all()
            if args.keep:
                print(f"bench: logs kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        print(f"bench: finished in {time.monotonic() - began:.0f} s")

    report.write(results, page, image, str(results_path.relative_to(REPO)))
    print(
        f"bench: wrote {results_path.relative_to(REPO)}, {page.relative_to(REPO)}, "
        f"{image.relative_to(REPO)}"
    )
    return 0


def _save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
