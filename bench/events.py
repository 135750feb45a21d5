"""Publish -> delivery latency of miner events over N concurrent WatchEvents streams on one `gantry serve`.

    python bench/events.py                   # 10,000 streams, 3 client processes, 5 events 1 s apart
    python bench/events.py -n 1000 -p 1 --events 3

The server runs as `gantry serve` in its own process (every interceptor on, log level WARNING) on real
PostgreSQL and Redis (embedded, started here, unless GANTRY_DATABASE_URL / GANTRY_REDIS_URL are set). The
streams are opened by `-p` client processes (grpc.aio on uvloop, `--per-channel` streams per HTTP/2 connection,
in waves of `--wave` that each wait for the previous one to be subscribed), all signed as one registered miner.
Once every stream has read its opening heartbeat (its subscription is live), this process publishes public
events the way producers do: `events.publish` in a committed transaction, then outbox -> NOTIFY -> relay ->
Redis Stream -> the server's one reader -> fan-out. One delivery's latency = the client's receive time - the
publisher's time just after COMMIT (one machine, one clock). RSS per stream = the server's RSS growth from idle
to N open streams, / N.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import free_port, wait_serving  # noqa: E402
from _limits import ADMIN_TOKEN, BENCH_ENV  # noqa: E402

BENCH_KEK = "YmVuY2gta2VrLTMyLWJ5dGVzLWxvbmctMDEyMzQ1Njc="  # base64 of 32 bytes; this throw-away run only


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def miner_headers() -> tuple[str, tuple]:
    """//Alice's v1 "miner" signature: one set of headers serves every stream (v1 nonces are not single-use)."""
    from bittensor_wallet import Keypair

    kp = Keypair.create_from_uri("//Alice")
    nonce = str(int(time.time()))
    sig = kp.sign(f"{kp.ss58_address}:{nonce}:miner".encode()).hex()
    return kp.ss58_address, (("x-chutes-hotkey", kp.ss58_address), ("x-chutes-nonce", nonce),
                             ("x-chutes-signature", sig))


# -- client processes --------------------------------------------------------------------------------------------------
def client_main(addr: str, streams: int, events: int, per_channel: int, wave: int, metadata: tuple, pipe) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None
    run = uvloop.run if uvloop is not None else asyncio.run
    run(_client(addr, streams, events, per_channel, wave, metadata, pipe))


