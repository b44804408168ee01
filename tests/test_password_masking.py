"""No password is ever shown: not in any URL form, not by any program a user runs.

Two layers, so the test stays fast:

* **Every shape** (passwords built from the characters that break URL parsing - ``@:/#?%&=+``,
  space, ``;``, quotes, backslash -, unicode, percent escapes, very long, very short) in every
  URL form (user and password, password only, ``?password=``, encoded or not, URLs no parser
  reads) for every scheme goes through what builds what users see: the redaction functions, the
  backends' reprs and messages (construction errors, driver errors, tracebacks),
  ``LeaderfeedSettings``, and the tables ``celery inspect conf`` / ``celery report`` print.
* **A representative subset** runs the real programs as subprocesses - ``celery worker`` (with
  ``celery inspect conf`` and ``celery inspect leaderfeed`` against it), ``celery beat``,
  ``celery leaderfeed status`` (text and ``--json``) and ``celery report`` - against real
  servers where the password is the right one, so the worker leads and prints everything it
  prints in normal operation; every byte they print, and every file they leave, is searched.

A password is searched for in every form it could be shown in (:func:`forms_of`): as written,
decoded, percent-encoded, JSON- and repr-escaped, and each piece of 4 or more characters between
separators - what a parser that misreads the URL shows (a "port" ``'Qz8w'``). The pieces are
made of tokens (``Qz8w``...) that appear nowhere else.

This module is also the Celery app of the subprocesses (``-A tests.test_password_masking``),
configured from the environment: ``LEADERFEED_MASKING_CONF`` (JSON settings) and
``LEADERFEED_MASKING_NAMESPACE`` (set: load them as Django does, ``CELERY_``-prefixed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import pymongo
import pytest
import redis
from celery import Celery
from pymongo.errors import OperationFailure, PyMongoError
from rethinkdb.errors import ReqlAuthError, ReqlDriverError

import celery_leaderfeed
from celery_leaderfeed import ConfigurationError, LeaderFeed, LeaderfeedError
from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.celery.settings import resolve_settings
from celery_leaderfeed.urls import redact, redact_url, redact_urls_in
from harness.helpers import wait_until
from harness.servers.redis_process import RedisServer
from harness.servers.rethinkdb_wire.process import (
    RethinkDBWireServer,
    start_rethinkdb_wire_server,
)
from harness.servers.secantus_process import MongoServerProcess, mongo_server
from tests.workers import REPO, CeleryProcess

# -- the app the subprocesses run -------------------------------------------------------------

CONF_ENV = "LEADERFEED_MASKING_CONF"
NAMESPACE_ENV = "LEADERFEED_MASKING_NAMESPACE"


def _app_from_environment() -> Celery:
    conf = json.loads(os.environ.get(CONF_ENV, "{}"))
    app = Celery("masking", set_as_current=False)
    if os.environ.get(NAMESPACE_ENV):
        django_settings = type("Settings", (), {f"CELERY_{k.upper()}": v for k, v in conf.items()})
        app.config_from_object(django_settings, namespace="CELERY")
    else:
        app.conf.update(conf)
    celery_leaderfeed.install(app)
    return app


app = _app_from_environment()

# -- passwords, and every form they could be shown in ------------------------------------------

TROUBLE = {
    "at": "@",
    "colon": ":",
    "slash": "/",
    "hash": "#",
    "question": "?",
    "percent": "%",
    "ampersand": "&",
    "equals": "=",
    "plus": "+",
    "space": " ",
    "semicolon": ";",
    "double-quote": '"',
    "single-quote": "'",
    "backslash": "\\",
}
ALL_TROUBLE = "".join(TROUBLE.values())
TOKENS = ("Qz8w", "Jk3v", "Rx5m", "Tb7n", "Wy2p", "Hc6d")
_SEPARATORS = re.compile(r"[\s@:/#?%&=+;,\"'\\()\[\]<>]+")


def _long_password() -> str:
    # 300+ characters: every troublesome character between tokens, again and again.
    return "".join(
        f"{TOKENS[i % len(TOKENS)]}{ALL_TROUBLE[i % len(ALL_TROUBLE)]}" for i in range(64)
    )


PASSWORDS: dict[str, str] = {
    "plain": "Qz8wJk3vRx5m",
    **{f"with-{name}": f"Qz8w{char}Jk3v" for name, char in TROUBLE.items()},
    "every-character": f"Qz8w{ALL_TROUBLE}Jk3v",
    "percent-escapes": "Qz8w%40Jk3v%2FRx5m%",  # looks encoded, is the literal password
    "unicode": "Qz8wä€Jk3v密码Rx5m",
    "separators-around": "@:/#Qz8wJk3v?#%",
    "user-info-lookalike": "Qz8w:Jk3v@Rx5m/Tb7n",
    "short": "Q@z",
    "long": _long_password(),
}


def forms_of(password: str) -> set[str]:
    """``password`` in every form a program could print it in."""
    spellings = {
        password,
        unquote(password),
        quote(password, safe=""),
        quote(password),
        quote_plus(password),
        json.dumps(password)[1:-1],
        repr(password)[1:-1],
        repr(password.encode())[2:-1],
    }
    pieces = {piece for form in spellings for piece in _SEPARATORS.split(form) if len(piece) >= 4}
    return spellings | pieces


def leaks(text: str, password: str) -> list[str]:
    """The forms of ``password`` found in ``text``."""
    return sorted(form for form in forms_of(password) if form and form in text)


def assert_hidden(password: str, **shown: str) -> None:
    for what, text in shown.items():
        found = leaks(text, password)
        assert not found, f"{what} shows {found} of {password!r}:\n{text[-3000:]}"


# -- URL forms and schemes ---------------------------------------------------------------------

#: host[:port] and path per scheme (nothing listens there: the unit layer never connects).
LOCATIONS = {
    "redis": ("127.0.0.1:9", "/0"),
    "rediss": ("127.0.0.1:9", "/0"),
    "unix": ("", "/tmp/leaderfeed-masking-none.sock"),
    "mongodb": ("127.0.0.1:9,127.0.0.1:10", "/lfdb"),
    "mongodb+srv": ("cluster.invalid", "/lfdb"),
    "rethinkdb": ("127.0.0.1:9", "/lfdb"),
    "nosuch": ("store.invalid", "/x"),
}


def url_forms(scheme: str, password: str) -> dict[str, str]:
    host, path = LOCATIONS[scheme]
    encoded = quote(password, safe="")
    base = f"{scheme}://{host}{path}"
    return {
        "user+password": f"{scheme}://lf:{encoded}@{host}{path}",
        "user+password unencoded": f"{scheme}://lf:{password}@{host}{path}",
        "password only": f"{scheme}://:{encoded}@{host}{path}",
        "password only unencoded": f"{scheme}://:{password}@{host}{path}",
        "?password=": f"{base}?db=0&password={encoded}",
        "?password= unencoded": f"{base}?password={password}",
        "?password= plus-encoded": f"{base}?password={quote_plus(password)}&db=0",
        "?authMechanismProperties=": (
            f"{scheme}://lf@{host}{path}?authMechanismProperties=AWS_SESSION_TOKEN:{encoded}"
        ),
        "one slash (invalid)": f"{scheme}:/lf:{password}@{host}{path}",
        "no scheme (invalid)": f":{password}@{host}{path}",
    }


def all_urls(password: str) -> Iterator[tuple[str, str]]:
    for scheme in LOCATIONS:
        for form, url in url_forms(scheme, password).items():
            yield f"{scheme} {form}", url


# -- unit layer: every shape -------------------------------------------------------------------


def traceback_of(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def driver_errors(backend: Any, url: str, password: str) -> list[BaseException]:
    """Errors of the backend's own driver whose messages quote the URL and the password."""
    said = f"cannot use {url} (password {password!r}, port {password.partition(':')[0]!r})"
    by_scheme: dict[str, list[BaseException]] = {
        "RedisBackend": [redis.ConnectionError(said), redis.AuthenticationError(said)],
        "MongoBackend": [PyMongoError(said), OperationFailure(said, code=18)],
        "RethinkBackend": [ReqlDriverError(said), ReqlAuthError(said)],
    }
    return by_scheme.get(type(backend).__name__, [])


