"""Histograms and summaries from the buckets and percentiles an API reports: real families in both
formats, accepted by promtool and both prometheus_client parsers; a series that cannot be one is an
extraction error of that series only."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import ExporterFactory, UpstreamFactory, make_spec
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from test_promtool import needs_promtool, promtool_check

from jsonexporter.exposition import render_openmetrics, render_text
from jsonexporter.extract import Extraction, ProbeContext, SeriesLimitExceeded, extract, extract_async
from jsonexporter.trace import Trace

PROBE = ProbeContext("default", "http://t", {})
HISTOGRAM = """
modules:
  default:
    metrics:
      - name: http_request_duration_seconds
        help: Time to answer a request.
        type: histogram
        each: routes
        labels: {route: $key}
        buckets: latency.buckets
        sum: latency.sum
        count: latency.count
"""


def _extract(spec_text: str, document: Any, traced: bool = False) -> Extraction:
    module = make_spec(spec_text).modules["default"]
    return extract(module, {"default": document}, PROBE, trace=Trace() if traced else None)


def _buckets(result: Extraction, name: str = "http_request_duration_seconds") -> dict[str, list[tuple[str, float]]]:
    """route -> [(le, count)] in their order, as prometheus_client's text parser reads the output."""
    (family,) = [f for f in parse_text(render_text(result.families.values())) if f.name == name]
    found: dict[str, list[tuple[str, float]]] = {}
    for s in family.samples:
        if s.name.endswith("_bucket"):
            found.setdefault(s.labels["route"], []).append((s.labels["le"], s.value))
    return found


def _histogram(buckets: Any, count: Any = None, cumulative: bool = True, traced: bool = False) -> Extraction:
    latency = {"buckets": buckets, "sum": 2.5, **({} if count is None else {"count": count})}
    spec = HISTOGRAM if cumulative else HISTOGRAM + "        cumulative: false\n"
    return _extract(spec, {"routes": {"/": {"latency": latency}, "/ok": {"latency": {"buckets": {"+Inf": 1}, "sum": 1}}}}, traced)


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("buckets", [
    {"1": 9, "0.1": 5, "+Inf": 12},
    [{"le": 0.1, "count": 5}, {"le": "+Inf", "count": 12}, {"le": 1, "count": 9}],
    [["+Inf", 12], [1, "9"], ["0.1", 5]],
], ids=["object", "list_of_objects", "list_of_pairs"])
def test_buckets_are_written_sorted_by_bound_with_le_as_prometheus_client_writes_it(buckets: Any, traced: bool) -> None:
    result = _histogram(buckets, traced=traced)
    assert _buckets(result)["/"] == [("0.1", 5), ("1.0", 9), ("+Inf", 12)]
    text = render_text(result.families.values())
    assert 'http_request_duration_seconds_count{route="/"} 12\nhttp_request_duration_seconds_sum{route="/"} 2.5\n' in text
    assert result.errors == {"http_request_duration_seconds": 0}


def test_per_bucket_counts_are_summed_in_the_order_of_their_bounds() -> None:
    result = _histogram({"+Inf": 1, "0.5": 4, "0.1": 5}, cumulative=False)
    assert _buckets(result)["/"] == [("0.1", 5), ("0.5", 9), ("+Inf", 10)]


@pytest.mark.parametrize("cumulative", [True, False])
def test_a_missing_inf_bucket_is_made_from_the_count(cumulative: bool) -> None:
    result = _histogram({"0.1": 5, "0.5": 4 if not cumulative else 9}, count=12, cumulative=cumulative)
    assert _buckets(result)["/"] == [("0.1", 5), ("0.5", 9), ("+Inf", 12)]


