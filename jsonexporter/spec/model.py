"""The compiled spec: frozen, validated, every expression compiled once. Nothing here changes after load."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from jsonexporter.spec.expressions import Expression, Template
from jsonexporter.spec.functions import Pattern
from jsonexporter.spec.sources import MAX_SECRET_BYTES, read_bounded_bytes

if TYPE_CHECKING:
    from jsonexporter.spec.projection import Projection

MetricType = Literal["gauge", "counter", "untyped", "info", "stateset", "histogram", "summary"]
Duplicates = Literal["first", "last", "sum"]  # what a rule does with its own series of equal labels
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

DEFAULT_TIMEOUT = 10.0
# Parsed, JSON takes up to 38 times its size ([[]],[[]],… : docs/deployment.md): at 4 MiB one probe
# stays within the 256 MiB of the shipped Kubernetes manifest.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# Series per probe of modules without `series_limit` (serve's --probe.series-limit): with the
# default max_response_bytes, what keeps one probe within the memory of docs/deployment.md.
DEFAULT_SERIES_LIMIT = 100_000
# What bounds the text of a probe's series, for modules without `label_value_length_limit` and
# `body_size_limit`: a label value from an answer (a `$root` label is in every series) and the series'
# text. bench/'s biggest probe writes 18 MB (180,001 series); at these, one probe's series (their text, and
# the label texts kept for duplicates) stay within about twice the limit whatever its answer or its caller's
# target and parameters (docs/deployment.md).
DEFAULT_LABEL_VALUE_LENGTH_LIMIT = 4096
DEFAULT_BODY_SIZE_LIMIT = 32 * 1024 * 1024
DEFAULT_ENDPOINT = "default"
# serve's defaults for refresh_interval (upstream/refresh.py): requests of modules with a target on a
# schedule at once (--refresh.max-requests), and the least time without a probe before one leaves
# (--refresh.min-idle): a Prometheus scraping every minute keeps a 1s schedule alive.
DEFAULT_REFRESH_MAX_REQUESTS = 32
DEFAULT_REFRESH_MIN_IDLE = 300.0
DEFAULT_REFRESH_MAX_BYTES = 256 * 1024 * 1024  # of the answers kept, parsed: as much as the cache keeps (cache.DEFAULT_MAX_BYTES)
# what a header value cannot hold (RFC 9110 5.5): control characters but tab
HEADER_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# headers that name the host a request is for: a reverse proxy or an ingress at the URL's address routes
# the request, and what it carries, to the backend they name (lower case). Host; X-Forwarded-Host and
# Forwarded's host= (RFC 7239), which proxies trusting the hop before them take for it; X-Original-Host, the
# original Host that gateways (Azure Application Gateway, IIS ARR) pass on and that backends route by.
# X-Forwarded-Proto names a scheme, no host: no proxy sends the request elsewhere for it.
ROUTING_HEADERS = frozenset({"host", "x-forwarded-host", "x-original-host", "forwarded"})


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    default: str | None = field(repr=False)  # an api_key parameter's default is a credential
    pattern: Pattern | None  # RE2 (functions.compile_regex), matched against the whole value


@dataclass(frozen=True, slots=True)
class JsonBody:
    """A YAML mapping body: sent as JSON, with its strings rendered as templates."""

    value: object  # nested dicts/lists whose strings are Templates


NextStyle = Literal["link_header", "field", "cursor", "page_param"]
DEFAULT_MAX_PAGES = 10
# a sequence of pages is one answer for the rules: the deadline and max_response_bytes bound it too
MAX_PAGES = 1000


@dataclass(frozen=True, slots=True)
class Pagination:
    """Where each page's elements are, and how the next page is found (one style of `next`)."""

    items: str  # as written: `@` or a plain field path
    item_path: tuple[str, ...]  # its field names; (): the page is the list
    style: NextStyle
    rel: str = "next"  # link_header: the relation type followed
    next: Expression | None = None  # field: gives the next URL; cursor: gives the cursor
    param: str | None = None  # cursor, page_param: the query parameter set on the first URL
    start: int = 1  # page_param: the number of the first page
    max_pages: int = DEFAULT_MAX_PAGES


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    url: Template
    method: Method = "GET"
    # may hold credentials written into the spec: kept out of repr, like Secret
    headers: tuple[tuple[str, Template], ...] = field(default=(), repr=False)
    params: tuple[tuple[str, Template], ...] = field(default=(), repr=False)
    body: Template | JsonBody | None = field(default=None, repr=False)
    body_escape: Literal["json", "form"] | None = None  # how values are inserted into a string body
    timeout: float | None = None
    valid_status_codes: frozenset[int] | None = None  # None: any 2xx
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    client: HTTPClientConfig = field(default_factory=lambda: HTTPClientConfig())
    cache_ttl: float | None = None
    stale_if_error: float | None = None
    # background requests (upstream/cache.py, upstream/refresh.py): a stale answer served while one request
    # refreshes it (with cache_ttl), or the endpoint fetched on a schedule, probes using its latest answer
    stale_while_revalidate: float | None = None
    refresh_interval: float | None = None
    # pagination: the next pages followed, their elements gathered into the first page's document
    pagination: Pagination | None = None

    def templates(self) -> Iterator[Template]:
        """Every template of the request: URL, headers, params, body."""
        yield self.url
        yield from (t for _, t in self.headers)
        yield from (t for _, t in self.params)
        if isinstance(self.body, Template):
            yield self.body
        elif isinstance(self.body, JsonBody):
            yield from json_templates(self.body.value)

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(name for t in self.templates() for name in t.placeholders)

    @property
    def routing_headers(self) -> tuple[tuple[str, Template], ...]:
        """Its headers with a placeholder that pick the host the request is for (ROUTING_HEADERS: `Host: '{target}'`).
        A placeholder anywhere in Forwarded counts, `for={x}` too: its value can add `;host=...`."""
        return tuple((name, t) for name, t in self.headers if name.lower() in ROUTING_HEADERS and t.placeholders)

    @property
    def host_placeholders(self) -> frozenset[str]:
        """The placeholders that pick where the request goes: in the URL's scheme, host or port (not its userinfo:
        Template.host_parts), and in a routing header. The one definition behind `check`'s rule (credentials to such
        a request need targets.allow: spec/load.py) and the allowlist check of each probe (upstream/render.py)."""
        in_url = (self.url.parts[i][1] for i in self.url.host_parts)
        return frozenset(name for name in (*in_url, *(n for _, t in self.routing_headers for n in t.placeholders)) if name is not None)

    def status_ok(self, status: int) -> bool:
        if self.valid_status_codes is None:
            return 200 <= status < 300
        return status in self.valid_status_codes


