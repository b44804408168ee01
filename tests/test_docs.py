"""The documentation: every example on it runs, the settings page matches the code, the site
builds with warnings as errors.

Examples are the fenced blocks of ``docs/**/*.md`` and ``README.md``, by language:

``python`` whose first line names a file (``# proj/celery.py``)
    A file of that page's example project. The files of a page are written to an empty
    directory (with the ``redis://localhost:6379/0`` they name pointed at the tests' own
    redis-server) and imported in a fresh interpreter; each Celery ``app`` found is resolved
    with the package's own settings validation (no unknown ``leaderfeed*`` key allowed), its
    store is built (backend options checked) and, when it is the tests' Redis, connected,
    created and read. ``# celeryconfig.py`` blocks are each checked alone as a configuration
    module, with a Redis broker added when the fragment names no broker. ``docs/testing.md``'s
    two files are run with pytest by ``tests/test_pytest_plugin.py``.
``python`` otherwise
    A script, run in a fresh interpreter in that directory; it must exit 0 (memory backend).
``console``
    Not run: they install packages, start servers and workers. What can rot is checked: each
    ``pip install`` names extras that ``pyproject.toml`` defines, each ``celery ...
    leaderfeed`` subcommand and option exists, each ``--leaderfeed-*`` option of ``celery
    worker`` / ``celery beat`` is one ``install(app)`` adds, each ``-S`` names a scheduler
    entry point.
``yaml``
    Parsed.

A block preceded by ``<!-- not run: REASON -->`` is only compiled; there is none today, and
:data:`NOT_RUN` must list each such block with its reason.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import itertools
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from celery_leaderfeed.celery.settings import DEFAULTS
from tests.workers import REPO

DOCS = REPO / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS / "intersphinx"))

import leaderfeed_docs  # noqa: E402 - docs/_ext
import make_inventories  # noqa: E402 - docs/intersphinx

#: (page, first line of the block) -> why it is not run. Empty: every example runs.
NOT_RUN: dict[tuple[str, str], str] = {}

#: The Redis URL the examples name; the tests' own redis-server takes its place.
EXAMPLE_REDIS = "redis://localhost:6379/0"

FENCE = re.compile(
    r"^(?P<fence>`{3,})(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=fence)[ \t]*$", re.M | re.S
)
NOT_RUN_MARK = re.compile(r"<!--\s*not run:\s*(?P<reason>.+?)\s*-->\s*$")
FILE_LINE = re.compile(r"# (?P<path>[\w/]+\.py)\b")


@dataclass(frozen=True)
class Example:
    page: str  # relative to the repository
    line: int
    language: str
    code: str
    not_run: str | None

    @property
    def first(self) -> str:
        return self.code.partition("\n")[0]

    @property
    def file(self) -> str | None:
        match = FILE_LINE.match(self.first) if self.language == "python" else None
        return match.group("path") if match else None

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    found = [path for path in DOCS.rglob("*.md") if "_build" not in path.parts]
    return [*sorted(found), REPO / "README.md"]


def examples_of(page: Path) -> list[Example]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        language = match.group("info").strip().split(" ")[0]
        if language.startswith("{"):  # a MyST directive (toctree, include, eval-rst)
            continue
        before = text[: match.start()].rstrip("\n").rpartition("\n")[2]
        mark = NOT_RUN_MARK.search(before)
        found.append(
            Example(
                page=str(page.relative_to(REPO)),
                line=text.count("\n", 0, match.start()) + 1,
                language=language,
                code=match.group("code"),
                not_run=mark.group("reason") if mark else None,
            )
        )
    return found


ALL = [example for page in pages() for example in examples_of(page)]


def of(language: str, *, files: bool | None = None) -> list[Example]:
    chosen = [e for e in ALL if e.language == language and e.not_run is None]
    if files is not None:
        chosen = [e for e in chosen if (e.file is not None) == files]
    return chosen


def test_every_example_is_of_a_kind_the_tests_check() -> None:
    languages = {example.language for example in ALL}
    assert languages <= {"python", "console", "yaml", "text"}, languages
    not_run = {(e.page, e.first): e.not_run for e in ALL if e.not_run is not None}
    assert not_run == NOT_RUN
    for example in ALL:  # even a block that is not run must compile
        if example.language == "python":
            compile(example.code, str(example), "exec")
    assert len(of("python")) >= 15  # the parser did not quietly find nothing


# --- python ----------------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "DJANGO_SETTINGS_MODULE"}}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return _python(["-c", code], cwd, timeout)


def _python(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """This interpreter with ``args``, in the docs' clean environment; what it printed."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _write_project(directory: Path, files: list[Example], redis_url: str) -> list[str]:
    """The page's files under ``directory``; returns their module names."""
    modules = []
    for example in files:
        path = directory / str(example.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        for package in path.relative_to(directory).parents:
            if str(package) != ".":
                (directory / package / "__init__.py").touch()
        path.write_text(example.code.replace(EXAMPLE_REDIS, redis_url))
        modules.append(str(example.file)[: -len(".py")].replace("/", "."))
    return modules


CHECK_PROJECT = textwrap.dedent(
    """
    import importlib, sys
    from celery import Celery
    from celery_leaderfeed.celery.settings import resolve_settings, unknown_settings

    redis_url = sys.argv[1]
    apps = 0
    for name in sys.argv[2:]:
        module = importlib.import_module(name)
        app = getattr(module, "app", None)
        if not isinstance(app, Celery):
            continue
        apps += 1
        settings = resolve_settings(app)
        assert unknown_settings(app) == [], unknown_settings(app)
        store = settings.store()  # builds the backend: its options are checked here
        if settings.backend_url == redis_url:
            store.connect()
            try:
                store.create()
                store.read()
            finally:
                store.close()
        print(name, settings.name, store.display_url)
    assert apps, "no Celery app in " + repr(sys.argv[2:])
    """
)

PROJECT_PAGES = sorted(
    {e.page for e in of("python", files=True) if e.file != "celeryconfig.py"} - {"docs/testing.md"}
)


@pytest.mark.parametrize("page", PROJECT_PAGES)
def test_the_example_project_of_a_page_imports_and_configures(
    page: str, tmp_path: Path, redis_url: str
) -> None:
    files = [e for e in of("python", files=True) if e.page == page]
    configs = [e for e in files if e.file == "celeryconfig.py"]
    # A page's project loads the page's last celeryconfig.py, if it has one.
    files = [e for e in files if e.file != "celeryconfig.py"] + configs[-1:]
    modules = _write_project(tmp_path, files, redis_url)
    result = _python(["-c", CHECK_PROJECT, redis_url, *modules], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_testing_page_has_exactly_the_files_its_plugin_test_runs() -> None:
    files = [e.file for e in of("python") if e.page == "docs/testing.md"]
    assert files == ["tasks.py", "test_tasks.py"]


CHECK_CONFIG = textwrap.dedent(
    """
    from celery import Celery
    from celery_leaderfeed.celery.settings import resolve_settings, unknown_settings

    app = Celery("docs")
    app.config_from_object("celeryconfig")
    if not app.conf.broker_url:
        app.conf.broker_url = "redis://localhost:6379/0"
    settings = resolve_settings(app)
    assert unknown_settings(app) == [], unknown_settings(app)
    settings.store()  # builds the backend: its options are checked here
    """
)


@pytest.mark.parametrize(
    "example", [e for e in of("python", files=True) if e.file == "celeryconfig.py"], ids=str
)
def test_a_configuration_example_is_valid(example: Example, tmp_path: Path) -> None:
    (tmp_path / "celeryconfig.py").write_text(example.code)
    result = _run(CHECK_CONFIG, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("example", of("python", files=False), ids=str)
def test_a_script_example_runs(example: Example, tmp_path: Path, redis_url: str) -> None:
    result = _run(example.code.replace(EXAMPLE_REDIS, redis_url), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- console and yaml ------------------------------------------------------------------------


def _extras() -> set[str]:
    """The extras pyproject.toml defines (read as text: no tomllib before Python 3.11)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]\n", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+) = \[", section, re.M))


def _leaderfeed_options() -> tuple[set[str], set[str]]:
    from celery_leaderfeed.celery import install

    both = {flag for flag, _, _ in install._SETTINGS_OPTIONS}
    return both, both | {flag for flag, _, _ in install._WORKER_ONLY}


def _check_celery_command(words: list[str]) -> None:
    from celery_leaderfeed.celery.cli import leaderfeed

    assert words[:3] == ["celery", "-A", "proj"], words
    command, rest = words[3], words[4:]
    beat_options, worker_options = _leaderfeed_options()
    if command == "leaderfeed":
        sub = leaderfeed.commands.get(rest[0])  # type: ignore[attr-defined]
        assert sub is not None, f"no `celery leaderfeed {rest[0]}`"
        known = {opt for param in sub.params for opt in param.opts}
        for word in rest[1:]:
            if word.startswith("--"):
                assert word in known, f"`celery leaderfeed {rest[0]}` has no {word}"
    elif command in {"worker", "beat"}:
        allowed = worker_options if command == "worker" else beat_options
        for word in rest:
            if word.startswith("--leaderfeed"):
                assert word in allowed, f"`celery {command}` has no {word}"
        if "-S" in rest:
            name = rest[rest.index("-S") + 1]
            schedulers = importlib.metadata.entry_points(group="celery.beat_schedulers")
            assert name in schedulers.names, name
    else:
        assert command == "inspect" and rest == ["leaderfeed"], words


@pytest.mark.parametrize("example", of("console"), ids=str)
def test_a_console_example_names_what_exists(example: Example) -> None:
    for line in example.code.splitlines():
        command = line.split("#")[0].strip()
        for part in (p.strip() for p in command.split("&&")):
            words = shlex.split(part)
            if not words:
                continue
            for word in words:
                extras = re.fullmatch(r"(?:celery-leaderfeed|\.)\[([\w,-]+)\]", word)
                if extras:
                    assert set(extras.group(1).split(",")) <= _extras(), word
            if words[0] == "celery":
                _check_celery_command(words)


@pytest.mark.parametrize("example", of("yaml"), ids=str)
def test_a_yaml_example_parses(example: Example) -> None:
    assert yaml.safe_load(example.code)


# --- settings, inventories, README links, the build ------------------------------------------


def test_the_settings_list_is_exactly_the_settings_the_code_knows() -> None:
    names = [entry.name for entry in leaderfeed_docs.settings_entries()]
    assert sorted(names) == sorted(DEFAULTS)  # each once, in the order the docstring reads best


def test_a_drifting_default_stops_the_docs() -> None:
    entries = leaderfeed_docs.settings_entries()
    with pytest.raises(leaderfeed_docs.SettingsDrift, match="leaderfeed_heartbeat_interval"):
        leaderfeed_docs._check(entries, {**DEFAULTS, "leaderfeed_heartbeat_interval": 2.0})
    with pytest.raises(leaderfeed_docs.SettingsDrift, match="leaderfeed_new"):
        leaderfeed_docs._check(entries, {**DEFAULTS, "leaderfeed_new": 1})


def test_the_vendored_intersphinx_inventories_are_what_the_script_writes() -> None:
    for filename, (project, version, _base, objects) in make_inventories.INVENTORIES.items():
        expected = make_inventories.render(project, version, objects)
        assert (DOCS / "intersphinx" / filename).read_bytes() == expected, filename


def test_the_readme_links_point_at_files_that_exist() -> None:
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", readme)
    assert links
    for link in links:
        assert (REPO / link).exists(), link


def test_the_site_builds_without_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "html"
    build = ["-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees")]
    result = _python(["-m", "sphinx", *build, str(DOCS), str(out)], REPO, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    settings = (out / "settings.html").read_text()
    assert sorted(re.findall(r'id="setting-(\w+)"', settings)) == sorted(DEFAULTS)
    assert 'src="_images/failover-timeline.png"' in (out / "benchmarks.html").read_text()
    assert (out / "_images" / "failover-timeline.png").exists()
    guide = (out / "guides" / "rabbitmq-postgresql.html").read_text()
    assert "Fast crash failover (fast_failover=True)" in guide


# -- the examples in docstrings the API pages show ---------------------------------------------

#: Each code example of a docstring on the API pages: where it is, what it leaves undefined (set
#: up before it runs), and what must hold after it ran.
DOCSTRING_EXAMPLES = {
    "celery_leaderfeed.engine.feed:LeaderFeed": (
        "done = []\n"
        "def run_leader_only_work(fencing_token):\n"
        "    done.append(fencing_token)\n"
        "from celery_leaderfeed import LeaderFeed\n",
        "assert len(done) == 1 and isinstance(done[0], int), done\n",
    ),
    "celery_leaderfeed.celery.decorators": (
        "from celery import Celery\n"
        "app = Celery('docs', broker='memory://', set_as_current=False)\n"
        "class Ledger:\n"
        "    def write(self, batch, fencing_token): ...\n"
        "ledger = Ledger()\n",
        "assert rebuild_index.name.endswith('rebuild_index') and settle.max_retries is None\n",
    ),
    "celery_leaderfeed.celery.install": (
        "from celery import Celery\nimport celery_leaderfeed\n",
        "from celery_leaderfeed.celery.bootstep import LeaderFeedStep\n"
        "assert LeaderFeedStep in app.steps['worker']\n",
    ),
    "celery_leaderfeed.celery.leader_gated:leader_gated": (
        "import celery.beat\nfrom celery_leaderfeed.celery.leader_gated import leader_gated\n",
        "assert issubclass(LeaderPersistentScheduler, celery.beat.PersistentScheduler)\n"
        "assert leader_gated(celery.beat.PersistentScheduler) is LeaderPersistentScheduler\n",
    ),
}


def docstring_code(where: str) -> str:
    """The literal block (after a line ending in ``::``) of the docstring at ``where``."""
    module_name, _, attribute = where.partition(":")
    found: object = importlib.import_module(module_name)
    if attribute:
        found = getattr(found, attribute)
    lines = (inspect.getdoc(found) or "").splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("::"))
    indented = itertools.takewhile(lambda line: not line or line[0].isspace(), lines[start + 2 :])
    block = list(indented)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


@pytest.mark.parametrize("where", sorted(DOCSTRING_EXAMPLES))
def test_a_docstring_example_runs(where: str, tmp_path: Path, redis_url: str) -> None:
    setup, check = DOCSTRING_EXAMPLES[where]
    code = docstring_code(where).replace(EXAMPLE_REDIS, redis_url)
    assert code.strip(), f"no example found in {where}"
    result = _run(setup + code + check, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
