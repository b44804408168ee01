"""URL helpers: find the scheme, and hide passwords before anything is logged or shown."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigurationError

__all__ = ["redact_url", "redact_urls_in", "url_scheme"]

_MASK = "***"
# scheme://user:password@  or  scheme://:password@
_CREDENTIALS = re.compile(r"(?P<prefix>[a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*:)(?P<secret>[^@\s/]*)@")
_QUERY_SECRET = re.compile(r"(?i)(?P<key>(?:password|passwd|pwd|secret|token)=)(?P<secret>[^&\s]*)")


def url_scheme(url: object) -> str:
    """Return the lower-cased scheme of ``url`` or raise ``ConfigurationError``."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"a backend URL must be a non-empty string, got {type(url).__name__}"
        )
    scheme, sep, _ = url.partition("://")
    if not sep or not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*", scheme):
        raise ConfigurationError(f"not a URL with a scheme: {redact_url(url)!r}")
    return scheme.lower()


def redact_url(url: str) -> str:
    """``url`` with any password (in the user-info part or the query string) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_urls_in(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{_MASK}@{hostport}" if has_password else netloc
    query = _QUERY_SECRET.sub(lambda m: m.group("key") + _MASK, parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_urls_in(text: str) -> str:
    """Hide every URL password that appears anywhere inside ``text`` (e.g. a driver's message)."""
    text = _CREDENTIALS.sub(lambda m: m.group("prefix") + _MASK + "@", text)
    return _QUERY_SECRET.sub(lambda m: m.group("key") + _MASK, text)
