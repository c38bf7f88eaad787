"""Write the benchmark's deterministic JSON payloads: items-N.json for each N given.

Each answer is {"generated_at", "count", "items": [...]} with N items of about 280 bytes:
200 items make about 56 KB, 7,500 about 2.1 MB. Same seed, same bytes, on every machine.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

REGIONS = ["eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-south-1", "ap-northeast-1"]
STATUSES = ["ok", "ok", "ok", "degraded", "down"]
VERSIONS = ["1.4.2", "1.4.3", "1.5.0", "2.0.0"]
TAGS = ["web", "api", "batch", "core", "canary", "edge", "public", "db"]


def payload(count: int) -> dict[str, object]:
    rng = random.Random(count)
    items = []
    for i in range(count):
        items.append({
            "id": f"svc-{i:06d}",
            "name": f"svc-{i:05d}",
            "region": rng.choice(REGIONS),
            "status": rng.choice(STATUSES),
            "healthy": rng.random() < 0.9,
            "requests_total": rng.randrange(10**9),
            "errors_total": rng.randrange(10**6),
            "latency_ms": round(rng.uniform(0.5, 900.0), 3),
            "cpu_ratio": round(rng.random(), 4),
            "memory_bytes": rng.randrange(10**10),
            "version": rng.choice(VERSIONS),
            "tags": rng.sample(TAGS, 3),
        })
    return {"generated_at": "2024-05-01T10:00:00Z", "count": count, "items": items}


def main(directory: str, counts: list[int]) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for count in counts:
        (out / f"items-{count}.json").write_text(json.dumps(payload(count)))


if __name__ == "__main__":
    main(sys.argv[1], [int(n) for n in sys.argv[2:]])
