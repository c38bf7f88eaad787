"""The exporter's own metrics, served on /metrics. One registry per app: nothing global."""

from __future__ import annotations

import platform
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from jsonexporter import __version__

PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SelfMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.probes = Counter(
            "jsonexporter_probes", "Probes answered, by module and result (success, failure, invalid, forbidden, rejected).", ["module", "result"], registry=r
        )
        self.probe_duration = Histogram("jsonexporter_probe_duration_seconds", "Duration of probes in seconds.", ["module"], buckets=PROBE_BUCKETS, registry=r)
        self.upstream_requests = Counter(
            "jsonexporter_upstream_requests", "Upstream requests by module, endpoint and outcome.", ["module", "endpoint", "outcome"], registry=r
        )
        self.cache_requests = Counter(
            "jsonexporter_cache_requests", "Endpoint lookups of endpoints with cache_ttl, by result (miss, hit, coalesced, stale).",
            ["module", "endpoint", "result"], registry=r,
        )
        self.in_flight = Gauge("jsonexporter_probes_in_flight", "Probes being answered right now.", registry=r)
        self.config_hash = Gauge("jsonexporter_config_hash", "First 48 bits of the SHA-256 of the loaded spec file, as a number.", registry=r)
        self.config_success = Gauge("jsonexporter_config_last_reload_successful", "Whether the last spec (re)load succeeded.", registry=r)
        self.config_timestamp = Gauge("jsonexporter_config_last_reload_success_timestamp_seconds", "Time of the last successful spec load.", registry=r)
        self.config_modules = Gauge("jsonexporter_config_modules", "Modules in the loaded spec.", registry=r)
        build = Gauge(
            "jsonexporter_build_info", "A metric with constant value 1 labelled by version and Python version.", ["version", "python_version"], registry=r
        )
        build.labels(__version__, platform.python_version()).set(1)
        ProcessCollector(registry=r)

    def spec_loaded(self, sha256: str, modules: int) -> None:
        self.config_hash.set(int(sha256[:12], 16))
        self.config_success.set(1)
        self.config_timestamp.set(time.time())
        self.config_modules.set(modules)
