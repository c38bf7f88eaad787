"""Pagination: an endpoint's next pages followed one after the other, each a request through fetch.py's
request path, and their elements gathered at `items` of the first page's document, which is the one
answer the rules (and the cache) see. Every page stays on the endpoint URL's origin; the sequence is bounded
by max_pages, by the endpoint's deadline and by max_response_bytes over all pages together, and an answer
that would be incomplete (a bound reached, a page refused or failed) fails the endpoint: never partial data.
Pages wait as bytes for the last one, so that a probe in flight holds no parsed document."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from jsonexporter.slices import PARSE, turn
from jsonexporter.spec.model import Pagination
from jsonexporter.upstream.cache import Answer, parsed_size
from jsonexporter.upstream.hops import origin
from jsonexporter.upstream.render import UpstreamRequest
from jsonexporter.urls import UnusableURL, checked_url

if TYPE_CHECKING:
    from jsonexporter.upstream.fetch import EndpointResult

# one page: fetch.py's _request with the client options bound, given the page's request and the seconds left
Send = Callable[[UpstreamRequest, float, "Page"], Awaitable[tuple[Answer | None, "EndpointResult"]]]
Parse = Callable[[bytes], Any]


@dataclass(slots=True)
class Page:
    """What fetch.py's exchange of one page keeps besides its parsed document: the URL that answered,
    its Link header and its body. The exchange reads at most `max_bytes` (what the pages before left of
    max_response_bytes), and parses the body only with `parse`: the Link header style needs no document
    to find the next page, so its pages are parsed once, all together, when the last one arrived."""

    max_bytes: int
    parse: bool
    url: URL | None = None
    links: list[tuple[str, URL]] = field(default_factory=list)  # (rel, URL resolved against the page's URL)
    link_error: str | None = None
    body: bytes = b""

    def answered(self, response: aiohttp.ClientResponse) -> None:
        """Called with the final response (after its redirects), before its body is read."""
        self.url = response.url
        try:
            for link in response.links.values():  # aiohttp's RFC 8288 parser; it resolves each URL against the response's
                rel, target = link.get("rel"), link.get("url")
                if isinstance(rel, str) and isinstance(target, URL):
                    self.links.append((rel, target))
        except Exception as exc:  # ValueError, TypeError, and yarl's IndexError on `<http://u:pw@[:]@/>`
            self.link_error = f"its Link header holds an unusable URL: {_link_problem(response, exc)}"


def _link_problem(response: aiohttp.ClientResponse, exc: Exception) -> str:
    """Why aiohttp could not read the Link header: the reason of the first of its URLs that checked_url
    refuses, each taken as aiohttp takes them (`<url>` in the header's comma-separated entries)."""
    for entry in re.split(r",(?=\s*<)", ", ".join(response.headers.getall("Link", []))):
        if (match := re.match(r"\s*<(.*)>", entry)) is not None:
            try:
                checked_url(match[1], response.url)
            except UnusableURL as problem:
                return str(problem)
    return type(exc).__name__


class _PageError(Exception):
    """A page that cannot be part of the answer: its outcome, and a message naming it."""

    def __init__(self, message: str, outcome: str = "invalid_page") -> None:
        super().__init__(message)
        self.outcome = outcome


def _kind(value: Any) -> str:
    if value is None:
        return "null or absent"
    names = {dict: "an object", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _elements(document: Any, pagination: Pagination) -> list[Any]:
    value = document
    for name in pagination.item_path:
        value = value.get(name) if isinstance(value, dict) else None
    if not isinstance(value, list):
        raise _PageError(f"items {pagination.items} is not a list but {_kind(value)}")
    return value


def _first_url(request: UpstreamRequest) -> URL:
    """The first page's URL: the endpoint's, with the first page number in page_param style."""
    pagination = request.endpoint.pagination
    if pagination is not None and pagination.style == "page_param" and pagination.param is not None:
        return request.url.update_query({pagination.param: str(pagination.start)})
    return request.url


def _next_url(request: UpstreamRequest, pagination: Pagination, number: int, page: Page, document: Any) -> tuple[URL | None, int | None]:
    """The URL of the page after page `number` (None when there is none), and the page's elements when its
    document was parsed to find it; raise _PageError for an unusable page."""
    if pagination.style == "link_header":
        if page.link_error is not None:
            raise _PageError(page.link_error)
        wanted = pagination.rel.lower()
        found = next((url for rel, url in page.links if wanted in rel.lower().split()), None)
        if found is not None:
            try:
                checked_url(found)
            except UnusableURL as exc:
                raise _PageError(f"its Link header's {pagination.rel!r} URL is not usable: {exc}") from None
        return found, None
    elements = len(_elements(document, pagination))
    if pagination.style == "page_param":
        assert pagination.param is not None
        return (request.url.update_query({pagination.param: str(pagination.start + number)}) if elements else None), elements
    assert pagination.next is not None
    try:
        value = pagination.next.search(document)
    except Exception as exc:  # a function given what it cannot use: this page says nothing usable
        raise _PageError(f"next {pagination.style} {pagination.next.source}: {exc}") from None
    if value is None or value == "":
        return None, elements
    if pagination.style == "cursor":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _PageError(f"the cursor {pagination.next.source} is {_kind(value)}, not a string or an integer")
        assert pagination.param is not None
        return request.url.update_query({pagination.param: str(value)}), elements
    if not isinstance(value, str):
        raise _PageError(f"the next URL {pagination.next.source} is {_kind(value)}, not a string")
    try:
        following = checked_url(value, page.url or request.url)
    except UnusableURL as exc:
        raise _PageError(f"the next URL {pagination.next.source} is not usable: {exc}") from None
    return following, elements


def _same_credentials(url: URL, first: URL) -> URL:
    """A next page's URL as requested: without a fragment, with the userinfo of the first URL (sent as
    Basic auth, as on the first page) and never one of its own: the answer does not add credentials."""
    url = url.with_fragment(None).with_user(None)
    if first.user is not None or first.password is not None:
        url = url.with_user(first.user or "").with_password(first.password)
    return url


def _combined(bodies: list[bytes], pagination: Pagination, parse: Parse) -> tuple[Any, list[int]]:
    """The first page's document with every page's elements at `items`, and each page's number of
    elements; each body is let go once parsed. Raise _PageError naming the page that cannot be part of it."""
    document: Any = None
    gathered: list[Any] = []
    counts: list[int] = []
    for i, body in enumerate(bodies):
        bodies[i] = b""
        try:
            parsed = parse(body)
        except ValueError as exc:
            raise _PageError(f"page {i + 1}: {exc}", "invalid_json") from None
        del body
        try:
            elements = _elements(parsed, pagination)
        except _PageError as exc:
            raise _PageError(f"page {i + 1}: {exc}") from None
        counts.append(len(elements))
        if i == 0:
            document, gathered = parsed, elements
        else:
            gathered.extend(elements)
    return document, counts


def _failed(result: EndpointResult, number: int, outcome: str, error: str, total: int, lines: list[str]) -> tuple[None, EndpointResult]:
    result.outcome, result.error, result.document = outcome, error, None
    result.bytes, result.pages, result.page_lines, result.redirects = total, number, lines, []
    return None, result


async def fetch_pages(send: Send, parse: Parse, request: UpstreamRequest, budget: float) -> tuple[Answer | None, EndpointResult]:
    """The endpoint's pages in sequence, within `budget` seconds and max_response_bytes over all of them;
    the first page's document with every page's elements at `items` when the whole sequence was good.

    While the next pages are fetched, the pages before are held as bytes, as answers waiting for their
    turn to be parsed are (docs/deployment.md#memory): a page parsed to find the next one is let go at
    once, and all are parsed together, with `parse`, in one turn once the last one arrived."""
    endpoint = request.endpoint
    pagination = endpoint.pagination
    assert pagination is not None
    loop = asyncio.get_running_loop()
    start = loop.time()
    url = _first_url(request)
    requested = {str(url)}
    lines: list[str] = []
    at: list[int] = []  # the line of each page in `lines`
    bodies: list[bytes] = []
    total = 0
    number = 0
    while True:
        number += 1
        page = Page(endpoint.max_response_bytes - total, parse=pagination.style != "link_header")
        spent = loop.time() - start
        answer, result = await send(dataclasses.replace(request, url=url), budget - spent, page)
        total += result.bytes
        at.append(len(lines))
        lines.append(f"page {number}: {request.method} {url} -> {result.outcome}, status {result.status}, {result.bytes} bytes")
        lines += [f"  {line}" for line in result.redirects]
        if answer is None:
            error = f"page {number}: {result.error}"
            if result.outcome == "too_large" and number > 1:
                error = f"page {number}: pages 1 to {number} are larger together than max_response_bytes {endpoint.max_response_bytes}"
            elif result.outcome in ("timeout", "pool_timeout") and number > 1:
                error = f"page {number}: {result.error} (the pages share the endpoint's {budget:.3f}s; pages 1 to {number - 1} took {spent:.3f}s)"
            return _failed(result, number, result.outcome, error, total, lines)
        try:
            following, elements = _next_url(request, pagination, number, page, answer.document)
        except _PageError as exc:
            return _failed(result, number, exc.outcome, f"page {number}: {exc}", total, lines)
        answer = result.document = None  # bytes only until the last page arrived (above)
        bodies.append(page.body)
        if elements is not None:
            lines[at[-1]] += f", {elements} elements"
        if following is None:
            break
        following = _same_credentials(following, request.url)
        if origin(following) != origin(request.url):
            return _failed(result, number, "pagination_refused", f"page {number}: its next page {following} is on another origin than "
                           f"the first page ({request.url.with_path('/').with_query(None)}): refused, nothing is sent there", total, lines)
        if str(following) in requested:
            lines.append(f"page {number}: its next page {following} was requested before: the sequence ends")
            break
        if number >= pagination.max_pages:
            return _failed(result, number, "too_many_pages", f"page {number} has a next page, and max_pages is {pagination.max_pages}: "
                           "the answer would be incomplete", total, lines)
        requested.add(str(following))
        url = following
    # weighed for the cache before _combined lets each body go as it parses it
    kept = endpoint.cache_ttl is not None or endpoint.refresh_interval is not None  # counted by its parsed size, as fetch._request's
    size = sum(map(parsed_size, bodies)) if kept else None
    try:
        async with asyncio.timeout(max(budget - (loop.time() - start), 0.0)), turn(PARSE):
            document, counts = _combined(bodies, pagination, parse)
    except TimeoutError:
        return _failed(result, number, "timeout", f"pages 1 to {number} arrived, but the endpoint's {budget:.3f}s passed before they were parsed",
                       total, lines)
    except _PageError as exc:
        return _failed(result, number, exc.outcome, str(exc), total, lines)
    if pagination.style == "link_header":
        for i, count in zip(at, counts, strict=True):
            lines[i] += f", {count} elements"
    result.document, result.bytes, result.pages, result.page_lines, result.redirects = document, total, number, lines, []
    result.parsed_size = size
    return Answer(document, result.status, total, number, result.parsed_size), result
