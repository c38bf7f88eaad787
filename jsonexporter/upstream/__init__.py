"""The upstream side: what a probe asks its module's APIs, and how.

render.py builds the requests from a module's endpoints, fetch.py sends them (hops.py decides each
redirect, client.py holds the http_client_config of each endpoint, cache.py shares answers,
login.py reads a module's secrets and makes its login first, sessions.py shares the login's values).
`fetch_module` is the one entry point the probe calls."""

from __future__ import annotations

from collections.abc import Mapping

from jsonexporter.spec.model import Module
from jsonexporter.trace import Trace
from jsonexporter.upstream.fetch import EndpointResult, Upstream, fetch_all, new_session
from jsonexporter.upstream.login import Prepared, fetch_logged_in, fetch_prepared, prepare
from jsonexporter.upstream.render import InvalidRequest, TargetNotAllowed, redact_target, render_requests, target_redactor

__all__ = ["EndpointResult", "InvalidRequest", "Prepared", "TargetNotAllowed", "Upstream", "fetch_module", "fetch_prepared", "new_session", "prepare",
           "redact_target", "target_redactor"]


async def fetch_module(up: Upstream, module: Module, values: Mapping[str, str], deadline: float, trace: Trace | None = None) -> list[EndpointResult]:
    """Every endpoint of `module` for one probe, by the probe's deadline (a loop.time()), in the order of
    module.endpoints; raise InvalidRequest before any network I/O when the values make an unusable request."""
    if module.login is not None or module.secrets:
        return await fetch_logged_in(up, module, values, deadline, trace)
    requests = render_requests(module, values)
    return await fetch_all(up, requests, deadline, trace)
