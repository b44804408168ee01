"""Write ``requirements/ci.txt``: the newest releases that satisfy pyproject.toml, pinned.

Run by ``tox -e lock`` (or ``python requirements/lock.py`` with uv installed). One universal
resolution covers every supported Python (3.10-3.13): where releases differ by version, the
lock holds one line per version range, with a marker.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib
from uv import find_uv_bin

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "ci.txt"
HEADER = """\
# CI's lock: the exact release of every package CI installs - the `dev` extra (tools and the
# `test` extra) and the build backend. Why: pyproject.toml keeps the loose ranges users need,
# so without a lock every new release upstream reaches CI unasked and can turn main red on a
# commit that changed nothing (redis-py 8.2's new type hints once did).
# Used as: PIP_CONSTRAINT=requirements/ci.txt pip install -e '.[test]' (also tox, .ci/run).
# Regenerate with `tox -e lock`, then run CI; `tox -e latest` runs mypy and the suite against
# the newest releases without this file, to learn on purpose what a new release breaks.
"""


def main() -> int:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build_backend = "\n".join(pyproject["build-system"]["requires"])
    command = [find_uv_bin(), "pip", "compile", "--quiet", "--no-header", "--universal"]
    command += ["--python-version", "3.10", "--extra", "dev", "pyproject.toml", "-"]
    resolved = subprocess.run(  # noqa: S603 - a fixed command line
        command,
        input=build_backend,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if resolved.returncode != 0:
        sys.stderr.write(resolved.stderr)
        return resolved.returncode
    LOCK.write_text(HEADER + resolved.stdout)
    print(f"wrote {LOCK.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
