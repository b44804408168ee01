"""``python -m bench.metrics_idle PORT``: a process that serves the leaderfeed metrics endpoint
on PORT and does nothing else (PORT 0: nothing at all), for the idle cost in bench/metrics.py."""

from __future__ import annotations

import sys
import threading

from celery_leaderfeed.celery.metrics import MetricsEndpoint


def _figures() -> dict[str, object]:
    return {"election": "bench", "member": "idle", "is_leader": False, "term": 1}


def main() -> None:
    port = int(sys.argv[1])
    if port:
        MetricsEndpoint(port, _figures).start()
    print("serving", flush=True)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