@pytest.mark.parametrize(("buckets", "count", "message"), [
    ({"0.1": 5, "0.5": 3, "+Inf": 12}, None, "cumulative buckets decrease: bucket le=0.5 has 3, below 5 (`cumulative: false` if"),
    ({"0.1": 5, "0.5": 9}, None, "buckets 'latency.buckets' have no +Inf bucket, and the rule no `count` to make it from"),
    ({"0.1": 5, "0.5": 9}, 7, "count 7 is below the largest bucket (9)"),
    ({"0.1": 5, "+Inf": 9}, 10, "count 10 differs from the +Inf bucket (9)"),
    ({"0.1": 5, "1e-1": 6, "+Inf": 9}, None, "bucket le=0.1 is given twice"),
    ({"0.1": -1, "+Inf": 9}, None, "bucket le=0.1 has the count -1, not a whole number of observations"),
    ({"0.1": 0.5, "+Inf": 9}, None, "bucket le=0.1 has the count 0.5, not a whole number of observations"),
    ({"0.1": 1, "+Inf": 9}, 8.5, "count 8.5 is not a whole number of observations"),
    ({"fast": 1, "+Inf": 9}, None, 'bucket bound: "fast" is not a number'),
    ({"-1": 1, "+Inf": 9}, None, "bucket le=-1.0 is negative: OpenMetrics allows no _sum then"),
    ([[0.1, 5, 1]], None, "bucket [0.1, 5, 1] is neither {le, count} nor [le, count]"),
    ("0.1=5", None, 'buckets \'latency.buckets\' gave "0.1=5", not an object or a list'),
    (None, None, "buckets 'latency.buckets' is null or missing"),
], ids=["decreasing", "no_inf_no_count", "count_below_largest", "count_not_inf", "bound_twice", "negative_count", "fractional_count",
        "fractional_total", "bound_not_a_number", "negative_bound", "bad_pair", "not_buckets", "null"])
@pytest.mark.parametrize("traced", [False, True])
def test_buckets_that_cannot_make_a_histogram_are_an_error_of_that_series_only(buckets: Any, count: Any, message: str, traced: bool) -> None:
    result = _histogram(buckets, count=count, traced=traced)
    assert list(_buckets(result)) == ["/ok"]
    assert result.errors == {"http_request_duration_seconds": 1}
    assert result.messages[0].startswith(f"metric http_request_duration_seconds: {message}"), result.messages


@pytest.mark.parametrize(("rule", "latency", "message"), [
    ("        cumulative: false\n", {"buckets": {"1": 1e308, "2": 1e308, "+Inf": 0}, "sum": 1}, "bucket le=2.0 is +Inf: counts and sums must be finite"),
    ("        scale: 10\n", {"buckets": {"1": 1, "+Inf": 2}, "sum": 1e308}, "sum is +Inf: counts and sums must be finite"),
], ids=["buckets_added_up", "sum_scaled"])
@pytest.mark.parametrize("traced", [False, True])
def test_counts_or_a_sum_beyond_the_largest_float_are_an_error_of_that_series_only(rule: str, latency: dict[str, Any], message: str,
                                                                                    traced: bool) -> None:
    ok = {"buckets": dict.fromkeys(latency["buckets"], 1), "sum": 1}  # the same bucket keys: the rule goes by columns when untraced
    spec = HISTOGRAM.replace("        count: latency.count\n", "").replace("$key", "name") + rule  # no `$`: the fast path takes it
    result = _extract(spec, {"routes": [{"name": "/", "latency": latency}, {"name": "/ok", "latency": ok}]}, traced)
    assert list(_buckets(result)) == ["/ok"]
    assert result.errors == {"http_request_duration_seconds": 1}
    assert result.messages[0].startswith(f"metric http_request_duration_seconds: {message}"), result.messages
    assert len(list(parse_openmetrics(render_openmetrics(result.families.values())))) == 1


def test_a_summary_sum_scaled_beyond_the_largest_float_is_an_error_of_that_series() -> None:
    result = _extract(SUMMARY + "        sum: sum\n        scale: 10\n", {"methods": {"bad": {"percentiles": {"p50": 1}, "count": 3, "sum": 1e308},
                                                                                "get": {"percentiles": {"p50": 1}, "count": 3, "sum": 1}}})
    assert list(_quantiles(result)) == ["get"]
    assert result.messages == ["metric rpc_duration_seconds: sum is +Inf: counts and sums must be finite (the answer's add up, or scale, "
                               "beyond the largest float) (labels {'method': 'bad'})"]


SUMMARY = """
modules:
  default:
    metrics:
      - name: rpc_duration_seconds
        help: Time to answer a call.
        type: summary
        each: methods
        labels: {method: $key}
        quantiles: percentiles
        count: count
"""


def _quantiles(result: Extraction) -> dict[str, list[tuple[str, float]]]:
    (family,) = parse_text(render_text(result.families.values()))
    found: dict[str, list[tuple[str, float]]] = {}
    for s in family.samples:
        found.setdefault(s.labels["method"], []).append((s.labels.get("quantile", s.name), s.value))
    return found


