"""GET /api/v1/inventory over 10,000 cached offers with a typical filter (aim: p99 < 20 ms).

    python bench/inventory.py                        # 10,000 offers, 10 s per measurement
    python bench/inventory.py --offers 50000 --duration 5 --concurrency 16

One `gantry serve` in its own process (every interceptor on, embedded PostgreSQL + Redis unless
GANTRY_DATABASE_URL / GANTRY_REDIS_URL are set) with the `simulated` provider serving `--offers` synthetic
offers (GANTRY_BROKER_SIMULATED_OFFERS). After one warm-up call fills the cache, `wrk` (else an httpx loop)
drives the query below at concurrency 1 (what one caller waits) and at `--concurrency` (throughput), plus
the same query without a GPU filter (the whole list scanned) and a single-offer GET.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway import run_httpx, run_wrk  # noqa: E402
from run import free_port, wait_serving  # noqa: E402
from _limits import BENCH_ENV  # noqa: E402

QUERIES = {
    "typical": "/api/v1/inventory?gpu_type=RTX%204090&max_price=2&limit=50",
    "no gpu filter": "/api/v1/inventory?max_price=2&min_reliability=0.95&limit=50",
    "get offer": "/api/v1/inventory/simulated-1001",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--offers", type=int, default=10_000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    http_driver = run_wrk if shutil.which("wrk") else run_httpx

    data_dir = Path(tempfile.mkdtemp(prefix="gantry-bench-inv-"))
    grpc_addr, http_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("GANTRY_DATABASE", "GANTRY_REDIS")) or not k.startswith("GANTRY_")}
    env.update(GANTRY_GRPC_ADDR=grpc_addr, GANTRY_HTTP_ADDR=http_addr, GANTRY_DATA_DIR=str(data_dir),
               **BENCH_ENV, GANTRY_BROKER_PROVIDERS="simulated",
               GANTRY_BROKER_SIMULATED_OFFERS=str(args.offers), GANTRY_BROKER_INVENTORY_TTL_SECONDS="3600")
    log = open(data_dir / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "gantry_server.cli", "serve"], env=env, stderr=log)
    results, totals = {}, {}
    try:
        wait_serving(grpc_addr, server)
        import httpx

        started = time.perf_counter()
        first = httpx.get(f"http://{http_addr}{QUERIES['typical']}", timeout=60)
        cold_ms = (time.perf_counter() - started) * 1000
        first.raise_for_status()
        for name, path in QUERIES.items():
            body = httpx.get(f"http://{http_addr}{path}", timeout=60).json()
            totals[name] = body.get("total", 1)
        listed = httpx.get(f"http://{http_addr}/api/v1/inventory?limit=1", timeout=60).json()["total"]
        for name, path in QUERIES.items():
            url = f"http://{http_addr}{path}"
            http_driver(url, 4, 1)  # warm-up
            results[(name, 1)] = http_driver(url, 1, args.duration)
            results[(name, args.concurrency)] = http_driver(url, args.concurrency, args.duration)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)

    driver = "wrk" if http_driver is run_wrk else "httpx"
    print(f"\nmachine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}; "
          f"{listed:,} offers cached; first (cold) call {cold_ms:.0f} ms; {args.duration}s per cell; "
          f"HTTP load: {driver}\n")
    print("| query | matches | concurrency | req/s | p50 ms | p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (name, conc), r in results.items():
        print(f"| {name} | {totals[name]:,} | {conc} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
              f"| {r['errors']} |")
    for name, path in QUERIES.items():
        print(f"{name}: GET {path}")


if __name__ == "__main__":
    main()
