"""Five member processes of one election on a real server, and the faults we inflict on them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from harness.fault_checker import Act, first_act_after, leader_at_end, load_acts, violations
from harness.helpers import wait_until
from tests.kits import FaultServer

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT, LOW, HIGH = 0.2, 0.6, 0.9
#: Scheduling slack on a loaded 2-core machine, on top of what the algorithm promises.
SLACK = 0.6


class MemberCluster:
    def __init__(
        self, server: FaultServer, directory: Path, size: int = 5, *, unsafe: bool = False
    ) -> None:
        self.server = server
        self.directory = directory
        self.size = size
        self.unsafe = unsafe
        self.name = f"faults-{uuid.uuid4().hex[:8]}"
        self.acts_path = directory / "acts.log"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, member_id: str) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "harness.fault_member",
            "--url", self.server.url, "--options", json.dumps(dict(self.server.options)),
            "--name", self.name, "--id", member_id, "--acts", str(self.acts_path),
            "--heartbeat", str(HEARTBEAT), "--min", str(LOW), "--max", str(HIGH),
        ]  # fmt: skip
        if self.unsafe:
            command.append("--unsafe")
        log = (self.directory / f"{member_id}.log").open("ab")
        process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        log.close()
        self.processes[member_id] = process
        return process

    def start_all(self) -> None:
        for index in range(self.size):
            self.start(f"m{index}")

    def acts(self) -> list[Act]:
        return load_acts(self.acts_path)

    def leader(self, timeout: float) -> str:
        """The member acting now (waits until some member has acted in the last 50 ms)."""

        def current() -> str | None:
            acts = self.acts()
            if acts and acts[-1].at > time.monotonic() - 0.05:
                return leader_at_end(acts)
            return None

        return wait_until(current, timeout, interval=0.01, message="a member acting as leader")

    def wait_for_act_after(self, moment: float, timeout: float, *, not_by: str = "") -> Act:
        """The first act after ``moment`` (by a member other than ``not_by``, if given).

        A process signalled at ``moment`` may still record an act a moment later: the signal
        takes effect when it is delivered, not when it is sent.
        """

        def found() -> Act | None:
            later = [a for a in self.acts() if a.at > moment and a.member != not_by]
            return min(later, key=lambda act: act.at) if later else None

        return wait_until(found, timeout, message="an act after the fault")

    def run_for(self, seconds: float) -> None:
        """Let the cluster run: wait until acts are recorded ``seconds`` from now."""
        until = time.monotonic() + seconds
        wait_until(
            lambda: time.monotonic() >= until and first_act_after(self.acts(), until),
            seconds + HIGH + SLACK + 5,
            interval=0.02,
            message="acts after the running period",
        )

    def signal(self, member_id: str, sig: signal.Signals) -> None:
        self.processes[member_id].send_signal(sig)

    def kill(self, member_id: str) -> None:
        process = self.processes.pop(member_id)
        process.kill()
        process.wait(10)

    def violations(self) -> list[str]:
        return violations(self.acts())

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.directory.glob("m*.log"))
        )

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait(10)
        self.processes.clear()