def test_quantile_keys_as_numbers_or_percentiles_are_written_sorted_and_sum_is_optional() -> None:
    result = _extract(SUMMARY, {"methods": {"get": {"percentiles": {"p999": 1.4, "0.5": 0.12, "p99": 0.9, "p05": 0.01}, "count": 40}}})
    assert _quantiles(result) == {"get": [("0.05", 0.01), ("0.5", 0.12), ("0.99", 0.9), ("0.999", 1.4), ("rpc_duration_seconds_count", 40)]}


@pytest.mark.parametrize(("percentiles", "message"), [
    ({"p50": 1, "0.5": 2}, "quantile 0.5 is given twice"),
    ({"1.5": 1}, 'quantile "1.5" is not between 0 and 1'),
    ({"p50": -1}, "quantile 0.5 has the negative value -1: OpenMetrics parsers reject it"),
    ({"median": 1}, 'quantile: "median" is not a number'),
    ([0.5, 1], "quantiles 'percentiles' gave [0.5, 1], not an object"),
])
def test_quantiles_that_cannot_make_a_summary_are_an_error_of_that_series_only(percentiles: Any, message: str) -> None:
    result = _extract(SUMMARY, {"methods": {"bad": {"percentiles": percentiles, "count": 1}, "get": {"percentiles": {"p50": 1}, "count": 1}}})
    assert list(_quantiles(result)) == ["get"]
    assert result.messages == [f"metric rpc_duration_seconds: {message} (labels {{'method': 'bad'}})"]


PAYLOAD = {
    "routes": {
        "/": {"latency": {"buckets": {"0.1": 5, "1": 9, "+Inf": 12}, "sum": 3.5, "count": 12, "percentiles": {"p50": 0.08, "p99": 0.9}}},
        "/api": {"latency": {"buckets": [{"le": 0.25, "count": 2}, {"le": 2.5, "count": 3}], "sum": 0.75, "count": 6,
                             "percentiles": {"0.5": 0.2}}},
        "/broken": {"latency": {"buckets": {"0.1": 5, "1": 3}, "sum": 1, "count": 9, "percentiles": {"p50": 0.1}}},
    },
}
BOTH = HISTOGRAM + """\
      - name: http_request_per_bucket_seconds
        help: The same, from counts per bucket.
        type: histogram
        each: routes
        labels: {route: $key}
        buckets: latency.buckets
        cumulative: false
        sum: latency.sum
        count: latency.count
      - name: rpc_duration_seconds
        help: Time to answer a call.
        type: summary
        each: routes
        labels: {route: $key}
        quantiles: latency.percentiles
        sum: latency.sum
        count: latency.count
"""


@needs_promtool
async def test_probe_output_passes_promtool(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": PAYLOAD})
    client = await exporter(BOTH)
    text = await (await client.get(f"/probe?target={up.url}/")).text()
    assert '# TYPE http_request_duration_seconds histogram\n' in text and '# TYPE rpc_duration_seconds summary\n' in text
    assert 'probe_extraction_errors{metric="http_request_duration_seconds"} 1\n' in text  # /broken decreases
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_probe_output_parses_as_histograms_and_summaries_in_both_formats(upstream: UpstreamFactory, exporter: ExporterFactory) -> None:
    up = await upstream({"/": PAYLOAD})
    client = await exporter(BOTH)
    text = await (await client.get(f"/probe?target={up.url}/")).text()
    om = await (await client.get(f"/probe?target={up.url}/", headers={"Accept": "application/openmetrics-text;version=1.0.0"})).text()
    for families in (parse_text(text), parse_openmetrics(om)):
        by_name = {f.name: f for f in families}
        assert by_name["http_request_duration_seconds"].type == "histogram" and by_name["rpc_duration_seconds"].type == "summary"
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in by_name.values() for s in f.samples}
        assert values[("http_request_duration_seconds_bucket", (("le", "+Inf"), ("route", "/api")))] == 6  # made from count
        assert values[("http_request_per_bucket_seconds_bucket", (("le", "2.5"), ("route", "/api")))] == 5  # summed
        assert values[("http_request_per_bucket_seconds_bucket", (("le", "1.0"), ("route", "/broken")))] == 8  # per bucket: fine
        assert ("http_request_duration_seconds_bucket", (("le", "1.0"), ("route", "/broken"))) not in values
        assert values[("rpc_duration_seconds", (("quantile", "0.99"), ("route", "/")))] == 0.9


