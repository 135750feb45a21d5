"""Load scenarios for Gantry's hot paths; prints a Markdown table for docs/performance.md.

    python bench/run.py                      # every scenario, 10 s each at concurrency 64
    python bench/run.py --duration 5 --only unary_trivial
    python bench/run.py --workers 2 --only unary_trivial    # `gantry serve --workers 2`

With --workers (any count, 1 included, so runs compare like with like) the provider is Vast.ai at an address
that refuses connections: the simulated provider runs in one worker only, and these RPCs never reach a
provider. Every run reports the event-loop stalls the server's workers logged (lag above 50 ms,
gantry_server/looplag.py).

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


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU of `gantry serve` and its workers (not PostgreSQL/Redis): robust to a busy machine,
    unlike QPS."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            if proc.pid == pid or "gantry_server.cli" in " ".join(proc.cmdline()):
                t = proc.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def loop_stalls(log: Path) -> list[tuple[float, float]]:
    """(lag_ms, cpu_ms) of every `event loop stalled` line the server's processes logged (JSON log format):
    cpu_ms well under lag_ms + 100 means the process was waiting for a core, not working (looplag.py)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"event loop stalled"' in line:
            try:
                record = json.loads(line)
                out.append((float(record["lag_ms"]), float(record["cpu_ms"])))
            except (ValueError, KeyError):
                pass
    return out


def describe_stalls(stalls: list[tuple[float, float]]) -> str:
    if not stalls:
        return "event-loop stalls above 50 ms while serving: 0"
    own = max(min(lag, cpu) for lag, cpu in stalls)
    worst = max(lag for lag, _ in stalls)
    return (f"event-loop stalls above 50 ms while serving: {len(stalls)}, worst {worst:.0f} ms; "
            f"the longest the loop's thread was itself busy within one: {own:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--only", choices=sorted(SCENARIOS))
    ap.add_argument("--workers", type=int, help="gantry serve --workers N (default: one process)")
    args = ap.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="gantry-bench-"))
    addr = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k.startswith(("GANTRY_DATABASE", "GANTRY_REDIS")) or not k.startswith("GANTRY_")}
    env.update(GANTRY_GRPC_ADDR=addr, GANTRY_HTTP_ADDR=f"127.0.0.1:{free_port()}", GANTRY_DATA_DIR=str(data_dir),
               **BENCH_ENV)
    if args.workers is not None:
        env.update(GANTRY_WORKERS=str(args.workers), GANTRY_BROKER_PROVIDERS="vastai",
                   GANTRY_VASTAI_API_KEY="bench", GANTRY_VASTAI_BASE_URL="http://127.0.0.1:9/api/v0")
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
            cpu = server_cpu_seconds(server.pid)
            result = run_ghz(addr, call, data, args.concurrency, args.duration)
            result["cpu_us"] = (server_cpu_seconds(server.pid) - cpu) / max(1, result["count"]) * 1e6
            rows.append((name, what, result))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
        stalls = loop_stalls(data_dir / "server.log")
        shutil.rmtree(data_dir, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}; "
          f"ghz -c {args.concurrency} --connections 4 -z {args.duration}s on loopback; "
          f"gantry serve --workers {args.workers or 1}")
    print(describe_stalls(stalls) + "\n")
    print("| scenario | what | QPS | p50 ms | p99 ms | server CPU µs/call | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, what, r in rows:
        print(f"| {name} | {what} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_us']:,.0f} "
              f"| {r['errors']} |")


if __name__ == "__main__":
    main()