def through_backend(url: str, password: str) -> dict[str, str]:
    """What a backend built from ``url`` shows: repr, or its ConfigurationError; and the
    BackendUnavailable (message and traceback) of driver errors that quote the URL."""
    try:
        backend = backend_from_url(url, name="masking", timeout=0.05)
    except ConfigurationError as exc:
        return {"construction error": traceback_of(exc)}
    shown = {"repr": repr(backend), "display_url": backend.display_url}
    for error in driver_errors(backend, url, password):
        try:
            with backend.mapped_errors("connect"):
                raise error
        except LeaderfeedError as mapped:
            shown[f"mapped {type(error).__name__}"] = traceback_of(mapped)
    with contextlib.suppress(ConfigurationError):
        shown["LeaderFeed repr"] = repr(LeaderFeed(url, name="masking"))
    return shown


def through_settings(url: str) -> dict[str, str]:
    plain = Celery("masking-unit", set_as_current=False)
    # An option that holds a secret and that the backend accepts (options are checked when
    # the settings are read): Redis' TLS key password; the other stores have none.
    options = {"ssl": {"ssl_password": url}} if url.startswith("redis") else {}
    plain.conf.update(leaderfeed_backend=url, leaderfeed_backend_options=options)
    django = Celery("masking-unit-django", set_as_current=False)
    django.config_from_object(
        type("Settings", (), {"CELERY_LEADERFEED_BACKEND": url}), namespace="CELERY"
    )
    shown: dict[str, str] = {}
    for label, each in (("plain", plain), ("django", django)):
        celery_leaderfeed.install(each)  # as users do; what adapts Celery's tables
        # `celery inspect conf` sends table(); `celery report` prints humanize().
        shown[f"{label} inspect conf"] = json.dumps(each.conf.table(), default=repr)
        shown[f"{label} report"] = each.conf.humanize()
        try:
            shown[f"{label} settings repr"] = repr(resolve_settings(each))
        except ConfigurationError as exc:
            shown[f"{label} settings error"] = traceback_of(exc)
    return shown


