"""Gantry's read paths against a minimal Go net/http server serving the same bytes, in one run, alternating.

    python bench/compare.py                       # every endpoint, 3 alternating rounds of 10 s at c64
    python bench/compare.py --rounds 2 --duration 5 --only inventory_24

One `gantry serve` (embedded PostgreSQL + Redis, simulated provider with 24 offers, every interceptor on, JSON
request log at INFO to a file, rate limits lifted as in every bench) is seeded with 43 sessions (40 finished,
so they have recorded costs, 3 still running, so costs accrue live). Each endpoint's answer is then captured
from Gantry, and bench/refserver (Go net/http, built into .build/refserver) serves those exact bytes: the
floor of this machine for such a request. For each endpoint and round, both servers get `wrk -t2 -c64` and a
single-connection `wrk -t1 -c1`, Gantry first in odd rounds and the floor first in even ones; medians over the
rounds are printed as a Markdown table with the ratios. CPU per request is the server process's (and its
children's) over the c64 run; the embedded PostgreSQL and Redis are daemons of their own and not counted. Needs `wrk` (Debian package: `apt-get install wrk`)
and Go.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
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

ROOT = Path(__file__).resolve().parent.parent
REFSERVER = ROOT / ".build" / "refserver"
SESSIONS = 43
RUNNING = 3

ENDPOINTS = {  # name -> (request URI, what)
    "health": ("/health", "GET /health"),
    "inventory_4": ("/api/v1/inventory?limit=4", "GET /api/v1/inventory?limit=4 (4 offers)"),
    "inventory_24": ("/api/v1/inventory", "GET /api/v1/inventory (all offers)"),
    "inventory_filtered": ("/api/v1/inventory?gpu_type=RTX4090&max_price=3",
                           "GET /api/v1/inventory?gpu_type=RTX4090&max_price=3"),
    "costs": ("/api/v1/costs", "GET /api/v1/costs"),
    "sessions": ("/api/v1/sessions", f"GET /api/v1/sessions ({SESSIONS} sessions)"),
}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def build_refserver() -> Path:
    REFSERVER.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["go", "build", "-o", str(REFSERVER), "."], cwd=ROOT / "bench" / "refserver", check=True)
    return REFSERVER


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, *, threads: int, connections: int, duration: int) -> dict:
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency", url],
                         check=True, capture_output=True, text=True).stdout
    pct = {int(p): _ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.M)}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": pct.get(50),
            "p99": pct.get(99), "requests": requests,
            "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)}


def _tree(pid: int) -> list[int]:
    """pid and every descendant (`gantry serve` worker processes, when there are several)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def measure(base: str, uri: str, pid: int, duration: int, single_duration: int) -> dict:
    cpu0 = cpu_seconds(pid)
    load = wrk(base + uri, threads=2, connections=64, duration=duration)
    cpu = cpu_seconds(pid) - cpu0
    single = wrk(base + uri, threads=1, connections=1, duration=single_duration)
    return {"rps": load["rps"], "p50": load["p50"], "p99": load["p99"], "errors": load["errors"] + single["errors"],
            "cpu_us": cpu / max(load["requests"], 1) * 1e6, "single_p50": single["p50"]}


def seed(http: httpx.Client) -> None:
    offers = [o["id"] for o in http.get("/api/v1/inventory").json()["offers"]]
    for i in range(SESSIONS):
        consumer = f"bench-live-{i}" if i < RUNNING else f"bench-{i % 4}"  # one active session per (consumer, offer)
        r = http.post("/api/v1/sessions", json={"consumer_id": consumer, "offer_id": offers[i % len(offers)],
                                                "workload_type": "batch", "reservation_hours": 1})
        assert r.status_code == 201, r.text
        sid = r.json()["session"]["id"]
        deadline = time.monotonic() + 60
        while http.get(f"/api/v1/sessions/{sid}").json()["status"] != "running":
            if time.monotonic() > deadline:
                sys.exit(f"session {sid} did not reach running")
            time.sleep(0.01)
        if i >= RUNNING:
            assert http.post(f"/api/v1/sessions/{sid}/done").status_code == 200
    deadline = time.monotonic() + 120
    while True:  # finished sessions are terminated (and their costs recorded) by the lifecycle
        listed = http.get("/api/v1/sessions").json()
        live = [s for s in listed["sessions"] if s["status"] in ("stopping", "provisioning")]
        if not live or time.monotonic() > deadline:
            break
        time.sleep(0.2)


