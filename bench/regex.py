"""What one call of a regex function costs at its bound (spec/functions.py MAX_REGEX_WORK): for each pattern, a string as
long as the pattern may read (MAX_REGEX_WORK over the size of its RE2 program), of a few kinds, searched; the best of a few
calls, in ms a call and ns a byte and instruction. Patterns with counted repetitions exhaust RE2's DFA states on 'a' and
'1' strings: RE2 goes on at the pace of its slower engines, the worst case the bound is made for.

    .venv/bin/python bench/regex.py
"""

from __future__ import annotations

import random
import time

from jsonexporter.spec.functions import MAX_REGEX_WORK, compile_regex

PATTERNS = ["[ab]{0,400}[ab1]{0,400}x", "([ab]{0,400})([ab1]{0,400})x", "(?i)a.{0,40}timeout", "[a-z]+\\d{2,30}[a-z]",
            "(?s)(.{0,100})(.{0,100})x", "\\pL{0,3}\\pN{0,3}x", "^v(\\d+)\\.(\\d+)"]


def main() -> None:
    rng = random.Random(1)
    for source in PATTERNS:
        pattern = compile_regex(source)
        most = MAX_REGEX_WORK // pattern.size
        for kind, text in (("a", "a" * most), ("a1", "".join(rng.choices("a1", k=most))), ("ab1", "".join(rng.choices("ab1", k=most))),
                           ("é", "é" * (most // 2))):
            best = min(_timed(pattern.search, text) for _ in range(3))
            per_unit = best / (len(text.encode()) * pattern.size) * 1e9
            print(f"{source:32} {pattern.size:5} instructions, reads {most:>9,} B  {kind:4} {best * 1e3:7.2f} ms a call  {per_unit:6.2f} ns/(B x instruction)")


def _timed(search: object, text: str) -> float:
    start = time.perf_counter()
    search(text)  # type: ignore[operator]
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
