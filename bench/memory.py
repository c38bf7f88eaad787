"""Peak memory and answer time of one exporter process probing big answers (bench/README.md).

Serves the answers from an aiohttp upstream in this process, starts a fresh `jsonexporter serve`
per case (so that its peak RSS, VmHWM, is that case's), probes it (once, or eight probes at once)
and prints one markdown row per case. Everything listens on 127.0.0.1 only.

    python bench/memory.py                  # the jsonexporter that this Python imports
    PYTHONPATH=/some/checkout python bench/memory.py

The cases: 15 MB of 540k series (`{"id": "0000001", "v": 1}` items, one label and one value),
once and eight at once; 16 MiB of `[{},{},…]` (a rule whose value every element lacks) with a 3 s
scrape timeout; 4 MiB of `[[]],…`, the densest JSON to parse, and 4 MiB of the series items, once
and eight at once. The modules' timeout is 60 s, so that the deadline cuts only the 3 s case.
Each is probed through the module `defaults` (the shipped limits) and `raised` (max_response_bytes
16 MiB, no series limit where the exporter has one).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, web

MIB = 1 << 20
RULES = """
    timeout: 60s
    metrics:
      - name: big_item
        help: An item.
        each: '@'
        labels: {id: id}
        value: v
"""


def series_items(size: int) -> bytes:
    """Items of about 27 bytes, as many as `size` bytes hold: one series each."""
    body = b"[" + b",".join(b'{"id":"%07d","v":%d}' % (i, i) for i in range(size // 26)) + b"]"
    return body[:body.rfind(b"},{", 0, size - 2) + 1] + b"]"


def repeated(unit: bytes, size: int) -> bytes:
    return b"[" + b",".join([unit] * ((size - 2) // (len(unit) + 1))) + b"]"


def spec_text(series_limit_key: bool) -> str:
    raised = "    endpoints: {default: {max_response_bytes: 16777216}}\n" + ("    series_limit: 0\n" if series_limit_key else "")
    return "modules:\n  defaults:" + RULES + "  raised:" + RULES + raised


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def probe(session: ClientSession, url: str, scrape_timeout: float | None) -> str:
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": str(scrape_timeout)} if scrape_timeout else {}
    async with session.get(url, headers=headers) as response:
        text = await response.text()
    success = next((line for line in text.splitlines() if line.startswith("probe_success ")), "no probe_success")
    reasons = [line.split()[0] for line in text.splitlines() if line.startswith("probe_failed_due_to_") and line.endswith(" 1")]
    return " ".join([success, *reasons])


async def run_case(work: Path, upstream: str, module: str, path: str, parallel: int, scrape_timeout: float | None) -> tuple[float, float, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jsonexporter", "serve", "--config.file", str(work / "spec.yml"), "--web.listen-address", f"127.0.0.1:{port}",
         "--log.level", "error"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with ClientSession(timeout=ClientTimeout(total=300)) as session:
            for _ in range(200):
                try:
                    async with session.get(base + "/-/healthy") as response:
                        if response.status == 200:
                            break
                except OSError:
                    await asyncio.sleep(0.05)  # polling a starting process
            url = f"{base}/probe?module={module}&target={upstream}{path}"
            start = time.monotonic()
            answers = await asyncio.gather(*(probe(session, url, scrape_timeout) for _ in range(parallel)))
            elapsed = time.monotonic() - start
            return peak_mb(proc.pid), elapsed, "; ".join(sorted(set(answers)))
    finally:
        proc.terminate()
        proc.wait(30)


async def main() -> None:
    import jsonexporter
    from jsonexporter.spec import load_text

    answers = {
        "/series-15mb": series_items(15_000_000),
        "/empty-objects-16mib": repeated(b"{}", 16 * MIB),
        "/nested-lists-4mib": repeated(b"[[]]", 4 * MIB),
        "/series-4mib": series_items(4 * MIB),
    }
    app = web.Application()
    for path, body in answers.items():
        app.router.add_get(path, lambda request, body=body: web.Response(body=body, content_type="application/json"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text = spec_text(series_limit_key=True)
        if load_text(text, "spec.yml")[0] is None:  # an exporter without the key
            text = spec_text(series_limit_key=False)
        (work / "spec.yml").write_text(text)
        print(f"jsonexporter from {os.path.dirname(jsonexporter.__file__)}; load average {os.getloadavg()[0]:.2f}")
        print("\n| answer | module | probes at once | peak RSS MB | seconds to answer | answer |\n| --- | --- | ---: | ---: | ---: | --- |")
        cases = [("/series-15mb", 1, None), ("/series-15mb", 8, None), ("/empty-objects-16mib", 1, 3.0), ("/nested-lists-4mib", 1, None),
                 ("/nested-lists-4mib", 8, None), ("/series-4mib", 1, None), ("/series-4mib", 8, None)]
        for path, parallel, scrape_timeout in cases:
            for module in ("defaults", "raised"):
                peak, elapsed, answer = await run_case(work, upstream, module, path, parallel, scrape_timeout)
                items = answers[path].count(b'"id"')
                shown = f"{path[1:]} ({len(answers[path]) / 1e6:.1f} MB" + (f", {items:,} series)" if items else ")")
                shown += f", scrape timeout {scrape_timeout:g} s" if scrape_timeout else ""
                print(f"| {shown} | {module} | {parallel} | {peak:.0f} | {elapsed:.1f} | {answer} |", flush=True)
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
