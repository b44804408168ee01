"""``python -m harness.servers.rethinkdb_wire --host 127.0.0.1 --port PORT [--password PW]``"""

from __future__ import annotations

import argparse
import asyncio
import sys

from .server import WireServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.servers.rethinkdb_wire",
        description="In-memory RethinkDB wire-protocol TEST DOUBLE (see README.md).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=28015, help="0 picks a free port")
    parser.add_argument("--password", default="", help='password of user "admin"')
    parser.add_argument(
        "--status-file",
        default=None,
        help="JSON file rewritten with pid/port/drops when ready and "
        "after each SIGUSR1 connection drop",
    )
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="stop when the parent process exits"
    )
    args = parser.parse_args(argv)
    server = WireServer(
        args.host, args.port, args.password, args.status_file, args.exit_with_parent
    )
    try:
        asyncio.run(server.run())
    except OSError as error:
        print(f"rethinkdb_wire: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
