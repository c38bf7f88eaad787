"""Markdown tables from bench/run's results (one JSON line per wrk run).

    python bench/report.py results.jsonl DURATION LOADAVG PACKAGE_DIR WORKERS
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

Run = dict[str, Any]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _floor_parser() -> str:
    try:
        import orjson  # noqa: F401
    except ImportError:
        return "json"
    return "orjson"


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.0f} KB" if nbytes >= 1e4 else f"{nbytes / 1e3:.1f} KB"


def _rate(run: Run) -> float:
    probe = run["probe"]
    return float(probe["requests"]) / (float(probe["duration_us"]) / 1e6)


def _ms(us: float) -> str:
    ms = us / 1000
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def _errors(run: Run) -> str:
    probe = run["probe"]
    bad = probe["errors"] + probe["non_2xx"]
    return f" ({bad} errors)" if bad else ""


def _load_cells(run: Run, items: int, conns: int) -> str:
    """The cells every load row has: payload, series, connections, rate, latencies, RSS, /-/healthy."""
    healthy = run["healthy"]
    return (f"| {_size(run['bytes'])} ({items} items) | {run['series']:,} | {conns} | {_rate(run):,.1f}{_errors(run)} | "
            f"{_ms(run['probe']['p50_us'])} | {_ms(run['probe']['p99_us'])} | {run['rss_kb'] / 1024:.0f} | "
            f"{_ms(healthy['p99_us']) if healthy else '-'} |")


def load_table(runs: dict[tuple[str, int, int], Run]) -> list[str]:
    lines = [
        "| payload | series | conns | probes/s | p50 ms | p99 ms | peak RSS MB | /-/healthy p99 ms "
        "| floor probes/s | floor p50 ms | floor RSS MB | probes/s vs floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for items, conns, ours, floor in _beside_the_floor(runs):
        lines.append(
            f"{_load_cells(ours, items, conns)} {_rate(floor):,.1f}{_errors(floor)} | {_ms(floor['probe']['p50_us'])} | "
            f"{floor['rss_kb'] / 1024:.0f} | {_rate(ours) / _rate(floor):.2f}{_rounds(runs, items, conns, _rate)} |"
        )
    return lines


def _median_runs(every: list[Run]) -> dict[tuple[str, int, int], Run]:
    """One run per (app, items, connections): of several rounds (BENCH_ROUNDS), the one of the median probes/s
    (the lower of the two middle ones), every round kept under "rounds" for `_rounds`."""
    grouped: dict[tuple[str, int, int], list[Run]] = {}
    for run in every:
        grouped.setdefault((run["app"], run["items"], run["connections"]), []).append(run)
    chosen = {}
    for key, group in grouped.items():
        ranked = sorted(group, key=_rate)
        chosen[key] = {**ranked[(len(ranked) - 1) // 2], "rounds": group}
    return chosen


def _rounds(runs: dict[tuple[str, int, int], Run], items: int, conns: int, measure: Callable[[Run], float]) -> str:
    """The exporter / floor ratio of each round, in the order run, when there were several: ` (rounds 0.51, 0.47, 0.49)`."""
    ours, floor = runs[("jsonexporter", items, conns)]["rounds"], runs[("floor", items, conns)]["rounds"]
    if len(ours) < 2 or len(ours) != len(floor):
        return ""
    if measure is _rate:
        ratios = [_rate(a) / _rate(b) for a, b in zip(ours, floor, strict=True)]
    else:  # CPU time: the floor's over the exporter's
        ratios = [measure(b) / measure(a) for a, b in zip(ours, floor, strict=True)]
    return f" (rounds {', '.join(f'{r:.2f}' for r in ratios)})"


def _beside_the_floor(runs: dict[tuple[str, int, int], Run]) -> Iterator[tuple[int, int, Run, Run]]:
    """(items, connections, the exporter's run, the floor's) of each load row both were run for."""
    for items in (200, 7500):
        for conns in (1, 8):
            ours, floor = runs.get(("jsonexporter", items, conns)), runs.get(("floor", items, conns))
            if ours is not None and floor is not None:
                yield items, conns, ours, floor


def _cpu_us(run: Run, who: str = "app") -> float:
    """CPU time per probe of the app (its processes summed), nginx or wrk over the run, in µs."""
    return float(run.get("cpu_ns", {}).get(who, 0)) / 1e3 / max(int(run["probe"]["requests"]), 1)


def _others(run: Run) -> float:
    """What nginx and wrk cost per probe against the app: on a machine of few CPUs they share the cores."""
    app = _cpu_us(run)
    return (_cpu_us(run, "nginx") + _cpu_us(run, "wrk")) / app if app else float("nan")


def _median_cpu(run: Run) -> float:
    """The median CPU time per probe of a run's rounds (`_median_runs`)."""
    return statistics.median(map(_cpu_us, run.get("rounds", [run])))


