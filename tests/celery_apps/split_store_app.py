"""``beat_app`` whose embedded beat process reads another key prefix than its worker.

The worker elects in ``leaderfeed:{NAME}``; its ``-B`` beat child resolves the same settings but
gets ``key_prefix="elsewhere"``, so the store it fences its claims on never shows the worker's
term and every claim is refused - the state a beat is in whenever it does not see the store of
its election (a ``memory://`` store used to do this). Configured like ``beat_app``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from billiard.process import current_process

from tests.celery_apps.beat_app import app, pulse

__all__ = ["app", "pulse"]


class _PerProcessOptions(Mapping[str, Any]):
    """Backend options read at resolve time: another key prefix in the beat process."""

    def _options(self) -> dict[str, Any]:
        in_beat = current_process().name == "Beat"
        return {"key_prefix": "elsewhere" if in_beat else "leaderfeed"}

    def __getitem__(self, key: str) -> Any:
        return self._options()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options())

    def __len__(self) -> int:
        return len(self._options())


app.conf.leaderfeed_backend_options = _PerProcessOptions()
