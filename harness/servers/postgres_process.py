"""A real PostgreSQL server on a free loopback port, from Debian's ``postgresql`` package.

``initdb`` + ``pg_ctl`` in a temporary directory with trust authentication on loopback only;
stopped by ``pg_ctl -m immediate`` (or killed) by the tests. As root the server runs as the
``postgres`` user, which PostgreSQL requires; the data directory is handed to that user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from harness.helpers import free_port

_INSTALL_HINT = "PostgreSQL is not installed (apt-get install -y postgresql)"


def _bin_dir() -> Path:
    """Debian keeps the server binaries out of PATH, one directory per major version."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("initdb")
    if on_path is None:
        raise RuntimeError(_INSTALL_HINT)
    return Path(on_path).parent


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


class PostgresServer:
    """One PostgreSQL cluster: ``start()``, ``stop()`` (immediate), ``kill()``, ``restart()``;
    ``url(database)`` and ``create_database()`` for each test's own database."""

    def __init__(self, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        self.bin = _bin_dir()
        self.port = port or free_port()
        # fsync off: a stop is a crash of the server, not of the machine, so what a commit wrote
        # to the OS survives it. synchronous_commit stays on: off, a crash loses recent commits.
        self.settings = {"fsync": "off", **(settings or {})}
        self.dir = Path(tempfile.mkdtemp(prefix="leaderfeed-pg-"))
        self.data = self.dir / "data"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "--auth=trust", "--no-sync", "-U", "postgres")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def run_tool(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one of the server's programs (``pg_basebackup``, ``pg_ctl promote``...), as the
        ``postgres`` user when root; raises RuntimeError with its stderr if it fails."""
        return self._run(tool, *args)

    def start(self) -> PostgresServer:
        options = [f"-p {self.port}", f"-k {self.dir}", "-c listen_addresses=127.0.0.1"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        log = str(self.dir / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", " ".join(options), "-w", "start")
        return self

    def stop(self) -> None:
        """Stop at once, as a crash would (no checkpoint); the data survives for ``start()``."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "lf") -> str:
        """A new empty database; its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return name

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join((self.dir / "server.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
