"""The rollback scenarios of the fault suite on the memory backend, through its fault hooks.

The same faults as ``tests/faults/test_rollbacks.py`` (a restart from a snapshot taken before a
leadership change, with the old leader resumed before or after it; a vacant record restored
after a claim; a promoted replica that missed the change is the same event to the members: an
earlier state under a new history marker), on the simulated cluster, with members whose
timeouts differ per trial. Safety is judged by the fault suite's independent checker on the
acts the cluster recorded, not by the cluster's own assertions.
``LEADERFEED_ROLLBACK_TRIALS`` trials per scenario (3 by default; 20 in the reported long run).
"""

from __future__ import annotations

import os

import pytest

from harness.fault_checker import violations
from tests.unit.simulation import Cluster
from tests.unit.test_election import rolled_back_past_a_claim, rolled_back_to_a_vacancy

TRIALS = int(os.environ.get("LEADERFEED_ROLLBACK_TRIALS", "3"))


@pytest.mark.parametrize("new_history", [True, False], ids=["new-history", "delayed-restart"])
@pytest.mark.parametrize("resume_before", [True, False], ids=["resumed-before", "resumed-after"])
def test_rolled_back_past_a_claim(resume_before: bool, new_history: bool) -> None:
    found = {}
    for trial in range(TRIALS):
        cluster = Cluster(3, seed=1000 + trial, strict=False)
        rolled_back_past_a_claim(cluster, resume_before=resume_before, new_history=new_history)
        if breaches := violations(cluster.acts()):
            found[trial] = breaches
    assert not found, f"{len(found)} of {TRIALS} trials broke safety: {found}"


@pytest.mark.parametrize("new_history", [True, False], ids=["new-history", "delayed-restart"])
def test_rolled_back_to_a_vacancy(new_history: bool) -> None:
    found = {}
    for trial in range(TRIALS):
        cluster = Cluster(3, seed=2000 + trial, strict=False)
        rolled_back_to_a_vacancy(cluster, new_history=new_history)
        if breaches := violations(cluster.acts()):
            found[trial] = breaches
    assert not found, f"{len(found)} of {TRIALS} trials broke safety: {found}"
