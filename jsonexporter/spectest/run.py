"""Running test files: each case's answers go through the path of `probe --input` (run_offline: the
same extraction and exposition as a live probe, no request sent), and what the probe gives is
compared with what the case expects, as located messages: missing series, unexpected series,
different values."""

from __future__ import annotations

import http
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from prometheus_client.parser import text_string_to_metric_families

from jsonexporter.exposition import Family, format_value, render_text
from jsonexporter.probe import run_offline
from jsonexporter.secrets import Redactor
from jsonexporter.spec import read_spec_text
from jsonexporter.spec.problems import Problem
from jsonexporter.spec.schema import suggestion
from jsonexporter.spectest.load import Answer, Case, Loaded, SpecCache, Suite, load_suite
from jsonexporter.spectest.series import Series
from jsonexporter.upstream import EndpointResult, probe_redactor
from jsonexporter.upstream.fetch import _parse_json

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_UNEXPECTED = 50  # unexpected series shown per case: enough to see the pattern, not a whole exposition
_NOT_SENT = "(the test's answer: nothing was sent)"


def endpoint_result(name: str, answer: Answer, status_ok: bool, limit: int) -> EndpointResult:
    """The outcome a live probe gives the endpoint for this answer, classified as upstream.fetch's exchange
    does: the status first, then the size, then the JSON (tests/test_spectest.py compares both, answer by answer)."""
    if answer.error == "timeout":
        return EndpointResult(name, "timeout", error=f"no complete answer {_NOT_SENT}")
    if answer.error is not None:
        return EndpointResult(name, "connection_error", error=f"no connection {_NOT_SENT}")
    if not status_ok:
        phrase = http.HTTPStatus(answer.status).phrase if answer.status in http.HTTPStatus._value2member_map_ else ""
        return EndpointResult(name, "invalid_status", answer.status, error=f"HTTP status {answer.status} {phrase}".rstrip())
    if answer.too_large or len(answer.body) > limit:
        return EndpointResult(name, "too_large", answer.status, error=f"response is larger than max_response_bytes {limit}")
    try:
        document = _parse_json(answer.body)
    except ValueError as exc:
        return EndpointResult(name, "invalid_json", answer.status, len(answer.body), error=str(exc))
    return EndpointResult(name, "success", answer.status, len(answer.body), document=document)


@dataclass(frozen=True, slots=True)
class Sample:
    series: Series
    value: float
    family: str  # the name of the family it belongs to, as the exposition writes it


@dataclass
class Outcome:
    """What a case's probe gave, and what differs from the expectation."""

    samples: list[Sample] = field(default_factory=list)
    failures: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)  # why endpoints failed, what extraction skipped


def _samples(families: list[Family]) -> list[Sample]:
    """Every sample as a scraper reads it: the family written by the exposition, parsed back."""
    samples = []
    for family in families:
        for parsed in text_string_to_metric_families(render_text([family])):
            for s in parsed.samples:
                samples.append(Sample(Series(s.name, frozenset(s.labels.items())), float(s.value), family.name))
    return samples


def probe_case(case: Case, redactor: Redactor | None = None) -> tuple[list[Sample], set[str], list[EndpointResult], list[str]]:
    """The case's probe, offline: its samples, the names of the spec's own families among them, the
    endpoints' outcomes, and why the probe failed (a series limit) or extraction skipped series. `redactor`
    (the spec's secrets) hides secrets in label values as a live probe does."""
    results = []
    for name, endpoint in case.module.endpoints.items():
        answer = case.answers[name]
        results.append(endpoint_result(name, answer, endpoint.status_ok(answer.status), endpoint.max_response_bytes))
    documents = {r.endpoint: r.document for r in results if r.usable}
    result = run_offline(case.module, documents, case.target, case.params, endpoints=results, redactor=redactor)
    own = {family.name for family in result.extraction.families.values()}
    return _samples(result.families), own, results, [*([result.failure] if result.failure else []), *result.extraction.messages]


