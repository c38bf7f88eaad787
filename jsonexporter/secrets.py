"""What counts as a secret, and the one function that hides secrets in text leaving the process.

`Redactor` is applied at every edge where text leaves: pages, `/probe?debug=true` traces, HTTP error
bodies, log lines, CLI output and the problems of a spec. It knows the secret values written in the
loaded spec (and those read from files or token endpoints at run time, as they are read) and rewrites
what looks like a credential in a URL, so that no call site has to remember to filter.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
import weakref
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

from yarl import URL

from jsonexporter.exposition import escape_label_value

_SECRET_WORDS = ("auth", "token", "secret", "password", "passwd", "passphrase", "pwd", "jwt", "key", "cookie", "session", "sessid",
                 "credential", "signature", "csrf", "xsrf")
# secret as words of a name only (`db_pass`, `X-Api-Pass`, `userPass`, Azure's `sig`, `sas_token`), never inside
# one: `passenger`, `bypass`, `compass`, `signal`, `design`, `kansas` name no secret
_SECRET_NAME_WORDS = ("pass", "sig", "sas")
# a word of a name is bounded by the name's start or end, a character that is no letter or digit, or a capital
# after a small letter or digit (`userPass`, `passWord`); `start` and `end`: what stands for the name's ends
_NAME_SEP = r"[^A-Za-z0-9=&#?;\s\"'<>/]"  # in a query parameter's name (_NAME_CHAR)


def _name_word(start: str, end: str, sep: str = _NAME_SEP) -> str:
    first = "".join(sorted({c for w in _SECRET_NAME_WORDS for c in (w[0], w[0].upper())}))  # a cheap test first: names are tried at each character
    return (rf"(?=[{first}])(?:{start}|(?<={sep})|(?<=[a-z0-9])(?=[A-Z]))(?i:{'|'.join(_SECRET_NAME_WORDS)})"
            rf"(?:{end}|(?={sep})|(?<=[a-z])(?=[A-Z]))")


_SECRET_WORD_OF_NAME = re.compile(_name_word("^", "$", "[^A-Za-z0-9]"))
REDACTED = "<redacted>"
# A known secret shorter than this is looked for only where it is quoted ('abc', "abc"): bare, it
# would match inside ordinary words and numbers everywhere.
MIN_BARE_LENGTH = 4
# Where a text from outside was shortened (trace.shorten, a quoted answer): a known secret that runs
# into it is half shown, so its beginning is hidden too. A longer beginning than this is not looked for.
CUT = "…"
MAX_CUT_LOOKBACK = 4096


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS) or _SECRET_WORD_OF_NAME.search(name) is not None


# Request headers that carry no credential: content negotiation, caching, the client's name. Any
# other header may: credential headers have no common name (X-JFrog-Art-Api, X-Api-Pass).
HARMLESS_HEADERS = frozenset({"accept", "accept-charset", "accept-encoding", "accept-language", "cache-control", "content-language",
                              "content-type", "host", "if-modified-since", "if-none-match", "origin", "pragma", "prefer", "user-agent",
                              "x-requested-with",
                              # the other hosts a proxy routes by (spec/model.py ROUTING_HEADERS), and the scheme it was asked with
                              "forwarded", "x-forwarded-host", "x-original-host", "x-forwarded-proto"})
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
# are not secret, and a trace has thousands); `;` also separates, so that `&amp;api_key=` in HTML counts.
# A fragment's pairs too (`#access_token=…&token_type=bearer`, OAuth2's implicit flow): `#` starts a pair
# as `?` does. A fragment is never sent, but it is shown wherever its URL is.
_NAME_CHAR = r"[^=&#?;\s\"'<>/]"
_SECRET_QUERY_NAME = rf"{_NAME_CHAR}*(?i:{'|'.join(_SECRET_WORDS)}){_NAME_CHAR}*|{_NAME_CHAR}*?{_name_word('(?<=[?&;#])', '(?==)')}{_NAME_CHAR}*"
_QUERY_VALUE = re.compile(rf"(?P<head>[?&;#](?P<name>{_SECRET_QUERY_NAME})=)(?P<value>[^&#\s\"'<>]+)")


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
_PAIR = re.compile(r"""["']?([\w.-]+)["']?\s*[:=]\s*(?:"([^"]*)"|'([^']*)'|((?:\{\w*\}|[^\s&,;{}"'])+))""")


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


def _placeholders(text: str) -> frozenset[str]:
    return frozenset(t[1:-1] for i, t in enumerate(_TEMPLATE_TOKEN.split(text)) if i % 2 and t not in ("{{", "}}"))


def _filled(text: str, defaults: Mapping[str, str]) -> str:
    """The template `text` with the placeholders that have a default written as it (still a template)."""
    parts = _TEMPLATE_TOKEN.split(text)
    for i in range(1, len(parts), 2):
        if (value := defaults.get(parts[i][1:-1])) is not None and parts[i] not in ("{{", "}}"):
            parts[i] = value.replace("{", "{{").replace("}", "}}")
    return "".join(parts)


@dataclass(frozen=True)
class Credential:
    """A place where a request of a spec sends a credential (request_credentials)."""

    path: tuple[str | int, ...]  # in the request's mapping: ("headers", "X-Api-Key"), ("url",), ("body", "password")
    what: str  # as a message names it: "header X-Api-Key", "the URL's userinfo", "body key password", "{password}"
    offset: int | None  # where it starts in the string at `path`, when it is part of one (a URL's userinfo)
    values: tuple[str, ...]  # what the spec writes there: the text as written, the defaults of its parameters
    placeholders: frozenset[str]  # whose values it sends


def _strings(request: Mapping[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str | None, object]]:
    """The values a request sends, by path: (path, the name it is sent under (a header's, a query
    parameter's, a body key's; None for the URL and a string body), the value)."""
    if isinstance(url := request.get("url"), str):
        yield ("url",), None, url
    for where in ("headers", "params"):
        if isinstance(mapping := request.get(where), dict):
            for name, value in mapping.items():
                yield (where, name), str(name), value
    body = request.get("body")
    if isinstance(body, str):
        yield ("body",), None, body
    stack: list[tuple[tuple[str | int, ...], object]] = [(("body",), body)] if isinstance(body, (dict, list)) else []
    while stack:
        path, node = stack.pop()
        items: Iterable[tuple[str | int, object]] = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            here: tuple[str | int, ...] = (*path, key)
            if isinstance(value, dict):
                stack.append((here, value))
                continue
            if isinstance(value, list):  # a list's scalars are the value of its key; its mappings are looked into
                stack.extend(((*here, i), v) for i, v in enumerate(value) if isinstance(v, (dict, list)))
            yield here, key if isinstance(key, str) else None, value


def request_credentials(request: Mapping[str, Any], defaults: Mapping[str, str], credential_names: Iterable[str] = ()) -> Iterator[Credential]:
    """Where the request `request` (an endpoint's mapping, or the login's, as written in the YAML) sends
    a credential: a header that is_credential_header says carries one (its parameters' `defaults` filled
    in), a query parameter or body key whose name says secret, the userinfo or a secret-named query
    parameter of a URL written in any of its values, and any value holding a placeholder of
    `credential_names` (secrets, login values, secret-named parameters with a default). The one
    definition behind what redaction learns of a spec (spec_secrets) and what `check` refuses to send
    to a host the caller picks; `http_client_config` credentials are the HTTP client's (its keys)."""
    names = frozenset(credential_names)
    for path, name, raw in _strings(request):
        texts = list(_values_of(raw))
        if not texts:
            continue
        kind = path[0]
        if kind == "headers" and name is not None:
            found = any(is_credential_header(name, _filled(t, defaults)) for t in texts)
            what = f"header {name}"
        else:
            found = name is not None and is_secret_name(name)
            what = f"query parameter {name}" if kind == "params" else f"body key {name}"
        placeholders = frozenset().union(*map(_placeholders, texts))
        if found:
            yield Credential(path, what, None, (*texts, *_defaults_of(placeholders, defaults)), placeholders)
            continue
        for text in texts:
            yield from _in_text(path, text, defaults, string_body=path == ("body",))
        if held := sorted(placeholders & names):
            yield Credential(path, ", ".join(f"{{{n}}}" for n in held), None, _defaults_of(placeholders & names, defaults), placeholders & names)


def _defaults_of(names: Iterable[str], defaults: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(defaults[n] for n in sorted(names) if n in defaults)


def _in_text(path: tuple[str | int, ...], text: str, defaults: Mapping[str, str], string_body: bool) -> Iterator[Credential]:
    """Credentials inside one value: a URL's userinfo and secret-named query parameters, and in a string
    body (JSON or form-encoded text) the values of secret-named keys."""
    found: list[tuple[int, str, str]] = []
    for match in _URL_USERINFO.finditer(text):
        found.append((match.start("userinfo"), "the URL's userinfo", match["userinfo"].partition(":")[2] or match["userinfo"]))
    if not string_body:
        for match in _QUERY_VALUE.finditer(text):
            if match["head"][0] != "#":  # a fragment's pair is never sent
                found.append((match.start("name"), f"query parameter {match['name']}", match["value"]))
    if string_body:  # its `a=b&password=c` are its keys, not a URL's query
        for match in _PAIR.finditer(text):
            if is_secret_name(match[1]):
                found.append((match.start(1), f"body key {match[1]}", next(v for v in match.groups()[1:] if v is not None)))
    for offset, what, value in sorted(found):
        placeholders = _placeholders(value)
        yield Credential(path, what, offset, (value, *_defaults_of(placeholders, defaults)), placeholders)


def _parameter_defaults(parameters: object) -> dict[str, str]:
    found = {}
    for name, decl in parameters.items() if isinstance(parameters, dict) else ():
        if isinstance(decl, dict) and (default := _scalar(decl.get("default"))) is not None:
            found[str(name)] = default
    return found


def secret_parameter_names(parameters: object) -> frozenset[str]:
    """The parameters whose default is a credential wherever it goes: those named like one (a
    caller's value in them is the caller's, see render.probe_redactor)."""
    return frozenset(n for n in _parameter_defaults(parameters) if is_secret_name(n))


def module_requests(module: Mapping[str, Any]) -> Iterator[tuple[tuple[str, ...], Mapping[str, Any]]]:
    """The requests of a module as written: each endpoint's mapping and the login's request keys, by path."""
    endpoints = module.get("endpoints")
    for name, endpoint in endpoints.items() if isinstance(endpoints, dict) else ():
        if isinstance(endpoint, dict):
            yield ("endpoints", str(name)), endpoint
    if isinstance(login := module.get("login"), dict):  # its `values` name where tokens are, they hold none
        yield ("login",), {k: v for k, v in login.items() if k not in ("values", "expires_in")}


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
        for match in _URL_USERINFO.finditer(text):
            found.add(match["userinfo"].partition(":")[2] or match["userinfo"])
        found.update(match["value"] for match in _QUERY_VALUE.finditer(text))


def spec_secrets(data: Any) -> frozenset[str]:
    """The secret values written in a spec's YAML data: what its requests send where a credential goes
    (request_credentials: credential headers, secret-named query parameters and body keys, URL
    userinfo, with the defaults of the parameters placed there), the defaults of secret-named
    parameters, and in the rest of a module (`http_client_config`…) the values of secret-named keys
    and passwords in URLs."""
    found: set[str] = set()
    modules = data.get("modules") if isinstance(data, dict) else None
    for module in modules.values() if isinstance(modules, dict) else ():
        if not isinstance(module, dict):
            continue
        defaults = _parameter_defaults(module.get("parameters"))
        secret_named = secret_parameter_names(module.get("parameters"))
        found.update(defaults[n] for n in secret_named)
        for _, request in module_requests(module):
            for credential in request_credentials(request, defaults):
                found.update(credential.values)
            _walk(request.get("http_client_config"), "http_client_config", found)
        for key, value in module.items():
            if key not in ("metrics", "labels", "parameters", "endpoints", "login"):  # metrics' and labels' keys name labels, not secrets
                _walk(value, str(key), found)
    return frozenset(s for value in found for s in secret_fragments(value))


def _yarl_forms(value: str) -> tuple[str, ...]:
    """The value as yarl (aiohttp's URLs) writes it in a path and in a query, built from the value or
    requoting what render wrote into a URL template, which is none of urllib's spellings: it leaves
    `!:@$=/` as they are in a path, keeps `%2B`, and encodes `+` and `=` in a query."""
    try:
        quoted = quote(value, safe="/")  # as render._quote_path_value writes a value into a URL template, which yarl requotes
        # render_request's steps: the template's URL, then update_query with `params` (which requotes it all)
        written = URL(f"http://h/{quoted}?k={quoted}")
        updated = written.update_query([("q", value)])
        queries = [part[2:] for url in (written, updated) for part in url.raw_query_string.split("&")]
        return (URL.build(path="/" + value).raw_path[1:], URL.build(query={"k": value}).raw_query_string[2:],
                written.raw_path[1:], updated.raw_path[1:], *queries)
    except (ValueError, TypeError, UnicodeError):
        return ()


# the hex digits of an escape (`%2B`, `%252B` encoded twice, `\\xc3`, `\\u00e9`), written in either case by encoders
_HEX_ESCAPE = re.compile(r"(%(?:25)*|\\x)([0-9A-Fa-f]{2})|(\\u)([0-9A-Fa-f]{4})")


def _in_both_cases(forms: Iterable[str]) -> Iterator[str]:
    """Each form, and with escapes also with their hex digits in capitals and in small letters (`%2B`, `%2b`)."""
    for form in forms:
        yield form
        if "%" in form or "\\" in form:
            yield _HEX_ESCAPE.sub(lambda m: (m[1] or m[3]) + (m[2] or m[4]).upper(), form)
            yield _HEX_ESCAPE.sub(lambda m: (m[1] or m[3]) + (m[2] or m[4]).lower(), form)


def _base64_forms(value: str) -> Iterator[str]:
    """The value base64-encoded, standard and URL-safe, unpadded (an upstream echoing a token it was sent encoded)."""
    data = value.encode()
    for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
        yield encoded.decode().rstrip("=")


MAX_HOST_LENGTH = 253  # of a DNS name
_HOST_LIKE = re.compile(r"[A-Za-z0-9.-]*[A-Z][A-Za-z0-9.-]*")  # what a host may hold, with a capital to fold


def _forms(value: str) -> Iterator[str]:
    """How a value shows in text: as is, quoted by repr or JSON (also with `\\/`, as PHP writes it), as a label value (a
    tab stays raw there, unlike repr's and JSON's), percent-encoded once or twice (a URL quoting a URL: `?return_to=`),
    base64-encoded, in small letters when it could be a host name, HTML-escaped; the hex digits of its escapes in either
    case. A bounded number of forms: percent-encoded more often is what hops.next_hop still finds (it decodes until
    nothing changes), but pages show it."""
    # repr of its UTF-8 bytes too: an answer that is not JSON is quoted as bytes (fetch._quoted_start)
    in_json = [json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]]
    shown = list(dict.fromkeys(_in_both_cases([value, repr(value)[1:-1], *in_json, *(f.replace("/", "\\/") for f in in_json if "/" in f),
                                               repr(value.encode())[2:-1], escape_label_value(value)])))
    if len(value) >= MIN_BARE_LENGTH:
        percent = list(dict.fromkeys((quote(value, safe=""), quote_plus(value), quote(value, safe="/"), *_yarl_forms(value))))
        twice = [f for form in percent if "%" in form for f in (form.replace("%", "%25"), quote(form, safe=""))]
        shown += dict.fromkeys(_in_both_cases([*percent, *twice, *_base64_forms(value)]))
        # lowercased, where it could be (part of) a host name: a URL's host is lowercased as it is parsed, and a
        # connection or DNS error quotes it so; other values (JWTs, long keys) are spared the forms' memory
        if len(value) <= MAX_HOST_LENGTH and _HOST_LIKE.fullmatch(value) and (lowered := value.lower()) not in shown:
            shown.append(lowered)
        yield from shown
        yield from (html.escape(s) for s in shown)
    quoted = [repr(value), json.dumps(value), f"'{value}'", f'"{value}"']
    yield from quoted
    yield from (html.escape(s) for s in quoted)


# -- known values: found by lookups of a few characters at every K-th position ----------------

# A form of L characters is looked for by its K-grams at offsets 0..K-1, K the largest power of two
# with 2K-1 <= L: an occurrence anywhere covers exactly one position that is a multiple of K with K of
# its characters, so a text is read in steps of K (n/K dictionary lookups for each K in use), whatever
# the number of values. Longer grams would make fewer lookups but more entries per form.
MAX_GRAM = 32
# Characters of the forms of learned values kept at most: beyond it, values not in use are forgotten,
# the least recently used first. The values in use (Redactor.hold: live login sessions, current OAuth2
# tokens, secret files as last read) are kept even beyond it.
LEARNED_BUDGET = 16 * 1024 * 1024
# Characters of the forms of the values in use beyond which a bounded hold (Redactor.hold's `bounded`: the
# values of login sessions, which grow with the targets probed) is refused rather than taken: the values in
# use are never forgotten, so what a caller can make the process hold is bounded here. About 2 bytes of
# memory each (the index of their grams): 16 Mi characters are some 32 MiB, room for the 256 sessions of
# sessions.MAX_SESSIONS with values of 1,000 characters each. The values of the spec's secrets and tokens
# (bounded by the spec) count, and are never refused.
HELD_BUDGET = 16 * 1024 * 1024
# Candidates a text may make the lookups check, beyond which it is withheld whole (WITHHELD): a text
# repeating what values repeat (`abab…` against many values `abab…x`) makes every lookup a hit, and
# the check of each would take minutes. Ordinary texts make a few checks per known value they hold.
MAX_CHECKS_BASE = 1 << 20
MAX_CHECKS_PER_CHAR = 16
WITHHELD = "(text withheld: it would take too long to look for the known secrets in it)"


class _TooCostly(Exception):
    pass


class HoldRefused(Exception):
    """Holding the values would take those in use beyond the hold's limit: they are not held, and must not be
    used (nothing would hide them); the message says how many characters, never a value."""


def _distinct_forms(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f for f in _forms(value) if f))


def forms_of(values: Iterable[str]) -> tuple[str, ...]:
    """Every form the Redactor looks for of `values` (how they show in text, _forms), without those holding another:
    a text holds one of the forms when it holds one of these."""
    return _fewest(list(dict.fromkeys(f for v in values if v for f in _forms(v) if f)), limit=None)


def _gram_size(length: int) -> int:
    return min(MAX_GRAM, 1 << (((length + 1) // 2).bit_length() - 1))


_FEW_FORMS = 64  # forms looked for one by one (`_Forms.holds_one`), at most


def _fewest(forms: list[str], limit: int | None = _FEW_FORMS) -> tuple[str, ...]:
    """The forms that hold no other one, shortest first (any text holding a form holds one of them); none
    when there are more than `limit` forms."""
    if limit is not None and len(forms) > limit:
        return ()
    fewest: list[str] = []
    for form in sorted(forms, key=len):
        if not any(shorter in form for shorter in fewest):
            fewest.append(form)
    return tuple(fewest)


class _Forms:
    """The forms of a set of values, indexed for finding in a text; adding or removing a value costs
    in proportion to its forms."""

    def __init__(self) -> None:
        self._count: dict[str, int] = {}  # form -> how many values have it
        self._grams: dict[int, dict[str, list[tuple[str, int]]]] = {}  # K -> K-gram -> (form, offset)
        self.heads: dict[str, list[str]] = {}  # forms longer than MIN_BARE_LENGTH by their first MIN_BARE_LENGTH characters, for cuts
        self._lengths: dict[int, int] = {}  # form length -> how many forms
        self._changes = 0  # adds and removes made: what `_few` was found for
        self._few: tuple[int, tuple[str, ...]] | None = None  # what `holds_one` looks for (`_fewest`), after which change

    def __bool__(self) -> bool:
        return bool(self._count)

    @property
    def longest(self) -> int:
        return max(self._lengths, default=0)

    def add(self, forms: Iterable[str]) -> None:
        for form in forms:
            if (count := self._count.get(form, 0)) == 0:
                k = _gram_size(len(form))
                grams = self._grams.setdefault(k, {})
                for offset in range(k):
                    grams.setdefault(form[offset:offset + k], []).append((form, offset))
                if len(form) > MIN_BARE_LENGTH:
                    self.heads.setdefault(form[:MIN_BARE_LENGTH], []).append(form)
                self._lengths[len(form)] = self._lengths.get(len(form), 0) + 1
            self._count[form] = count + 1
        self._changes += 1  # after the change: forms found while it was made are found again at the next call

    def remove(self, forms: Iterable[str]) -> None:
        for form in forms:
            count = self._count.pop(form)
            if count > 1:
                self._count[form] = count - 1
                continue
            k = _gram_size(len(form))
            grams = self._grams[k]
            for offset in range(k):
                gram = form[offset:offset + k]
                entries = grams[gram]
                entries.remove((form, offset))
                if not entries:
                    del grams[gram]
            if not grams:
                del self._grams[k]
            if len(form) > MIN_BARE_LENGTH:
                same = self.heads[form[:MIN_BARE_LENGTH]]
                same.remove(form)
                if not same:
                    del self.heads[form[:MIN_BARE_LENGTH]]
            if (n := self._lengths.pop(len(form))) > 1:
                self._lengths[len(form)] = n - 1
        self._changes += 1

    def holds_one(self, text: str) -> bool:
        """Whether `text` holds one of the forms (`find` finds one). Up to _FEW_FORMS forms, each is looked
        for at C speed (str's search: 15 forms in 14,000 characters of label values, 2 ms by `find`'s lookups),
        and only those that hold no other form (a text with `"pw"` has `pw`); more, by `find`, whose lookups do
        not grow with their number. Raises _TooCostly as `find` does."""
        changes, found = self._changes, self._few
        if found is None or found[0] != changes:  # read before the forms: a value learned meanwhile on another thread changes it again
            found = self._few = (changes, _fewest(list(self._count)))
        few = found[1]
        if few or not self._count:
            return any(form in text for form in few)
        ends: dict[int, int] = {}
        self.find(text, ends)
        return bool(ends)

    def find(self, text: str, ends: dict[int, int]) -> None:
        """Into `ends`: for each position of `text` where a form starts, the end of the longest one. Raises
        _TooCostly when the text makes more than its share of checks (MAX_CHECKS_BASE, MAX_CHECKS_PER_CHAR)."""
        n = len(text)
        left = MAX_CHECKS_BASE + MAX_CHECKS_PER_CHAR * n
        for k, grams in list(self._grams.items()):  # a log line may be redacted on another thread while a value is learned
            get = grams.get
            for at in range(0, n - k + 1, k):
                entries = get(text[at:at + k])
                if entries is not None:
                    left -= len(entries)
                    if left < 0:
                        raise _TooCostly
                    for form, offset in entries:
                        start = at - offset
                        if start >= 0 and ends.get(start, -1) < start + len(form) and text.startswith(form, start):
                            ends[start] = start + len(form)


class Redactor:
    """The one redaction function: known secret values first, then the pattern rules."""

    def __init__(self, known: Iterable[str] = (), budget: int = LEARNED_BUDGET, parent: Redactor | None = None,
                 held_budget: int = HELD_BUDGET) -> None:
        self.budget = budget
        self.held_budget = held_budget
        # a probe's own Redactor: the process's values are looked for first, then its own, then the
        # pattern rules once; two Redactors one after the other would not do: the first one's pattern
        # rules hide part of a value (`user:pw@` in a ticket) and the second one no longer finds the rest
        self.parent = parent
        self._forms = _Forms()
        self._known: set[str] = set()
        self._present: dict[str, tuple[str, ...]] = {}  # every value looked for -> its forms
        self._learned: dict[str, None] = {}  # learned values not in use, the least recently used first
        self._pinned: dict[str, int] = {}  # learned values in use -> how many holders use them
        self._learned_chars = 0  # of the forms of the learned values, in use or not
        self._held_chars = 0  # of the forms of the learned values in use
        self._holders: dict[int, tuple[weakref.ref[object], dict[Hashable, tuple[str, ...]]]] = {}
        self._released: list[int] = []  # holders gone (weakref callbacks): released at the next call, never inside one
        self.know(known)

    def know(self, values: Iterable[str]) -> None:
        """Secrets of a (re)loaded spec; kept: an old spec's secrets stay hidden after a reload."""
        for value in {v for v in values if v and v not in REDACTED} - self._known:
            self._known.add(value)
            if value in self._learned or value in self._pinned:  # learned first: now known, never forgotten
                self._learned.pop(value, None)
                if self._pinned.pop(value, None) is not None:
                    self._held_chars -= sum(map(len, self._present[value]))
                self._learned_chars -= sum(map(len, self._present[value]))
            else:
                self._look_for(value)

    def learn(self, value: str) -> None:
        """A secret read at run time (a file, a token): costs in proportion to its forms, nothing when
        it is known already. Kept within `budget` while not in use (see hold)."""
        self._release_gone()
        value = value.strip()
        if not value or value in self._known or value in REDACTED or value in self._pinned:
            return
        if value in self._learned:  # used again: the most recently used
            self._learned[value] = self._learned.pop(value)
            return
        self._learned_chars += sum(map(len, self._look_for(value)))
        self._learned[value] = None
        self._forget_beyond_budget()

    def hold(self, owner: object, what: Hashable, values: Iterable[str], bounded: bool = False) -> None:
        """`owner` uses `values` under the name `what` (a login session its values, a token source its
        token, a client configuration a file as last read): learned, and never forgotten while `owner`
        lives and holds them. Values it held under `what` before are released (a rotated file). `bounded`
        (a login session's values): raise HoldRefused, holding nothing new, when the values in use would
        then take more than `held_budget` characters of forms (HELD_BUDGET)."""
        self._release_gone()
        key = id(owner)
        held = self._holders.get(key)
        new = tuple(dict.fromkeys(v.strip() for v in values if v.strip()))
        old = held[1].get(what, ()) if held is not None else ()
        if bounded:
            self._check_room(new, old)
        if held is None:
            held = self._holders[key] = (weakref.ref(owner, functools.partial(self._gone, key)), {})
        held[1][what] = new
        for value in new:
            self._pin(value)
        for value in old:
            self._unpin(value)

    def _check_room(self, new: tuple[str, ...], old: tuple[str, ...]) -> None:
        """Raise HoldRefused when holding `new` in place of `old` would take the values in use beyond `held_budget`."""
        taken = [v for v in new if v not in self._pinned and v not in self._known and v not in REDACTED]
        adding = sum(len(f) for v in taken for f in (self._present.get(v) or _distinct_forms(v)))
        freed = sum(sum(map(len, self._present[v])) for v in set(old) - set(new) if self._pinned.get(v) == 1)
        if adding and self._held_chars - freed + adding > self.held_budget:
            raise HoldRefused(f"its values take {adding} characters as they are looked for, and the values in use "
                              f"{self._held_chars - freed}: more than the {self.held_budget} that may be held")

    @property
    def held_chars(self) -> int:
        """Characters of the forms of the learned values in use (hold)."""
        return self._held_chars

    def release(self, owner: object) -> None:
        """`owner` no longer uses its values: they may be forgotten, the least recently used first."""
        if id(owner) in self._holders:
            self._release(id(owner))

    def _gone(self, key: int, _: object) -> None:
        self._released.append(key)  # a weakref callback runs wherever the collector does: the dicts are changed later

    def _release_gone(self) -> None:
        while self._released:
            key = self._released.pop()
            held = self._holders.get(key)
            if held is not None and held[0]() is None:  # not a new owner at the same address
                self._release(key)

    def _release(self, key: int) -> None:
        for values in self._holders.pop(key)[1].values():
            for value in values:
                self._unpin(value)

    def _pin(self, value: str) -> None:
        if value in self._known or value in REDACTED:
            return
        if value in self._pinned:
            self._pinned[value] += 1
            return
        if value in self._learned:
            del self._learned[value]
        else:
            self._learned_chars += sum(map(len, self._look_for(value)))
        self._pinned[value] = 1
        self._held_chars += sum(map(len, self._present[value]))

    def _unpin(self, value: str) -> None:
        if (count := self._pinned.get(value)) is None:
            return
        if count > 1:
            self._pinned[value] = count - 1
            return
        del self._pinned[value]
        self._held_chars -= sum(map(len, self._present[value]))
        self._learned[value] = None  # no longer in use: the most recently used of those that may go
        self._forget_beyond_budget()

    def _look_for(self, value: str) -> tuple[str, ...]:
        forms = _distinct_forms(value)
        self._present[value] = forms
        self._forms.add(forms)
        return forms

    def _forget_beyond_budget(self) -> None:
        # the one learned last stays: whoever learned it is about to show text that may hold it
        while self._learned_chars > self.budget and len(self._learned) > 1:
            oldest = next(iter(self._learned))
            del self._learned[oldest]
            forms = self._present.pop(oldest)
            self._forms.remove(forms)
            self._learned_chars -= sum(map(len, forms))

    @property
    def learned_chars(self) -> int:
        """Characters of the forms of the learned values kept (in use or not)."""
        return self._learned_chars

    def _chain(self) -> list[Redactor]:
        return [self] if self.parent is None else [self.parent, self]

    def knows_values(self) -> bool:
        """Whether it (or its parent) knows values to hide: without, `finds` and `hide_known` need not be called."""
        return any(r._forms for r in self._chain())

    def shortest(self) -> int:
        """The length of the shortest form of a known value: a shorter text holds none (no form is shorter than its value)."""
        return min((min(r._forms._lengths) for r in self._chain() if r._forms), default=0)

    def finds(self, text: str) -> bool:
        """Whether `text` holds a known value (or would take too long to look at: then hide_known says so)."""
        try:
            return any(redactor._forms.holds_one(text) for redactor in self._chain())
        except _TooCostly:
            return True

    def hide_known(self, text: str, mark: str = REDACTED) -> str:
        """`text` with its known values hidden, without the pattern rules: for a label value of an answer,
        where a URL's userinfo or query may be what the metric is about."""
        chain = self._chain()
        for redactor in chain:
            redactor._release_gone()
        sets = [r._forms for r in chain if r._forms]
        return _known_redacted(text, mark, sets) if sets else text

    def __call__(self, text: str, mark: str = REDACTED) -> str:
        """`text` as it may leave the process; `mark` replaces each secret (HTML-escaped in a page)."""
        if self.parent is None and not self._forms._count and not self._released:  # no value known: the pattern rules (a record's target, 7 -> 3 kIr)
            return redact_patterns(text, mark)
        chain = self._chain()
        for redactor in chain:
            redactor._release_gone()
        sets = [r._forms for r in chain if r._forms]
        if sets:
            text = _known_redacted(text, mark, sets)
            for forms in sets:
                if CUT in text:
                    text = cut_short(text, mark, forms.heads, min(forms.longest, MAX_CUT_LOOKBACK))
        return redact_patterns(text, mark)


def _known_redacted(text: str, mark: str, sets: list[_Forms]) -> str:
    """Every known form of `sets` in `text` replaced, the longest at a position first, left to right;
    overlapping ones (`passwordAAAA`, `AAAABBBB`) hidden together: neither shows in part."""
    ends: dict[int, int] = {}
    try:
        for forms in sets:
            forms.find(text, ends)
    except _TooCostly:
        return f"{mark} {WITHHELD}"
    if not ends:
        return text
    out: list[str] = []
    done = 0
    for start in sorted(ends):
        end = ends[start]
        if start >= done:
            out += [text[done:start], _quoted(text[start:end], mark)]
            done = end
        elif end > done:  # overlaps the one hidden last: hidden with it
            done = end
    out.append(text[done:])
    return "".join(out)


def cut_short(text: str, mark: str, heads: Mapping[str, list[str]], longest: int) -> str:
    """`text` without the beginning of a known secret that runs into a cut (CUT): a text shortened
    before it reached the edge shows no part of one. `heads`: the forms longer than MIN_BARE_LENGTH by
    their first MIN_BARE_LENGTH characters; `longest`: how far back a beginning is looked for, never
    beyond the cut before (each character is looked at for one cut). A text that would make more than
    its share of comparisons (MAX_CHECKS_BASE, MAX_CHECKS_PER_CHAR) is withheld whole."""
    out: list[str] = []
    done = previous = 0
    left = MAX_CHECKS_BASE + MAX_CHECKS_PER_CHAR * len(text)
    at = text.find(CUT)
    while at >= 0:
        for start in range(max(done, previous, at - longest), at - MIN_BARE_LENGTH + 1):
            forms = heads.get(text[start:start + MIN_BARE_LENGTH])
            if forms:
                left -= len(forms) * (at - start)
                if left < 0:
                    return f"{mark} {WITHHELD}"
                if any(form.startswith(text[start:at]) for form in forms):
                    out += [text[done:start], mark]
                    done = at
                    break
        previous = at + len(CUT)
        at = text.find(CUT, previous)
    out.append(text[done:])
    return "".join(out)


def _quoted(found: str, mark: str) -> str:
    """A quoted secret stays quoted: `'<redacted>'`, so that the message still reads."""
    for quote_mark in ("'", '"', "&#x27;", "&quot;"):
        if len(found) > 2 * len(quote_mark) and found.startswith(quote_mark) and found.endswith(quote_mark):
            return f"{quote_mark}{mark}{quote_mark}"
    return mark