@pytest.mark.parametrize("password", PASSWORDS.values(), ids=PASSWORDS.keys())
def test_every_url_form_is_hidden_by_the_redaction_functions(password: str) -> None:
    for where, url in all_urls(password):
        # A driver's message may quote the password in any form, next to the URL.
        echo = " | ".join(sorted(forms_of(password))) + f" in {url}"
        shown = {"redact_url": redact_url(url), "redact": redact(echo, url)}
        if not re.search(r"\s", url):  # free text: a URL ends at whitespace
            shown["redact_urls_in"] = redact_urls_in(f"failed: {url}: refused")
        assert_hidden(password, **{f"{where}: {what}": text for what, text in shown.items()})


@pytest.mark.parametrize("password", PASSWORDS.values(), ids=PASSWORDS.keys())
def test_every_url_form_is_hidden_by_backends_and_settings(password: str) -> None:
    for where, url in all_urls(password):
        shown = {**through_backend(url, password), **through_settings(url)}
        assert_hidden(password, **{f"{where}: {what}": text for what, text in shown.items()})


def test_the_unit_layer_sees_what_it_checks() -> None:
    """The checks above inspect real output: a backend, its mapped errors, Celery's tables."""
    url = url_forms("redis", PASSWORDS["plain"])["user+password"]
    shown = {**through_backend(url, PASSWORDS["plain"]), **through_settings(url)}
    assert shown["display_url"] == "redis://lf:***@127.0.0.1:9/0"
    assert "redis://lf:***@127.0.0.1:9/0" in shown["mapped AuthenticationError"]
    assert "connect failed on redis://lf:***@127.0.0.1:9/0" in shown["mapped ConnectionError"]
    assert (
        '"leaderfeed_backend": "redis://lf:********@127.0.0.1:9/0"' in shown["plain inspect conf"]
    )
    assert "CELERY_LEADERFEED_BACKEND: 'redis://lf:********@" in shown["django report"]
    assert "backend_url='redis://lf:***@127.0.0.1:9/0'" in shown["plain settings repr"]
    assert "backend_options={'ssl': {'ssl_password': '***'}}" in shown["plain settings repr"]
    assert forms_of("Qz8w@Jk3v") >= {"Qz8w", "Jk3v", "Qz8w%40Jk3v", "Qz8w@Jk3v"}