def json_templates(value: object) -> Iterator[Template]:
    if isinstance(value, Template):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from json_templates(v)
    elif isinstance(value, list):
        for v in value:
            yield from json_templates(v)


@dataclass(frozen=True, slots=True)
class Level:
    """One level of `each`: what to iterate, and the name labels can refer to it by."""

    path: Expression
    alias: str | None = None
    optional: bool = False  # null (a missing field) is nothing to iterate, not an extraction error


@dataclass(frozen=True, slots=True)
class Output:
    """One metric family produced by a rule: `value`, or one entry of `values`."""

    name: str
    value: Expression | None  # None for info metrics, whose value is always 1
    help: str | None = None  # a `values` entry's own help; None: the rule's


@dataclass(frozen=True, slots=True)
class Distribution:
    """Where a histogram finds its buckets, or a summary its quantiles, and the sum and count beside them."""

    points: Expression  # `buckets` or `quantiles`
    sum: Expression | None
    count: Expression | None
    cumulative: bool = True  # histograms: False when the answer counts each bucket on its own


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    help: str
    type: MetricType
    endpoint: str
    each: tuple[Level, ...]
    outputs: tuple[Output, ...]
    labels: tuple[tuple[str, Expression], ...]
    value_map: Mapping[str, float] = field(default_factory=dict)
    default: float | None = None
    timestamp: Expression | None = None
    timestamp_scale: float = 1.0  # multiply to get seconds
    states: tuple[str, ...] = ()
    scale: float = 1.0
    duplicates: Duplicates = "first"
    distribution: Distribution | None = None  # for histograms and summaries, which have no `value`

    @property
    def uses_context(self) -> bool:
        return any(e.on_context for e in self.expressions())

    def expressions(self) -> Iterator[Expression]:
        """Every compiled expression of the rule."""
        yield from (lv.path for lv in self.each)
        yield from (o.value for o in self.outputs if o.value is not None)
        yield from (e for _, e in self.labels)
        if self.timestamp is not None:
            yield self.timestamp
        if self.distribution is not None:
            d = self.distribution
            yield from (e for e in (d.points, d.sum, d.count) if e is not None)


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    endpoints: Mapping[str, Endpoint]
    metrics: tuple[Metric, ...]
    timeout: float = DEFAULT_TIMEOUT
    labels: tuple[tuple[str, Template], ...] = ()
    parameters: Mapping[str, Parameter] = field(default_factory=dict)
    target_allow: tuple[Pattern, ...] = ()  # empty: any target; RE2 (functions.compile_regex)
    needs_target: bool = True  # some template or `$target` uses it
    series_limit: int | None = None  # most series a probe may give (0: no limit); None: the server's default
    label_value_length_limit: int = DEFAULT_LABEL_VALUE_LENGTH_LIMIT  # characters of a label value from an answer (0: no limit)
    body_size_limit: int = DEFAULT_BODY_SIZE_LIMIT  # characters of the text of a probe's series (0: no limit)
    # by endpoint: a decoder of only the fields its rules read (projection.py); none: parsed whole
    projections: Mapping[str, Projection] = field(default_factory=dict, compare=False, repr=False)
    # extract.py's plans of the rules, by rule and module labels: made at a rule's first probe, gone with the module at a reload
    fast_plans: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    # login sessions (issue 14): placeholders read when used, and the request made before the endpoints
    secrets: Mapping[str, ModuleSecret] = field(default_factory=dict)
    login: Login | None = None
    # the parameters its requests send where a credential goes (secrets.request_credentials): a caller's value in one is hidden in that probe's texts
    credential_parameters: frozenset[str] = frozenset()

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The placeholders whose values are secret and added when a request is sent: `secrets`, then the login's values."""
        return (*self.secrets, *(v.name for v in self.login.values)) if self.login is not None else tuple(self.secrets)

    def target_allowed(self, target: str) -> bool:
        return not self.target_allow or any(p.fullmatch(target) for p in self.target_allow)


