"""What counts as a secret: names of headers, query parameters and keys whose values are never
shown in logs, errors, debug traces or pages."""

from __future__ import annotations

_SECRET_WORDS = ("auth", "token", "secret", "password", "passwd", "key", "cookie", "session", "credential", "signature")
REDACTED = "<redacted>"


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)
