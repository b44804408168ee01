"""The failover picture, drawn with matplotlib from the timeline the periodic part recorded for
celery-leaderfeed (the default profile when measured): a row per node, bars while the leader
record names it, a dot per send (a diamond for a catch-up send), due times, the kill -9."""

from __future__ import annotations

import itertools
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

BEFORE, AFTER = 4.0, 9.0


def pick_session(periodic: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The leaderfeed session whose timeline to draw (default profile first)."""
    for key in ("leaderfeed/default", "leaderfeed/fast"):
        session = periodic.get("sessions", {}).get(key)
        if session and "timeline" in session:
            return key, session
    return None


def draw(periodic: dict[str, Any], path: Path, stamp: str) -> str | None:
    """Draw the PNG at ``path``; the session it shows (None: nothing to draw)."""
    picked = pick_session(periodic)
    if picked is None:
        return None
    key, session = picked
    timeline = session["timeline"]
    kill = next((f for f in timeline["faults"] if f["kind"] == "kill9"), None)
    if kill is None:
        return None
    origin = kill["at"]
    later = [f["at"] for f in timeline["faults"] if f["at"] > origin]
    after_kill = min([AFTER, *(at - origin - 0.2 for at in later)])  # stop before the next fault
    lo, hi = origin - BEFORE, origin + after_kill
    sends = [s for s in timeline["sends"] if lo <= s[0] <= hi]
    changes = timeline["leadership"]
    named = {c[1] for c in changes if c[1] and lo <= c[0] <= hi}
    present = {
        name
        for name, started, removed in timeline.get("nodes", [])
        if started <= hi and (removed is None or removed >= lo)
    }
    nodes = sorted(
        {s[1] for s in sends} | named | present | {kill["node"]},
        key=lambda n: int(n[1:]) if n[1:].isdigit() else 0,
    )
    rows = {node: index for index, node in enumerate(nodes)}

    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.75 * len(nodes)))
    for (start, holder, _), (end, _, _) in itertools.pairwise(changes):
        if holder in rows and end >= lo and start <= hi:
            left, right = max(start, lo), min(end, hi)
            ax.barh(rows[holder], right - left, left=left - origin, height=0.5,
                    color="#9ecae1", edgecolor="#3182bd", zorder=1)  # fmt: skip
    for occurrence in {o for s in sends for o in [s[3], *s[2]] if o}:
        due = _on_axis(occurrence, timeline) - origin
        if -BEFORE <= due <= after_kill:
            ax.axvline(due, color="#cccccc", linewidth=0.8, linestyle=":", zorder=0)
    for at, node, coalesced, _ in sends:
        x, y = at - origin, rows[node]
        if coalesced:
            ax.scatter(x, y, marker="D", s=70, color="#e6550d", zorder=3)
            ax.annotate(f"+{len(coalesced)} missed runs", (x, y), textcoords="offset points",
                        xytext=(6, 8), fontsize=8, color="#e6550d")  # fmt: skip
        else:
            ax.scatter(x, y, marker="o", s=30, color="#31a354", zorder=3)
    before = [s[0] - origin for s in sends if s[0] < origin]
    after = [s[0] - origin for s in sends if s[0] > origin and s[1] != kill["node"]]
    if before and after:
        ax.axvspan(max(before), min(after), color="#fee0d2", zorder=0)
    if after:
        ax.annotate(
            f"first send by another node {min(after):.2f} s after the kill",
            (min(after), -0.45), xytext=(6, 0), textcoords="offset points", fontsize=8,
            color="#555555", va="bottom",
        )  # fmt: skip
    ax.axvline(0, color="#de2d26", linewidth=2, zorder=2)
    ax.annotate(f"kill -9 {kill['node']}", (0, len(nodes) - 0.5), color="#de2d26",
                xytext=(4, 0), textcoords="offset points", fontsize=9, va="top")  # fmt: skip
    ax.set_yticks(range(len(nodes)), [f"node {n}" for n in nodes])
    ax.set_ylim(-0.6, len(nodes) - 0.4)
    ax.set_xlim(-BEFORE, after_kill)
    ax.set_xlabel("seconds from the kill -9 (CLOCK_MONOTONIC)")
    ax.set_title(
        f"celery-leaderfeed ({key.split('/')[1]} settings), 3 x celery worker -B, 1 s periodic "
        "task: bar = holds the leader record, dot = periodic send, diamond = catch-up send",
        fontsize=9,
    )
    fig.text(0.01, 0.01, textwrap.fill(stamp, 190), fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return key


def _on_axis(occurrence: str, timeline: dict[str, Any]) -> float:
    """The nominal due time named by ``occurrence``, in seconds on the timeline's axis."""
    due = datetime.strptime(occurrence.rpartition("@")[2], "%Y-%m-%dT%H:%M:%S.%fZ")
    epoch = due.replace(tzinfo=timezone.utc).timestamp()
    return float(epoch - timeline["clock_offset"] - timeline["origin_monotonic"])
