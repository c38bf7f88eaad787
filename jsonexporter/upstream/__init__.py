"""The upstream side: what a probe asks its module's APIs, and how.

render.py builds the requests from a module's endpoints, fetch.py sends them (hops.py decides each
redirect, client.py holds the http_client_config of each endpoint, cache.py shares answers, refresh.py
fetches endpoints with refresh_interval on their schedules, pagination.py follows an endpoint's next pages,
login.py reads a module's secrets and makes its login first, sessions.py shares the login's values).
`fetch_module` is the one entry point the probe calls."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping

from jsonexporter.logs import kv
from jsonexporter.spec.model import Module, Spec
from jsonexporter.trace import Trace
from jsonexporter.upstream.fetch import EndpointResult, Upstream, fetch_all, new_session, render_job, schedule_key
from jsonexporter.upstream.login import Prepared, fetch_logged_in, fetch_prepared, prepare
from jsonexporter.upstream.refresh import Job
from jsonexporter.upstream.render import InvalidRequest, TargetNotAllowed, UpstreamRequest, probe_redactor, redact_target, render_requests

__all__ = ["EndpointResult", "InvalidRequest", "Prepared", "TargetNotAllowed", "Upstream", "fetch_module", "fetch_prepared", "new_session", "prepare",
           "probe_redactor", "redact_target", "reschedule"]

log = logging.getLogger("jsonexporter")


async def fetch_module(up: Upstream, module: Module, values: Mapping[str, str], deadline: float, trace: Trace | None = None) -> list[EndpointResult]:
    """Every endpoint of `module` for one probe, by the probe's deadline (a loop.time()), in the order of
    module.endpoints; raise InvalidRequest before any network I/O when the values make an unusable request."""
    if module.login is not None or module.secrets:
        return await fetch_logged_in(up, module, values, deadline, trace)
    requests = _rendered(module, values)
    return await fetch_all(up, requests, deadline, trace, [_job(module, r, values) for r in requests])


def _job(module: Module, request: UpstreamRequest, values: Mapping[str, str]) -> Job | None:
    """What the endpoint's background requests are made of, for an endpoint that has them (a schedule, a cache's
    shared fetch and revalidation: fetch_one reads it for no other); None for the others, most of them."""
    endpoint = request.endpoint
    return Job(module, endpoint, values) if endpoint.cache_ttl is not None or endpoint.refresh_interval is not None else None


_RENDERED = ("rendered requests",)  # its key in Module.fast_plans
# Requests kept per module (its endpoints' for each target kept, the first target kept going first): a Prometheus job
# probing 1,000 targets in turn found none of them when 256 targets were kept (each probe rendered its requests again,
# 6 % of its instructions at 56 KB). About 2.5 KB each (the request and its first hop), some 10 MB a module when full;
# a target longer than _MAX_KEPT_TARGET characters is rendered for its probe alone.
_MAX_RENDERED = 4096
_MAX_KEPT_TARGET = 512


def _rendered(module: Module, values: Mapping[str, str]) -> list[UpstreamRequest]:
    """render_requests, kept per target for a module without parameters (a target renders the same requests
    at each probe: 4-5 us for one endpoint). A target with userinfo or a query, where a credential may be,
    is rendered for its probe alone, never kept."""
    target = values.get("target", "")
    if module.parameters or len(values) != 2 or "@" in target or "?" in target or len(target) > _MAX_KEPT_TARGET:
        return render_requests(module, values)
    kept: dict[str, list[UpstreamRequest]] | None = module.fast_plans.get(_RENDERED)
    if kept is None:
        kept = module.fast_plans[_RENDERED] = {}
    requests = kept.get(target)
    if requests is None:
        requests = render_requests(module, values)  # an unusable target raises: nothing kept
        if len(kept) >= max(1, _MAX_RENDERED // max(len(requests), 1)):  # requests, not targets: 4,096 of one endpoint
            del kept[next(iter(kept))]
        kept[target] = requests
    return requests


def _load_jobs(spec: Spec) -> dict[Hashable, Job]:
    """The schedules that start at load: endpoints with refresh_interval of modules without a target, with
    the values a probe without parameters has (modules whose parameters all have defaults)."""
    jobs: dict[Hashable, Job] = {}
    for module in spec.modules.values():
        if module.needs_target or any(p.default is None for p in module.parameters.values()):
            continue
        values = {"target": "", "module": module.name, **{name: p.default for name, p in module.parameters.items() if p.default is not None}}
        for endpoint in module.endpoints.values():
            if endpoint.refresh_interval is None:
                continue
            job = Job(module, endpoint, values)
            try:
                jobs[schedule_key(render_job(job), job)] = job
            except InvalidRequest as exc:  # its probes would fail alike, and say why
                log.warning("cannot schedule the endpoint at load", extra=kv(module=module.name, endpoint=endpoint.name, err=str(exc)))
    return jobs


def reschedule(up: Upstream, spec: Spec) -> None:
    """After a load or a reload: start the schedules of modules without a target, keep those of unchanged
    requests (the same module, endpoint, interval and rendered request) with the new endpoint, stop the others."""
    if up.schedules is None:
        return
    load_jobs = _load_jobs(spec)
    kept: dict[Hashable, tuple[Job, bool]] = {}
    for s in up.schedules:
        if s.key in load_jobs:
            kept[s.key] = (load_jobs[s.key], True)
            continue
        module = spec.modules.get(s.job.module.name)
        endpoint = module.endpoints.get(s.job.endpoint.name) if module is not None else None
        if s.pinned or module is None or endpoint is None or endpoint.refresh_interval is None:
            continue
        job = Job(module, endpoint, s.job.values, s.job.whole)
        if not _still_allowed(module, s.job.values):
            continue
        try:
            if schedule_key(render_job(job), job) == s.key:
                kept[s.key] = (job, False)
        except InvalidRequest:  # the target or a parameter is no longer allowed: gone
            pass
    up.schedules.keep(kept)
    for key, job in load_jobs.items():
        up.schedules.pin(key, job)


def _still_allowed(module: Module, values: Mapping[str, str]) -> bool:
    """Whether a probe with these values would still be answered (resolve_values): the target allowed, each parameter matching."""
    if module.needs_target and not module.target_allowed(values.get("target", "")):
        return False
    return all(name in values and (p.pattern is None or p.pattern.fullmatch(values[name])) for name, p in module.parameters.items())
