"""One probe: the probe's query resolved against the module, the endpoints fetched, the rules
applied, and the probe's own metrics (probe_success and friends) added to the answer."""

from __future__ import annotations

import asyncio
import operator
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonexporter.exposition import Family, Labels, Template, Written, format_value, labels_text, sample_line, template
from jsonexporter.extract import BodySizeLimitExceeded, Bounds, Extraction, ProbeContext, SeriesLimitExceeded, extract, extract_async
from jsonexporter.secrets import Redactor, is_secret_name
from jsonexporter.slices import DeadlinePassed
from jsonexporter.spec.model import DEFAULT_SERIES_LIMIT, Module
from jsonexporter.spec.problems import fault
from jsonexporter.trace import Trace, shorten
from jsonexporter.upstream import EndpointResult, InvalidRequest, Upstream, fetch_module, probe_redactor, redact_target
from jsonexporter.upstream import TargetNotAllowed as TargetNotAllowed  # raised here and by fetch_module

MAX_TARGET_LENGTH = 4096
MAX_PARAM_LENGTH = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RESERVED_PARAMS = frozenset({"module", "target", "debug"})
# Seconds that extracting and writing always get after the endpoints answered, even past the
# deadline (an endpoint that timed out took all of it): a small answer is still written, within the
# 0.5 s that --timeout-offset keeps from Prometheus's scrape timeout.
LATE_GRACE = 0.25
# What a probe fails for, besides its endpoints: each has its gauge probe_failed_due_to_<limit>.
LIMITS = {
    "deadline": "Whether the probe failed because its deadline passed after the endpoints answered, before its series were extracted and written.",
    "series_limit": "Whether the probe failed because its rules gave more series than its series_limit.",
    "body_size_limit": "Whether the probe failed because its series would take more of the answer than its body_size_limit.",
}


@dataclass(slots=True)
class ProbeResult:
    families: list[Family]
    success: bool
    endpoints: list[EndpointResult] = field(default_factory=list)
    extraction: Extraction = field(default_factory=Extraction)
    trace: Trace | None = None
    duration: float = 0.0  # seconds, for the log and the recent probes
    deadline: float = float("inf")  # loop.time() by which the answer must be written
    failed_due_to: str | None = None  # a key of LIMITS: then no extracted series are answered
    failure: str | None = None  # why, for the log, the trace and the recent probes
    fault: str | None = None  # what failed unexpectedly (a fault of ours: failed_unexpectedly), said by problems.fault


def resolve_values(module: Module, target: str, query: Mapping[str, str], offline: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """Template values and `$params` for a probe; raise InvalidRequest for a bad target or parameter,
    TargetNotAllowed for a target outside the module's allowlist."""
    if not target and module.needs_target:
        raise InvalidRequest("missing target parameter")
    if len(target) > MAX_TARGET_LENGTH or _CONTROL.search(target):
        raise InvalidRequest(f"invalid target: longer than {MAX_TARGET_LENGTH} characters or containing control characters")
    # the allowlist guards requests (offline sends none); a module that does not use the target checks
    # only the hosts its parameters make (render_request), and a target it would ignore
    if not offline and (target or module.needs_target) and not module.target_allowed(target):
        raise TargetNotAllowed(f"target not allowed by module {module.name!r}: it matches none of its targets.allow patterns")
    # `$params` goes into the answer (labels, samples): a value named as a secret, or sent where a credential goes
    # (Module.credential_parameters: `Authorization: 'Bearer {tok}'`), stays in the requests
    placed = module.credential_parameters
    params = {k: v for k, v in query.items()
              if k not in RESERVED_PARAMS and len(v) <= MAX_PARAM_LENGTH and not is_secret_name(k) and k not in placed}
    values = {"target": target, "module": module.name}
    for name, decl in module.parameters.items():
        value = query.get(name, decl.default)
        if value is None:
            raise InvalidRequest(f"missing parameter {name!r} required by module {module.name!r}")
        if decl.pattern is not None and not decl.pattern.fullmatch(value):
            raise InvalidRequest(f"parameter {name!r} does not match {decl.pattern.pattern!r}")
        if len(value) > MAX_PARAM_LENGTH or _CONTROL.search(value):
            raise InvalidRequest(f"parameter {name!r} is too long or contains control characters")
        values[name] = value
        if not is_secret_name(name) and name not in placed:
            params[name] = value
    return values, params


def module_labels(module: Module, values: Mapping[str, str]) -> Labels:
    return tuple((name, template.render(values)) for name, template in module.labels)


def answer_context(module: Module, target: str, params: Mapping[str, str], values: Mapping[str, str]) -> tuple[ProbeContext, Labels]:
    """What the rules see of the probe (`$target`, `$params`) and the module's labels, with the target as it
    may be shown (redact_target): both become label values, and a target's userinfo is a credential."""
    shown = redact_target(target)
    return ProbeContext(module.name, shown, params), module_labels(module, {**values, "target": shown}) if module.labels else ()


def answer_redactor(module: Module, values: Mapping[str, str], process: Redactor | None) -> Redactor | None:
    """What hides secrets in the label values of a probe's answer, live or offline (`probe --input`, `jsonexporter test`):
    the probe's own (render.probe_redactor: its target's credentials, its secret-named parameters and those `module`
    sends as credentials) with the process's (`process`: the spec's, and what was read at run time)."""
    return probe_redactor(values, process, module) or process


def answer_bounds(module: Module, redactor: Redactor | None = None) -> Bounds:
    """The module's bounds of its series' text; `redactor` (the probe's: render.probe_redactor) hides
    in label values the secrets it knows, none when it knows none (bench/'s specs: nothing to look for)."""
    if redactor is not None and redactor.knows_values():
        return Bounds(module.label_value_length_limit, module.body_size_limit, redactor)
    bounds: Bounds | None = module.fast_plans.get(Bounds)  # keyed by the class, as _SelfPlan's: the module's own, made once (8 kIr a probe)
    if bounds is None:
        bounds = module.fast_plans[Bounds] = Bounds(module.label_value_length_limit, module.body_size_limit, None)
    return bounds


_HELP = {
    "probe_endpoint_success": "Whether the endpoint answered with valid JSON and an accepted status.",
    "probe_endpoint_http_status_code": "HTTP status code of the endpoint's answer (0 without one).",
    "probe_endpoint_response_bytes": "Size of the endpoint's answer body in bytes (decompressed).",
    "probe_endpoint_duration_seconds": "Duration of the endpoint's request in seconds.",
    "probe_endpoint_cache_age_seconds": "Age of the answer used, for endpoints with cache_ttl or refresh_interval (0: fetched for this probe).",
    "probe_endpoint_stale": "1 when the upstream failed and an older answer was used (stale_if_error).",
    "probe_endpoint_pages": "Pages requested for the endpoint's answer (pagination), a failed one included; from the cache, the pages of the answer used.",
    "probe_series": "Series of the metric written in this probe (0: its rules found nothing, or its endpoint failed).",
    "probe_extraction_errors": "Series of the metric skipped in this probe because a value or label could not be extracted.",
    "probe_duplicate_series": "Series of the metric dropped in this probe because an earlier one had the same labels.",
    "probe_duration_seconds": "How long the probe took to complete in seconds.",
    "probe_success": "Whether every endpoint of the probe gave an answer (a stale one counts).",
} | {f"probe_failed_due_to_{limit}": help_text for limit, help_text in LIMITS.items()}
_ENDPOINT_FAMILIES = ("probe_endpoint_success", "probe_endpoint_http_status_code", "probe_endpoint_response_bytes", "probe_endpoint_duration_seconds")
_MAX_SELF_PLANS = 64  # per module: the shapes of its probes (which endpoints have a cache, which metrics had duplicates)


@dataclass(frozen=True, slots=True)
class _SelfPlan:
    """The probe's own metrics of one shape of probe (its endpoints, which have a cache, its metrics, which
    had duplicates, whether it has a duration): each family with what its lines write before their value,
    `name{label="..."} `, and all of them in both formats with the values left out; made at the first such probe."""

    families: tuple[tuple[str, tuple[str, ...]], ...]  # (family, the prefix of each of its lines), in the order written
    cached: tuple[int, ...]  # the endpoints with a cache (r.cache), by index
    paged: tuple[int, ...]  # the endpoints with pagination, by index
    metrics: tuple[str, ...]  # extraction.errors' metrics, sorted
    duplicated: tuple[str, ...]  # extraction.duplicates' metrics, sorted
    template: Template  # the families' text, a value between each two pieces (Written)
    # the values of the metrics' lines (probe_series, probe_extraction_errors, probe_duplicate_series) by what makes them
    # (_metric_values): most probes count what the last ones counted
    counted: dict[tuple[Any, ...], list[str]] = field(default_factory=dict)


def _self_plan(module: Module, extraction: Extraction, endpoints: list[EndpointResult] | None, timed: bool) -> _SelfPlan:
    """The plan of this probe's shape, kept with the module's plans (Module.fast_plans, bounded)."""
    if endpoints is not None and len(endpoints) == 1:  # most modules: without a generator
        shape: tuple[tuple[str, bool], ...] | None = ((endpoints[0].endpoint, endpoints[0].cache is not None),)
    else:
        shape = tuple((r.endpoint, r.cache is not None) for r in endpoints) if endpoints is not None else None
    key = (shape, tuple(extraction.errors), tuple(extraction.duplicates), timed)
    plans: dict[Any, _SelfPlan] | None = module.fast_plans.get(_SelfPlan)  # keyed by the class, as extract's _KnownTexts
    if plans is None:
        plans = module.fast_plans[_SelfPlan] = {}
    plan = plans.get(key)
    if plan is None:
        plan = _new_self_plan(module, extraction, endpoints, timed)
        if len(plans) >= _MAX_SELF_PLANS:
            plans.clear()
        plans[key] = plan
    return plan


def _new_self_plan(module: Module, extraction: Extraction, endpoints: list[EndpointResult] | None, timed: bool) -> _SelfPlan:
    names = [r.endpoint for r in endpoints or ()]

    def prefix(family: str, labels: Labels) -> str:
        return sample_line(family, labels_text(labels), 0.0)[:-2]  # the line without its value "0\n"

    def by_endpoint(family: str, indexes: Iterable[int]) -> tuple[str, tuple[str, ...]]:
        return family, tuple(prefix(family, (("endpoint", names[i]),)) for i in indexes)

    def by_metric(family: str, metrics: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        return family, tuple(prefix(family, (("metric", m),)) for m in metrics)

    metrics, duplicated = tuple(sorted(extraction.errors)), tuple(sorted(extraction.duplicates))
    cached = tuple(i for i, r in enumerate(endpoints or ()) if r.cache is not None)
    paged = tuple(i for i, name in enumerate(names) if (e := module.endpoints.get(name)) is not None and e.pagination is not None)
    families: list[tuple[str, tuple[str, ...]]] = []
    if endpoints is not None:
        families += [by_endpoint(f, range(len(names))) for f in _ENDPOINT_FAMILIES]
        if cached:
            families += [by_endpoint("probe_endpoint_cache_age_seconds", cached), by_endpoint("probe_endpoint_stale", cached)]
        if paged:
            families.append(by_endpoint("probe_endpoint_pages", paged))
    families += [by_metric("probe_series", metrics), by_metric("probe_extraction_errors", metrics), by_metric("probe_duplicate_series", duplicated)]
    if endpoints is not None:
        families += [(f"probe_failed_due_to_{limit}", (prefix(f"probe_failed_due_to_{limit}", ()),)) for limit in LIMITS]
    if timed:
        families.append(("probe_duration_seconds", (prefix("probe_duration_seconds", ()),)))
    families.append(("probe_success", (prefix("probe_success", ()),)))
    return _SelfPlan(tuple(families), cached, paged, metrics, duplicated, template([(f, "gauge", _HELP[f], prefixes) for f, prefixes in families]))


def _self_values(plan: _SelfPlan, extraction: Extraction, endpoints: list[EndpointResult] | None, success: bool, duration: float | None,
                 failed_due_to: str | None) -> list[str]:
    """The values of the plan's lines, in its order."""
    value = format_value
    values: list[str] = []
    if endpoints is not None:
        if len(endpoints) == 1:  # most modules: four values, without four comprehensions (3.7 us -> 2.4 of bench/'s probe)
            r = endpoints[0]
            values = ["1" if r.ok else "0", str(r.status), str(r.bytes), _seconds(r.duration)]
        else:
            values += ["1" if r.ok else "0" for r in endpoints]
            values += [str(r.status) for r in endpoints]
            values += [str(r.bytes) for r in endpoints]
            values += [_seconds(r.duration) for r in endpoints]
        if plan.cached:
            values += [value(endpoints[i].cache_age or 0.0) for i in plan.cached]
            values += ["1" if endpoints[i].stale else "0" for i in plan.cached]
        if plan.paged:
            values += [str(endpoints[i].pages or 0) for i in plan.paged]
    values += _metric_values(plan, extraction)
    if endpoints is not None:
        values += _FAILED_DUE_TO.get(failed_due_to, _NOT_FAILED)
    if duration is not None:
        values.append(_seconds(duration))
    values.append("1" if success else "0")
    return values


def _seconds(duration: float) -> str:
    """A duration of the probe's own metrics, to the microsecond: repr's shortest form of a measured float has 16-17
    digits, which cost about three times as much to write (0.5 us against 0.15, two a probe) and say nothing more of
    a duration that the event loop's scheduling moves by tens of microseconds."""
    return f"{duration:.6f}" if duration else "0"  # 0: offline (jsonexporter test), as before


# probe_failed_due_to_*'s values, by the limit the probe failed for
_FAILED_DUE_TO: dict[str | None, list[str]] = {due_to: ["1" if due_to == limit else "0" for limit in LIMITS] for due_to in LIMITS}
_NOT_FAILED = ["0"] * len(LIMITS)
_KEYS = operator.attrgetter("keys")
_MAX_COUNTED = 16  # per plan


def _metric_values(plan: _SelfPlan, extraction: Extraction) -> list[str]:
    """The values of the metrics' lines, kept in the plan by their counts, read at C speed: the plan fixes the metrics and
    their order, so that the counts in the order of extraction's dicts make the values (a probe of bench/'s 10 items:
    21 values, 36 kIr by comprehensions, callgrind, -> 17)."""
    families = extraction.families
    # one flat tuple: one to make and hash instead of five (2k + E + D items, k the families: the split is the length's)
    key = (*families, *map(len, map(_KEYS, families.values())), *extraction.errors.values(), *extraction.duplicates.values())
    values = plan.counted.get(key)
    if values is None:
        errors, duplicates = extraction.errors, extraction.duplicates
        values = [str(extraction.series(m)) for m in plan.metrics]
        values += [str(errors[m]) for m in plan.metrics]
        values += [str(duplicates[m]) for m in plan.duplicated]
        if len(plan.counted) >= _MAX_COUNTED:
            plan.counted.clear()
        plan.counted[key] = values
    return values


def self_families(module: Module, extraction: Extraction, endpoints: list[EndpointResult] | None, success: bool, duration: float | None,
                  failed_due_to: str | None = None) -> list[Family]:
    """The probe's own metrics, named in blackbox_exporter's style; probe_failed_due_to_* with
    the endpoints' (online probes only). Written from the plan of the probe's shape (_SelfPlan)."""
    plan = _self_plan(module, extraction, endpoints, duration is not None)
    values = iter(_self_values(plan, extraction, endpoints, success, duration, failed_due_to))
    return [Family(name, "gauge", _HELP[name], [f"{prefix}{next(values)}\n" for prefix in prefixes]) for name, prefixes in plan.families]


def self_written(module: Module, extraction: Extraction, endpoints: list[EndpointResult], success: bool, duration: float) -> Written:
    """`self_families` as one family written beforehand (exposition.Written): the same text in both formats, for
    about a fifth of the work at each probe (no family, header or line made apart: 15 us -> 3)."""
    plan = _self_plan(module, extraction, endpoints, True)
    return Written("probe_success", "gauge", _HELP["probe_success"], template=plan.template,
                   values=_self_values(plan, extraction, endpoints, success, duration, None))


async def run_probe(up: Upstream, module: Module, target: str, query: Mapping[str, str], timeout: float, debug: bool = False,
                    series_limit: int = DEFAULT_SERIES_LIMIT) -> ProbeResult:
    """Fetch and extract, all within `timeout`; raise InvalidRequest before any network I/O when
    the probe's query is unusable. `series_limit` applies when the module has none (0: no limit). What else
    it raises unexpectedly (a fault of ours) fails the probe, not the request (failed_unexpectedly)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    values, params = resolve_values(module, target, query)
    trace = Trace() if debug else None
    if trace is not None:
        trace.add(f"module {module.name}, target {redact_target(target)}, deadline {timeout:.3f}s")
    fetched: list[EndpointResult] = []
    try:
        return await _probe(up, module, target, values, params, timeout, trace, series_limit, start, fetched)
    except (InvalidRequest, TargetNotAllowed):
        raise
    except Exception as exc:  # never DeadlinePassed or a cancellation (the scraper went away): BaseExceptions
        return failed_unexpectedly(module, fetched, trace, exc, loop.time() - start, timed=True)


async def _probe(up: Upstream, module: Module, target: str, values: dict[str, str], params: dict[str, str], timeout: float, trace: Trace | None,
                 series_limit: int, start: float, fetched: list[EndpointResult]) -> ProbeResult:
    """`run_probe` once the query is resolved; `fetched` gets the endpoints' results as soon as they are known."""
    loop = asyncio.get_running_loop()
    deadline = start + timeout
    endpoints = await fetch_module(up, module, values, deadline, trace)
    fetched += endpoints
    deadline = extraction_deadline(deadline, loop.time())
    documents = {r.endpoint: r.document for r in endpoints if r.usable}
    limit = series_limit if module.series_limit is None else module.series_limit
    failed_due_to = failure = None
    context, labels = answer_context(module, target, params, values)
    bounds = answer_bounds(module, answer_redactor(module, values, up.clients.redactor))  # after the fetch: its logins' tickets known
    try:
        if documents:
            extraction = await extract_async(module, documents, context, labels, trace, deadline, limit, bounds)
        else:  # nothing to extract from: no turn to wait for, the endpoints' failures are the reason
            extraction = extract(module, documents, context, labels, trace)
    except DeadlinePassed:
        failed_due_to, failure = "deadline", _deadline_failure(timeout)
    except SeriesLimitExceeded as exc:
        failed_due_to, failure = "series_limit", _series_limit_failure(module, exc)
    except BodySizeLimitExceeded as exc:
        failed_due_to, failure = "body_size_limit", _body_size_failure(module, exc)
    del documents
    for r in endpoints:
        r.document = None  # extracted: let it go before the answer is written (a cached one stays in the cache)
    success = all(r.usable for r in endpoints)
    if failure is not None:
        result = ProbeResult([], success, endpoints, Extraction(), trace, deadline=deadline)
        return fail(result, module, failed_due_to or "", failure, loop.time() - start)
    duration = loop.time() - start
    families = [*extraction.families.values(), self_written(module, extraction, endpoints, success, duration)]
    return ProbeResult(families, success, endpoints, extraction, trace, duration, deadline)


def failed_unexpectedly(module: Module, endpoints: list[EndpointResult], trace: Trace | None, exc: Exception, duration: float,
                        timed: bool) -> ProbeResult:
    """The probe's answer when what follows its query raised what nothing expects (a fault of ours): its own
    metrics, probe_success 0, none of its series, the fault said by the exception's kind and our line
    (problems.fault), never its text, as an endpoint's internal_error; the probe_success line alone when even
    its own metrics cannot be made. `timed`: with probe_duration_seconds (a live probe's)."""
    said = f"internal_error: {fault(exc)}"
    if trace is not None:
        trace.add(f"probe failed: {said}")
    for r in endpoints:
        r.document = None
    try:
        families = self_families(module, Extraction(), endpoints or None, False, duration if timed else None)
    except Exception:
        families = [Family("probe_success", "gauge", _HELP["probe_success"], ["probe_success 0\n"])]
    return ProbeResult(families, False, endpoints, Extraction(), trace, duration, fault=said)


def extraction_deadline(deadline: float, now: float) -> float:
    """By when the series must be extracted: the probe's deadline, or a little later when the
    endpoints took all of it (a small answer is still written, saying why)."""
    return max(deadline, now + LATE_GRACE)


def _deadline_failure(timeout: float) -> str:
    return f"the deadline of {timeout:.3f}s passed before the series were extracted"


def _series_limit_failure(module: Module, exc: SeriesLimitExceeded) -> str:
    where = f"series_limit of module {module.name}" if module.series_limit is not None else "--probe.series-limit"
    return f"the rules gave more than {exc.limit} series ({where}); no series are answered"


def _body_size_failure(module: Module, exc: BodySizeLimitExceeded) -> str:
    return f"the series would take more than {exc.limit} bytes (body_size_limit of module {module.name}); no series are answered"


def fail(result: ProbeResult, module: Module, limit: str, reason: str, duration: float) -> ProbeResult:
    """The probe's answer when it failed for `limit` (a key of LIMITS): its own metrics, none of
    the series it extracted (never a partial set)."""
    if result.trace is not None:
        result.trace.add(f"probe failed: {reason}")
    result.extraction = Extraction()
    result.success, result.failed_due_to, result.failure, result.duration = False, limit, reason, duration
    result.families = self_families(module, result.extraction, result.endpoints, False, duration, limit)
    return result


def run_offline(module: Module, documents: Mapping[str, Any], target: str, query: Mapping[str, str], debug: bool = False,
                endpoints: list[EndpointResult] | None = None, redactor: Redactor | None = None) -> ProbeResult:
    """Evaluate saved answers (endpoint name -> parsed JSON) without any network I/O. `endpoints`, the
    outcome of each endpoint as `jsonexporter test` makes it from its answers (failures too), adds the
    probe_endpoint_* and probe_failed_due_to_* metrics of a live probe, and its series limit (the module's
    series_limit, else the default of --probe.series-limit). `redactor`: the process's (the spec's secrets),
    with which label values hide secrets as a live probe's do (answer_redactor)."""
    start = time.monotonic()  # the clock of the event loop's deadlines (run_probe)
    values, params = resolve_values(module, target, query, offline=True)
    trace = Trace() if debug else None
    try:
        return _offline(module, documents, target, values, params, trace, endpoints, start, redactor)
    except Exception as exc:  # a fault of ours, as run_probe says it
        return failed_unexpectedly(module, endpoints or [], trace, exc, time.monotonic() - start, timed=False)


def _offline(module: Module, documents: Mapping[str, Any], target: str, values: dict[str, str], params: dict[str, str], trace: Trace | None,
             endpoints: list[EndpointResult] | None, start: float, redactor: Redactor | None) -> ProbeResult:
    if trace is not None:
        trace.add(f"module {module.name}, target {redact_target(target)}, saved answers (no requests), deadline {module.timeout:.3f}s")
        for name, document in documents.items():
            trace.add(f"endpoint {name}: saved answer")
            trace.add(f"  document: {shorten(document)}")
    limit = 0 if endpoints is None else DEFAULT_SERIES_LIMIT if module.series_limit is None else module.series_limit
    deadline = extraction_deadline(start + module.timeout, time.monotonic())  # the module's timeout, as a live probe has it
    try:
        bounds = answer_bounds(module, answer_redactor(module, values, redactor))
        extraction = extract(module, documents, *answer_context(module, target, params, values), trace, limit, bounds, deadline)
    except (DeadlinePassed, SeriesLimitExceeded, BodySizeLimitExceeded) as exc:
        if isinstance(exc, DeadlinePassed):
            due_to, failure = "deadline", _deadline_failure(module.timeout)
        elif isinstance(exc, SeriesLimitExceeded):
            due_to, failure = "series_limit", _series_limit_failure(module, exc)
        else:
            due_to, failure = "body_size_limit", _body_size_failure(module, exc)
        if trace is not None:
            trace.add(f"probe failed: {failure}")
        families = self_families(module, Extraction(), endpoints, False, None, due_to)
        return ProbeResult(families, False, endpoints or [], Extraction(), trace, failed_due_to=due_to, failure=failure)
    success = all(name in documents for name in module.endpoints)
    families = [*extraction.families.values(), *self_families(module, extraction, endpoints, success, None)]
    return ProbeResult(families, success, endpoints or [], extraction, trace)
