"""`python -m jsonexporter` for bench/run's instruction counts (BENCH_INSTRUCTIONS): the same process, with the
fast path's chunks sized as at full speed.

Extraction cuts a rule's elements into chunks by the time the last chunk took (jsonexporter/extract.py,
`_next_chunk_size`). Under valgrind, some 50 times slower, that clock would make the chunks some 50 times smaller
than a real process makes them, and count a per-chunk cost the real process does not pay: bench/features.yml's
2.1 MB probes counted 4.4 times bench/spec.yml's. Here the time a chunk and a general-path step aim at is
multiplied by BENCH_SLOWER (default 50), so that the chunks are those of the process at full speed.

    python bench/counted.py serve --config.file ... # BENCH_SLOWER=50 by default
"""

from __future__ import annotations

import os
import sys

import jsonexporter.extract as extract
from jsonexporter.cli import main

slower = float(os.environ.get("BENCH_SLOWER", "50"))
extract._CHUNK_SECONDS *= slower
extract._STEP_SECONDS *= slower

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
