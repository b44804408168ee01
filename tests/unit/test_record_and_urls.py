"""Record validation, password redaction and backend lookup."""

from __future__ import annotations

import sys

import pytest

from celery_leaderfeed import ConfigurationError
from celery_leaderfeed.backends import backend_class, register_backend
from celery_leaderfeed.backends.memory import MemoryBackend
from celery_leaderfeed.record import LeaderRecord, decode_record
from celery_leaderfeed.urls import redact, redact_url, redact_urls_in, url_error

VALID = LeaderRecord("a", "tok", 7, 9, nominee="b", renewed_at=1.5)


def test_a_record_survives_its_own_encoding() -> None:
    assert decode_record(VALID.to_json()) == VALID
    assert decode_record(VALID.to_dict()) == VALID
    vacant = LeaderRecord(None, None, 7, 10)
    assert decode_record(vacant.to_json()) == vacant and vacant.vacant


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        "not json",
        "[]",
        '{"holder": "a"}',
        VALID.to_json().replace("leaderfeed/1", "leaderfeed/2"),
        VALID.to_json().replace('"term":7', '"term":true'),
        VALID.to_json().replace('"term":7', '"term":7.5'),
        VALID.to_json().replace('"term":7', '"term":0'),
        VALID.to_json().replace('"version":9', '"version":"9"'),
        VALID.to_json().replace('"token":"tok"', '"token":null'),
        VALID.to_json().replace('"holder":"a"', '"holder":3'),
        VALID.to_json().replace('"nominee":"b"', '"nominee":["b"]'),
        VALID.to_json().replace('"renewed_at":1.5', '"renewed_at":"soon"'),
    ],
)
def test_anything_else_is_refused_with_a_reason(raw: str | bytes) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        decode_record(raw)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:hunter2@host/0", "redis://user:***@host/0"),
        ("mongodb://u:hunter2@a,b/db?authSource=x", "mongodb://u:***@a,b/db?authSource=x"),
        ("rethinkdb://admin:hunter2@h:28015/db", "rethinkdb://admin:***@h:28015/db"),
        ("redis://host/0?db=1&password=hunter2", "redis://host/0?db=1&password=***"),
        # An unencoded '&' may belong to the password: hidden up to the end of the URL.
        ("redis://host/0?password=hunt&er2&db=1", "redis://host/0?password=***"),
        (
            "mongodb://h/?tlsCertificateKeyFilePassword=hunter2",
            "mongodb://h/?tlsCertificateKeyFilePassword=***",
        ),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("unix://:hunter2@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        # Unencoded reserved characters: user-info runs to the last '@', whatever parsers say.
        ("redis://:hun/ter2@host/0", "redis://:***@host/0"),
        ("redis://:hun#ter2@host/0", "redis://:***@host/0"),
        ("redis://u:hun?ter2@host/0", "redis://u:***@host/0"),
        ("redis://u:hun@ter2@host/0", "redis://u:***@host/0"),
        ("redis://:hun:ter 2@host/0", "redis://:***@host/0"),
        # Not a URL any parser reads: everything before the last '@' is hidden.
        ("redis:/:hunter2@host/0", "***@host/0"),
        (":hunter2@host", "***@host"),
    ],
)
def test_passwords_are_hidden(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_passwords_are_hidden_inside_free_text() -> None:
    text = "Error connecting to redis://:hunter2@h:1/0 and mongodb://u:p4ss@h/db?token=abc"
    cleaned = redact_urls_in(text)
    assert "hunter2" not in cleaned and "p4ss" not in cleaned and "abc" not in cleaned
    assert "redis://:***@h:1/0" in cleaned


def test_a_known_url_is_hidden_in_every_form_a_driver_may_quote() -> None:
    url = "redis://:hunter%20two%2Fthree@h/0"  # the password is "hunter two/three"
    message = (
        "cannot connect to redis://:hunter%20two%2Fthree@h/0 with 'hunter two/three' "
        "(port 'hunter', then 'three')"
    )
    cleaned = redact(message, url)
    for shown in ("hunter", "three", "%20two"):
        assert shown not in cleaned, cleaned
    assert "redis://:***@h/0" in cleaned


def test_a_parse_error_names_the_unencoded_character_never_the_password() -> None:
    url = "redis://:abcd/efgh@h:6379/0"
    told = url_error(url, ValueError("Port could not be cast to integer value as 'abcd'"))
    assert "percent-encode" in told and "abcd" not in told and "efgh" not in told
    told = url_error("redis://:abcd@h:x/0", ValueError("Port ... as 'x', near 'abcd'"))
    assert "abcd" not in told and "'x'" in told


def test_a_missing_driver_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    for module in [m for m in sys.modules if m.startswith("celery_leaderfeed.backends.redis")]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ConfigurationError, match=r"pip install 'celery-leaderfeed\[redis\]'"):
        backend_class("redis://localhost/0")


def test_registered_backends_serve_their_scheme() -> None:
    register_backend("mystore", "celery_leaderfeed.backends.memory:MemoryBackend")
    assert backend_class("mystore://x") is MemoryBackend
    register_backend("notabackend", "celery_leaderfeed.record:LeaderRecord")
    with pytest.raises(ConfigurationError, match="not a leaderfeed Backend"):
        backend_class("notabackend://x")


def test_the_engine_imports_without_celery_or_drivers() -> None:
    import subprocess

    code = (
        "import sys\n"
        "for name in ('celery', 'kombu', 'redis', 'pymongo', 'rethinkdb'):\n"
        "    sys.modules[name] = None\n"
        "import celery_leaderfeed as lf\n"
        "feed = lf.LeaderFeed('memory://x', heartbeat_interval=0.05,"
        " election_timeout_min=0.15, election_timeout_max=0.2)\n"
        "with feed:\n"
        "    assert feed.wait_for_leadership(5)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr
