"""Pagination against a real local API that pages its repositories in each of the four styles (Link header,
a next-URL field, a cursor, page numbers): the rules see one document, bounded by max_pages, the deadline
and max_response_bytes over all pages; pages stay on the first page's origin. 127.0.0.2 plays the foreign host."""

from __future__ import annotations

import asyncio
import base64
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import UpstreamFactory, make_spec
from metrics_util import parse, value

from jsonexporter.cli import main
from jsonexporter.server import STATE, make_app
from jsonexporter.upstream.cache import parsed_size

LOCAL = r"targets: {allow: ['http://127\.0\.0\.1:\d+']}"
REPOS = [{"name": f"repo{i}", "stars": i * 10} for i in range(1, 8)]  # 7 repositories, 3 a page: pages of 3, 3 and 1
PER_PAGE = 3
TOKEN = "tok-SECRET-pages"


def page_of(number: int) -> list[dict[str, Any]]:
    return REPOS[(number - 1) * PER_PAGE : number * PER_PAGE]


def last_page() -> int:
    return -(-len(REPOS) // PER_PAGE)


class PagedAPI:
    """The API's four styles, on one server; each page request is recorded with its Authorization."""

    def __init__(self) -> None:
        self.authorization: list[str | None] = []

    def _number(self, request: web.Request) -> int:
        self.authorization.append(request.headers.get("Authorization"))
        return int(request.query.get("page", "1"))

    async def link(self, request: web.Request) -> web.Response:
        n = self._number(request)
        rel = "next" if n == 1 else "prefetch next"  # a link of several relation types counts for each
        links = [f'</api/link?page={n + 1}&per_page={PER_PAGE}>; rel="{rel}"'] if n < last_page() else []
        links.append(f'<{request.url.with_query(page=last_page())}>; rel="last"')
        return web.json_response(page_of(n), headers={"Link": ", ".join(links)})

    async def field(self, request: web.Request) -> web.Response:
        n = self._number(request)
        # relative to the page's URL, then absolute
        following = (f"field?page={n + 1}" if n == 1 else str(request.url.with_query(page=n + 1))) if n < last_page() else None
        return web.json_response({"data": {"values": page_of(n)}, "links": {"next": following}, "total": len(REPOS)})

    async def cursor(self, request: web.Request) -> web.Response:
        self.authorization.append(request.headers.get("Authorization"))
        n = int(request.query.get("after", "c1").removeprefix("c"))
        meta = {"next_cursor": f"c{n + 1}" if n == 1 else n + 1} if n < last_page() else {}  # a string, then an integer
        return web.json_response({"items": page_of(n), "meta": meta})

    async def numbered(self, request: web.Request) -> web.Response:
        return web.json_response({"values": page_of(self._number(request))})

    def routes(self) -> dict[str, Any]:
        return {"/api/link": self.link, "/api/field": self.field, "/api/cursor": self.cursor, "/api/numbered": self.numbered}


STYLES = {
    "link_header": ("/api/link", "'@'", "{link_header: next}", last_page()),
    "field": ("/api/field", "data.values", "{field: links.next}", last_page()),
    "cursor": ("/api/cursor", "items", "{cursor: meta.next_cursor, param: after}", last_page()),
    "page_param": ("/api/numbered", "values", "{page_param: page, start: 1}", last_page() + 1),  # ends at the first empty page
}


def spec_for(path: str, items: str, following: str, extra: str = "", each: str | None = None) -> str:
    each = each if each is not None else ("'@'" if items == "'@'" else items)
    return f"""
        modules:
          default:
            {LOCAL}
            http_client_config: {{bearer_token: {TOKEN}}}
            endpoints:
              repos:
                url: '{{target}}{path}'
                pagination: {{items: {items}, next: {following}{extra}}}
            metrics:
              - {{name: repo_stars, help: Stars of the repository., each: {each}, value: stars, labels: {{repo: name}}}}
        """


async def exporter_for(aiohttp_client: Any, text: str) -> Any:
    return await aiohttp_client(make_app(make_spec(textwrap.dedent(text))))


async def probe(client: Any, target: str, **params: str) -> str:
    response = await client.get("/probe", params={"target": target, **params})
    assert response.status == 200
    return await response.text()


def stars(text: str) -> dict[str, float]:
    return {dict(labels)["repo"]: v for (name, labels), v in parse(text).items() if name == "repo_stars"}


@pytest.mark.parametrize("style", list(STYLES))
async def test_each_style_gathers_every_page_into_one_document(aiohttp_client: Any, upstream: UpstreamFactory, style: str) -> None:
    api = PagedAPI()
    up = await upstream(api.routes())
    path, items, following, pages = STYLES[style]
    client = await exporter_for(aiohttp_client, spec_for(path, items, following))
    text = await probe(client, up.url)
    assert stars(text) == {r["name"]: float(r["stars"]) for r in REPOS}
    s = parse(text)
    assert value(s, "probe_success") == 1
    assert value(s, "probe_endpoint_pages", endpoint="repos") == pages
    assert up.hits[path] == pages
    assert api.authorization == [f"Bearer {TOKEN}"] * pages  # every page of the first page's origin carries the credentials
    trace = await probe(client, up.url, debug="true")
    for n in range(1, pages + 1):
        assert f"page {n}: GET http://127.0.0.1:" in trace
    assert TOKEN not in trace


async def test_the_rules_see_the_first_page_with_every_element_at_items(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    up = await upstream(PagedAPI().routes())
    client = await exporter_for(aiohttp_client, spec_for("/api/field", "data.values", "{field: links.next}") + """
              - {name: repos_total, help: Repositories the API reports., value: total}
              - {name: repos_listed, help: Repositories listed., value: length(data.values)}
        """)
    s = parse(await probe(client, up.url))
    assert value(s, "repos_total") == len(REPOS)
    assert value(s, "repos_listed") == len(REPOS)


async def test_a_sequence_longer_than_max_pages_fails_the_endpoint(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    up = await upstream(PagedAPI().routes())
    client = await exporter_for(aiohttp_client, spec_for("/api/link", "'@'", "{link_header: next}", ", max_pages: 2"))
    text = await probe(client, up.url, debug="true")
    assert up.hits["/api/link"] == 2
    assert "-> too_many_pages" in text
    assert "page 2 has a next page, and max_pages is 2: the answer would be incomplete" in text
    metrics = text.partition("metrics:\n")[2]
    assert stars(metrics) == {}  # never a partial answer
    s = parse(metrics)
    assert value(s, "probe_endpoint_success", endpoint="repos") == 0
    assert value(s, "probe_endpoint_pages", endpoint="repos") == 2
    assert value(s, "probe_success") == 0


async def test_max_response_bytes_bounds_all_pages_together(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    up = await upstream(PagedAPI().routes())
    one_page = len(web.json_response({"values": page_of(1)}).body)  # type: ignore[arg-type]
    client = await exporter_for(aiohttp_client, f"""
        modules:
          default:
            {LOCAL}
            endpoints:
              repos:
                url: '{{target}}/api/numbered'
                max_response_bytes: {one_page + one_page // 2}
                pagination: {{items: values, next: {{page_param: page}}}}
            metrics:
              - {{name: repo_stars, help: Stars., each: values, value: stars, labels: {{repo: name}}}}
        """)
    text = await probe(client, up.url, debug="true")
    assert up.hits["/api/numbered"] == 2
    assert "-> too_large" in text
    assert f"page 2: pages 1 to 2 are larger together than max_response_bytes {one_page + one_page // 2}" in text
    s = parse(text.partition("metrics:\n")[2])
    assert value(s, "probe_endpoint_success", endpoint="repos") == 0
    assert stars(text.partition("metrics:\n")[2]) == {}


async def foreign_host(aiohttp_server: Any) -> tuple[Any, list[web.Request]]:
    """A real server on 127.0.0.2, the foreign host, that answers anything and records what it received."""
    received: list[web.Request] = []

    async def answer(request: web.Request) -> web.Response:
        received.append(request)
        return web.json_response([{"name": "stolen", "stars": 666}])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return await aiohttp_server(app, host="127.0.0.2"), received


@pytest.mark.parametrize("way", ["next_link", "redirect"])
async def test_a_page_on_another_origin_is_refused_and_gets_no_credentials(aiohttp_client: Any, aiohttp_server: Any,
                                                                            upstream: UpstreamFactory, way: str) -> None:
    """Page 2 names page 3 on 127.0.0.2 (refused: pages stay on the first request's origin), or redirects
    there (refused by the redirect rules, as a first page's redirect outside targets.allow is)."""
    elsewhere, foreign_requests = await foreign_host(aiohttp_server)
    foreign = f"http://127.0.0.2:{elsewhere.port}/api/third?page=3"

    async def first(request: web.Request) -> web.Response:
        return web.json_response(page_of(1), headers={"Link": '</api/second>; rel="next"'})

    async def second(request: web.Request) -> web.Response:
        if way == "redirect":
            raise web.HTTPFound(foreign)
        return web.json_response(page_of(2), headers={"Link": f'<{foreign}>; rel="next"'})

    up = await upstream({"/api/first": first, "/api/second": second})
    client = await exporter_for(aiohttp_client, spec_for("/api/first", "'@'", "{link_header: next}"))
    text = await probe(client, up.url, debug="true")
    assert foreign_requests == []
    assert up.requests[1].headers["Authorization"] == f"Bearer {TOKEN}"  # page 2, on the same origin, has them
    if way == "next_link":
        assert "-> pagination_refused" in text
        assert f"page 2: its next page {foreign} is on another origin" in text
    else:
        assert "-> redirect_refused" in text
        assert f"page 2: redirect 1 (302 to {foreign}) refused" in text
    metrics = text.partition("metrics:\n")[2]
    assert stars(metrics) == {}
    assert value(parse(metrics), "probe_endpoint_success", endpoint="repos") == 0
    assert value(parse(metrics), "probe_endpoint_pages", endpoint="repos") == 2


async def test_the_credentials_of_the_target_go_to_every_page_and_the_trace_shows_none(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    """A target with userinfo is sent as Basic auth to the next pages too (a Link URL carries none of its own);
    a secret query parameter is in every page's URL, and redacted in the trace."""
    api = PagedAPI()
    up = await upstream(api.routes())
    client = await exporter_for(aiohttp_client, """
        modules:
          default:
            targets: {allow: ['http://(alice:pw-SECRET@)?127\\.0\\.0\\.1:\\d+']}
            endpoints:
              repos:
                url: '{target}/api/link'
                params: {api_key: key-SECRET-1}
                pagination: {items: '@', next: {link_header: next}}
            metrics:
              - {name: repo_stars, help: Stars., each: '@', value: stars, labels: {repo: name}}
        """)
    target = up.url.replace("http://", "http://alice:pw-SECRET@")
    text = await probe(client, target, debug="true")
    assert stars(text.partition("metrics:\n")[2]) == {r["name"]: float(r["stars"]) for r in REPOS}
    assert api.authorization == ["Basic " + base64.b64encode(b"alice:pw-SECRET").decode()] * last_page()
    assert [r.query.get("api_key") for r in up.requests] == ["key-SECRET-1", None, None]  # Link URLs are followed as given
    assert "page 3: GET http://<redacted>@127.0.0.1:" in text
    assert "SECRET" not in text


async def test_a_next_url_requested_before_ends_the_sequence(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    async def looping(request: web.Request) -> web.Response:
        n = int(request.query.get("page", "1"))
        return web.json_response({"data": {"values": page_of(n)}, "links": {"next": f"/api/loop?page={1 if n == 2 else 2}"}})

    up = await upstream({"/api/loop": looping})
    client = await exporter_for(aiohttp_client, spec_for("/api/loop?page=1", "data.values", "{field: links.next}"))
    text = await probe(client, up.url, debug="true")
    assert up.hits["/api/loop"] == 2
    assert "was requested before: the sequence ends" in text
    metrics = text.partition("metrics:\n")[2]
    assert stars(metrics) == {r["name"]: float(r["stars"]) for r in page_of(1) + page_of(2)}
    assert value(parse(metrics), "probe_endpoint_pages", endpoint="repos") == 2


NEXT = {"page_param": "{page_param: page}", "link_header": "{link_header: next}", "field": "{field: next}"}
BAD_PAGES = {
    "not_a_list": ("invalid_page", "page 2: items values is not a list but an object"),
    "not_json": ("invalid_json", "page 2: invalid JSON: Expecting value at line 1 column 1; body starts with b'<html>maintenance</html>'"),
}


# page_param and field styles read each page on arrival, link_header all pages once the last one arrived
@pytest.mark.parametrize(("style", "bad"), [("page_param", "not_a_list"), ("link_header", "not_a_list"), ("link_header", "not_json"),
                                            ("field", "not_json")])
async def test_a_bad_page_fails_the_endpoint_naming_the_page(aiohttp_client: Any, upstream: UpstreamFactory, style: str, bad: str) -> None:
    async def pages(request: web.Request) -> web.Response:
        n = int(request.query.get("page", "1"))
        links = {"Link": f'</api/p?page={n + 1}>; rel="next"'} if n < 3 else {}
        if n == 2 and bad == "not_json":
            return web.Response(text="<html>maintenance</html>", content_type="text/html", headers=links)
        answer = {"values": page_of(n) if n != 2 else {"error": "rate limited"}, "next": f"/api/p?page={n + 1}" if n < 3 else None}
        return web.json_response(answer, headers=links)

    up = await upstream({"/api/p": pages})
    client = await exporter_for(aiohttp_client, spec_for("/api/p", "values", NEXT[style]))
    text = await probe(client, up.url, debug="true")
    outcome, message = BAD_PAGES[bad]
    assert f"-> {outcome}" in text
    assert message in text
    metrics = text.partition("metrics:\n")[2]
    assert stars(metrics) == {}
    assert value(parse(metrics), "probe_endpoint_success", endpoint="repos") == 0


async def test_the_pages_share_the_endpoint_deadline(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    release = asyncio.Event()

    async def pages(request: web.Request) -> web.Response:
        n = int(request.query.get("page", "1"))
        if n == 2:
            await asyncio.wait_for(release.wait(), 20)  # held until the test ends: the deadline passes meanwhile
        return web.json_response({"values": page_of(n)})

    up = await upstream({"/api/numbered": pages})
    client = await exporter_for(aiohttp_client, spec_for("/api/numbered", "values", "{page_param: page}").replace(
        "pagination:", "timeout: 1s\n                pagination:"))
    try:
        text = await probe(client, up.url, debug="true")
    finally:
        release.set()
    assert "-> timeout" in text
    assert "page 2: no complete answer within" in text and "the pages share the endpoint's" in text
    assert stars(text.partition("metrics:\n")[2]) == {}


async def test_the_cache_keeps_the_combined_document(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    up = await upstream(PagedAPI().routes())
    client = await exporter_for(aiohttp_client, spec_for("/api/cursor", "items", "{cursor: meta.next_cursor, param: after}",
                                                         each="items").replace("pagination:", "cache_ttl: 1h\n                pagination:"))
    first = await probe(client, up.url)
    second = await probe(client, up.url)
    assert up.hits["/api/cursor"] == last_page()  # the second probe asked nothing
    assert stars(second) == stars(first) == {r["name"]: float(r["stars"]) for r in REPOS}
    s = parse(second)
    assert value(s, "probe_endpoint_pages", endpoint="repos") == last_page()
    assert value(s, "probe_endpoint_cache_age_seconds", endpoint="repos") > 0


@pytest.mark.parametrize("style", ["link_header", "cursor"])  # pages kept as bytes only; pages parsed to find the next one too
async def test_a_cached_sequence_of_pages_weighs_what_its_pages_take_parsed(aiohttp_client: Any, upstream: UpstreamFactory, style: str) -> None:
    sent: list[bytes] = []

    async def pages(request: web.Request) -> web.Response:
        n = int(request.query.get("page", "1"))
        following = {"next": n + 1} if n < 3 else {}
        body = json.dumps({"items": [{"name": f"r{n}-{i}", "stars": i} for i in range(200)], "meta": following}).encode()
        sent.append(body)
        link = {"Link": f'</api/pages?page={n + 1}>; rel="next"'} if n < 3 else {}
        return web.Response(body=body, content_type="application/json", headers=link)

    up = await upstream({"/api/pages": pages})
    following = "{link_header: next}" if style == "link_header" else "{cursor: meta.next, param: page}"
    client = await exporter_for(aiohttp_client, spec_for("/api/pages", "items", following, each="items").replace(
        "pagination:", "cache_ttl: 1h\n                pagination:"))
    assert value(parse(await probe(client, up.url)), "probe_endpoint_pages", endpoint="repos") == 3
    cache = client.server.app[STATE].upstream.cache
    assert len(sent) == 3 and len(cache) == 1
    assert cache.bytes == sum(map(parsed_size, sent)) > 3 * 2 * len(sent[0])  # not 0: the bodies are weighed before they are let go


@pytest.mark.parametrize("background", ["stale_while_revalidate", "refresh_interval"])
async def test_background_requests_gather_every_page_too(aiohttp_client: Any, upstream: UpstreamFactory, background: str) -> None:
    """A revalidation (stale_while_revalidate) or a schedule's request (refresh_interval) is the whole sequence of pages."""
    factor = [1]  # the API's answer changes: the stars of every repository, on every page

    async def pages(request: web.Request) -> web.Response:
        n = int(request.query.get("page", "1"))
        links = {"Link": f'</api/p?page={n + 1}>; rel="next"'} if n < last_page() else {}
        return web.json_response([{**r, "stars": r["stars"] * factor[0]} for r in page_of(n)], headers=links)

    up = await upstream({"/api/p": pages})
    keys = "cache_ttl: 1ms\n                stale_while_revalidate: 1h" if background == "stale_while_revalidate" else "refresh_interval: 1s"
    client = await exporter_for(aiohttp_client, spec_for("/api/p", "'@'", "{link_header: next}").replace(
        "pagination:", f"{keys}\n                pagination:"))
    first = await probe(client, up.url)
    assert stars(first) == {r["name"]: float(r["stars"]) for r in REPOS}
    assert value(parse(first), "probe_endpoint_pages", endpoint="repos") == last_page()
    factor[0] = 2
    wanted = {r["name"]: float(r["stars"] * 2) for r in REPOS}
    for _ in range(1000):  # bounded: until a background request stored the new answer (each probe a real round trip)
        text = await probe(client, up.url)
        if stars(text) == wanted:
            break
        await asyncio.sleep(0.01)  # the polling period of a bounded wait, not a synchronisation
    assert stars(text) == wanted  # all pages: page 1 alone would give 3 repositories
    assert value(parse(text), "probe_endpoint_pages", endpoint="repos") == last_page()


# -- check --------------------------------------------------------------------------------------


P = "modules.default.endpoints.repos.pagination"


@pytest.mark.parametrize(("pagination", "at", "expected"), [
    ("{items: 'values[0]', next: {page_param: page}}", "'values[0]'",
     f"{P}.items: items must be @ (each page is the list) or a plain field path such as data.values, not 'values[0]'"),
    ("{items: '$root.values', next: {page_param: page}}", "'$root", f"{P}.items: items must be @"),
    ("{items: '@', next: {link_header: next, page_param: page}}", "page_param",
     f"{P}.next.page_param: next takes one style: link_header or page_param, not both"),
    ("{items: '@', next: {cursor: meta.next}}", "{cursor", f"{P}.next: cursor needs param"),
    ("{items: '@', next: {page_param: page, param: p}}", "param: p}", f"{P}.next.param: param goes with cursor, not page_param"),
    ("{items: '@', next: {curser: meta.next, param: p}}", "curser", f"{P}.next.curser: unknown key 'curser' (did you mean 'cursor'?)"),
    ("{items: '@', next: {field: 'links.[next'}}", "'}", f"{P}.next.field: invalid JMESPath: incomplete expression at position 11"),
    ("{items: '@', next: {field: '$target'}}", "'$target", f"{P}.next.field: field is evaluated on each page"),
    ("{items: '@', next: {link_header: next}, max_pages: 1001}", "1001", f"{P}.max_pages: "),
    ("{itmes: '@', next: {link_header: next}}", "itmes", f"{P}.itmes: unknown key 'itmes' (did you mean 'items'?)"),
    ("{items: '@', next: {}}", "{}", f"{P}.next: must not be empty"),
])
def test_check_reports_pagination_mistakes_where_they_are(write_spec: Any, capsys: pytest.CaptureFixture[str], pagination: str, at: str,
                                                          expected: str) -> None:
    path: Path = write_spec(f"""
        modules:
          default:
            endpoints:
              repos:
                pagination: {pagination}
            metrics: [{{name: x, help: x, value: v}}]
        """)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith(str(path))]
    assert len(errors) == 1, out
    column = len("        pagination: ") + pagination.index(at) + 1
    assert f"{path}:5:{column}: {expected}" in errors[0], out
    assert "Traceback" not in out


def test_check_accepts_each_style(write_spec: Any, capsys: pytest.CaptureFixture[str]) -> None:
    endpoints = "".join(f"""
              {style}:
                url: 'http://127.0.0.1{path}'
                pagination: {{items: {items}, next: {following}, max_pages: 5}}""" for style, (path, items, following, _) in STYLES.items())
    path: Path = write_spec(f"""
        modules:
          default:
            endpoints:{endpoints}
            metrics: [{{name: x, help: x, value: v, endpoint: field}}]
        """)
    assert main(["check", "--strict", str(path)]) == 0, capsys.readouterr().out


# -- the cookbook ---------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_the_cookbook_spec_pages_to_its_golden_answer(aiohttp_client: Any, upstream: UpstreamFactory) -> None:
    """examples/github-org-repos.yml's saved answer is the combined document: served as GitHub serves it,
    two repositories a page with absolute Link URLs, the probe gives the series of the golden .prom."""
    repos = json.loads((EXAMPLES / "golden" / "github-org-repos" / "org.repos.json").read_text())
    pages = [repos[i : i + 2] for i in range(0, len(repos), 2)]
    base: list[str] = []

    async def first(request: web.Request) -> web.Response:
        assert request.query["per_page"] == "100"
        return await numbered(request, 1)

    async def later(request: web.Request) -> web.Response:
        return await numbered(request, int(request.query["page"]))

    async def numbered(request: web.Request, n: int) -> web.Response:
        links = [f'<{base[0]}/organizations/3380462/repos?per_page=100&type=public&page={n + 1}>; rel="next"'] if n < len(pages) else []
        links.append(f'<{base[0]}/organizations/3380462/repos?per_page=100&type=public&page={len(pages)}>; rel="last"')
        return web.json_response(pages[n - 1], headers={"Link": ", ".join(links)})

    up = await upstream({"/orgs/prometheus/repos": first, "/organizations/3380462/repos": later})
    base.append(up.url)
    spec = (EXAMPLES / "github-org-repos.yml").read_text().replace(r"https://api\.github\.com", r"http://127\.0\.0\.1:\d+")
    client = await aiohttp_client(make_app(make_spec(spec, "github-org-repos.yml")))
    text = await probe(client, up.url, module="org", org="prometheus")
    golden = (EXAMPLES / "golden" / "github-org-repos" / "org.prom").read_text()

    def rules(t: str) -> dict[Any, float]:
        return {k: v for k, v in parse(t).items() if not k[0].startswith("probe_")}

    assert rules(text) == rules(golden) != {}
    assert value(parse(text), "probe_endpoint_pages", endpoint="repos") == len(pages) == 4
    assert up.hits == {"/orgs/prometheus/repos": 1, "/organizations/3380462/repos": len(pages) - 1}
