"""The Redactor learning many run-time secrets, then redacting a long text: learn time, redaction
time and peak memory, for this checkout or another (`--tree DIR`, e.g. a checkout of main), each case
in a fresh process so that peak memory is its own.

    python bench/redactor.py [--tree DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import subprocess
import sys
import time
from pathlib import Path

CASES = [(1024, 1024), (2048, 4096)]  # (values, characters each): JWT-sized tokens; 256 sessions x 8 values at the cap
TEXT_CHARS = 1_000_000


def _jwt_like(rnd: random.Random, n: int) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    chars = [rnd.choice(alphabet) for _ in range(n)]
    chars[n // 3] = chars[2 * n // 3] = "."
    return "".join(chars)


def _one(count: int, size: int) -> dict[str, float]:
    import resource

    from jsonexporter.secrets import Redactor

    rnd = random.Random(7)
    values = [_jwt_like(rnd, size) for _ in range(count)]
    # a trace of JSON that quotes a few of the values among ordinary text
    filler = "".join(rnd.choice(string.ascii_letters + string.digits + ' ":,{}\n') for _ in range(TEXT_CHARS))
    text = filler[:TEXT_CHARS // 3] + f'"{values[1]}"' + filler[TEXT_CHARS // 3:2 * TEXT_CHARS // 3] + values[-1] + filler[2 * TEXT_CHARS // 3:]
    redact = Redactor()
    start = time.perf_counter()
    for value in values:
        redact.learn(value)
    redact("warm")  # the old Redactor compiles at its first use after learning
    learned = time.perf_counter() - start
    start = time.perf_counter()
    shown = redact(text)
    redacted = time.perf_counter() - start
    start = time.perf_counter()
    redact.learn(_jwt_like(rnd, size))
    redact("x")
    one_more = time.perf_counter() - start
    assert values[-1] not in shown  # the first ones may be forgotten: more than the budget (MAX_LEARNED before)
    return {"learn_s": learned, "learn_one_more_s": one_more, "redact_1MB_s": redacted,
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        sys.path.insert(0, args.tree)
        count, size = map(int, args.case.split("x"))
        print(json.dumps(_one(count, size)))
        return
    for count, size in CASES:
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--tree", args.tree, "--case", f"{count}x{size}"],
                                          check=True, capture_output=True, text=True).stdout) for _ in range(args.repeat)]
        medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(f"{count} x {size} chars: " + ", ".join(f"{key} {value:.3f}" for key, value in medians.items()))


if __name__ == "__main__":
    main()
