"""ASGI servers on this workload: the gateway's uvicorn setup (httptools, in the running uvloop, gantry_gateway
HttpServer) against granian's embedded server (Rust HTTP, the app on the same asyncio loop), one small JSON
answer, alternating runs.

    pip install 'granian==2.8.7'          # only for this comparison; not a Gantry dependency
    python bench/http_servers.py --rounds 3 --duration 5

Prints req/s at wrk -t2 -c64, p50/p99, CPU µs per request of the server process, and single-connection p50.
Hypercorn is not in the table: it parses HTTP in Python (h11), which costs more than httptools' C parser.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import cpu_seconds, wrk  # noqa: E402
from run import free_port  # noqa: E402

BODY = (b'{"status":"ok","timestamp":"2026-12-03T16:47:51Z","services":{"lifecycle":"running","inventory":"ok",'
        b'"ready":"true"}}')


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode()),
                            (b"x-request-id", b"0123456789abcdef")]})
    await send({"type": "http.response.body", "body": BODY})


async def serve(kind: str, port: int) -> None:
    import asyncio

    if kind == "uvicorn":
        from gantry_gateway.server import HttpServer

        server = HttpServer(app, f"127.0.0.1:{port}")
        await server.start()
        await asyncio.Event().wait()
    else:
        from granian.constants import Interfaces
        from granian.server.embed import Server

        await Server(app, address="127.0.0.1", port=port, interface=Interfaces.ASGI, log_enabled=False).serve()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve[0], int(args.serve[1])))
        return
    procs = {}
    try:
        for kind in ("uvicorn", "granian"):
            port = free_port()
            procs[kind] = (subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)]), port)
        for proc, port in procs.values():  # wait until each one answers
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        sys.exit(f"server on port {port} did not start (granian installed?)")
                    time.sleep(0.1)
        for rnd in range(args.rounds):
            for kind in ("uvicorn", "granian") if rnd % 2 == 0 else ("granian", "uvicorn"):
                proc, port = procs[kind]
                url = f"http://127.0.0.1:{port}/"
                cpu0 = cpu_seconds(proc.pid)
                load = wrk(url, threads=2, connections=64, duration=args.duration)
                cpu = cpu_seconds(proc.pid) - cpu0
                single = wrk(url, threads=1, connections=1, duration=2)
                print(f"{kind:8s} round {rnd + 1}: {load['rps']:8,.0f} req/s  p50 {load['p50']:.2f} ms  "
                      f"p99 {load['p99']:.2f} ms  CPU {cpu / load['requests'] * 1e6:.0f} µs/req  "
                      f"c1 p50 {single['p50']:.3f} ms", flush=True)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