def test_an_invalid_url_says_what_is_wrong_without_the_password() -> None:
    password = PASSWORDS["every-character"]
    for scheme in ("redis", "mongodb", "rethinkdb"):
        url = url_forms(scheme, password)["user+password unencoded"]
        with pytest.raises(ConfigurationError) as raised:
            backend_from_url(url)
        assert "percent-encode" in str(raised.value), str(raised.value)
        assert_hidden(password, error=traceback_of(raised.value))


# -- subprocess layer: the programs users run --------------------------------------------------

#: Fast timings, so a worker leads and a beat sends within a second.
TIMING = {
    "leaderfeed_heartbeat_interval": 0.2,
    "leaderfeed_election_timeout_min": 0.6,
    "leaderfeed_election_timeout_max": 0.8,
}
#: A password every subprocess scenario shares for the broker (not a secret under test).
BROKER_PASSWORD = "broker-pw"


@dataclass
class Servers:
    """Real stores whose credentials are the troublesome passwords, so workers really lead."""

    redis: RedisServer
    mongo: MongoServerProcess
    rethink: RethinkDBWireServer

    @property
    def broker(self) -> str:
        return f"redis://broker:{BROKER_PASSWORD}@127.0.0.1:{self.redis.port}/1"

    def redis_url(self, user: str, password: str, *, query: bool = False) -> str:
        place = f"127.0.0.1:{self.redis.port}"
        if query:
            return f"redis://{place}/0?password={quote(password, safe='')}"
        return f"redis://{user}:{quote(password, safe='')}@{place}/0"


#: One password per scenario that must work, each with some of every kind of trouble.
RIGHT = {
    "long": PASSWORDS["long"],
    "unicode": "Qz8w ä€/Jk3v%Rx5m",
    "query": "Tb7n&Qz8w=#Jk3v +",
    "broker": "Wy2p@Qz8w:Jk3v;Hc6d",
    "mongo": "Hc6d@:/?#Qz8w ä'Jk3v",
    "rethink": 'Rx5m"Qz8w\\Jk3v#:@',
}


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    redis_server = RedisServer().start()
    rules = {
        "lf": [RIGHT["long"]],
        "lf-broker": [RIGHT["broker"]],
        "broker": [BROKER_PASSWORD],
        "default": [RIGHT["unicode"], RIGHT["query"]],  # last: it locks us out
    }
    client = redis_server.client()
    for user, passwords in rules.items():
        client.acl_setuser(
            user,
            enabled=True,
            reset_passwords=True,
            passwords=[f"+{password}" for password in passwords],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
    client.close()
    mongo = mongo_server().start()
    admin: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo.url())
    admin.admin.command("createUser", "lf", pwd=RIGHT["mongo"], roles=["root"])
    admin.close()
    rethink = start_rethinkdb_wire_server(password=RIGHT["rethink"])
    try:
        yield Servers(redis_server, mongo, rethink)
    finally:
        rethink.stop()
        mongo.close()
        redis_server.close()


