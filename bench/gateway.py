"""The same RPC through the REST gateway and directly over gRPC, in one run, against one `gantry serve`.

    python bench/gateway.py                          # GetReady, 10 s per measurement
    python bench/gateway.py --rpc metagraph --duration 5

Two measurements per face: latency at concurrency 1 (what one caller waits; p50 added by the gateway) and
throughput at concurrency 64 (req/s; gateway / direct ratio). HTTP load: `wrk` (Debian package) when
installed, else a Python httpx driver; gRPC load: ghz (bench/run.py installs it). The server runs in its
own process with all interceptors on, on real PostgreSQL and Redis (embedded unless GANTRY_DATABASE_URL /
GANTRY_REDIS_URL are set).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import descriptor_set, ensure_ghz, free_port, seed_one_node, wait_serving  # noqa: E402
from _limits import BENCH_ENV  # noqa: E402

RPCS = {
    "ready": ("gantry.ops.v1.OpsService/GetReady", "/ready"),
    "metagraph": ("gantry.miner.v1.MinerService/GetMetagraph", "/miner/metagraph"),
}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_ghz(addr: str, call: str, concurrency: int, duration: int) -> dict:
    import json

    out = subprocess.run(
        [str(ensure_ghz()), "--insecure", "--protoset", str(descriptor_set()), "--call", call, "-d", "{}",
         "-c", str(concurrency), "--connections", str(min(4, concurrency)), "-z", f"{duration}s",
         "--format", "json", addr], check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    lat = {d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    errors = sum(v for k, v in (report.get("statusCodeDistribution") or {}).items() if k != "OK")
    return {"rps": report["rps"], "p50_ms": lat.get(50), "p99_ms": lat.get(99), "errors": errors}


def run_wrk(url: str, concurrency: int, duration: int) -> dict:
    threads = max(1, min(2, concurrency))
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{duration}s", "--latency", url],
                         check=True, capture_output=True, text=True).stdout
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": float(rps.group(1)), "p50_ms": _ms(p50.group(1)), "p99_ms": _ms(p99.group(1)),
            "errors": int(non2xx.group(1)) if non2xx else 0}


def run_httpx(url: str, concurrency: int, duration: int) -> dict:
    import httpx

    async def go():
        lat: list[float] = []
        errors = 0
        stop = time.perf_counter() + duration
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits) as client:
            async def worker():
                nonlocal errors
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    r = await client.get(url)
                    lat.append((time.perf_counter() - t) * 1000)
                    errors += r.status_code != 200
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        lat.sort()
        return {"rps": len(lat) / elapsed, "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)],
                "errors": errors}

    return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rpc", choices=sorted(RPCS), default="ready")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    call, path = RPCS[args.rpc]
    http_driver = run_wrk if shutil.which("wrk") else run_httpx

    data_dir = Path(tempfile.mkdtemp(prefix="gantry-bench-gw-"))
    grpc_addr, http_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("GANTRY_DATABASE", "GANTRY_REDIS")) or not k.startswith("GANTRY_")}
    env.update(GANTRY_GRPC_ADDR=grpc_addr, GANTRY_HTTP_ADDR=http_addr, GANTRY_DATA_DIR=str(data_dir),
               **BENCH_ENV)
    log = open(data_dir / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "gantry_server.cli", "serve"], env=env, stderr=log)
    results = {}
    try:
        wait_serving(grpc_addr, server)
        seed_one_node(grpc_addr, BENCH_ENV["GANTRY_ADMIN_TOKEN"])
        url = f"http://{http_addr}{path}"
        http_driver(url, 8, 2)  # warm-up
        run_ghz(grpc_addr, call, 8, 2)
        for label, conc in (("latency", 1), ("throughput", args.concurrency)):
            results[("grpc", label)] = run_ghz(grpc_addr, call, conc, args.duration)
            results[("rest", label)] = http_driver(url, conc, args.duration)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)

    driver = "wrk" if http_driver is run_wrk else "httpx"
    print(f"\nmachine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}; "
          f"{call} vs GET {path}; {args.duration}s per cell; HTTP load: {driver}; gRPC load: ghz\n")
    print("| face | concurrency | req/s | p50 ms | p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (face, label), r in results.items():
        conc = 1 if label == "latency" else args.concurrency
        print(f"| {face} | {conc} | {r['rps']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['errors']} |")
    added = results[("rest", "latency")]["p50_ms"] - results[("grpc", "latency")]["p50_ms"]
    ratio = results[("rest", "throughput")]["rps"] / results[("grpc", "throughput")]["rps"]
    print(f"\nadded p50 latency (c=1): {added:+.3f} ms; throughput ratio REST/gRPC (c={args.concurrency}): "
          f"{ratio:.0%}")


if __name__ == "__main__":
    main()
