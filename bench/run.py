"""Load scenarios for Gantry's hot paths; prints a Markdown table for docs/performance.md.

    python bench/run.py                      # every scenario, 10 s each at concurrency 64
    python bench/run.py --duration 5 --only unary_trivial

The server runs in its own process (all interceptors on, JSON request logging to a file) on real
PostgreSQL and Redis (embedded, or GANTRY_DATABASE_URL / GANTRY_REDIS_URL); the load generator is ghz
(installed into .build/bin from the Go module proxy on first use), beside it on the same 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from _limits import BENCH_ENV

ROOT = Path(__file__).resolve().parent.parent
GHZ = ROOT / ".build" / "bin" / "ghz"
GHZ_PKG = "github.com/bojand/ghz/cmd/ghz@v0.121.0"
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"

SCENARIOS = {
    "unary_trivial": ("gantry.ops.v1.OpsService/GetReady", "{}", "trivial unary RPC (no I/O)"),
    "unary_db_read": ("gantry.miner.v1.MinerService/GetMetagraph", "{}", "one-row PostgreSQL read"),
}


def ensure_ghz() -> Path:
    if not GHZ.exists():
        GHZ.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "install", GHZ_PKG], check=True, env=dict(os.environ, GOBIN=str(GHZ.parent)))
    return GHZ


def descriptor_set() -> Path:
    """The buf-built image of proto/ (a FileDescriptorSet); built by scripts/gen.py."""
    image = ROOT / ".build" / "image.binpb"
    if not image.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "gen.py")], check=True, stdout=subprocess.DEVNULL)
    return image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(addr: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                sys.exit("server exited during start-up")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    sys.exit("server did not become SERVING")


def seed_one_node(addr: str, token: str) -> None:
    from gantry.admin.v1 import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(addr) as ch:
        admin_pb2_grpc.AdminServiceStub(ch).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
            nodes=[admin_pb2.MetagraphNode(hotkey=ALICE, netuid=64, node_id=1, ip_type=4)]),
            metadata=(("authorization", f"Bearer {token}"),), timeout=10)


def run_ghz(addr: str, call: str, data: str, concurrency: int, duration: int) -> dict:
    out = subprocess.run(
        [str(ensure_ghz()), "--insecure", "--protoset", str(descriptor_set()), "--call", call, "-d", data, "-c", str(concurrency),
         "--connections", "4", "-z", f"{duration}s", "--format", "json", addr],
        check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    lat = {d["percentage"]: d["latency"] / 1e6 for d in report.get("latencyDistribution") or []}
    errors = sum(v for k, v in (report.get("statusCodeDistribution") or {}).items() if k != "OK")
    return {"rps": report["rps"], "p50_ms": lat.get(50), "p99_ms": lat.get(99), "count": report["count"],
            "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--only", choices=sorted(SCENARIOS))
    args = ap.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="gantry-bench-"))
    addr = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k.startswith(("GANTRY_DATABASE", "GANTRY_REDIS")) or not k.startswith("GANTRY_")}
    env.update(GANTRY_GRPC_ADDR=addr, GANTRY_HTTP_ADDR=f"127.0.0.1:{free_port()}", GANTRY_DATA_DIR=str(data_dir),
               **BENCH_ENV)
    log = open(data_dir / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "gantry_server.cli", "serve"], env=env, stderr=log)
    rows = []
    try:
        wait_serving(addr, server)
        seed_one_node(addr, BENCH_ENV["GANTRY_ADMIN_TOKEN"])
        for name, (call, data, what) in SCENARIOS.items():
            if args.only and name != args.only:
                continue
            run_ghz(addr, call, data, args.concurrency, 2)  # warm-up
            result = run_ghz(addr, call, data, args.concurrency, args.duration)
            rows.append((name, what, result))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}; "
          f"ghz -c {args.concurrency} --connections 4 -z {args.duration}s on loopback\n")
    print("| scenario | what | QPS | p50 ms | p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, what, r in rows:
        print(f"| {name} | {what} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |")


if __name__ == "__main__":
    main()
