"""The direct writer against prometheus_client's own exposition of the same families."""

from __future__ import annotations

import gzip
import math
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isal import isal_zlib
from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_format
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from jsonexporter import exposition
from jsonexporter.exposition import Family, base_name, encode, format_value, gzip_pieces, render_openmetrics, render_text


class _Registry:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def _line_breaks(text: str) -> str:
    """A CR as our writer takes it, a line break (prometheus_client writes it raw, which its parsers reject)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _as_client_metrics(families: list[Family]) -> _Registry:
    metrics = []
    for family in families:
        metric = Metric(base_name(family), _line_breaks(family.help), family.type)
        for name, labels, value, ts in family.parts:  # type: ignore[misc]
            metric.add_sample(name, {k: _line_breaks(v) for k, v in labels}, value, ts)
        metrics.append(metric)
    return _Registry(metrics)


label_values = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
non_integral = st.one_of(
    st.floats(allow_nan=False, allow_infinity=True).filter(lambda v: not v.is_integer() or abs(v) >= 1e15),
    st.sampled_from([0.5, -2.25, 1e-9, 1234567.5, 1e20, math.inf, -math.inf]),
)
timestamps = st.one_of(st.none(), st.sampled_from([1700000000.0, 1700000000.123, 1.5]))


@st.composite
def families(draw: Any) -> list[Family]:
    result = []
    for i, mtype in enumerate(draw(st.lists(st.sampled_from(["gauge", "counter", "untyped", "info", "stateset"]), max_size=5))):
        name = {"counter": f"m{i}_total", "info": f"m{i}_info"}.get(mtype, f"m{i}")
        label_names = sorted(draw(st.sets(st.sampled_from(["a", "b", "le_x", "zone"]), max_size=3)))
        samples = []
        for _ in range(draw(st.integers(0, 4))):
            labels = tuple((n, draw(label_values)) for n in label_names)
            samples.append((name, labels, 1.0 if mtype == "info" else draw(non_integral), draw(timestamps)))
        help_text = draw(st.text(alphabet="ab \\\n\r\"é", max_size=10))
        result.append(Family(name, mtype, help_text, samples))
    return result


def _assert_identical_but_exact_integers(ours: str, expected: str) -> None:
    """Byte-identical, except that an integral value prometheus_client prints as `1.0` or
    `1.655371e+06` is printed exactly (`1`, `1655371`) by our writer."""
    assert ours.count("\n") == expected.count("\n")
    for mine, theirs in zip(ours.split("\n"), expected.split("\n"), strict=True):
        if mine == theirs:
            continue
        assert not theirs.startswith("#"), (mine, theirs)
        cut = theirs.rfind("}") + 1 if "{" in theirs else theirs.index(" ")
        series, (their_value, *their_ts) = theirs[:cut], theirs[cut:].split()
        assert mine.startswith(series + " ")
        number = float(their_value)
        assert number.is_integer() and abs(number) < 1e15, (mine, theirs)
        assert mine == " ".join([series, str(int(number)), *their_ts])


@settings(max_examples=300, deadline=None)
@given(families())
def test_text_output_is_byte_identical_to_prometheus_client(fams: list[Family]) -> None:
    expected = text_format.generate_latest(_as_client_metrics(fams)).decode()  # type: ignore[arg-type]
    _assert_identical_but_exact_integers(render_text(fams), expected)


@settings(max_examples=300, deadline=None)
@given(families())
def test_openmetrics_output_is_byte_identical_to_prometheus_client(fams: list[Family]) -> None:
    expected = om_format.generate_latest(_as_client_metrics(fams)).decode()
    _assert_identical_but_exact_integers(render_openmetrics(fams), expected)


def test_carriage_returns_in_help_and_label_values_are_written_as_line_breaks() -> None:
    family = Family("x", "gauge", "two\r\nlines\rthree", [("x", (("a", "1\r2\r\n3\n4\\r"),), 1.0, None)])
    text, openmetrics = render_text([family]), render_openmetrics([family])
    assert "\r" not in text + openmetrics
    assert '# HELP x two\\nlines\\nthree\nx{a="1\\n2\\n3\\n4\\\\r"} 1\n' in text.replace("# TYPE x gauge\n", "")
    for parsed in (list(text_string_to_metric_families(text)), list(parse_openmetrics(openmetrics))):
        assert [(f.documentation, [s.labels for s in f.samples]) for f in parsed] == [("two\nlines\nthree", [{"a": "1\n2\n3\n4\\r"}])]


def test_integral_values_print_exactly_and_parse_back_equal() -> None:
    values = [0.0, 3.0, -7.0, 1655371.0, 1e10, 999999999999999.0]
    family = Family("x", "gauge", "h", [("x", (("i", str(i)),), v, None) for i, v in enumerate(values)])
    text = render_text([family])
    assert "x{i=\"3\"} 1655371\n" in text and "x{i=\"4\"} 10000000000\n" in text
    parsed = [s.value for f in text_string_to_metric_families(text) for s in f.samples]
    assert parsed == values
    assert format_value(1e15) == "1e+15"  # beyond exact range: Go's form, as prometheus_client prints it


def test_gzip_only_when_accepted() -> None:
    fams = [Family("x", "gauge", "h", [("x", (), 1.0, None)])]
    body, headers = encode(fams, "text/plain", "gzip, deflate")
    assert headers["Content-Encoding"] == "gzip" and body[:2] == b"\x1f\x8b"
    body, headers = encode(fams, "text/plain", "identity")
    assert "Content-Encoding" not in headers and body.startswith(b"# HELP x h\n")


@pytest.mark.parametrize("compressobj", [zlib.compressobj, isal_zlib.compressobj], ids=["zlib", "isal"])
def test_a_gzip_answer_in_pieces_decompresses_to_the_text_with_either_compressor(compressobj: Any) -> None:
    text = render_text([Family("x", "gauge", "h", [("x", (("i", str(i)),), i * 0.5, None) for i in range(5000)])]).encode()
    pieces = [text[i:i + 7000] for i in range(0, len(text), 7000)]
    compressed = gzip_pieces(pieces, compressobj)
    assert all(compressed) and gzip.decompress(b"".join(compressed)) == text
    assert len(b"".join(compressed)) < len(text) / 2  # compressed, not stored


def test_answers_are_compressed_by_isal_when_it_is_installed() -> None:
    assert exposition._compressobj is isal_zlib.compressobj  # a dependency: the fallback to zlib is for platforms without it
    body, _ = encode([Family("x", "gauge", "h", [("x", (), 1.0, None)])], "text/plain", "gzip")
    assert gzip.decompress(body) == b"# HELP x h\n# TYPE x gauge\nx 1\n"


def test_openmetrics_requested_by_prometheus_default_accept_header() -> None:
    accept = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
              "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.1")
    _, headers = encode([], accept, "")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    _, headers = encode([], "application/openmetrics-text;version=0.0.1", "")
    assert headers["Content-Type"].startswith("text/plain")


def test_openmetrics_timestamps_are_written_without_an_exponent() -> None:
    """prometheus_client writes 5.2e-06 s as `5.2e-06`, which its own parser reads as 5.2 s."""
    fams = [Family("a", "gauge", "h", [("a", (("t", str(ts)),), 1.0, ts) for ts in (5.2e-06, 1e-05, 1700000000.25, 9.2e15)])]
    (family,) = parse_openmetrics(render_openmetrics(fams))
    assert [float(s.timestamp) for s in family.samples] == [pytest.approx(5.2e-06, abs=1e-9), 1e-05, 1700000000.25, 9.2e15]  # type: ignore[arg-type]
