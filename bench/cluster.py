"""Election members as OS processes (``harness/fault_member.py``), their acts, and the trials.

A member appends ``<CLOCK_MONOTONIC> <member> <term>`` to a shared acts file every 3 ms while
its lease is valid; on SIGTERM it logs ``<monotonic> stopping`` and calls ``feed.stop()``.
After all trials the acts are judged by ``harness/fault_checker.py``.
"""

from __future__ import annotations

import functools
import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.processes import Proc, python, wait_for
from bench.servers import Store
from bench.stats import summary
from harness.fault_checker import Act, violations

#: How long a member may take to exit after SIGTERM (it normally takes milliseconds).
STOP_TIMEOUT = 5.0
#: Aborted trials (a member hung or died unasked) after which a run gives up.
MAX_ABORTED = 10


class MemberTrouble(RuntimeError):
    """A member hung on SIGTERM or died unasked: the trial cannot be used."""


class ActsLog:
    """The acts file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.acts: list[Act] = []
        self._offset = 0
        self._partial = b""

    def refresh(self) -> list[Act]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return self.acts
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            at, member, term = line.decode().split()
            self.acts.append(Act(float(at), member, int(term)))
        return self.acts

    def first_after(self, moment: float, other_than: str) -> Act | None:
        """The earliest act after ``moment`` by a member other than ``other_than``."""
        best: Act | None = None
        for act in reversed(self.refresh()):  # appended in nearly time order: look back 1 s
            if act.at <= moment - 1.0:
                break
            if act.at > moment and act.member != other_than and (best is None or act.at < best.at):
                best = act
        return best

    def acting_now(self, within: float = 0.05) -> Act | None:
        """The latest act, if it is recent: the member leading right now."""
        acts = self.refresh()
        return acts[-1] if acts and acts[-1].at > time.monotonic() - within else None


class MemberCluster:
    """``size`` member processes of one election; stopped members are replaced by new ones."""

    def __init__(
        self, store: Store, directory: Path, timing: tuple[float, float, float], size: int = 3
    ) -> None:
        self.store, self.directory, self.size = store, directory, size
        self.heartbeat, self.low, self.high = timing
        self.name = f"bench-{uuid.uuid4().hex[:8]}"
        self.acts = ActsLog(directory / f"{self.name}.acts")
        self.members: dict[str, Proc] = {}
        self._gone: dict[str, Proc] = {}  # removed members whose logs are still to be read
        self._read_up_to: dict[str, int] = {}
        self._count = 0

    def start_member(self, timeout: float = 30.0) -> str:
        """Start a member and wait until its feed started."""
        member, self._count = f"m{self._count}", self._count + 1
        proc = self.members[member] = Proc(python(
            "-m", "harness.fault_member", "--url", self.store.url,
            "--options", json.dumps(self.store.options), "--name", self.name, "--id", member,
            "--acts", str(self.acts.path), "--heartbeat", str(self.heartbeat),
            "--min", str(self.low), "--max", str(self.high),
        ), self.directory / f"{self.name}-{member}.log", {"PYTHONFAULTHANDLER": "1"})  # fmt: skip

        def started() -> bool:
            if not proc.alive():
                self.members.pop(member).stop()
                raise MemberTrouble(f"member {member} exited: {proc.log()[-300:]!r}")
            return " started" in proc.log()

        wait_for(started, timeout, f"member {member} to start", 0.01)
        return member

    def leader(self, timeout: float) -> str:
        """The member acting now (one that acted within the last 50 ms)."""
        return wait_for(self.acts.acting_now, timeout, "a member acting as leader", 0.01).member

    def stop_gracefully(self, member: str) -> float:
        """SIGTERM: the member calls ``feed.stop()``; returns when it did, on its own clock."""
        proc = self._remove(member)
        proc.signal(signal.SIGTERM)
        if proc.wait(STOP_TIMEOUT) is None:
            proc.signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            proc.wait(2)
            proc.stop()
            raise MemberTrouble(
                f"member {member} did not exit within {STOP_TIMEOUT:g} s of SIGTERM; its log "
                f"ends: {proc.log()[-2500:]}"
            )
        for line in proc.log().splitlines():
            at, _, word = line.partition(" ")
            if word == "stopping":
                return float(at)
        raise MemberTrouble(f"member {member} exited without stopping: {proc.log()[-300:]!r}")

    def kill(self, member: str) -> float:
        """kill -9; returns the monotonic time the signal was sent."""
        proc = self._remove(member)
        killed_at = proc.signal(signal.SIGKILL)
        proc.wait(10)
        return killed_at

    def _remove(self, member: str) -> Proc:
        self._gone[member] = proc = self.members.pop(member)
        return proc

    def replenish(self) -> None:
        """Drop members that died, and start new ones until there are ``size`` again."""
        for member, proc in list(self.members.items()):
            if not proc.alive():
                self.members.pop(member).stop()
        for _ in range(3 * self.size):
            if len(self.members) >= self.size:
                return
            try:
                self.start_member()
            except MemberTrouble:
                continue
        raise MemberTrouble("could not bring the cluster back to its size")

    def warnings(self) -> list[str]:
        """What the members logged since the last call, apart from their timing lines."""
        found = []
        for member, proc in [*self.members.items(), *self._gone.items()]:
            text = proc.log()
            start, self._read_up_to[member] = self._read_up_to.get(member, 0), len(text)
            for line in text[start:].splitlines():
                if line.strip() and not line.split(" ", 1)[0].replace(".", "", 1).isdigit():
                    found.append(f"{member}: {line.strip()[:300]}")
        self._gone.clear()
        return found

    def close(self) -> None:
        for proc in self.members.values():
            proc.stop()
        self.members.clear()


def run_trials(
    cluster: MemberCluster,
    trials: int,
    fault: Callable[[MemberCluster], tuple[str, float]],
    settle: float,
) -> dict[str, Any]:
    """``trials`` samples of: ``fault`` removes the acting member (it returns that member and
    the fault's instant), then the first act of another member; a fresh member replaces it.

    A trial a member spoils is aborted, recorded and taken again; every act is judged at the end.
    """
    samples: list[float] = []
    aborted: list[str] = []
    notes: list[dict[str, Any]] = []  # trials (numbered from 1) during which members logged
    try:
        for _ in range(cluster.size):
            cluster.start_member()
        cluster.leader(timeout=30)  # a fresh store: claimed at once, acted on a timeout later
        time.sleep(settle)
        while len(samples) < trials:
            if len(aborted) > MAX_ABORTED:
                raise RuntimeError(f"too many aborted trials: {aborted}")
            cluster.warnings()  # what was logged before this trial is not its story
            try:
                old, at = fault(cluster)
                acted = functools.partial(cluster.acts.first_after, at, old)
                successor = wait_for(acted, cluster.high + 10, "a new leader acting", 0.002)
                cluster.start_member()
                time.sleep(settle)
                samples.append(successor.at - at)
                if logged := cluster.warnings():
                    notes.append({"trial": len(samples), "logged": logged})
            except (MemberTrouble, TimeoutError) as exc:
                aborted.append(f"{type(exc).__name__}: {exc}")
                print(f"    trial aborted: {exc}", flush=True)
                cluster.replenish()
                time.sleep(settle)
        found = violations(cluster.acts.refresh())
    finally:
        cluster.close()
    return {
        "samples": samples,
        "summary": summary(samples),
        "safety_violations": found,
        "aborted_trials": aborted,
        "trials_with_warnings": notes,
    }
