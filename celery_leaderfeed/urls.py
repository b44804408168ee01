"""URL helpers: find the scheme, and hide every password before anything is logged or shown.

Users write URLs with reserved characters left unencoded (``redis://:pa/ss#1@host``), so what
counts as secret is decided the way no parser can be fooled into showing it:

* the user-info is everything between ``://`` and the *last* ``@``, and its password all of it
  after the first ``:``; in a string without ``://``, everything before the last ``@`` is hidden;
* a query parameter whose name looks secret (``password``, ``token``, ``...key``, ``...secret``)
  is hidden from its ``=`` to the end of the URL, since an unencoded ``&`` or ``#`` inside it
  may be part of it.

Hiding more than a driver would read is harmless; hiding less would print a password. Drivers
quote URLs in their messages in many shapes, so :func:`redact` also replaces every form a known
URL's secrets can take there: raw, percent-encoded, decoded, escaped, and each piece of 4 or
more characters between separators. And where a parser would take a piece of the password for
the host (:func:`misread_userinfo`), backends refuse the URL and say what to encode.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

from .errors import ConfigurationError

__all__ = [
    "CLUSTER_SCHEMES",
    "MASK",
    "MISREAD_USERINFO",
    "REDIS_SCHEMES",
    "SENTINEL_SCHEMES",
    "misread_userinfo",
    "redact",
    "redact_options",
    "redact_url",
    "redact_urls_in",
    "url_error",
    "url_scheme",
    "url_secrets",
    "without_userinfo",
]

MASK = "***"
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*")
# A query parameter (or a bare word=) whose name says it is secret; the value follows the match.
_SECRET_PARAM = re.compile(
    r"(?i)(?:^|[?&;])[^=&;?#\s]*"
    r"(?:pass|pwd|secret|token|key|credential|signature|authmechanismproperties)[^=&;?#\s]*="
)
# Option names that hold a secret (key_prefix is no secret, so not "key" as above).
_SECRET_OPTION = re.compile(r"(?i)pass|pwd|secret|token|credential|signature")
# Where a secret may be cut in a message: a driver shows one piece of a misparsed URL.
_SEPARATORS = re.compile(r"(?:%[0-9A-Fa-f]{2}|[\s@:/#?%&=+;,\"'\\()\[\]<>])+")
_MIN_FRAGMENT = 4
_RESERVED_IN_USERINFO = "/?#"
_LIST_ITEM = re.compile(r"\s*[a-zA-Z][a-zA-Z0-9+.-]*://")

#: Redis URL schemes, by topology (here, not in the backend, so that code without the Redis
#: driver can tell them apart).
REDIS_SCHEMES = ("redis", "rediss", "unix")
#: kombu's and Celery's spellings of Redis behind Sentinel: a ';'-separated list of sentinels.
SENTINEL_SCHEMES = ("sentinel", "redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

#: What to tell a user whose password :func:`misread_userinfo` would cut short.
MISREAD_USERINFO = (
    "it can be read two ways: percent-encode any '/', '?', '#' or '@' in the user name and "
    "password (urllib.parse.quote(password, safe='')) and any '@' after the host"
)


def url_scheme(url: object) -> str:
    """Return the lower-cased scheme of ``url`` or raise ``ConfigurationError``."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"a backend URL must be a non-empty string, got {type(url).__name__}"
        )
    scheme, sep, _ = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ConfigurationError(f"not a URL with a scheme: {redact_url(url)!r}")
    return scheme.lower()


def redact_url(url: str, mask: str = MASK) -> str:
    """``url`` with its password (user-info or query string) replaced by ``mask``."""
    return _masked(url, _secret_spans(url), mask)


def redact_urls_in(text: str) -> str:
    """Hide the password of every URL that appears anywhere inside ``text``.

    A URL is taken to end at whitespace: for a password with spaces in it, use :func:`redact`
    with the URL, which knows what to look for.
    """
    spans: list[tuple[int, int]] = []
    for word in re.finditer(r"\S+", text):
        found = (
            _secret_spans(word.group()) if _url_like(word.group()) else _param_spans(word.group())
        )
        spans.extend((word.start() + start, word.start() + end) for start, end in found)
    return _masked(text, _merged(spans), MASK)


def _url_like(word: str) -> bool:
    # A scheme, or user-info with a password in front of a host (invalid URLs included).
    return "://" in word or ":" in word[: max(word.rfind("@"), 0)]


