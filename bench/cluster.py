"""Election members as separate OS processes, and what they recorded.

Each member is the fault suite's own member process (``tests/faults/member.py``, reused as
is): it runs a :class:`~celery_leaderfeed.LeaderFeed` and, every 3 ms while its lease is
valid, appends ``<CLOCK_MONOTONIC> <member> <term>`` to a shared *acts* file. All processes
run on this machine, so their monotonic clocks are one clock. SIGTERM makes a member call
``feed.stop()`` (a leader resigns); its log then holds ``<monotonic> stopping``: the instant
``stop()`` was called. Acts are read incrementally, and judged by the suite's independent
checker (``tests/faults/checker.py``: no term acted on by two members, no overlap).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.processes import Proc, python_command, wait_for
from bench.servers import Store
from bench.stats import summary
from tests.faults.checker import Act, violations

#: How long a member may take to exit after SIGTERM (it normally takes a few milliseconds).
STOP_TIMEOUT = 5.0
#: Trials that may be aborted (a member hung or died unasked) before a run gives up.
MAX_ABORTED = 10


class MemberTrouble(RuntimeError):
    """A member did what no trial can use: it hung on SIGTERM, or died without being asked."""


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
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            at, member, term = line.decode().split()
            self.acts.append(Act(float(at), member, int(term)))
        return self.acts

    def first_after(self, moment: float, *, other_than: str | None = None) -> Act | None:
        """The earliest act after ``moment`` (by a member other than ``other_than``)."""
        self.refresh()
        best: Act | None = None
        for act in reversed(self.acts):  # appended in nearly time order: look back 1 s
            if act.at <= moment - 1.0:
                break
            if act.at > moment and act.member != other_than and (best is None or act.at < best.at):
                best = act
        return best

    def acting_now(self, within: float = 0.05) -> Act | None:
        """The latest act, if it is recent: the member leading right now."""
        self.refresh()
        if self.acts and self.acts[-1].at > time.monotonic() - within:
            return self.acts[-1]
        return None


class MemberCluster:
    """``size`` member processes of one election; members are replaced as they are stopped."""

    def __init__(
        self,
        store: Store,
        directory: Path,
        *,
        heartbeat: float,
        low: float,
        high: float,
        size: int = 3,
    ) -> None:
        self.store = store
        self.directory = directory
        self.heartbeat, self.low, self.high = heartbeat, low, high
        self.size = size
        self.name = f"bench-{uuid.uuid4().hex[:8]}"
        self.acts = ActsLog(directory / f"{self.name}.acts")
        self.members: dict[str, Proc] = {}
        #: Members removed since the last ``warnings()`` call, whose logs are still to be read.
        self._gone: dict[str, Proc] = {}
        self._read_up_to: dict[str, int] = {}
        self._count = 0

    def start_member(self) -> str:
        member = f"m{self._count}"
        self._count += 1
        command = python_command(
            "-m", "tests.faults.member",
            "--url", self.store.url, "--options", json.dumps(dict(self.store.options)),
            "--name", self.name, "--id", member, "--acts", str(self.acts.path),
            "--heartbeat", str(self.heartbeat), "--min", str(self.low), "--max", str(self.high),
        )  # fmt: skip
        log = self.directory / f"{self.name}-{member}.log"
        self.members[member] = Proc(command, log, {"PYTHONFAULTHANDLER": "1"}, label=member)
        return member

    def start(self) -> None:
        for _ in range(self.size):
            self.start_member()

    def leader(self, timeout: float) -> str:
        """The member acting now (waits for one that acted within the last 50 ms)."""
        act = wait_for(self.acts.acting_now, timeout, "a member acting as leader", 0.01)
        return act.member

    def wait_started(self, member: str, timeout: float = 30.0) -> None:
        proc = self.members[member]

        def started() -> bool:
            if " started" in proc.log():
                return True
            if not proc.alive():
                raise MemberTrouble(
                    f"member {member} exited with status {proc.popen.returncode} before "
                    f"starting: {proc.log()[-300:]!r}"
                )
            return False

        wait_for(started, timeout, f"member {member} to start", 0.01)

    def stop_gracefully(self, member: str, timeout: float = STOP_TIMEOUT) -> float:
        """SIGTERM: the member calls ``feed.stop()``; returns when it did (its own clock)."""
        proc = self.members.pop(member)
        self._gone[member] = proc
        proc.signal(signal.SIGTERM)
        if proc.wait(timeout) is None:
            # Members run with faulthandler on: SIGABRT makes them print every thread's stack.
            proc.signal(signal.SIGABRT)
            proc.wait(2)
            proc.stop()
            raise MemberTrouble(
                f"member {member} did not exit within {timeout:g} s of SIGTERM; SIGABRT made it "
                f"print its threads' stacks, then it was killed. Its log: {proc.log()[-2500:]}"
            )
        for line in proc.log().splitlines():
            at, _, word = line.partition(" ")
            if word == "stopping":
                return float(at)
        raise MemberTrouble(
            f"member {member} exited with status {proc.popen.returncode} without stopping "
            f"its feed: {proc.log()[-300:]!r}"
        )

    def kill(self, member: str) -> float:
        """kill -9; returns the monotonic time the signal was sent."""
        proc = self.members.pop(member)
        self._gone[member] = proc
        killed_at = proc.signal(signal.SIGKILL)
        proc.wait(10)
        return killed_at

    def replenish(self) -> None:
        """Drop members that died, and start new ones until there are ``size`` again."""
        for member, proc in list(self.members.items()):
            if not proc.alive():
                del self.members[member]
                proc.stop()
        for _ in range(3 * self.size):
            if len(self.members) >= self.size:
                return
            member = self.start_member()
            try:
                self.wait_started(member)
            except MemberTrouble:
                self.members.pop(member).stop()
        raise MemberTrouble("could not bring the cluster back to its size")

    def wait_successor(self, moment: float, old: str, timeout: float) -> Act:
        return wait_for(
            lambda: self.acts.first_after(moment, other_than=old),
            timeout,
            "a new leader acting",
            0.002,
        )

    def warnings(self) -> list[str]:
        """What the members logged since the last call, apart from their own timing lines
        (``<monotonic> started`` ...): the engine's warnings, e.g. a feed that went quiet."""
        found = []
        for member, proc in [*self.members.items(), *self._gone.items()]:
            text = proc.log()
            start = self._read_up_to.get(member, 0)
            self._read_up_to[member] = len(text)
            for line in text[start:].splitlines():
                first = line.split(" ", 1)[0]
                if line.strip() and not first.replace(".", "", 1).isdigit():
                    found.append(f"{member}: {line.strip()[:300]}")
        self._gone.clear()
        return found

    def violations(self) -> list[str]:
        return violations(self.acts.refresh())

    def close(self) -> None:
        for proc in self.members.values():
            proc.stop()
        self.members.clear()


def run_trials(
    cluster: MemberCluster, trials: int, trial: Callable[[MemberCluster], float], settle: float
) -> dict[str, Any]:
    """Start ``cluster``, take ``trials`` samples of ``trial`` and judge every act afterwards.

    A trial that a member spoils is aborted, the member replaced and the trial taken again;
    ``settle`` is the pause that lets a new member join before the next sample.
    """
    samples: list[float] = []
    aborted: list[str] = []
    #: Trials during which members logged warnings (numbered from 1, as in ``samples``).
    notes: list[dict[str, Any]] = []
    try:
        cluster.start()
        cluster.leader(timeout=30)  # a fresh store: claimed at once, acted on a timeout later
        time.sleep(settle)
        while len(samples) < trials:
            if len(aborted) > MAX_ABORTED:
                raise RuntimeError(f"too many aborted trials: {aborted}")
            cluster.warnings()  # what was logged before this trial is not its story
            try:
                samples.append(trial(cluster))
                logged = cluster.warnings()
                if logged:
                    notes.append({"trial": len(samples), "logged": logged})
            except (MemberTrouble, TimeoutError) as exc:
                aborted.append(f"{type(exc).__name__}: {exc}")
                print(f"    trial aborted: {exc}", flush=True)
                cluster.replenish()
                time.sleep(settle)
        found = cluster.violations()
    finally:
        cluster.close()
    return {
        "samples": samples,
        "summary": summary(samples),
        "safety_violations": found,
        "aborted_trials": aborted,
        "trials_with_warnings": notes,
    }
