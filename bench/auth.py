"""Auth interceptor cost per RPC, in process against real PostgreSQL + Redis (embedded unless GANTRY_TEST_*_URL).

    .venv/bin/python bench/auth.py [-n 3000] [-c 1,16] [--loop both|asyncio|uvloop]

Times `AuthInterceptor.authenticate` (what every authenticated RPC pays before its handler) for:
  sr25519 verify only      the signature check alone (no I/O)
  grpc-v1 (v2) full        sr25519 verify + Redis SET NX nonce + metagraph registration/blacklist lookup
  v1 purpose full          sr25519 verify + metagraph lookup (no nonce write)
  policy none              the dict get on the hot path
The full paths run with `c` calls in flight at once (latency per call; calls/s overall), on the standard asyncio
loop and on uvloop (what `gantry serve` uses unless GANTRY_UVLOOP=0).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import uvloop
from bittensor_wallet import Keypair
from redis.asyncio import Redis

from gantry.miner.v1 import miner_pb2
from gantry_server import embedded
from gantry_server.auth_policy import policy_for
from gantry_server.clock import SystemClock
from gantry_server.config import Settings
from gantry_server.domain.auth import signatures as s
from gantry_server.interceptors.auth import AuthInterceptor
from gantry_server.runtime import Runtime
from gantry_server.store import db, migrate
from gantry_server.store.repositories.metagraph import MetagraphRepository

RPC = "/gantry.miner.v1.MinerService/ReleaseJob"
ALICE = Keypair.create_from_uri("//Alice")


class Ctx:
    def __init__(self, md):
        self.md = md

    def invocation_metadata(self):
        return self.md

    def peer(self):
        return "ipv4:127.0.0.1:5555"


def pct(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1e6


async def in_flight(call, mds, concurrency):
    """Run call(md) for every md with `concurrency` calls in flight; (per-call seconds, calls/s)."""
    samples = []

    async def worker(first):
        for md in mds[first::concurrency]:
            t = time.perf_counter(); await call(md); samples.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return samples, len(mds) / (time.perf_counter() - start)


async def measure(loop_name: str, db_url: str, redis_url: str, tmp: Path, n: int, concurrencies: list[int]):
    engine = db.create_engine(db_url)
    await migrate.upgrade(engine)
    async with db.unit_of_work(engine) as conn:
        await MetagraphRepository(conn).upsert([{"hotkey": ALICE.ss58_address, "netuid": 64, "node_id": 1,
                                                 "synced_at": datetime.now(timezone.utc)}])
    rt = Runtime(settings=Settings(database_url=db_url, redis_url=redis_url, data_dir=tmp), engine=engine,
                 redis=Redis.from_url(redis_url), clock=SystemClock())
    auth = AuthInterceptor(lambda: rt)
    policy = policy_for(RPC)
    request = miner_pb2.ReleaseJobRequest(job_id="job-1")
    now = int(time.time())

    def grpc_mds(tag, count):
        out = []
        for i in range(count):
            nonce = f"{now}.{loop_name}{tag}x{i}x{os.getpid()}"
            msg = s.grpc_message(ALICE.ss58_address, RPC, nonce, s.request_sha256(request))
            out.append((("x-chutes-hotkey", ALICE.ss58_address), ("x-chutes-nonce", nonce),
                        ("x-chutes-sig-version", "2"), ("x-chutes-signature", ALICE.sign(msg.encode()).hex())))
        return out

    msg = s.v1_message(ALICE.ss58_address, str(now), "miner")
    v1_md = (("x-chutes-hotkey", ALICE.ss58_address), ("x-chutes-nonce", str(now)),
             ("x-chutes-signature", ALICE.sign(msg.encode()).hex()))
    signed = {c: grpc_mds(f"c{c}", n) for c in concurrencies}

    async def call(md):
        await auth.authenticate(policy, request, Ctx(md), RPC)

    rows = []

    def row(label, concurrency, samples, per_second=None):
        rows.append((f"{label} [{loop_name}]", concurrency, statistics.median(samples) * 1e6, pct(samples, 0.99),
                     per_second))

    samples = []
    sig = dict(v1_md)["x-chutes-signature"]
    for _ in range(n):
        t = time.perf_counter(); s.verify(ALICE.ss58_address, msg, sig); samples.append(time.perf_counter() - t)
    row("sr25519 verify only", 1, samples)
    for md in [v1_md] * 200 + grpc_mds("warm", 200):  # warm the pools and statement caches
        await call(md)
    for c in concurrencies:
        row("grpc-v1 full (verify + Redis nonce + metagraph)", c, *await in_flight(call, signed[c], c))
    for c in concurrencies:
        row("v1 purpose full (verify + metagraph)", c, *await in_flight(call, [v1_md] * n, c))
    samples = []
    for _ in range(n):
        t = time.perf_counter(); policy_for("/gantry.miner.v1.MinerService/GetMetagraph")
        samples.append(time.perf_counter() - t)
    row("policy none (lookup)", 1, samples)
    await rt.redis.aclose()
    await engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=3000, help="calls per row")
    parser.add_argument("-c", default="1,16", help="comma list of calls in flight at once")
    parser.add_argument("--loop", choices=("both", "asyncio", "uvloop"), default="both")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.c.split(",")]
    tmp = Path(tempfile.mkdtemp())
    db_url, redis_url = os.environ.get("GANTRY_TEST_DATABASE_URL"), os.environ.get("GANTRY_TEST_REDIS_URL")
    services = embedded.start(tmp, need_postgres=db_url is None, need_redis=redis_url is None)
    db_url, redis_url = db_url or services.database_url, redis_url or services.redis_url
    runners = {"asyncio": asyncio.run, "uvloop": uvloop.run}
    rows = []
    try:
        for name in ("asyncio", "uvloop") if args.loop == "both" else (args.loop,):
            rows += runners[name](measure(name, db_url, redis_url, tmp, args.n, concurrencies))
    finally:
        services.stop()
    print(f"| path (n={args.n}) [event loop] | in flight | p50 µs | p99 µs | calls/s |")
    print("| --- | --- | --- | --- | --- |")
    for label, concurrency, p50, p99, per_second in rows:
        print(f"| {label} | {concurrency} | {p50:.0f} | {p99:.0f} | {f'{per_second:,.0f}' if per_second else '-'} |")


if __name__ == "__main__":
    main()