@dataclass(frozen=True)
class Scenario:
    """A backend URL (built from the servers) and what the programs should do with it."""

    password: str
    url: Callable[[Servers], str | None]  # None: no leaderfeed_backend (the broker is used)
    outcome: str  # "leads", "outage" (the store refuses or cannot be reached) or "invalid"
    via_option: bool = False  # the worker gets the URL with --leaderfeed-backend
    django: bool = False  # settings loaded as Django does (CELERY_LEADERFEED_BACKEND)
    broker: Callable[[Servers], str] = lambda s: s.broker


def _mongo_url(s: Servers) -> str:
    encoded = quote(RIGHT["mongo"], safe="")
    return f"mongodb://lf:{encoded}@127.0.0.1:{s.mongo.port}/lfdb?authSource=admin&directConnection=true"


RAW = "Qz8w/Jk3v#Rx5m@Tb7n"  # unencoded: no parser reads it as the password

SCENARIOS = {
    "redis user+password, long": Scenario(
        RIGHT["long"], lambda s: s.redis_url("lf", RIGHT["long"]), "leads"
    ),
    "redis password only, --leaderfeed-backend": Scenario(
        RIGHT["unicode"], lambda s: s.redis_url("", RIGHT["unicode"]), "leads", via_option=True
    ),
    "redis ?password=, Django settings": Scenario(
        RIGHT["query"], lambda s: s.redis_url("", RIGHT["query"], query=True), "leads", django=True
    ),
    "the broker's URL": Scenario(
        RIGHT["broker"],
        lambda s: None,
        "leads",
        broker=lambda s: s.redis_url("lf-broker", RIGHT["broker"]),
    ),
    "mongodb user+password": Scenario(RIGHT["mongo"], _mongo_url, "leads"),
    "rethinkdb user+password": Scenario(
        RIGHT["rethink"],
        lambda s: (
            f"rethinkdb://admin:{quote(RIGHT['rethink'], safe='')}@127.0.0.1:{s.rethink.port}/lfdb"
        ),
        "leads",
    ),
    "rediss to a plain server": Scenario(
        RIGHT["long"],
        lambda s: s.redis_url("lf", RIGHT["long"]).replace("redis://", "rediss://"),
        "outage",
    ),
    "mongodb+srv unencoded": Scenario(
        RAW, lambda s: f"mongodb+srv://lf:{RAW}@cluster.invalid/lfdb", "outage"
    ),
    "redis password only unencoded": Scenario(
        RAW, lambda s: f"redis://:{RAW}@127.0.0.1:{s.redis.port}/0", "invalid"
    ),
    "unknown scheme": Scenario(RAW, lambda s: f"nosuch://lf:{RAW}@store.invalid/x", "invalid"),
    "not a URL": Scenario(RAW, lambda s: f"redis:/lf:{RAW}@127.0.0.1:{s.redis.port}/0", "invalid"),
}


APP = "tests.test_password_masking"
#: A log line at WARNING or above that shows a (redacted) URL: the store's error was reported.
_STORE_ERROR_LOGGED = re.compile(r"(WARNING|ERROR|CRITICAL)/[^\n]*\*\*\*")


def _conf(scenario: Scenario, servers: Servers, name: str) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": scenario.broker(servers),
        "broker_connection_retry_on_startup": True,
        "leaderfeed_name": name,
        "task_default_queue": name,
        **TIMING,
    }
    url = scenario.url(servers)
    if url is not None and not scenario.via_option:
        conf["leaderfeed_backend"] = url
    return conf


def _started(process: CeleryProcess, outcome: str, leads_marker: str) -> None:
    """Wait until ``process`` shows what ``outcome`` makes it do (or until it exited)."""

    def done() -> bool:
        log = process.log()
        if process.process.poll() is not None:
            return True
        if outcome == "leads":
            return leads_marker in log
        if outcome == "outage":
            return bool(_STORE_ERROR_LOGGED.search(log))
        return "CRITICAL" in log  # invalid: beat logs it and may linger

    wait_until(done, 30, interval=0.05, message=f"{process.command[0]} to show {outcome!r}")


