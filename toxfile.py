"""tox plugin: the ``py310`` ... ``py313`` environments also find pyenv's interpreters.

pyenv's ``python3.X`` shims refuse to start a version that is installed but not selected
(``pyenv global``), so tox's search of PATH finds no Python 3.10 even where pyenv has one. For
each ``py3X`` environment, the newest ``$PYENV_ROOT/versions/3.X.*`` is offered after ``py3X``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tox.config.loader.memory import MemoryLoader
from tox.config.sets import EnvConfigSet
from tox.plugin import impl
from tox.session.state import State


def _release(python: Path) -> tuple[int, ...]:
    # .../versions/3.10.13/bin/python3.10 -> (3, 10, 13)
    return tuple(int(part) for part in re.findall(r"\d+", python.parents[1].name))


@impl
def tox_add_env_config(env_conf: EnvConfigSet, state: State) -> None:
    factor = re.fullmatch(r"py3(\d+)", env_conf.name)
    if factor is None:
        return
    pyenv_root = os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv"  # pyenv's default
    minor = factor[1]
    found = sorted(
        Path(pyenv_root, "versions").glob(f"3.{minor}.*/bin/python3.{minor}"), key=_release
    )
    if found:
        env_conf.loaders.insert(0, MemoryLoader(base_python=[f"py3{minor}", str(found[-1])]))