def redact(text: str, url: str) -> str:
    """``text`` (say, a driver's message about ``url``) without ``url``'s secrets in any form,
    nor the password of any other URL in it."""
    if url:
        text = text.replace(url, redact_url(url))
        for secret in url_secrets(url):
            text = text.replace(secret, MASK)
    return redact_urls_in(text)


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the value of every key that names a secret (``password``...) hidden."""
    return {
        key: MASK
        if isinstance(key, str) and _SECRET_OPTION.search(key)
        else redact_options(value)
        if isinstance(value, Mapping)  # sentinel_kwargs={"password": ...}, ssl={...}
        else value
        for key, value in options.items()
    }


@functools.lru_cache(maxsize=32)  # a backend redacts each of its errors with its one URL
def url_secrets(url: str) -> tuple[str, ...]:
    """Every form the secrets of ``url`` may take in a message, longest first."""
    forms: set[str] = set()
    for secret in _candidates(url):
        forms.update(_spellings(secret))
    pieces = {piece for form in forms for piece in _SEPARATORS.split(form)}
    found = forms | {piece for piece in pieces if len(piece) >= _MIN_FRAGMENT}
    return tuple(sorted(found - {""}, key=len, reverse=True))


def url_error(url: str, error: BaseException) -> str:
    """What a parser's ``error`` says about ``url``, fit to show: without any secret, or the
    cause when the password holds characters that end the user-info (:func:`misread_userinfo`)."""
    return MISREAD_USERINFO if misread_userinfo(url) else redact(str(error), url)


def misread_userinfo(url: str) -> bool:
    """True if parsers following the URL standard (urllib's, hence most drivers') would end the
    user-info early, at a '/', '?' or '#' in the password, and so take a piece of the password
    for the host, the port or the password: they see other credentials than the user-info
    hidden here, or an authority with no host or a port that is no number."""
    at, begin = url.rfind("@"), url.find("://")
    userinfo = url[begin + 3 : at] if 0 <= begin < at else ""
    if ":" not in userinfo or not any(char in userinfo for char in _RESERVED_IN_USERINFO):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # the "port" is a piece of the password
        return True
    seen, has_credentials, _ = parts.netloc.rpartition("@")
    return (has_credentials and seen != userinfo) or (port is None and not parts.hostname)


def without_userinfo(url: str) -> str:
    """``url`` with its whole user-info removed, by the same rule that hides it: the parts
    left (host, path, query) can be parsed without a password leaking into them."""
    begin, at = url.find("://"), url.rfind("@")
    if 0 <= begin < at:
        return url[: begin + 3] + url[at + 1 :]
    return url


# -- where the secrets are -------------------------------------------------------------------


def _chunks(url: str) -> list[tuple[int, str]]:
    """The URLs of a ``;``-separated list (kombu's sentinels, failover brokers) with their
    offsets - when every piece starts with a scheme; else ``url`` whole (a ';' in a password)."""
    if ";" not in url:
        return [(0, url)]
    pieces, offset = [], 0
    for piece in url.split(";"):
        pieces.append((offset, piece))
        offset += len(piece) + 1
    if all(_LIST_ITEM.match(piece) for _, piece in pieces if piece.strip()):
        return pieces
    return [(0, url)]


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """(start, end) of each secret part of one URL (or list of URLs), merged; see the module
    docstring."""
    return _merged(_spans(url))


def _spans(url: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for offset, chunk in _chunks(url):
        userinfo = _userinfo_span(chunk)
        found = [*_param_spans(chunk), *([userinfo] if userinfo else [])]
        spans.extend((offset + start, offset + end) for start, end in found)
    return spans


def _userinfo_span(url: str) -> tuple[int, int] | None:
    begin, at = url.find("://"), url.rfind("@")
    if at < 0:
        return None
    if begin < 0 or begin > at:  # not a URL we can read: hide all its user-info could be
        return 0, at
    colon = url.find(":", begin + 3, at)
    return (colon + 1, at) if colon >= 0 else None


def _candidates(url: str) -> set[str]:
    """What the password may be, each way the URL can be read: the hidden user-info part or
    a secret parameter's value (up to the end of the URL), from its start or from after any
    ':' in it (``user:password``, ``AWS_SESSION_TOKEN:...``), up to its end or to any '&',
    '#' or ';' that may end it."""
    found: set[str] = set()
    for start, end in _spans(url):
        text = url[start:end]
        starts = [0, *(i + 1 for i, char in enumerate(text) if char == ":")]
        ends = [len(text), *(i for i, char in enumerate(text) if char in "&#;")]
        found.update(text[i:j] for i in starts for j in ends if i < j)
    return found


def _param_spans(text: str) -> list[tuple[int, int]]:
    return [(match.end(), len(text)) for match in _SECRET_PARAM.finditer(text)]


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(span for span in spans if span[0] < span[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _masked(text: str, spans: list[tuple[int, int]], mask: str) -> str:
    for start, end in reversed(spans):
        text = text[:start] + mask + text[end:]
    return text


def _spellings(raw: str) -> set[str]:
    """``raw`` as written, decoded (twice, too), encoded and escaped the ways drivers and
    loggers do."""
    forms: set[str] = set()
    for text in {raw, unquote(raw), unquote_plus(raw), unquote(unquote(raw))}:
        forms.update(
            {
                text,
                quote(text, safe=""),
                quote(text),
                quote_plus(text),
                json.dumps(text)[1:-1],  # \uXXXX, \" and \\ as in JSON output
                repr(text)[1:-1],
                repr(text.encode())[2:-1],  # bytes reprs: \xc3\xa4
            }
        )
    return forms
