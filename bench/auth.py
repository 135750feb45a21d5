"""Auth interceptor cost per RPC, in process against real PostgreSQL + Redis (embedded unless GANTRY_TEST_*_URL).

    .venv/bin/python bench/auth.py [-n 3000]

Times `AuthInterceptor.authenticate` (what every authenticated RPC pays before its handler) for:
  sr25519 verify only      the signature check alone (no I/O)
  grpc-v1 (v2) full        sr25519 verify + Redis SET NX nonce + metagraph registration/blacklist lookup
  v1 purpose full          sr25519 verify + metagraph lookup (no nonce write)
  policy none              the dict get on the hot path
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

from bittensor_wallet import Keypair
from redis.asyncio import Redis

from gantry.miner.v1 import miner_pb2
from gantry_server import embedded
from gantry_server.clock import SystemClock
from gantry_server.config import Settings
from gantry_server.domain.auth import signatures as s
from gantry_server.interceptors.auth import AuthInterceptor
from gantry_server.runtime import Runtime
from gantry_server.store import db, migrate
from gantry_server.store.repositories.metagraph import MetagraphRepository

RPC = "/gantry.miner.v1.MinerService/ReleaseJob"


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


async def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    db_url, redis_url = os.environ.get("GANTRY_TEST_DATABASE_URL"), os.environ.get("GANTRY_TEST_REDIS_URL")
    services = embedded.start(tmp, need_postgres=db_url is None, need_redis=redis_url is None)
    db_url, redis_url = db_url or services.database_url, redis_url or services.redis_url
    engine = db.create_engine(db_url)
    await migrate.upgrade(engine)
    alice = Keypair.create_from_uri("//Alice")
    async with db.unit_of_work(engine) as conn:
        await MetagraphRepository(conn).upsert([{"hotkey": alice.ss58_address, "netuid": 64, "node_id": 1,
                                                 "synced_at": datetime.now(timezone.utc)}])
    rt = Runtime(settings=Settings(database_url=db_url, redis_url=redis_url, data_dir=tmp), engine=engine,
                 redis=Redis.from_url(redis_url), clock=SystemClock())
    auth = AuthInterceptor(lambda: rt)
    from gantry_server.auth_policy import policy_for
    policy = policy_for(RPC)
    request = miner_pb2.ReleaseJobRequest(job_id="job-1")
    now = int(time.time())

    def grpc_md(i):
        nonce = f"{now}.{i}x{os.getpid()}"
        msg = s.grpc_message(alice.ss58_address, RPC, nonce, s.request_sha256(request))
        return (("x-chutes-hotkey", alice.ss58_address), ("x-chutes-nonce", nonce), ("x-chutes-sig-version", "2"),
                ("x-chutes-signature", alice.sign(msg.encode()).hex()))

    msg = s.v1_message(alice.ss58_address, str(now), "miner")
    v1_md = (("x-chutes-hotkey", alice.ss58_address), ("x-chutes-nonce", str(now)),
             ("x-chutes-signature", alice.sign(msg.encode()).hex()))
    signed = [grpc_md(i) for i in range(n)]
    rows = []

    def timed(label, samples):
        rows.append((label, statistics.median(samples) * 1e6, pct(samples, 0.99)))

    samples = []
    sig = dict(v1_md)["x-chutes-signature"]
    for _ in range(n):
        t = time.perf_counter(); s.verify(alice.ss58_address, msg, sig); samples.append(time.perf_counter() - t)
    timed("sr25519 verify only", samples)
    for _ in range(200):  # warm the pool and statement caches
        await auth.authenticate(policy, request, Ctx(v1_md), RPC)
    samples = []
    for md in signed:
        ctx = Ctx(md)
        t = time.perf_counter(); await auth.authenticate(policy, request, ctx, RPC); samples.append(time.perf_counter() - t)
    timed("grpc-v1 full (verify + Redis nonce + metagraph)", samples)
    samples = []
    for _ in range(n):
        ctx = Ctx(v1_md)
        t = time.perf_counter(); await auth.authenticate(policy, request, ctx, RPC); samples.append(time.perf_counter() - t)
    timed("v1 purpose full (verify + metagraph)", samples)
    samples = []
    for _ in range(n):
        t = time.perf_counter(); policy_for("/gantry.miner.v1.MinerService/GetMetagraph"); samples.append(time.perf_counter() - t)
    timed("policy none (lookup)", samples)

    print(f"| path (n={n}) | p50 µs | p99 µs |\n| --- | --- | --- |")
    for label, p50, p99 in rows:
        print(f"| {label} | {p50:.0f} | {p99:.0f} |")
    await rt.redis.aclose()
    await engine.dispose()
    services.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=3000)
    asyncio.run(main(parser.parse_args().n))
