"""Pagination: an endpoint's next pages followed one after the other, each a request through fetch.py's
request path, and their elements gathered at `items` of the first page's document, which is the one
answer the rules (and the cache) see. Every page stays on the first page's origin; the sequence is bounded
by max_pages, by the endpoint's deadline and by max_response_bytes over all pages together, and an answer
that would be incomplete (a bound reached, a page refused or failed) fails the endpoint: never partial data."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from jsonexporter.spec.model import Pagination
from jsonexporter.upstream.cache import Answer
from jsonexporter.upstream.hops import origin
from jsonexporter.upstream.render import UpstreamRequest, redact_url

if TYPE_CHECKING:
    from jsonexporter.upstream.fetch import EndpointResult

# what fetch.py calls with the final response of a request (after its redirects), before reading its body
OnAnswer = Callable[[aiohttp.ClientResponse], None]
# one page: fetch.py's _request with the client options bound, given the page's request, the seconds and bytes left
Send = Callable[[UpstreamRequest, float, int, OnAnswer], Awaitable[tuple[Answer | None, "EndpointResult"]]]


@dataclass(slots=True)
class _Response:
    """What a page's response says besides its body: the URL that answered, and its Link header."""

    url: URL | None = None
    links: list[tuple[str, URL]] = field(default_factory=list)  # (rel, URL resolved against the page's URL)
    link_error: str | None = None

    def __call__(self, response: aiohttp.ClientResponse) -> None:
        self.url = response.url
        try:
            for link in response.links.values():  # aiohttp's RFC 8288 parser; it resolves each URL against the response's
                rel, target = link.get("rel"), link.get("url")
                if isinstance(rel, str) and isinstance(target, URL):
                    self.links.append((rel, target))
        except (ValueError, TypeError) as exc:
            self.link_error = f"its Link header holds an unusable URL ({type(exc).__name__})"


class _PageError(Exception):
    """A page that cannot be part of the answer (outcome invalid_page)."""


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


def first_url(request: UpstreamRequest) -> URL:
    """The first page's URL: the endpoint's, with the first page number in page_param style."""
    pagination = request.endpoint.pagination
    if pagination is not None and pagination.style == "page_param" and pagination.param is not None:
        return request.url.update_query({pagination.param: str(pagination.start)})
    return request.url


def _next_url(request: UpstreamRequest, pagination: Pagination, number: int, document: Any, elements: list[Any], seen: _Response) -> URL | None:
    """The URL of the page after page `number`, or None when there is none; raise _PageError for an unusable one."""
    if pagination.style == "page_param":
        assert pagination.param is not None
        return request.url.update_query({pagination.param: str(pagination.start + number)}) if elements else None
    if pagination.style == "link_header":
        if seen.link_error is not None:
            raise _PageError(seen.link_error)
        wanted = pagination.rel.lower()
        return next((url for rel, url in seen.links if wanted in rel.lower().split()), None)
    assert pagination.next is not None
    try:
        value = pagination.next.search(document)
    except Exception as exc:  # a function given what it cannot use: this page says nothing usable
        raise _PageError(f"next {pagination.style} {pagination.next.source}: {exc}") from None
    if value is None or value == "":
        return None
    if pagination.style == "cursor":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _PageError(f"the cursor {pagination.next.source} is {_kind(value)}, not a string or an integer")
        assert pagination.param is not None
        return request.url.update_query({pagination.param: str(value)})
    if not isinstance(value, str):
        raise _PageError(f"the next URL {pagination.next.source} is {_kind(value)}, not a string")
    try:
        return (seen.url or request.url).join(URL(value))
    except (ValueError, TypeError):
        raise _PageError(f"the next URL {pagination.next.source} is not a URL") from None


def _same_credentials(url: URL, first: URL) -> URL:
    """A next page's URL as requested: without a fragment, with the userinfo of the first URL (sent as
    Basic auth, as on the first page) and never one of its own: the answer does not add credentials."""
    url = url.with_fragment(None).with_user(None)
    if first.user is not None or first.password is not None:
        url = url.with_user(first.user or "").with_password(first.password)
    return url


def _failed(result: EndpointResult, number: int, outcome: str, error: str, total: int, lines: list[str]) -> tuple[None, EndpointResult]:
    result.outcome, result.error, result.document = outcome, error, None
    result.bytes, result.pages, result.page_lines, result.redirects = total, number, lines, []
    return None, result


async def fetch_pages(send: Send, request: UpstreamRequest, budget: float) -> tuple[Answer | None, EndpointResult]:
    """The endpoint's pages in sequence, within `budget` seconds and max_response_bytes over all of them;
    the first page's document with every page's elements at `items` when the whole sequence was good."""
    endpoint = request.endpoint
    pagination = endpoint.pagination
    assert pagination is not None
    loop = asyncio.get_running_loop()
    start = loop.time()
    url = first_url(request)
    requested = {str(url)}
    lines: list[str] = []
    gathered: list[Any] | None = None  # the first page's list at `items`: the others' elements join it
    document: Any = None
    total = 0
    number = 0
    while True:
        number += 1
        seen = _Response()
        spent = loop.time() - start
        answer, result = await send(dataclasses.replace(request, url=url), budget - spent, endpoint.max_response_bytes - total, seen)
        total += result.bytes
        lines.append(f"page {number}: {request.method} {redact_url(url)} -> {result.outcome}, status {result.status}, {result.bytes} bytes")
        lines += [f"  {line}" for line in result.redirects]
        if answer is None:
            error = f"page {number}: {result.error}"
            if result.outcome == "too_large" and number > 1:
                error = f"page {number}: pages 1 to {number} are larger together than max_response_bytes {endpoint.max_response_bytes}"
            elif result.outcome in ("timeout", "pool_timeout") and number > 1:
                error = f"page {number}: {result.error} (the pages share the endpoint's {budget:.3f}s; pages 1 to {number - 1} took {spent:.3f}s)"
            return _failed(result, number, result.outcome, error, total, lines)
        try:
            elements = _elements(answer.document, pagination)
            following = _next_url(request, pagination, number, answer.document, elements, seen)
        except _PageError as exc:
            return _failed(result, number, "invalid_page", f"page {number}: {exc}", total, lines)
        lines[-1] += f", {len(elements)} elements"
        if gathered is None:
            document, gathered = answer.document, elements
        else:
            gathered.extend(elements)
        if following is None:
            break
        following = _same_credentials(following, request.url)
        if origin(following) != origin(request.url):
            return _failed(result, number, "pagination_refused", f"page {number}: its next page {redact_url(following)} is on another origin than "
                           f"the first page ({redact_url(request.url.with_path('/').with_query(None))}): refused, nothing is sent there", total, lines)
        if str(following) in requested:
            lines.append(f"page {number}: its next page {redact_url(following)} was requested before: the sequence ends")
            break
        if number >= pagination.max_pages:
            return _failed(result, number, "too_many_pages", f"page {number} has a next page, and max_pages is {pagination.max_pages}: "
                           "the answer would be incomplete", total, lines)
        requested.add(str(following))
        url = following
    result.document, result.bytes, result.pages, result.page_lines, result.redirects = document, total, number, lines, []
    return Answer(document, result.status, total, number), result