def test_rendered_families_pass_the_openmetrics_parser_with_timestamps() -> None:
    result = _extract(HISTOGRAM + "        timestamp: at\n",
                      {"routes": {"/": {"at": 1_700_000_000, "latency": {"buckets": {"0.1": 1, "+Inf": 2}, "sum": 0.1}}}})
    (family,) = parse_openmetrics(render_openmetrics(list(result.families.values())))
    assert [(s.name, s.value, float(s.timestamp)) for s in family.samples] == [
        ("http_request_duration_seconds_bucket", 1, 1_700_000_000), ("http_request_duration_seconds_bucket", 2, 1_700_000_000),
        ("http_request_duration_seconds_count", 2, 1_700_000_000), ("http_request_duration_seconds_sum", 0.1, 1_700_000_000)]


@pytest.mark.parametrize(("count", "total", "message"), [
    (2.5, 1, "count 2.5 is not a whole number of observations (OpenMetrics parsers reject it)"),
    (2, -1, "sum -1 is negative or NaN: OpenMetrics parsers reject it"),
    (2, "NaN", "sum NaN is negative or NaN: OpenMetrics parsers reject it"),
    (2, None, "sum 'sum' is null or missing"),
])
def test_a_summary_count_or_sum_that_openmetrics_refuses_is_an_error_of_that_series(count: Any, total: Any, message: str) -> None:
    spec = SUMMARY + "        sum: sum\n"
    result = _extract(spec, {"methods": {"bad": {"percentiles": {"p50": 1}, "count": count, "sum": total},
                                         "get": {"percentiles": {"p50": 1}, "count": 3, "sum": 1}}})
    assert list(_quantiles(result)) == ["get"]
    assert result.messages == [f"metric rpc_duration_seconds: {message} (labels {{'method': 'bad'}})"]


def test_a_route_without_any_latency_is_reported_by_its_missing_buckets() -> None:
    result = _extract(HISTOGRAM, {"routes": {"/new": {}, "/": {"latency": {"buckets": {"+Inf": 1}, "sum": 0.5}}}})
    assert list(_buckets(result)) == ["/"]
    assert result.messages == ["metric http_request_duration_seconds: buckets 'latency.buckets' is null or missing (labels {'route': '/new'})"]


async def test_series_limit_counts_every_sample_of_a_histogram_as_prometheus_sample_limit_does() -> None:
    module = make_spec(HISTOGRAM).modules["default"]
    route = {"latency": {"buckets": {"0.1": 1, "1": 2, "+Inf": 3}, "sum": 0.5}}  # 3 buckets, _count, _sum: 5 samples
    at = await extract_async(module, {"default": {"routes": {"/a": route, "/b": route}}}, PROBE, series_limit=10)
    assert len(_buckets(at)) == 2
    with pytest.raises(SeriesLimitExceeded):
        await extract_async(module, {"default": {"routes": {"/a": route, "/b": route, "/c": route}}}, PROBE, series_limit=10)


def test_scale_converts_millisecond_bounds_sums_and_quantiles_to_seconds_but_not_counts() -> None:
    # the `_ms` lint points at `scale: 0.001`: a histogram or summary in milliseconds must be able to follow it
    result = _extract("""
modules:
  default:
    metrics:
      - {name: http_request_duration_seconds, help: h, type: histogram, each: routes, labels: {route: $key},
         buckets: latency.buckets, sum: latency.sum, count: latency.count, scale: 0.001}
      - {name: rpc_duration_seconds, help: h, type: summary, quantiles: percentiles, sum: total, count: n, scale: 0.001}
""", {"routes": {"/": {"latency": {"buckets": {"100": 5, "500": 9}, "sum": 2500, "count": 12}}},
      "percentiles": {"p50": 120, "p99": 900}, "total": 4000, "n": 7})
    assert _buckets(result) == {"/": [("0.1", 5.0), ("0.5", 9.0), ("+Inf", 12.0)]}
    lines = render_text(result.families.values()).splitlines()
    assert 'http_request_duration_seconds_sum{route="/"} 2.5' in lines
    assert 'http_request_duration_seconds_count{route="/"} 12' in lines
    assert [line for line in lines if line.startswith("rpc_duration_seconds")] == [
        'rpc_duration_seconds{quantile="0.5"} 0.12', 'rpc_duration_seconds{quantile="0.99"} 0.9',
        "rpc_duration_seconds_count 7", "rpc_duration_seconds_sum 4"]
    assert result.errors == {"http_request_duration_seconds": 0, "rpc_duration_seconds": 0}
