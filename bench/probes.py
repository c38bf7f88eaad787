"""Probe an exporter an exact number of times: bench/run's instruction counts (BENCH_INSTRUCTIONS=1), where the
exporter runs under valgrind and wrk's duration-bound runs would measure a different number of probes each time.

    python bench/probes.py APP FIRST_PORT TARGETS N CONNECTIONS START ITEMS [floor]

probes http://APP/probe with the answer of ITEMS items of the nginx ports FIRST_PORT.., TARGETS of them in turn
starting at the START-th, N probes over CONNECTIONS connections; prints `RESULT {"probes": N, "failed": F}`. A probe
fails unless it answers 200 with `probe_success 1` (with `floor`: bench/floor.py's `floor_items ITEMS`)."""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp


async def probe(app: str, first: int, targets: int, n: int, connections: int, start: int, items: int, expected: bytes) -> int:
    following, failed = start, 0
    timeout = aiohttp.ClientTimeout(total=120)  # one probe of a process under valgrind: some 50 times slower
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), timeout=timeout) as session:

        async def connection() -> None:
            nonlocal following, failed
            while following < start + n:
                port, following = first + following % targets, following + 1
                url = f"http://{app}/probe?module=default&target=http%3A%2F%2F127.0.0.1%3A{port}%2Fitems-{items}.json"
                async with session.get(url, headers={"Accept-Encoding": "identity"}) as response:  # as wrk's rows ask
                    if response.status != 200 or expected not in b"\n" + await response.read():
                        failed += 1

        await asyncio.gather(*(connection() for _ in range(connections)))
    return failed


def main(app: str, first: str, targets: str, n: str, connections: str, start: str, items: str, kind: str = "jsonexporter") -> None:
    expected = f"\nfloor_items {items}\n".encode() if kind == "floor" else b"\nprobe_success 1\n"
    failed = asyncio.run(probe(app, int(first), int(targets), int(n), int(connections), int(start), int(items), expected))
    print("RESULT " + json.dumps({"probes": int(n), "failed": failed}))


if __name__ == "__main__":
    main(*sys.argv[1:9])