def _run_all(commands: dict[str, list[str]], env: dict[str, str]) -> dict[str, tuple[int, str]]:
    """Run the one-shot commands at once (each takes a second to import Celery)."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    running = {
        name: subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", APP, *argv],
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, argv in commands.items()
    }
    try:
        outputs = {name: process.communicate(timeout=60)[0] for name, process in running.items()}
        return {name: (running[name].returncode, output) for name, output in outputs.items()}
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


def _files_under(directory: Path) -> dict[str, str]:
    return {
        str(path): path.read_text(errors="replace")
        for path in directory.rglob("*")
        if path.is_file()
    }


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_no_program_prints_the_password(
    scenario: Scenario, servers: Servers, tmp_path: Path
) -> None:
    url = scenario.url(servers)
    name = f"masking-{uuid.uuid4().hex[:8]}"
    node = f"{name}@masking"
    env = {CONF_ENV: json.dumps(_conf(scenario, servers, name))}
    if scenario.django:
        env[NAMESPACE_ENV] = "1"
    option = ["--leaderfeed-backend", url] if scenario.via_option and url else []
    worker = CeleryProcess(
        APP,
        ["worker", "-P", "solo", "-n", node, "-Q", name, "--loglevel=DEBUG", *option],
        tmp_path / "worker.log",
        env=env,
        ready_marker=None,
    )
    beat = CeleryProcess(
        APP,
        ["beat", "-S", "leaderfeed", "--loglevel=DEBUG", "-s", str(tmp_path / "beat"), *option],
        tmp_path / "beat.log",
        env=env,
        ready_marker=None,
    )
    try:
        _started(worker, scenario.outcome, "became leader")
        _started(beat, scenario.outcome, "beat: leading in term")
        status = ["leaderfeed", "status", *(["--backend", url] if option and url else [])]
        commands = {"status": status, "status --json": [*status, "--json"], "report": ["report"]}
        if worker.process.poll() is None:
            wait_until(lambda: "ready." in worker.log(), 30, message="worker ready")
            commands["inspect conf"] = ["inspect", "conf", "-d", node, "-t", "10"]
            commands["inspect leaderfeed"] = ["inspect", "leaderfeed", "-d", node, "-t", "10"]
        results = _run_all(commands, env)
    finally:
        for process in (worker, beat):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.terminate(timeout=20)
            process.stop()
    shown = {name: output for name, (_, output) in results.items()}
    assert_hidden(
        scenario.password,
        **shown,
        worker=worker.log(),
        beat=beat.log(),
        **_files_under(tmp_path),
    )
    _assert_outcome(scenario, url, results, worker, beat)


def _assert_outcome(
    scenario: Scenario,
    url: str | None,
    results: dict[str, tuple[int, str]],
    worker: CeleryProcess,
    beat: CeleryProcess,
) -> None:
    """What the programs did with the URL: a check that the searched output is real."""
    status_code, status = results["status"]
    if scenario.outcome == "leads":
        assert status_code == 0 and re.search(r"state\s+held", status), status
        assert '"role": "leader"' in results["inspect leaderfeed"][1], results
        conf = results["inspect conf"][1]
        assert "********" in conf, conf
        if url is not None:  # the setting (or the worker option the worker wrote there)
            assert re.search(r'(?i)leaderfeed_backend": "\w+://[^"]*\*{8}', conf), conf
        if url is not None and not scenario.via_option:
            assert re.search(r"(?i)leaderfeed_backend: '\w+://[^']*\*{8}", results["report"][1])
        assert "leading in term" in beat.log(), beat.log()[-3000:]
        return
    assert status_code == 1 and status.startswith("Error: "), status
    if scenario.outcome == "outage":
        assert _STORE_ERROR_LOGGED.search(worker.log()), worker.log()[-3000:]
        assert "inspect leaderfeed" in results, "the worker did not start"
    else:
        assert worker.process.returncode not in (None, 0), worker.log()[-3000:]
        assert "Error: leaderfeed:" in worker.log(), worker.log()[-3000:]