def _same(expected: float, got: float) -> bool:
    return expected == got or (math.isnan(expected) and math.isnan(got))


def _closest(want: Series, got: list[Sample]) -> str:
    """A hint for a missing series: the nearest series of that name, or a name that is there."""
    named = [s for s in got if s.series.name == want.name]
    if named:
        best = max(named, key=lambda s: len(s.series.labels & want.labels) - len(s.series.labels ^ want.labels))
        return f"; closest: {best.series} {format_value(best.value)}"
    close = suggestion(want.name, sorted({s.series.name for s in got}))
    return f"; no series named {want.name} (did you mean {close}?)" if close else f"; no series named {want.name}"


def compare(case: Case, redactor: Redactor | None = None) -> Outcome:
    samples, own, results, messages = probe_case(case, redactor)
    outcome = Outcome(samples)
    by_series = {s.series: s for s in samples}
    for exp in case.expected:
        got = by_series.get(exp.series)
        if got is None:
            outcome.failures.append(exp.at.says(f"missing series {exp.series} {format_value(exp.value)}{_closest(exp.series, samples)}"))
        elif not _same(exp.value, got.value):
            outcome.failures.append(exp.value_at.says(f"different value: {exp.series} expected {format_value(exp.value)}, got {format_value(got.value)}"))
    if case.exact:
        # exact covers the spec's own metrics, and any probe_* family that has an expected series
        checked = own | {by_series[e.series].family for e in case.expected if e.series in by_series}
        wanted = {e.series for e in case.expected}
        unexpected = [s for s in samples if s.family in checked and s.series not in wanted]
        for s in unexpected[:MAX_UNEXPECTED]:
            outcome.failures.append(case.exact_at.says(f"unexpected series {s.series} {format_value(s.value)} (exact: true)"))
        if len(unexpected) > MAX_UNEXPECTED:
            outcome.failures.append(case.exact_at.says(f"and {len(unexpected) - MAX_UNEXPECTED} more unexpected series"))
    for r in results:
        if not r.ok:
            outcome.notes.append(case.answer_at[r.endpoint].says(f"note: endpoint {r.endpoint}: {r.outcome}: {r.error}"))
    outcome.notes += [case.at.says(f"note: {message}") for message in messages]
    return outcome


def run_suite(suite: Suite, out: TextIO) -> bool:
    """Run every case of the suite, print the failures; whether all passed."""
    redact = Redactor(suite.spec.secrets)  # what is printed comes from the answers, but the spec's secrets never show
    failed = 0
    for case in suite.cases:
        outcome = compare(case, redact)
        if not outcome.failures:
            continue
        failed += 1
        # as a live probe's texts (server.probe): its target's credentials and secret-named parameters never show
        shown = probe_redactor({**case.params, "target": case.target}, redact, case.module) or redact
        print(shown(str(case.at.says(f"test {case.name!r} failed"))), file=out)
        for line in [*outcome.failures, *outcome.notes]:
            print(shown(f"  {line}"), file=out)
    total = len(suite.cases)
    print(f"{suite.file}: {total - failed} of {total} test(s) passed" if failed else f"{suite.file}: {total} test(s) passed", file=out)
    return failed == 0


def run_files(files: Sequence[str], out: TextIO, err: TextIO, specs: SpecCache | None = None) -> int:
    """`jsonexporter test`: exit 0 when every test passed, 1 when one failed or a test file (or its spec)
    is invalid, 2 when a file cannot be read. `specs`: the specs loaded already, shared between calls."""
    code = EXIT_OK
    specs = {} if specs is None else specs
    for file in files:
        try:
            text = read_spec_text(file)
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{file}: cannot read: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}", file=err)
            code = EXIT_USAGE
            continue
        loaded: Loaded = load_suite(text, file, specs)
        for problem in loaded.problems:
            print(problem, file=out)
        if loaded.unreadable:
            code = EXIT_USAGE
        elif loaded.suite is None or not run_suite(loaded.suite, out):
            code = max(code, EXIT_FAILED)
    return code

