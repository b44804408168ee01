"""The pytest plugin and the eager policy, as a user meets them.

The examples of the documentation's "Testing your leader-only tasks" page (docs/testing.md) are
copied out of it into a fresh
directory and run with ``pytest`` in a subprocess - no conftest, no path to this repository: the
fixtures come from the installed ``pytest11`` entry point. The rest uses the same fixtures in
this process (this suite loads the plugin like any other) and checks the eager policy.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner

import celery_leaderfeed
from celery_leaderfeed import NotLeaderError, current_term, leader_only
from celery_leaderfeed.celery.cli import leaderfeed as leaderfeed_command
from celery_leaderfeed.celery.worker_lease import current_lease
from celery_leaderfeed.errors import ConfigurationError
from celery_leaderfeed.testing import Leadership
from tests.workers import REPO

PAGE = REPO / "docs" / "testing.md"


def readme_files() -> dict[str, str]:
    """The ```python blocks of docs/testing.md, by the file name on their first line."""
    files = {}
    for block in re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL):
        first = block.partition("\n")[0]
        match = re.fullmatch(r"# (\w+\.py)", first)
        assert match, f"an example of docs/testing.md must start with '# <file>.py': {first!r}"
        files[match.group(1)] = block
    return files


def test_the_plugin_is_an_installed_entry_point() -> None:
    plugins = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert plugins.get("celery_leaderfeed") == "celery_leaderfeed.testing"


def test_the_readme_examples_pass_when_run_as_a_user_runs_them(tmp_path: Path) -> None:
    files = readme_files()
    assert set(files) == {"tasks.py", "test_tasks.py"}
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:celery"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    tests = len(re.findall(r"^def test_", files["test_tasks.py"], re.MULTILINE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"\b{tests} passed\b", result.stdout), result.stdout


def test_a_failing_user_test_fails(tmp_path: Path) -> None:
    """The plugin does not make every test pass: a leader-only body that asserts wrongly fails."""
    (tmp_path / "tasks.py").write_text(readme_files()["tasks.py"])
    (tmp_path / "test_wrong.py").write_text(
        "from tasks import settle_ledger, LEDGER\n"
        "def test_wrong_term(leaderfeed_leader):\n"
        "    settle_ledger('x')\n"
        "    assert LEDGER[-1] == ('x', 2)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:celery"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1 and "1 failed" in result.stdout
    assert "('x', 1) == ('x', 2)" in result.stdout


# -- the fixtures, in this process ------------------------------------------------------------


@pytest.fixture
def app() -> Celery:
    app = Celery("plugin-tests", set_as_current=False)
    app.conf.update(task_always_eager=True)
    celery_leaderfeed.install(app)
    return app


def leader_task(app: Celery) -> Any:
    @app.task(name="plugin.term", shared=False)
    @leader_only
    def term() -> int:
        return current_term()

    return term


@pytest.mark.parametrize("leaderfeed_term", [9])
def test_the_lease_is_the_chosen_one_everywhere(leaderfeed_leader: Leadership) -> None:
    lease = current_lease()
    assert lease is not None and lease.valid() and lease.term == 9
    record = leaderfeed_leader.store.observe(leaderfeed_leader.name).record
    assert record is not None and (record.holder, record.term) == (leaderfeed_leader.member_id, 9)
    # Fenced writes succeed exactly while it leads, as the beat's ledger's do.
    store = leaderfeed_leader.store
    assert lease.token is not None
    assert store.write_entry(leaderfeed_leader.name, 9, lease.token, "e", None, "s1")
    leaderfeed_leader.follow()
    assert not store.write_entry(leaderfeed_leader.name, 9, lease.token, "e", "s1", "s2")


def test_status_and_check_read_the_fixture_store(leaderfeed: Leadership) -> None:
    app = leaderfeed.configure(Celery("plugin-status", set_as_current=False))
    context = CLIContext(app=app, no_color=True, workdir=None)
    leaderfeed.lead(term=5)
    shown = CliRunner().invoke(leaderfeed_command, ["status", "--json"], obj=context)
    assert json.loads(shown.output)["term"] == 5
    assert CliRunner().invoke(leaderfeed_command, ["check"], obj=context).exit_code == 0
    with leaderfeed.outage():
        result = CliRunner().invoke(leaderfeed_command, ["check"], obj=context)
        assert result.exit_code == 4
        assert current_lease() is not None and not current_lease().valid()  # type: ignore[union-attr]
    assert current_lease().valid()  # type: ignore[union-attr]


def test_terms_count_up_and_bad_terms_are_refused(leaderfeed: Leadership) -> None:
    assert leaderfeed.lead().term == 1
    leaderfeed.follow("w2@host")
    assert leaderfeed.lead().term == 3
    assert leaderfeed.lapse().valid() is False
    for bad in (0, -1, True, "3"):
        with pytest.raises(ConfigurationError):
            leaderfeed.lead(term=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        leaderfeed.follow(leaderfeed.member_id)
    leaderfeed.release()
    assert current_lease() is None


# -- the eager policy ----------------------------------------------------------------------------


def test_the_default_eager_policy_is_an_error_saying_what_to_do(app: Celery) -> None:
    task = leader_task(app)
    with pytest.raises(NotLeaderError) as raised:
        task.delay().get()
    message = str(raised.value)
    assert "leaderfeed_eager_policy" in message and "leaderfeed_leader" in message
    with pytest.raises(NotLeaderError):
        task()  # a direct call: the same
    with pytest.raises(NotLeaderError):
        task.apply().get()


def test_eager_policy_run_runs_the_body_under_term_1(app: Celery) -> None:
    app.conf.leaderfeed_eager_policy = "run"
    task = leader_task(app)
    assert task.delay().get() == 1
    assert task() == 1


def test_eager_policy_follower_applies_the_follower_policy(app: Celery) -> None:
    app.conf.leaderfeed_eager_policy = "follower"
    assert leader_task(app).delay().state == "IGNORED"  # requeue cannot requeue: skipped

    @app.task(name="plugin.strict", shared=False)
    @leader_only(policy="raise")
    def strict() -> int:
        return current_term()

    with pytest.raises(NotLeaderError):
        strict.delay().get()


def test_a_bad_eager_policy_is_one_line(app: Celery) -> None:
    app.conf.leaderfeed_eager_policy = "maybe"
    with pytest.raises(ConfigurationError, match="leaderfeed_eager_policy must be one of"):
        leader_task(app).delay().get()


def test_a_fixture_lease_wins_over_the_eager_policy(app: Celery, leaderfeed: Leadership) -> None:
    task = leader_task(app)
    leaderfeed.lead(term=4)
    assert task.delay().get() == 4
    leaderfeed.follow()
    assert task.delay().state == "IGNORED"  # a follower: the follower policy, not an error
