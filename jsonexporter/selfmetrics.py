"""The exporter's own metrics, served on /metrics. One registry per app: nothing global.

With worker processes (workers.py), every worker writes its metrics into the supervisor's
directory (prometheus_client's multiprocess mode), and /metrics reads them all: counters and
histograms summed over every worker that ever ran, gauges aggregated over the live ones as each
says (`multiprocess_mode`), process_* summed over the supervisor and its workers.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from jsonexporter import __version__
from jsonexporter.workers import read_ended_cpu, read_pids

_M = TypeVar("_M", bound=MetricWrapperBase)
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SelfMetrics:
    """The metrics; `exposition` is what /metrics serves. `workers_directory`: this process is a
    worker and writes them there."""

    def __init__(self, workers_directory: str | None = None) -> None:
        if workers_directory is not None:
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]  # for the metrics made below, in this worker process
        self.workers = workers_directory is not None
        r = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}
        self.probes = Counter(
            "jsonexporter_probes", "Probes answered, by module and result (success, failure, invalid, forbidden, rejected).", ["module", "result"], registry=r
        )
        self.probe_duration = Histogram("jsonexporter_probe_duration_seconds", "Duration of probes in seconds.", ["module"], buckets=PROBE_BUCKETS, registry=r)
        self.upstream_requests = Counter(
            "jsonexporter_upstream_requests", "Upstream requests by module, endpoint and outcome.", ["module", "endpoint", "outcome"], registry=r
        )
        self.limits_exceeded = Counter(
            "jsonexporter_probe_limits_exceeded", "Probes failed because they reached a limit (deadline, series_limit), by module and limit.",
            ["module", "limit"], registry=r,
        )
        self.cache_requests = Counter(
            "jsonexporter_cache_requests", "Endpoint lookups of endpoints with cache_ttl (miss, hit, coalesced, stale, revalidate, deferred) or "
            "refresh_interval (first, scheduled, scheduled_stale), by result.",
            ["module", "endpoint", "result"], registry=r,
        )
        # per endpoint, never per target: a schedule's target is the caller's choice
        self.refresh_success = Gauge("jsonexporter_refresh_last_success_timestamp_seconds",
                                     "Time of the last successful scheduled request of endpoints with refresh_interval (of any of their targets).",
                                     ["module", "endpoint"], registry=r, multiprocess_mode="livemax")
        self.refresh_failures = Counter("jsonexporter_refresh_failures", "Scheduled requests of endpoints with refresh_interval that failed.",
                                        ["module", "endpoint"], registry=r)
        self.refresh_unscheduled = Counter("jsonexporter_refresh_unscheduled",
                                           "Probes that fetched an endpoint with refresh_interval themselves: every scheduled place "
                                           "(--refresh.max-requests) was taken.", ["module", "endpoint"], registry=r)
        self.refresh_evictions = Counter("jsonexporter_refresh_evictions",
                                         "Answers of scheduled requests let go, the least recently probed first: the answers kept were over "
                                         "--refresh.max-bytes. The next probe of such a request waits for its answer.", ["module", "endpoint"], registry=r)
        self.refresh_scheduled = Gauge("jsonexporter_refresh_scheduled_requests", "Requests fetched on a schedule (refresh_interval).",
                                       registry=r, multiprocess_mode="livesum")
        # per module, never per target: a session is kept per login request, whose target is the caller's choice
        self.login_requests = Counter("jsonexporter_login_requests", "Login requests of modules with a login, by result: success, the "
                                      "request's outcome (invalid_status, timeout, connection_error, ...), invalid_answer (no usable values).",
                                      ["module", "result"], registry=r)
        self.login_sessions = Gauge("jsonexporter_login_sessions", "Login sessions kept (at most 256), by module.", ["module"],
                                    registry=r, multiprocess_mode="livesum")
        self._login_modules: set[str] = set()  # the module labels of login_sessions
        # with workers: the sum, the lowest or the highest over the live ones
        self.in_flight = Gauge("jsonexporter_probes_in_flight", "Probes being answered right now.", registry=r, multiprocess_mode="livesum")
        self.config_hash = Gauge("jsonexporter_config_hash", "First 48 bits of the SHA-256 of the loaded spec file, as a number.", registry=r,
                                 multiprocess_mode="livemax")
        self.config_success = Gauge("jsonexporter_config_last_reload_successful",
                                    "Whether the last (re)load of the spec and the web config succeeded (in every worker).", registry=r,
                                    multiprocess_mode="livemin")
        self.config_timestamp = Gauge("jsonexporter_config_last_reload_success_timestamp_seconds",
                                      "Time of the last successful spec load (the oldest of the workers').", registry=r, multiprocess_mode="livemin")
        self.config_modules = Gauge("jsonexporter_config_modules", "Modules in the loaded spec, by the file they are written in.", ["file"],
                                    registry=r, multiprocess_mode="livemax")
        self._files: set[str] = set()  # the file labels of config_modules
        build = Gauge("jsonexporter_build_info", "A metric with constant value 1 labelled by version and Python version.", ["version", "python_version"],
                      registry=r, multiprocess_mode="livemax")
        build.labels(__version__, platform.python_version()).set(1)
        if workers_directory is None:
            ProcessCollector(registry=r)
            self.exposition = r
        else:
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, path=workers_directory)  # type: ignore[no-untyped-call]
            self.exposition.register(_Processes(workers_directory))

    def child(self, metric: _M, *labels: str) -> _M:
        """`metric.labels(*labels)`, kept: labels() takes a lock and makes its key anew at each call, and a
        probe counts four or more. The labels are names of the spec and fixed words (results, outcomes),
        never a target's: as many as prometheus_client keeps itself."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]

    def in_flight_from(self, count: Callable[[], int]) -> bool:
        """jsonexporter_probes_in_flight read from `count` when /metrics is asked, instead of a gauge counted up and down
        (under its lock) at every probe: whether it does. Not with workers: each worker's value is in its file."""
        if self.workers:
            return False
        self.in_flight.set_function(count)
        return True

    def spec_loaded(self, sha256: str, modules_by_file: Mapping[str, int]) -> None:
        self.config_hash.set(int(sha256[:12], 16))
        self.config_success.set(1)
        self.config_timestamp.set(time.time())
        for gone in self._files - set(modules_by_file):
            # with workers, prometheus_client keeps a removed series' last value in the worker's file: 0, not a stale count
            self.config_modules.labels(gone).set(0)
            self.config_modules.remove(gone)
        for file, count in modules_by_file.items():
            self.config_modules.labels(file).set(count)
        self._files = set(modules_by_file)

    def sessions_kept(self, by_module: Mapping[str, int]) -> None:
        for gone in self._login_modules - set(by_module):
            self.login_sessions.labels(gone).set(0)  # with workers, a removed series keeps its last value in the worker's file
            self.login_sessions.remove(gone)
        for module, count in by_module.items():
            self.login_sessions.labels(module).set(count)
        self._login_modules = set(by_module)


_SUMMED = frozenset({"process_cpu_seconds", "process_virtual_memory_bytes", "process_resident_memory_bytes", "process_open_fds"})


class _Processes(Collector):
    """process_* of the supervisor and its workers: CPU (also of the workers that have ended),
    memory (pages shared between them counted in each) and open files summed, the start time and
    file limit the supervisor's; and how many workers are running."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        pids = read_pids(self.directory)
        totals: dict[str, Metric] = {}
        for pid in pids:
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():  # type: ignore[misc]
                total = totals.get(family.name)
                if total is None:
                    totals[family.name] = family
                elif family.name in _SUMMED:
                    total.samples = [s._replace(value=s.value + t.value) for s, t in zip(total.samples, family.samples, strict=True)]
        cpu = totals.get("process_cpu_seconds")
        if cpu is not None:
            ended = read_ended_cpu(self.directory)
            cpu.samples = [s._replace(value=s.value + ended) for s in cpu.samples]
        yield from totals.values()
        workers = GaugeMetricFamily("jsonexporter_workers", "Worker processes running.")
        workers.add_metric([], max(len(pids) - 1, 0))
        yield workers