@dataclass(frozen=True, slots=True)
class Spec:
    file: str  # the file, directory or glob it was loaded from
    modules: Mapping[str, Module]
    sha256: str
    secrets: frozenset[str] = field(default=frozenset(), repr=False)  # the values written in it, for secrets.Redactor
    origins: Mapping[str, str] = field(default_factory=dict)  # module name -> the file it is written in (sources.py)

    def module_file(self, name: str) -> str:
        return self.origins.get(name, self.file)


@dataclass(frozen=True, slots=True)
class Secret:
    """A value given inline or as a file read when used; its repr never shows the value."""

    value: str | None = None
    file: str | None = None

    def __repr__(self) -> str:
        return f"Secret(file={self.file!r})" if self.file else "Secret(<redacted>)"

    def read(self) -> str:
        """The secret; a file is read each time (so a rotated file takes effect), without its final newline."""
        if self.file is None:
            return self.value or ""
        # as a spec file is read: a FIFO nobody writes or a hung mount is unreadable (OSError), never a hang
        return read_bounded_bytes(self.file, MAX_SECRET_BYTES).decode("utf-8").rstrip("\r\n")


@dataclass(frozen=True, slots=True)
class ModuleSecret:
    """A module's `secrets` entry: a placeholder whose value is read from a file or the environment each
    time a request needs it (a rotated file takes effect at once); its repr never shows the value."""

    name: str
    file: str | None = None
    env: str | None = None

    def read(self) -> str:
        """The value; OSError (or UnicodeDecodeError) when the file cannot be read, KeyError when the variable is not set."""
        if self.file is not None:
            return Secret(file=self.file).read()
        return os.environ[self.env or ""]

    @property
    def source(self) -> str:
        return f"file {self.file!r}" if self.file is not None else f"environment variable {self.env}"


@dataclass(frozen=True, slots=True)
class LoginValue:
    """A placeholder the login's answer gives: a JMESPath `path` on its JSON, or a `cookie` it sets, or a `header`."""

    name: str
    path: Expression | None = None
    cookie: str | None = None
    header: str | None = None


@dataclass(frozen=True, slots=True)
class Login:
    """A module's `login`: a request made before its endpoints (an Endpoint, so that it is rendered and sent
    as they are), the values its answer gives, and how long they last (None: until an endpoint answers 401 or 403)."""

    request: Endpoint
    values: tuple[LoginValue, ...]
    expires_in: float | Expression | None = None

    @property
    def reads_body(self) -> bool:
        """Whether the login's answer must be JSON: a value or `expires_in` is read from it."""
        return isinstance(self.expires_in, Expression) or any(v.path is not None for v in self.values)


@dataclass(frozen=True, slots=True)
class TLSClientConfig:
    ca_file: str | None = None
    ca: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    min_version: str | None = None
    max_version: str | None = None


@dataclass(frozen=True, slots=True)
class OAuth2:
    client_id: str
    client_secret: Secret
    token_url: str
    scopes: tuple[str, ...] = ()
    # reprs leave out what may hold credentials (a client assertion, a proxy's userinfo), like Secret
    endpoint_params: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    tls: TLSClientConfig | None = None
    proxy_url: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class HTTPClientConfig:
    """Prometheus's http_client_config, compiled. Hashable: equal configs share TLS contexts and tokens."""

    basic_auth: tuple[Secret, Secret] | None = None  # username, password
    authorization: tuple[str, Secret] | None = None  # type, credentials
    oauth2: OAuth2 | None = None
    tls: TLSClientConfig | None = None
    proxy_url: str | None = field(default=None, repr=False)  # may hold userinfo
    no_proxy: tuple[str, ...] = ()
    proxy_from_environment: bool = False
    proxy_connect_header: tuple[tuple[str, tuple[Secret, ...]], ...] = ()
    follow_redirects: bool = True

    @property
    def sends_credentials(self) -> bool:
        return bool(self.basic_auth or self.authorization or self.oauth2 or (self.tls and self.tls.cert_file))
