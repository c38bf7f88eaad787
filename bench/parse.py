"""In-process parse of bench/'s payload for bench/spec.yml's rules: orjson (the whole answer), the
projection into dicts (TypedDicts, as before spec/objects.py) and into objects (msgspec Structs, what
fetch does); then reading the rules' columns of the items, and freeing the document.

    .venv/bin/python bench/parse.py [ITEMS ...]     # default: 200 7500

Prints medians (CPU time: the wait for a CPU left out) of runs taken in turn (the machine's load moves them alike), and what the parsed
document holds (tracemalloc). Garbage collection as the server sets it (cli.py), collected before each run.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from payload import payload

from jsonexporter.spec import load_spec, objects, projection

HERE = Path(__file__).resolve().parent
READ = ["id", "region", "status", "version", "requests_total", "errors_total", "healthy", "latency_ms", "cpu_ratio", "memory_bytes"]


def _projection(fields: int) -> projection.Projection:
    """bench/spec.yml's projection, objects of at most `fields` fields as Structs (-1: none)."""
    kept = projection.STRUCT_FIELDS
    projection.STRUCT_FIELDS = fields
    try:
        return load_spec(str(HERE / "spec.yml")).modules["default"].projections["default"]
    finally:
        projection.STRUCT_FIELDS = kept


def _items(document: Any) -> list[Any]:
    items = document.get("items")
    assert isinstance(items, list)
    return items


def main(counts: list[int]) -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 10, 100)
    parsers: dict[str, Callable[[bytes], Any]] = {"orjson (whole)": orjson.loads, "dicts (TypedDict)": _projection(-1).decode,
                                                  "objects (Struct)": _projection(projection.STRUCT_FIELDS).decode}
    for count in counts:
        body = orjson.dumps(payload(count))
        runs = 400 if count <= 1000 else 30
        times: dict[str, list[list[float]]] = {name: [[], [], []] for name in parsers}
        for _ in range(runs):
            for name, parse in parsers.items():
                gc.collect()  # each parse from the same state: what one left does not land in another's times
                start = time.process_time()
                document = parse(body)
                parsed = time.process_time()
                for field in READ:
                    objects.column(field, _items(document))
                read = time.process_time()
                del document
                freed = time.process_time()
                for kept, value in zip(times[name], (parsed - start, read - parsed, freed - read), strict=True):
                    kept.append(value)
        print(f"{count} items ({len(body) / 1000:.0f} kB), medians of {runs}:")
        for name, parse in parsers.items():
            tracemalloc.start()
            document = parse(body)
            held = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            del document
            parse_t, read_t, free_t = (statistics.median(t) * 1e6 for t in times[name])
            print(f"  {name:18s} parse {parse_t:8.0f} µs  read 10 columns {read_t:7.0f} µs  free {free_t:7.0f} µs  holds {held / 1e6:6.2f} MB")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [200, 7500])
