"""The commands: check, schema, serve, probe, test and migrate. Errors end here as one-line messages."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import functools
import gc
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from jsonexporter import __version__, logs
from jsonexporter.exposition import SURROGATES_ESCAPED
from jsonexporter.logs import kv
from jsonexporter.spec import Spec, SpecFileError, load_texts, read_spec_files
from jsonexporter.spec.model import DEFAULT_REFRESH_MAX_BYTES, DEFAULT_REFRESH_MAX_REQUESTS, DEFAULT_REFRESH_MIN_IDLE, DEFAULT_SERIES_LIMIT
from jsonexporter.spec.problems import Problem, unexpected_failure
from jsonexporter.spec.sources import is_spec_set

if TYPE_CHECKING:
    from jsonexporter.spec.model import Endpoint
    from jsonexporter.webconfig import WebConfig

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("jsonexporter")
_T = TypeVar("_T")


class _Unexpected(Exception):
    """An input that raised what loading it does not expect: said already, on stderr."""


def _loading(file: str, load: Callable[[], _T], expected: tuple[type[Exception], ...] = ()) -> _T:
    """What load() gives, or the `expected` exceptions it raises; for any other (a fault of ours, whatever the
    input), the one line naming `file` on stderr instead of a traceback, and _Unexpected: each command's input
    goes through here (check, serve's first load, probe and its --input, test, migrate), main exits 1 for it."""
    try:
        return load()
    except expected:
        raise
    except Exception as exc:
        print(unexpected_failure(file, exc), file=sys.stderr)
        raise _Unexpected from None


def _load(source: str) -> tuple[Spec | None, list[Problem], bool]:
    """The spec of a file, directory or glob; readable False (and why, on stderr) when it gives none."""
    try:
        texts = read_spec_files(source)
    except SpecFileError as exc:
        print(exc, file=sys.stderr)
        return None, [], False
    spec, problems = _loading(source, lambda: load_texts(texts, source))
    return spec, problems, True


def cmd_check(args: argparse.Namespace) -> int:
    code = EXIT_OK
    for file in args.files:
        try:
            spec, problems, readable = _load(file)
        except _Unexpected:
            code = max(code, EXIT_INVALID)
            continue
        if not readable:
            code = EXIT_USAGE
            continue
        for problem in problems:
            print(problem)
        warnings = [p for p in problems if p.severity == "warning"]
        if spec is None or (args.strict and warnings):
            code = max(code, EXIT_INVALID)
        else:
            metrics = sum(len(m.metrics) for m in spec.modules.values())
            files = len(set(spec.origins.values()))
            print(f"{file}: valid: {len(spec.modules)} module(s), {metrics} metric rule(s), {len(warnings)} warning(s)"
                  + (f", in {files} file(s)" if is_spec_set(file) else ""))
    return code


def cmd_schema(args: argparse.Namespace) -> int:
    from jsonexporter.spec.schema import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK


def _load_for_run(file: str) -> Spec | None:
    spec, problems, readable = _load(file)
    for problem in problems:
        print(problem, file=sys.stderr)
    return spec if readable else None


def _listen_address(address: str) -> tuple[str | None, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid --web.listen-address {address!r}: expected HOST:PORT or :PORT")
    host = host.strip("[]")
    return (host or None), int(port)


@dataclasses.dataclass
class _Loaded:
    spec: Spec
    web: WebConfig


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from jsonexporter.listen import KEEPALIVE_TIMEOUT, ParseErrors, client_connection_limit, raise_open_files_limit
    from jsonexporter.selfmetrics import SelfMetrics
    from jsonexporter.server import STATE, Options, load_anew, make_app, reload_on_sighup, stop_once_on_signals
    from jsonexporter.spec import SpecError, load_spec, parse_duration
    from jsonexporter.webconfig import WebConfig, load_web_config, tls_reload_problem
    from jsonexporter.workers import WORKER_CANNOT_START, Supervisor, supervisor_notifier

    logs.setup(args.log_level, args.log_format)
    logging.getLogger("aiohttp.server").addFilter(ParseErrors())  # one warning a minute, not an error line per malformed request
    try:
        host, port = _listen_address(args.web_listen_address)
        auto_reload = parse_duration(args.config_auto_reload_interval) if args.config_auto_reload_interval else 0.0
        refresh_min_idle = parse_duration(args.refresh_min_idle)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    spec = _load_for_run(args.config_file)
    if spec is None:
        return EXIT_INVALID
    web_config = WebConfig()
    if args.web_config_file:
        try:
            web_config = load_web_config(args.web_config_file)
        except SpecError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return EXIT_INVALID
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{args.web_config_file}: cannot read: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return EXIT_INVALID
    if args.web_workers < 1 or (args.web_workers > 1 and port == 0):
        print("--web.workers must be 1 or more, and more than 1 needs a fixed port in --web.listen-address", file=sys.stderr)
        return EXIT_USAGE
    if args.web_workers > 1 and not hasattr(signal, "sigwaitinfo"):
        print("--web.workers above 1 needs Linux (SO_REUSEPORT spreading connections, sigwaitinfo)", file=sys.stderr)
        return EXIT_USAGE
    if args.series_limit < 0:
        print("--probe.series-limit must be 0 (no limit) or more", file=sys.stderr)
        return EXIT_USAGE
    if args.upstream_max_connections < 1 or args.upstream_max_connections_per_host < 1:
        print("--upstream.max-connections and --upstream.max-connections-per-host must be 1 or more", file=sys.stderr)
        return EXIT_USAGE
    if args.web_max_connections < 0:
        print("--web.max-connections must be 0 (from the open files limit) or more", file=sys.stderr)
        return EXIT_USAGE
    if args.refresh_max_requests < 0:
        print("--refresh.max-requests must be 0 (no schedules for modules with a target) or more", file=sys.stderr)
        return EXIT_USAGE
    if args.refresh_max_bytes < 1:
        print("--refresh.max-bytes must be 1 or more", file=sys.stderr)
        return EXIT_USAGE
    open_files = raise_open_files_limit()  # before the workers start: they inherit it
    max_connections = args.web_max_connections or client_connection_limit(open_files.soft, args.upstream_max_connections)
    options = Options(timeout_offset=args.timeout_offset, max_concurrent_probes=args.max_concurrent_probes, auto_reload_interval=auto_reload,
                      connection_limit=args.upstream_max_connections, connection_limit_per_host=args.upstream_max_connections_per_host,
                      max_client_connections=max_connections, series_limit=args.series_limit,
                      refresh_max_requests=args.refresh_max_requests, refresh_min_idle=refresh_min_idle, refresh_max_bytes=args.refresh_max_bytes)
    loaded = _Loaded(spec, web_config)  # in the supervisor: the newest valid files, what a replaced worker starts with

    def run(worker: int = 0, directory: str | None = None) -> int:
        """The exporter, in this process (worker 0) or in a worker process."""
        opts, metrics = options, None
        if worker:
            logs.static_fields(worker=worker)
            opts = dataclasses.replace(options, worker=worker, workers=args.web_workers, after_reload=supervisor_notifier())
            metrics = SelfMetrics(directory)
        app = make_app(loaded.spec, opts, metrics, spec_file=args.config_file, web_config=loaded.web)
        logs.redact_with(app[STATE].redactor)
        reload_on_sighup(app)
        stop_once_on_signals(app, args.shutdown_timeout)
        try:
            web.run_app(app, host=host, port=port, print=None, handler_cancellation=True, access_log=None, reuse_port=worker > 0,
                        handle_signals=False, shutdown_timeout=args.shutdown_timeout, ssl_context=app[STATE].tls,
                        keepalive_timeout=KEEPALIVE_TIMEOUT, loop=app[STATE].connections.new_event_loop())
        except OSError as exc:
            log.error("cannot listen", extra=kv(address=args.web_listen_address, err=exc.strerror or str(exc)))
            return WORKER_CANNOT_START if worker else EXIT_INVALID
        return EXIT_OK

    def reload() -> None:  # quietly: the workers log what is wrong
        spec, _ = load_anew(load_spec, args.config_file)
        web, _ = load_anew(load_web_config, args.web_config_file) if args.web_config_file else (loaded.web, "")
        if spec is not None and web is not None and not tls_reload_problem(loaded.web, web):  # both or neither, as in the workers (server.reload_spec)
            loaded.spec, loaded.web = spec, web

    log.info("starting jsonexporter", extra=kv(version=__version__, config=args.config_file, address=args.web_listen_address, workers=args.web_workers,
                                               modules=len(spec.modules), tls=web_config.tls is not None, basic_auth=bool(web_config.users)))
    log.info("open files", extra=kv(limit=open_files.soft, started_with=open_files.started, hard_limit=open_files.hard, max_connections=max_connections,
                                    upstream_max_connections=args.upstream_max_connections))
    # Full collections walk every object alive: most are the modules and the spec, never garbage
    # (frozen), the rest the documents of the probes in progress, which refcounting frees. Fewer,
    # rarer collections: 2.1 MB probes 6.3 -> 8.7/s, /-/healthy p99 81 -> 34 ms (bench/). Frozen
    # before forking workers, the startup spec's pages also stay shared with them. The first
    # threshold counts objects made less those freed: a parsed 2.1 MB answer of bench/ is 15,000;
    # at 50,000 its parse no longer starts collections that hold the event loop for 2-9 ms each.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 10, 100)
    if args.web_workers == 1:
        return run()
    return Supervisor(args.web_workers, run, reload, args.shutdown_timeout).run()


def _inputs(specs: list[str], endpoints: Mapping[str, Endpoint]) -> dict[str, Any]:
    from jsonexporter.upstream.fetch import InvalidJSON, _parse_json

    documents: dict[str, Any] = {}
    for item in specs:
        name, sep, path = item.partition("=")
        if not sep:
            if len(endpoints) != 1:
                raise ValueError(f"--input {item}: the module has several endpoints ({', '.join(endpoints)}): write ENDPOINT=FILE")
            name, path = next(iter(endpoints)), item
        if name not in endpoints:
            raise ValueError(f"--input {item}: unknown endpoint {name!r} (the module has {', '.join(endpoints)})")
        body = _read_input(path, endpoints[name])
        try:
            documents[name] = _loading(path, functools.partial(_parse_json, body), expected=(InvalidJSON,))
        except ValueError as exc:
            raise ValueError(f"--input {path}: {exc}") from None
    return documents


def _read_input(path: str, endpoint: Endpoint) -> bytes:
    """The saved answer in `path`, read as a spec file is (within 2 s: a FIFO nobody writes is unreadable) and
    within the endpoint's max_response_bytes, as a live answer is; ValueError saying why not."""
    from jsonexporter.spec.sources import read_bounded_bytes

    limit = endpoint.max_response_bytes
    try:
        return read_bounded_bytes(path, limit)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            raise ValueError(f"--input {path}: larger than max_response_bytes {limit} of endpoint {endpoint.name}: "
                             "a live probe refuses such an answer (too_large)") from None
        raise ValueError(f"--input {path}: cannot read: {exc.strerror or exc}") from None


def cmd_probe(args: argparse.Namespace) -> int:
    from jsonexporter.exposition import render_openmetrics, render_text
    from jsonexporter.probe import ProbeResult, run_offline, run_probe
    from jsonexporter.secrets import Redactor
    from jsonexporter.spec.problems import fault
    from jsonexporter.trace import MAX_MESSAGE, cut
    from jsonexporter.upstream import InvalidRequest, Upstream, new_session, probe_redactor
    from jsonexporter.upstream.client import Clients

    logs.setup(args.log_level, args.log_format)
    spec = _load_for_run(args.config_file)
    if spec is None:
        return EXIT_INVALID
    module = spec.modules.get(args.module)
    if module is None:
        print(f"unknown module {args.module!r}; known modules: {', '.join(sorted(spec.modules))}", file=sys.stderr)
        return EXIT_USAGE
    process = Redactor(spec.secrets)  # learns what is read at run time (Clients)
    query = dict(p.partition("=")[::2] for p in args.param)
    # what this command prints, but the metrics, passes it: as a live probe's texts (server.probe), its
    # target's credentials and secret-named parameters hidden too
    redacting = probe_redactor({**query, "target": args.target}, process, module) or process
    logs.redact_with(redacting)

    def redact(text: str) -> str:  # cut as a probe record's texts are (server._record), then redacted
        return redacting(cut(text, MAX_MESSAGE))
    try:
        if args.input:
            result = run_offline(module, _inputs(args.input, module.endpoints), args.target or "offline", query, args.debug, redactor=process)
        else:
            if not args.target:
                print("--target is required without --input", file=sys.stderr)
                return EXIT_USAGE

            async def online() -> ProbeResult:
                async with new_session() as session:
                    return await run_probe(Upstream(session, Clients(process)), module, args.target, query, module.timeout, args.debug)

            result = asyncio.run(online())
    except (ValueError, InvalidRequest) as exc:
        print(redact(str(exc)), file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # a fault of ours before the probe's query was resolved (run_probe and run_offline say the others)
        print(redact(f"probe failed: internal_error: {fault(exc)}"), file=sys.stderr)
        return EXIT_INVALID
    render = render_openmetrics if args.format == "openmetrics" else render_text
    unwritten: dict[str, Exception] = {}
    text = render(result.families, unwritten)  # before the messages: a family left out is said with them
    for name, raised in unwritten.items():
        result.extraction.faults.setdefault(name, f"internal_error: {fault(raised)} (writing the answer)")
    if result.trace is not None:  # on stderr: stdout stays an exposition that promtool and parsers read
        sys.stderr.write(redacting(result.trace.text()))  # each line cut already (Trace.add)
        for message in result.extraction.messages:
            print(redacting(f"error: {message}"), file=sys.stderr)  # cut already (extract: MAX_MESSAGE)
    for r in result.endpoints:
        if not r.ok:
            print(redact(f"endpoint {r.endpoint}: {r.outcome}: {r.error}"), file=sys.stderr)
    for metric, said in result.extraction.faults.items():  # said whether traced or not: a fault of ours is never quiet
        print(redact(f"metric {metric}: {said}"), file=sys.stderr)
    if result.fault is not None:
        print(redact(f"probe failed: {result.fault}"), file=sys.stderr)
    if result.failure is not None and result.trace is None:  # a trace says it at its end
        print(redact(f"probe failed: {result.failure}"), file=sys.stderr)
    sys.stdout.write(text)
    return EXIT_OK if result.success and not result.extraction.faults else EXIT_INVALID


def cmd_test(args: argparse.Namespace) -> int:
    from jsonexporter.spectest import run_files
    from jsonexporter.spectest.load import SpecCache

    code, specs = EXIT_OK, SpecCache()
    for file in args.files:
        try:  # file by file: one whose run fails unexpectedly is named, the others still run
            code = max(code, _loading(file, functools.partial(run_files, [file], sys.stdout, sys.stderr, specs)))
        except _Unexpected:
            code = max(code, EXIT_INVALID)
    return code


def cmd_migrate(args: argparse.Namespace) -> int:
    from jsonexporter.migrate import run

    return _loading(args.file, lambda: run(args.file, args.output))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jsonexporter", description="A declarative Prometheus exporter for any REST/JSON API.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jsonexporter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate specs (exit 0 valid, 1 invalid, 2 unreadable)")
    check.add_argument("files", nargs="+", metavar="FILE", help="a spec file, or a directory or glob of files forming one spec")
    check.add_argument("--strict", action="store_true", help="warnings make the spec invalid too")
    check.set_defaults(func=cmd_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of the spec")
    schema.set_defaults(func=cmd_schema)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config.file", dest="config_file", default="jsonexporter.yml",
                       help="spec file, or a directory or glob of spec files forming one spec (default jsonexporter.yml)")
        p.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warn", "error"])
        p.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])

    serve = sub.add_parser("serve", help="serve /probe and /metrics")
    common(serve)
    serve.add_argument("--web.listen-address", dest="web_listen_address", default=":7979", help="HOST:PORT to listen on (default :7979)")
    serve.add_argument("--timeout-offset", dest="timeout_offset", type=float, default=0.5,
                       help="seconds subtracted from Prometheus's scrape timeout (default 0.5)")
    serve.add_argument("--web.config.file", dest="web_config_file", default="",
                       help="exporter-toolkit web config: TLS, basic auth, headers (default: none)")
    serve.add_argument("--config.auto-reload-interval", dest="config_auto_reload_interval", default="",
                       help="reload the spec when its files change, checked at this interval, e.g. 30s (default: off)")
    serve.add_argument("--web.max-concurrent-probes", dest="max_concurrent_probes", type=int, default=256,
                       help="probes answered at once; more get HTTP 503 (default 256)")
    serve.add_argument("--probe.series-limit", dest="series_limit", type=int, default=DEFAULT_SERIES_LIMIT,
                       help=f"most series per probe of modules without series_limit; more fail the probe; 0: no limit (default {DEFAULT_SERIES_LIMIT})")
    serve.add_argument("--web.shutdown-timeout", dest="shutdown_timeout", type=float, default=15.0,
                       help="seconds in-flight probes get to finish on SIGTERM (default 15)")
    serve.add_argument("--web.max-connections", dest="web_max_connections", type=int, default=0,
                       help="client connections open at once, whatever their state; beyond, the oldest idle ones (or still in their "
                            "TLS handshake) are closed, or the new one refused "
                            "(default 0: what the open files limit leaves, less --upstream.max-connections and 128)")
    serve.add_argument("--upstream.max-connections", dest="upstream_max_connections", type=int, default=256,
                       help="connections to upstreams open at once, in all (default 256)")
    serve.add_argument("--upstream.max-connections-per-host", dest="upstream_max_connections_per_host", type=int, default=32,
                       help="connections open at once to one upstream host and port; more requests wait for one (default 32)")
    serve.add_argument("--web.workers", dest="web_workers", type=int, default=1,
                       help="processes answering on the listen address, e.g. $(nproc): every core extracts (default 1)")
    serve.add_argument("--refresh.max-requests", dest="refresh_max_requests", type=int, default=DEFAULT_REFRESH_MAX_REQUESTS,
                       help="requests of modules with a target fetched on a schedule (refresh_interval) at once; beyond, "
                            f"a probe fetches the endpoint itself (default {DEFAULT_REFRESH_MAX_REQUESTS})")
    serve.add_argument("--refresh.max-bytes", dest="refresh_max_bytes", type=int, default=DEFAULT_REFRESH_MAX_BYTES,
                       help="parsed size of the answers the schedules (refresh_interval) keep, estimated as the cache's; beyond, "
                            "the answers of the least recently probed requests go first (default "
                            f"{DEFAULT_REFRESH_MAX_BYTES}: {DEFAULT_REFRESH_MAX_BYTES // 2**20} MiB)")
    serve.add_argument("--refresh.min-idle", dest="refresh_min_idle", default=f"{DEFAULT_REFRESH_MIN_IDLE / 60:.0f}m",
                       help="a scheduled request of a module with a target stops after 3 intervals without a probe, "
                            f"never sooner than this (default {DEFAULT_REFRESH_MIN_IDLE / 60:.0f}m)")
    serve.set_defaults(func=cmd_serve)
    parser.epilog = _serve_flags(serve)

    probe = sub.add_parser("probe", help="run one probe and print its metrics")
    common(probe)
    probe.add_argument("--module", default="default")
    probe.add_argument("--target", default="")
    probe.add_argument("--input", action="append", default=[], metavar="[ENDPOINT=]FILE", help="evaluate a saved JSON answer instead of fetching")
    probe.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a probe query parameter")
    probe.add_argument("--debug", action="store_true", help="write the probe's trace to stderr (the metrics stay alone on stdout)")
    probe.add_argument("--format", choices=["text", "openmetrics"], default="text")
    probe.set_defaults(func=cmd_probe)

    test = sub.add_parser("test", help="run unit tests of specs on saved answers, offline (exit 0 all pass, 1 a test fails or is invalid, 2 unreadable)")
    test.add_argument("files", nargs="+", metavar="TESTFILE", help="a test file: spec, tests with answers and exp_samples (docs/testing.md)")
    test.set_defaults(func=cmd_test)

    migrate = sub.add_parser("migrate", help="translate a json_exporter configuration into a spec "
                                             "(exit 0 all translated, 1 something not translated, 2 unreadable)")
    migrate.add_argument("file", metavar="JSON_EXPORTER_CONFIG", help="a json_exporter configuration file (docs/migrating.md)")
    migrate.add_argument("-o", "--output", metavar="SPEC", help="write the spec here (default: stdout)")
    migrate.set_defaults(func=cmd_migrate)
    return parser


def _serve_flags(serve: argparse.ArgumentParser) -> str:
    """serve's flags for the top-level --help: they work without the command too."""
    formatter = argparse.HelpFormatter("jsonexporter")
    formatter.start_section("serve's flags, also without the command (`jsonexporter --config.file FILE` serves)")
    formatter.add_arguments([action for action in serve._actions if action.dest != "help"])
    formatter.end_section()
    return formatter.format_help()


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0].startswith("--") and args_list[0] not in ("--help", "--version"):
        args_list.insert(0, "serve")  # `jsonexporter --config.file x` like any Prometheus exporter
    args = _parser().parse_args(args_list)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors=SURROGATES_ESCAPED)  # a lone surrogate from an answer prints as its JSON escape, as on stderr
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except _Unexpected:
        return EXIT_INVALID
    return code
