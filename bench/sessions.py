"""Create-to-running with the simulated provider, through the REST face of one `gantry serve`.

    python bench/sessions.py                 # 50 sessions, one after the other, boot delay 0 s
    python bench/sessions.py -n 100 --boot-seconds 1

Per session: the POST /api/v1/sessions latency (what the caller waits for its 201 and key), then the time until
GET shows "running" (the instance accepted the returned key over real SSH), then POST /done. The server runs in
its own process on real PostgreSQL and Redis (embedded unless GANTRY_DATABASE_URL / GANTRY_REDIS_URL are set);
each simulated instance is a real asyncssh server on loopback.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import free_port, wait_serving  # noqa: E402
from _limits import BENCH_ENV  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50, help="sessions to create")
    ap.add_argument("--boot-seconds", type=float, default=0.0, help="simulated instance boot time")
    args = ap.parse_args()

    grpc_port, http_port = free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="gantry-bench-sessions-"))
    env = dict(os.environ, GANTRY_DATA_DIR=str(data_dir), GANTRY_GRPC_ADDR=f"127.0.0.1:{grpc_port}",
               GANTRY_HTTP_ADDR=f"127.0.0.1:{http_port}", GANTRY_LOG_LEVEL="WARNING",
               GANTRY_BROKER_SIMULATED_BOOT_SECONDS=str(args.boot_seconds),
               GANTRY_BROKER_SIMULATED_OFFERS=str(max(24, args.n)), **BENCH_ENV)
    log = open(data_dir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gantry_server.cli", "serve"], env=env, stdout=log, stderr=log)
    try:
        wait_serving(f"127.0.0.1:{grpc_port}", proc)
        base = f"http://127.0.0.1:{http_port}"
        with httpx.Client(base_url=base, timeout=30) as http:
            offers = [o["id"] for o in http.get("/api/v1/inventory").json()["offers"]]
            create_ms, running_ms = [], []
            for i in range(args.n):
                t0 = time.perf_counter()
                r = http.post("/api/v1/sessions", json={"consumer_id": f"bench-{i}", "offer_id": offers[i % len(offers)],
                                                        "workload_type": "batch", "reservation_hours": 1})
                t1 = time.perf_counter()
                assert r.status_code == 201, r.text
                sid = r.json()["session"]["id"]
                while http.get(f"/api/v1/sessions/{sid}").json()["status"] != "running":
                    time.sleep(0.005)
                t2 = time.perf_counter()
                create_ms.append((t1 - t0) * 1e3)
                running_ms.append((t2 - t0) * 1e3)
                assert http.post(f"/api/v1/sessions/{sid}/done").status_code == 200
        print(f"sessions: {args.n}, simulated boot {args.boot_seconds:g} s")
        for name, values in (("create (201 with key)", create_ms), ("create to running", running_ms)):
            print(f"{name:24s} p50 {statistics.median(values):8.1f} ms   p99 {pct(values, 99):8.1f} ms   "
                  f"max {max(values):8.1f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
