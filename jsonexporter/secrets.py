"""What counts as a secret, and the one function that hides secrets in text leaving the process.

`Redactor` is applied at every edge where text leaves: pages, `/probe?debug=true` traces, HTTP error
bodies, log lines, CLI output and the problems of a spec. It knows the secret values written in the
loaded spec (and those read from files or token endpoints at run time, as they are read) and rewrites
what looks like a credential in a URL, so that no call site has to remember to filter.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

_SECRET_WORDS = ("auth", "token", "secret", "password", "passwd", "key", "cookie", "session", "credential", "signature")
REDACTED = "<redacted>"
# A known secret shorter than this is looked for only where it is quoted ('abc', "abc"): bare, it
# would match inside ordinary words and numbers everywhere.
MIN_BARE_LENGTH = 4
# Values learned at run time (files, OAuth2 tokens) are kept this many at most, the oldest dropped
# first: a token refreshed every hour for years must not grow the process.
MAX_LEARNED = 1024
# Where a text from outside was shortened (trace.shorten, a quoted answer): a known secret that runs
# into it is half shown, so its beginning is hidden too. A longer beginning than this is not looked for.
CUT = "…"
MAX_CUT_LOOKBACK = 4096


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


# Request headers that carry no credential: content negotiation, caching, the client's name. Any
# other header may: credential headers have no common name (X-JFrog-Art-Api, X-Api-Pass).
HARMLESS_HEADERS = frozenset({"accept", "accept-charset", "accept-encoding", "accept-language", "cache-control", "content-language",
                              "content-type", "if-modified-since", "if-none-match", "pragma", "prefer", "user-agent", "x-requested-with"})
# A header named like none of the secret words holds a credential when its value has a literal part this
# long (API keys and tokens are longer): shorter values (`true`, `acme`, `v2`) would be hidden in every
# trace wherever they appear, and are rarely credentials.
MIN_UNNAMED_CREDENTIAL = 8


def is_credential_header(name: str, value: str) -> bool:
    """Whether a spec's header `name: value` (a template) sends a credential: by its name (Authorization,
    Cookie, a secret word), or by a literal part of MIN_UNNAMED_CREDENTIAL characters or more in any
    header but the harmless ones and API version selectors (`X-GitHub-Api-Version: 2022-11-28`)."""
    if is_secret_name(name):
        return True
    lowered = name.lower()
    if lowered in HARMLESS_HEADERS or lowered.endswith("-version"):
        return False
    return any(len(f) >= MIN_UNNAMED_CREDENTIAL for f in secret_fragments(value))


# -- pattern rules: credentials in anything that looks like a URL ------------------------------

# `scheme://userinfo@`: the userinfo runs to the last `@` before the path (a password may hold `@`)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]+)@")
# `user:password@host` without a scheme (a `host:port` target), and `token@host:port`; a bare
# `name@host` is left alone: that is how e-mail addresses look
_BARE_USERINFO = re.compile(
    r"(?<![\w.%+:/<&;-])(?:[^\s/?#@'\"<>=:,;()\[\]{}]+:[^\s/?#@'\"<>]*|[^\s/?#@'\"<>=:,;()\[\]{}]+(?=@[\w.-]+:\d))@(?=[\w\[])")
# a query parameter whose name says secret (is_secret_name, spelled as a pattern: most parameters
# are not secret, and a trace has thousands); `;` also separates, so that `&amp;api_key=` in HTML counts
_NAME_CHAR = r"[^=&#?;\s\"'<>/]"
_QUERY_VALUE = re.compile(rf"(?P<head>[?&;](?P<name>{_NAME_CHAR}*(?:{'|'.join(_SECRET_WORDS)}){_NAME_CHAR}*)=)(?P<value>[^&#\s\"'<>]+)", re.IGNORECASE)


# a URL cut (CUT) before the `@` that ends its userinfo: what is left of `user:password` is hidden;
# possessive, and found from its `://`, so that it stays linear on long runs of letters or colons
_CUT_USERINFO = re.compile(rf"://[^/?#\s@:{CUT}]*+:[^/?#\s@{CUT}]*+(?={CUT})")


def _userinfo_redacted(text: str, mark: str) -> str:
    # The rules run on the words around each `@` only: on a whole trace of megabytes they would try
    # every position (200 ms for 3.5 MB; this way 5 ms when few words hold an `@`).
    out: list[str] = []
    done = 0
    at = text.find("@")
    while at >= 0:
        start = max(done, *(text.rfind(space, done, at) + 1 for space in " \n\t\r"))
        end = len(text)
        for space in " \n\t\r":
            if (found := text.find(space, at, end)) >= 0:
                end = found
        word = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{mark}@", text[start:end])
        out += [text[done:start], _BARE_USERINFO.sub(f"{mark}@", word)]
        done = end
        at = text.find("@", end)
    out.append(text[done:])
    return "".join(out)


def redact_patterns(text: str, mark: str = REDACTED) -> str:
    """`text` with the userinfo of URLs and `host:port` targets and the values of secret-named query
    parameters replaced by `mark` (`<redacted>`, not percent-encoded; HTML-escaped in a page)."""
    if "@" in text:
        text = _userinfo_redacted(text, mark)
    if "=" in text:
        text = _QUERY_VALUE.sub(lambda m: m["head"] + mark, text)
    if CUT in text:
        text = _CUT_USERINFO.sub(lambda m: f"://{mark}", text)
    return text


# -- known values: the secrets written in a spec ----------------------------------------------

_TEMPLATE_TOKEN = re.compile(r"(\{\{|\}\}|\{\w*\})")  # an escaped brace or a placeholder
_SCHEME_WORD = re.compile(r"^\s*[A-Za-z][A-Za-z0-9_-]*\s+")  # `Bearer ` in front of a credential
_PAIR = re.compile(r"""["']?([\w.-]+)["']?\s*[:=]\s*(?:"([^"]*)"|'([^']*)'|([^\s&,;}"']+))""")


def secret_fragments(value: str) -> set[str]:
    """What of a secret value as written to look for in text: the value itself and, for a template,
    each literal part between its placeholders; an auth scheme word in front (`Bearer …`) is no secret,
    and neither is a template of placeholders alone (`{user}:{password}`)."""
    parts = [""]
    for i, token in enumerate(_TEMPLATE_TOKEN.split(value)):
        if i % 2 == 0 or token in ("{{", "}}"):
            parts[-1] += token[0] if i % 2 else token
        else:
            parts.append("")
    parts[0] = _SCHEME_WORD.sub("", parts[0], count=1)
    literal = [p.strip() for p in parts]
    fragments = {p for p in literal if len(p) >= MIN_BARE_LENGTH}
    if len(parts) == 1 or any(p.strip(":/.,;-_ ") for p in literal):
        fragments.add(value.strip())  # as written: messages quote it
    return {f for f in fragments if f}


def _scalar(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def _values_of(value: object) -> Iterator[str]:
    if isinstance(value, list):
        for item in value:
            if (text := _scalar(item)) is not None:
                yield text
    elif (text := _scalar(value)) is not None:
        yield text


def _in_urls(text: str) -> Iterator[str]:
    """Passwords and secret query values written into a URL."""
    for match in _URL_USERINFO.finditer(text):
        yield match["userinfo"].partition(":")[2] or match["userinfo"]
    for match in _QUERY_VALUE.finditer(text):
        yield match["value"]


def _in_body(text: str) -> Iterator[str]:
    """Values of secret-named keys in a string body (JSON or form-encoded text)."""
    for match in _PAIR.finditer(text):
        if is_secret_name(match[1]):
            yield next(v for v in match.groups()[1:] if v is not None)


_HEADER_MAPPINGS = ("headers", "proxy_connect_header")


def _walk(node: object, key: str | None, found: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if key in _HEADER_MAPPINGS:
                found.update(s for s in _values_of(v) if is_credential_header(str(k), s))
            _walk(v, str(k), found)
        return
    if isinstance(node, list) and not (key and is_secret_name(key)):
        for item in node:
            _walk(item, key, found)
        return
    values = list(_values_of(node))
    if key is not None and is_secret_name(key) and not key.endswith(("_file", "_url")):
        found.update(values)
    for text in values:
        found.update(_in_urls(text))
        if key == "body":
            found.update(_in_body(text))


def spec_secrets(data: Any) -> frozenset[str]:
    """The secret values written in a spec's YAML data: credentials in `http_client_config`, values of
    credential headers (is_credential_header), of secret-named query parameters, body keys and parameter
    defaults, passwords in URLs."""
    found: set[str] = set()
    modules = data.get("modules") if isinstance(data, dict) else None
    for module in modules.values() if isinstance(modules, dict) else ():
        for key, value in module.items() if isinstance(module, dict) else ():
            if key == "parameters" and isinstance(value, dict):  # a secret-named parameter's default is a secret
                for name, decl in value.items():
                    if is_secret_name(str(name)) and isinstance(decl, dict):
                        found.update(_values_of(decl.get("default")))
            elif key == "login" and isinstance(value, dict):  # its `values` name where tokens are, they hold none
                _walk({k: v for k, v in value.items() if k not in ("values", "expires_in")}, str(key), found)
            elif key not in ("metrics", "labels"):  # their keys name labels, not secrets
                _walk(value, str(key), found)
    return frozenset(s for value in found for s in secret_fragments(value))


def _forms(value: str) -> Iterator[str]:
    """How a value shows in text: as is, quoted by repr or JSON, percent-encoded, HTML-escaped."""
    # repr of its UTF-8 bytes too: an answer that is not JSON is quoted as bytes (fetch._quoted_start)
    shown = list(dict.fromkeys([value, repr(value)[1:-1], json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
                                repr(value.encode())[2:-1]]))
    if len(value) >= MIN_BARE_LENGTH:
        shown += [quote(value, safe=""), quote_plus(value)]
        yield from shown
        yield from (html.escape(s) for s in shown)
    quoted = [repr(value), json.dumps(value), f"'{value}'", f'"{value}"']
    yield from quoted
    yield from (html.escape(s) for s in quoted)


class Redactor:
    """The one redaction function: known secret values first, then the pattern rules."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._known: set[str] = set()
        self._learned: dict[str, None] = {}
        self._pattern: re.Pattern[str] | None = None
        self._empty = True
        self._heads: dict[str, list[str]] = {}  # the secrets' forms by their first MIN_BARE_LENGTH characters, for cuts
        self._longest = 0
        self.know(known)

    def know(self, values: Iterable[str]) -> None:
        """Secrets of a (re)loaded spec; kept: an old spec's secrets stay hidden after a reload."""
        new = {v for v in values if v and v not in REDACTED} - self._known
        if new:
            self._known |= new
            self._pattern = None

    def learn(self, value: str) -> None:
        """A secret read at run time (a file, a token); cheap when it is known already."""
        value = value.strip()
        if not value or value in self._known or value in REDACTED:
            return
        if value in self._learned:  # in use again: the newest, so that newer values cannot push it out
            self._learned[value] = self._learned.pop(value)
            return
        self._learned[value] = None
        while len(self._learned) > MAX_LEARNED:
            del self._learned[next(iter(self._learned))]
        self._pattern = None

    def _compiled(self) -> re.Pattern[str] | None:
        if self._pattern is None:
            forms = {f for v in (*self._known, *self._learned) for f in _forms(v) if f}
            self._empty = not forms
            self._pattern = re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)) or "(?!)")
            self._heads = {}
            for f in forms:
                if len(f) > MIN_BARE_LENGTH:
                    self._heads.setdefault(f[:MIN_BARE_LENGTH], []).append(f)
            self._longest = min(max(map(len, forms), default=0), MAX_CUT_LOOKBACK)
        return None if self._empty else self._pattern

    def _cut_short(self, text: str, mark: str) -> str:
        """`text` without the beginning of a known secret that runs into a cut (CUT): a text shortened
        before it reached the edge shows no part of one."""
        out: list[str] = []
        done = 0
        at = text.find(CUT)
        while at >= 0:
            for start in range(max(done, at - self._longest), at - MIN_BARE_LENGTH + 1):
                forms = self._heads.get(text[start:start + MIN_BARE_LENGTH])
                if forms and any(form.startswith(text[start:at]) for form in forms):
                    out += [text[done:start], mark]
                    done = at
                    break
            at = text.find(CUT, at + 1)
        out.append(text[done:])
        return "".join(out)

    def __call__(self, text: str, mark: str = REDACTED) -> str:
        """`text` as it may leave the process; `mark` replaces each secret (HTML-escaped in a page)."""
        pattern = self._compiled()
        if pattern is not None:
            text = pattern.sub(lambda m: _quoted(m[0], mark), text)
            if CUT in text:
                text = self._cut_short(text, mark)
        return redact_patterns(text, mark)


def _quoted(found: str, mark: str) -> str:
    """A quoted secret stays quoted: `'<redacted>'`, so that the message still reads."""
    for quote_mark in ("'", '"', "&#x27;", "&quot;"):
        if len(found) > 2 * len(quote_mark) and found.startswith(quote_mark) and found.endswith(quote_mark):
            return f"{quote_mark}{mark}{quote_mark}"
    return mark