async def _client(addr, streams, events, per_channel, wave, metadata, pipe) -> None:
    from gantry.miner.v1 import miner_pb2, miner_pb2_grpc

    channels = [grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range((streams + per_channel - 1) // per_channel)]
    received: list[tuple[str, float]] = []
    failures: list[str] = []
    settled = 0  # streams subscribed (opening heartbeat read) or failed

    async def one(i: int) -> None:
        nonlocal settled
        call = miner_pb2_grpc.MinerServiceStub(channels[i // per_channel]).WatchEvents(
            miner_pb2.WatchEventsRequest(), metadata=metadata)
        opened = False
        try:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    failures.append("stream ended")
                    return
                if msg.heartbeat:
                    if not opened:
                        opened = True
                        settled += 1
                    continue
                received.append((msg.data["job_id"], time.time()))
                events_left[i] -= 1
                if not events_left[i]:
                    return
        except grpc.aio.AioRpcError as exc:
            failures.append(f"{exc.code().name}: {exc.details()}")
        finally:
            if not opened:
                settled += 1
            call.cancel()

    events_left = [events] * streams
    tasks: list[asyncio.Task] = []
    for start in range(0, streams, wave):
        tasks += [asyncio.create_task(one(i)) for i in range(start, min(streams, start + wave))]
        while settled < len(tasks):
            await asyncio.sleep(0.01)
    pipe.send(("ready", len(failures)))
    await asyncio.gather(*tasks)
    pipe.send(("done", received, failures))
    for ch in channels:
        await ch.close()


# -- the run -----------------------------------------------------------------------------------------------------------
async def publish_all(database_url: str, count: int, gap: float) -> dict[str, float]:
    from gantry_server.domain import events
    from gantry_server.store import db

    engine = db.create_engine(database_url, pool_size=2)
    committed: dict[str, float] = {}
    try:
        for k in range(count):
            job_id = f"bench-{k}"
            async with db.unit_of_work(engine) as conn:
                await events.publish(conn, events.job_deleted(instance_id=f"inst-{k}", job_id=job_id),
                                     now=datetime.now(timezone.utc))
            committed[job_id] = time.time()
            await asyncio.sleep(gap)
    finally:
        await engine.dispose()
    return committed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10_000, help="concurrent WatchEvents streams")
    ap.add_argument("-p", type=int, default=3, help="client processes")
    ap.add_argument("--events", type=int, default=5, help="events to publish")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between events")
    ap.add_argument("--per-channel", type=int, default=50, help="streams per client HTTP/2 connection")
    ap.add_argument("--wave", type=int, default=1000, help="streams a client process opens at once")
    args = ap.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="gantry-bench-events-"))
    backing = None
    database_url = os.environ.get("GANTRY_DATABASE_URL")
    redis_url = os.environ.get("GANTRY_REDIS_URL")
    if not (database_url and redis_url):
        from gantry_server import embedded

        backing = embedded.start(data_dir / "backing", need_postgres=not database_url, need_redis=not redis_url)
        database_url = database_url or backing.database_url
        redis_url = redis_url or backing.redis_url

    addr = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, GANTRY_DATA_DIR=str(data_dir), GANTRY_GRPC_ADDR=addr, GANTRY_HTTP_ADDR="127.0.0.1:0",
               GANTRY_LOG_LEVEL="WARNING", GANTRY_DATABASE_URL=database_url, GANTRY_REDIS_URL=redis_url,
               GANTRY_EVENTS_HEARTBEAT_SECONDS="600", **BENCH_ENV)
    env.setdefault("GANTRY_KEK", BENCH_KEK)
    log = open(data_dir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gantry_server.cli", "serve"], env=env, stdout=log, stderr=log)
    clients: list = []
    try:
        wait_serving(addr, proc)
        hotkey, metadata = miner_headers()
        from gantry.admin.v1 import admin_pb2, admin_pb2_grpc

        with grpc.insecure_channel(addr) as ch:
            admin_pb2_grpc.AdminServiceStub(ch).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
                nodes=[admin_pb2.MetagraphNode(hotkey=hotkey, netuid=64, node_id=1, ip_type=4)]),
                metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),), timeout=10)
        rss_idle = rss_kib(proc.pid)

        ctx = mp.get_context("spawn")
        pipes = []
        t_open = time.perf_counter()
        for i in range(args.p):
            count = args.n // args.p + (1 if i < args.n % args.p else 0)
            parent_end, child_end = ctx.Pipe()
            c = ctx.Process(target=client_main, args=(addr, count, args.events, args.per_channel, args.wave,
                                                      metadata, child_end))
            c.start()
            clients.append(c)
            pipes.append(parent_end)
        open_failures = sum(pipe.recv()[1] for pipe in pipes)
        open_seconds = time.perf_counter() - t_open
        time.sleep(1.0)  # let the opening burst settle before reading memory
        rss_open = rss_kib(proc.pid)

        committed = asyncio.run(publish_all(database_url, args.events, args.gap))
        latencies: list[float] = []
        failures: list[str] = []
        for pipe in pipes:
            _, received, failed = pipe.recv()
            failures += failed
            latencies += [(t - committed[job]) * 1000 for job, t in received]
        for c in clients:
            c.join(30)
    finally:
        for c in clients:
            if c.is_alive():
                c.kill()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if backing is not None:
            backing.stop()

    print(f"streams {args.n} ({args.p} client processes, {args.per_channel} per connection), "
          f"subscribed in {open_seconds:.1f} s, failed to open {open_failures}")
    print(f"deliveries {len(latencies)}/{args.n * args.events}, streams failed {len(failures)}"
          + (f" (first: {failures[0]})" if failures else ""))
    if latencies:
        print(f"publish->delivery ms: p50 {pct(latencies, 50):.1f}  p90 {pct(latencies, 90):.1f}  "
              f"p99 {pct(latencies, 99):.1f}  max {max(latencies):.1f}")
    print(f"server RSS: idle {rss_idle / 1024:.0f} MiB, with streams {rss_open / 1024:.0f} MiB, "
          f"per stream {(rss_open - rss_idle) / max(1, args.n):.1f} KiB")


if __name__ == "__main__":
    main()
