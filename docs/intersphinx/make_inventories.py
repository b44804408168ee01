"""Write the small intersphinx inventories in this directory.

Run: ``python docs/intersphinx/make_inventories.py``.

Why hand-written inventories: the documentation links to Celery, kombu and redis-py the way
Celery's own documentation does (intersphinx), but the build must work offline and from a
clean clone, and the machines that build it cannot fetch ``objects.inv`` from those sites. So
the few objects these pages name are listed here, with their public URLs, and written in
Sphinx's inventory format (version 2); each file is read back with
``sphinx.util.inventory.InventoryFile`` before it is kept. Add an object here (and run the
script) when a page starts naming one; a name missing here is a plain literal, not a warning.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: inventory file -> (project, version, base URL, [(name, domain:role, path#anchor)]).
#: A path ending in "#$" has "$" replaced by the name, as Sphinx itself writes them.
INVENTORIES: dict[str, tuple[str, str, str, list[tuple[str, str, str]]]] = {
    "celery.inv": (
        "Celery",
        "5.5",
        "https://docs.celeryq.dev/en/stable/",
        [
            ("celery.Celery", "py:class", "reference/celery.html#$"),
            ("celery.app.task.Task", "py:class", "reference/celery.app.task.html#$"),
            ("celery.beat", "py:module", "reference/celery.beat.html#module-celery.beat"),
            ("celery.beat.Scheduler", "py:class", "reference/celery.beat.html#$"),
            ("celery.beat.ScheduleEntry", "py:class", "reference/celery.beat.html#$"),
            ("celery.bootsteps.StartStopStep", "py:class", "reference/celery.bootsteps.html#$"),
            ("celery.exceptions.Ignore", "py:exception", "reference/celery.exceptions.html#$"),
            ("celery.signals", "py:module", "reference/celery.signals.html#module-celery.signals"),
        ],
    ),
    "kombu.inv": (
        "Kombu",
        "5.5",
        "https://docs.celeryq.dev/projects/kombu/en/stable/",
        [
            ("kombu.Queue", "py:class", "reference/kombu.html#$"),
            ("kombu.Connection", "py:class", "reference/kombu.html#$"),
        ],
    ),
    "redis.inv": (
        "redis-py",
        "6.0",
        "https://redis.readthedocs.io/en/stable/",
        [
            ("redis.Redis", "py:class", "connections.html#$"),
            ("redis.sentinel.Sentinel", "py:class", "connections.html#$"),
            ("redis.cluster.RedisCluster", "py:class", "connections.html#$"),
        ],
    ),
}


def render(project: str, version: str, objects: list[tuple[str, str, str]]) -> bytes:
    """One inventory file's bytes (Sphinx inventory version 2)."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = "".join(f"{name} {role} 1 {path} -\n" for name, role, path in sorted(objects))
    return header.encode() + zlib.compress(body.encode())


def main() -> int:
    from sphinx.util.inventory import InventoryFile  # noqa: PLC0415 - docs extra

    for filename, (project, version, base, objects) in INVENTORIES.items():
        data = render(project, version, objects)
        loaded = InventoryFile.loads(data, uri=base)
        found = {name for entries in loaded.data.values() for name in entries}
        assert found == {name for name, _, _ in objects}, (filename, found)
        (HERE / filename).write_bytes(data)
        print(f"wrote docs/intersphinx/{filename}: {len(objects)} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
