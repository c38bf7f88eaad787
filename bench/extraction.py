"""In-process extraction time of bench/'s payload: bench/spec.yml (plain fields), bench/functions.yml
(the same rules through the function library) and bench/features.yml (the rule-features row of
bench/run: the function library, a histogram, `duplicates: sum`), no HTTP, no rendering.

    .venv/bin/python bench/extraction.py [ITEMS ...]     # default: 200 7500

Prints the median of repeated runs per spec and payload size, of extract alone and with the answer written
(text format, uncompressed: what a probe does after parsing). For an A/B of two versions, run it
with each one's Python (or PYTHONPATH) in the same minute: the machine's load moves the figures.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from payload import payload

from jsonexporter.exposition import encode
from jsonexporter.extract import ProbeContext, extract
from jsonexporter.spec import load_spec

HERE = Path(__file__).resolve().parent
PROBE = ProbeContext("default", "http://127.0.0.1", {})


def median_ms(spec_file: Path, items: int, budget: float = 3.0) -> tuple[float, float, int]:
    """The median time of extract alone, and of extract and then writing the answer (text format, uncompressed)."""
    module = load_spec(str(spec_file)).modules["default"]
    document = payload(items)
    times: list[float] = []
    written: list[float] = []
    deadline = time.perf_counter() + budget
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        start = time.perf_counter()
        result = extract(module, {"default": document}, PROBE)
        extracted = time.perf_counter()
        encode(list(result.families.values()), "text/plain", "identity")
        times.append(extracted - start)
        written.append(time.perf_counter() - start)
    series = sum(len(f.keys) for f in result.families.values()) + result.uncounted  # samples, as series_limit counts them
    return statistics.median(times) * 1000, statistics.median(written) * 1000, series


def main(counts: list[int]) -> None:
    import jsonexporter

    print(f"jsonexporter from {Path(jsonexporter.__file__).parent}")
    for items in counts:
        for spec_file in (HERE / "spec.yml", HERE / "functions.yml", HERE / "features.yml"):
            if not spec_file.exists() or (spec_file.name != "spec.yml" and not _has_library()):
                continue
            ms, with_writing, series = median_ms(spec_file, items)
            print(f"{spec_file.name:15} {items:6} items {series:7} series  {ms:8.2f} ms  {with_writing:8.2f} ms with writing")


def _has_library() -> bool:
    try:
        import jsonexporter.spec.functions  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main([int(n) for n in sys.argv[1:]] or [200, 7500])