def capture(http: httpx.Client, out: Path) -> list[dict]:
    entries = []
    for name, (uri, _) in ENDPOINTS.items():
        r = http.get(uri)
        (out / f"{name}.body").write_bytes(r.content)
        entries.append({"uri": uri, "status": r.status_code, "content_type": r.headers.get("content-type", ""),
                        "etag": r.headers.get("etag", ""), "body_file": f"{name}.body"})
    (out / "manifest.json").write_text(json.dumps(entries))
    return entries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of each c64 run")
    ap.add_argument("--single-duration", type=int, default=3, help="seconds of each single-connection run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    ap.add_argument("--only", action="append", choices=sorted(ENDPOINTS))
    ap.add_argument("--workers", type=int, help="GANTRY_WORKERS of the server (default: 1, as BENCH_ENV)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/compare.py needs wrk: apt-get install wrk")
    refserver = build_refserver()

    data_dir = Path(tempfile.mkdtemp(prefix="gantry-bench-compare-"))
    grpc_addr, http_port, ref_port = f"127.0.0.1:{free_port()}", free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("GANTRY_DATABASE", "GANTRY_REDIS")) or not k.startswith("GANTRY_")}
    env.update(BENCH_ENV)  # one worker process (GANTRY_WORKERS=1) unless --workers says otherwise
    env.update(GANTRY_GRPC_ADDR=grpc_addr, GANTRY_HTTP_ADDR=f"127.0.0.1:{http_port}", GANTRY_DATA_DIR=str(data_dir),
               GANTRY_BROKER_SIMULATED_OFFERS="24", GANTRY_BROKER_SIMULATED_BOOT_SECONDS="0")
    if args.workers:
        env["GANTRY_WORKERS"] = str(args.workers)
    log = open(data_dir / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "gantry_server.cli", "serve"], env=env, stdout=log, stderr=log)
    ref = None
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        wait_serving(grpc_addr, server)
        gantry_base = f"http://127.0.0.1:{http_port}"
        with httpx.Client(base_url=gantry_base, timeout=30) as http:
            seed(http)
            entries = capture(http, data_dir)
        ref = subprocess.Popen([str(refserver), "-addr", f"127.0.0.1:{ref_port}",
                                "-manifest", str(data_dir / "manifest.json")], stderr=log)
        ref_base = f"http://127.0.0.1:{ref_port}"
        for _ in range(100):
            try:
                if httpx.get(ref_base + "/health").status_code:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        targets = {"gantry": (gantry_base, server.pid), "floor": (ref_base, ref.pid)}
        for name, (uri, _) in ENDPOINTS.items():
            if args.only and name not in args.only:
                continue
            entry = next(e for e in entries if e["uri"] == uri)
            print(f"{name}: {uri} -> {entry['status']}, {(data_dir / entry['body_file']).stat().st_size} bytes",
                  file=sys.stderr)
            wrk(gantry_base + uri, threads=2, connections=64, duration=2)  # warm-up
            results[name] = {"gantry": [], "floor": []}
            for rnd in range(args.rounds):
                order = ("gantry", "floor") if rnd % 2 == 0 else ("floor", "gantry")
                for target in order:
                    base, pid = targets[target]
                    results[name][target].append(measure(base, uri, pid, args.duration, args.single_duration))
    finally:
        if ref is not None:
            ref.terminate()
            ref.wait(timeout=10)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"\nmachine: {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}; "
          f"wrk -t2 -c64 -d{args.duration}s and wrk -t1 -c1 -d{args.single_duration}s on loopback, "
          f"{args.rounds} alternating rounds, medians\n")
    print("| endpoint | floor req/s | Gantry req/s | Gantry ÷ floor | Gantry p50 / p99 ms (c64) | "
          "c1 p50 ms floor → Gantry (×) | CPU µs/req floor → Gantry | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        g, f = r["gantry"], r["floor"]
        print(f"| {ENDPOINTS[name][1]} | {med(f, 'rps'):,.0f} | {med(g, 'rps'):,.0f} | "
              f"{med(g, 'rps') / med(f, 'rps'):.2f} | {med(g, 'p50'):.2f} / {med(g, 'p99'):.2f} | "
              f"{med(f, 'single_p50'):.3f} → {med(g, 'single_p50'):.3f} "
              f"({med(g, 'single_p50') / med(f, 'single_p50'):.1f}×) | "
              f"{med(f, 'cpu_us'):.0f} → {med(g, 'cpu_us'):.0f} | {sum(x['errors'] for x in g + f)} |")


if __name__ == "__main__":
    main()
