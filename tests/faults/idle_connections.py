"""Memory of a `gantry serve` process before, during and after N idle gRPC connections (issue 15, defect 12):

    .venv/bin/python -m tests.faults.idle_connections --port 50051 --pid $(pgrep -of 'gantry serve') -n 10000

Each connection sends the HTTP/2 preface and an empty SETTINGS frame, then stays idle; all are closed together.
Loopback only; the number of open files of this process bounds N.
"""
from __future__ import annotations

import argparse
import socket
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("-n", type=int, default=10_000)
    args = parser.parse_args()
    print(f"before: {rss_mb(args.pid)} MB", flush=True)
    socks = []
    for _ in range(args.n):
        s = socket.create_connection(("127.0.0.1", args.port))
        s.sendall(PREFACE)
        socks.append(s)
    time.sleep(3)
    print(f"{len(socks)} open: {rss_mb(args.pid)} MB", flush=True)
    for s in socks:
        s.close()
    time.sleep(15)
    print(f"closed, +15 s: {rss_mb(args.pid)} MB", flush=True)


if __name__ == "__main__":
    main()