def cpu_table(runs: dict[tuple[str, int, int], Run]) -> list[str]:
    """CPU time per probe of each process (/proc/PID/schedstat; wrk by bash's `time`): what a busy machine
    moves least, as the time the processes waited for a core is not in it."""
    lines = [
        "| payload | conns | exporter CPU µs per probe | floor CPU µs per probe | floor / exporter (CPU) "
        "| nginx + wrk CPU µs per probe (exporter's run) | nginx + wrk vs exporter |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for items, conns, ours, floor in _beside_the_floor(runs):
        if "cpu_ns" not in ours or "cpu_ns" not in floor:
            continue
        mine, base = _median_cpu(ours), _median_cpu(floor)
        lines.append(
            f"| {_size(ours['bytes'])} ({items} items) | {conns} | {mine:,.0f} | {base:,.0f} | {base / mine:.2f}{_rounds(runs, items, conns, _cpu_us)} | "
            f"{_cpu_us(ours, 'nginx') + _cpu_us(ours, 'wrk'):,.0f} | {_others(ours):.2f} |"
        )
    return lines


def workers_table(runs: dict[tuple[str, int, int], Run], workers: int) -> list[str]:
    lines = [
        "| payload | series | conns | probes/s | p50 ms | p99 ms | peak RSS MB (all processes) | /-/healthy p99 ms | vs one process "
        "| CPU µs per probe, all processes (one process) | at most, on these CPUs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cpus = os.cpu_count() or 1
    for items in (200, 7500):
        ours, one = runs.get(("workers", items, 8)), runs.get(("jsonexporter", items, 8))
        if ours is None or one is None:
            continue
        # One process keeps one core busy; N of them, nginx and wrk share all the cores: with the CPU per probe
        # of the one-process run, N processes reach at most cpus / (1 + (nginx + wrk) / exporter) times its rate.
        bound = min(workers, cpus / (1 + _others(one))) if "cpu_ns" in one else float("nan")
        lines.append(f"{_load_cells(ours, items, 8)} {_rate(ours) / _rate(one):.2f} | "
                     f"{_cpu_us(ours):,.0f} ({_cpu_us(one):,.0f}) | {bound:.2f} |")
    return lines


def linearity_table(runs: dict[tuple[str, int, int], Run]) -> list[str]:
    lines = [
        "| payload | items | series | p50 ms | µs per item | floor p50 ms | floor µs per item | p50 vs floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for items in sorted({key[1] for key in runs if key[2] == 1}):
        ours, floor = runs.get(("jsonexporter", items, 1)), runs.get(("floor", items, 1))
        if ours is None or floor is None:
            continue
        p50, floor_p50 = ours["probe"]["p50_us"], floor["probe"]["p50_us"]
        lines.append(
            f"| {_size(ours['bytes'])} | {items:,} | {ours['series']:,} | {_ms(p50)} | {p50 / items:.1f} | "
            f"{_ms(floor_p50)} | {floor_p50 / items:.1f} | {p50 / floor_p50:.2f} |"
        )
    return lines


def features_table(pairs: list[Run]) -> list[str]:
    """bench/spec.yml (`pair`) and bench/features.yml run in turn, each row as it was, then the ratios of the medians:
    by probes/s and by CPU time per probe (2.1 MB, 8 connections)."""
    lines = [
        "| spec | payload | series | conns | probes/s | p50 ms | p99 ms | peak RSS MB | /-/healthy p99 ms | exporter CPU µs per probe |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    plain = [run for run in pairs if run["app"] == "pair"]
    ours = [run for run in pairs if run["app"] == "features"]
    for run in pairs:
        spec = "bench/features.yml" if run["app"] == "features" else "bench/spec.yml"
        lines.append(f"| {spec} |{_load_cells(run, run['items'], run['connections'])[1:]} {_cpu_us(run):,.0f} |")
    if plain and ours:
        rate = statistics.median(map(_rate, ours)) / statistics.median(map(_rate, plain))
        cpu = statistics.median(map(_cpu_us, plain)) / statistics.median(map(_cpu_us, ours))
        lines.append(f"\nbench/features.yml against bench/spec.yml, medians of {len(ours)} and {len(plain)} runs: "
                     f"{rate:.2f} by probes/s, {cpu:.2f} by CPU time per probe (spec.yml's / features.yml's).")
    return lines


def gzip_table(runs: dict[tuple[str, int, int], Run]) -> list[str]:
    """The answers compressed (`Accept-Encoding: gzip`, what Prometheus asks for unless its scrape config says
    `enable_compression: false`) against the same probes answered uncompressed, in the same run."""
    lines = [
        "| payload | series | conns | probes/s | p50 ms | p99 ms | peak RSS MB | /-/healthy p99 ms | bytes sent (uncompressed) "
        "| exporter CPU µs per probe (uncompressed) | probes/s vs uncompressed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (app, items, conns), run in sorted(runs.items()):
        plain = runs.get(("jsonexporter", items, conns))
        if app != "gzip" or plain is None:
            continue
        lines.append(f"{_load_cells(run, items, conns)} {run.get('wire_bytes', 0):,} ({plain.get('wire_bytes', 0):,}) | "
                     f"{_cpu_us(run):,.0f} ({_cpu_us(plain):,.0f}) | {_rate(run) / _rate(plain):.2f} |")
    return lines


def _targets_cpu(run: Run, one: Run | None) -> str:
    """The exporter's CPU per probe of the many-targets run and of the one-target run, and their ratio: the goal's
    probes/s as a busy machine moves it least (what the exporter spends, not what it gets of the CPUs)."""
    if "cpu_ns" not in run or one is None or "cpu_ns" not in one:
        return "- | -"
    many_us, one_us = _cpu_us(run), _cpu_us(one)
    return f"{many_us:,.0f} ({one_us:,.0f}) | {one_us / many_us:.2f}"


def targets_table(runs: dict[tuple[str, int, int], Run], targets: list[Run]) -> list[str]:
    """The many-targets row: probes/s against one target's (the same run), the RSS over the run, and
    the upstream connections nginx accepted (the first pass over the targets opens one each; keep-alive
    reuses them after it, churn opens more) and the sockets the pool holds at the end."""
    lines = [
        "| targets | conns | probes | probes/s | p50 ms | p99 ms | vs one target | RSS MB after 1st pass, at end (peak) "
        "| connections opened | reused after the 1st pass | sockets open at end | CPU µs per probe (one target's) | one target's / this |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    one = runs.get(("jsonexporter", 200, 8))
    for run in targets:
        rate, n = _rate(run), run["targets"]
        samples = run["rss_samples_kb"] or [0]
        first = samples[min(len(samples) - 1, int(n / max(rate, 1e-9) / 0.2) + 1)]  # sampled every 0.2 s
        (accepts0, requests0), (accepts1, requests1) = run["nginx_before"], run["nginx_after"]
        opened, probes = accepts1 - accepts0, requests1 - requests0
        later = probes - n
        reused = f"{1 - max(opened - n, 0) / later:.0%}" if later > 0 else "- (under one pass)"
        lines.append(
            f"| {n:,} | {run['connections']} | {probes:,} | {rate:,.1f}{_errors(run)} | {_ms(run['probe']['p50_us'])} | "
            f"{_ms(run['probe']['p99_us'])} | {rate / _rate(one) if one else float('nan'):.2f} | "
            f"{first / 1024:.0f}, {samples[-1] / 1024:.0f} ({run['rss_kb'] / 1024:.0f}) | {opened:,} | {reused} | {run['sockets']:,} | "
            f"{_targets_cpu(run, one)} |"
        )
    return lines


def instructions_table(counts: list[Run]) -> list[str]:
    """Instructions per probe and their ratios (the goals of issue 16 without the noise of probes/s): one target against
    the floor, 1,000 targets in turn against one target, bench/features.yml against bench/spec.yml at 2.1 MB."""
    lines = ["| spec | items | targets | conns | probes counted | failed | instructions per probe (millions) | as probes/s against |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    per_probe = {(run.get("spec", "spec"), run["items"], run["targets"]): run["instructions"] / max(run["result"]["probes"], 1)
                 for run in counts}
    for run in counts:
        key = (run.get("spec", "spec"), run["items"], run["targets"])
        base_key = ("floor", run["items"], 1) if key == ("spec", run["items"], 1) else ("spec", run["items"], 1)
        base = per_probe.get(base_key) if key[0] != "floor" else None
        whose = "the floor's" if base_key[0] == "floor" else "spec.yml's, one target"
        against = f"{base / per_probe[key]:.2f} of {whose}" if base and per_probe[key] else "-"
        lines.append(f"| {'bench/floor.py' if key[0] == 'floor' else key[0] + '.yml'} | {run['items']:,} items | "
                     f"{run['targets']:,} | {run['connections']} | {run['result']['probes']:,} | {run['result']['failed']} | "
                     f"{per_probe[key] / 1e6:.2f} | {against} |")
    return lines


def main(path: str, duration: str, load: str, package: str, workers: str = "1") -> None:
    with open(path) as results:
        every = list(map(json.loads, results))
    runs = _median_runs([r for r in every if "targets" not in r and r["app"] not in ("pair", "features")])
    pairs = [r for r in every if r.get("app") in ("pair", "features")]
    targets = [r for r in every if "targets" in r and "instructions" not in r]
    instructions = [r for r in every if "instructions" in r]
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs ({_cpu_model()}), Python {platform.python_version()}, "
          f"wrk {duration} s per run, one exporter process ({package}) unless said, floor parsing with {_floor_parser()}; "
          f"load average before the run {load}.\n")
    if runs:
        print("Load (wrk on loopback, closed loop: each connection sends its next probe when the last one answered):\n")
        print("\n".join(load_table(runs)))
    if any("cpu_ns" in run for run in runs.values()):
        print("\nCPU time per probe of each process in the same runs (/proc/PID/task/*/schedstat, wrk by bash's `time`; what a busy "
              "machine moves least):\n")
        print("\n".join(cpu_table(runs)))
    if any(key[0] == "workers" for key in runs):
        print(f"\nWith `--web.workers {workers}` (the same probes, answered by {workers} worker processes on one port):\n")
        print("\n".join(workers_table(runs, int(workers))))
    if pairs:
        print("\nRule features (bench/features.yml: the function library in labels and values, a histogram per item, "
              "`duplicates: sum` per region) against bench/spec.yml, run in turn:\n")
        print("\n".join(features_table(pairs)))
    if any(key[0] == "gzip" for key in runs):
        print("\nCompressed answers (`Accept-Encoding: gzip`, as Prometheus asks unless its scrape config says "
              "`enable_compression: false`), against the uncompressed runs above:\n")
        print("\n".join(gzip_table(runs)))
    if targets:
        print(f"\nMany targets: {targets[0]['targets']:,} origins (ports of one nginx, each the 56 KB answer) probed in turn "
              "for twice as long as the other runs, against one target in the same run:\n")
        print("\n".join(targets_table(runs, targets)))
    if instructions:
        print("\nInstructions per probe (valgrind's callgrind, the exporter alone, counted after a first pass over the targets; "
              "a failed probe makes its row worthless): what other work on the machine does not move, unlike probes/s:\n")
        print("\n".join(instructions_table(instructions)))
    if any(key[1] not in (200, 7500) for key in runs):
        print("\nCost against payload size (1 connection; p50 latency of one probe):\n")
        print("\n".join(linearity_table(runs)))


if __name__ == "__main__":
    main(*sys.argv[1:6])
