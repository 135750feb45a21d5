"""Memory of N concurrent StreamLogs relays on one `gantry serve`, and what a reader that stops reading costs.

    python bench/logs.py                     # 200 gRPC streams
    python bench/logs.py --face rest         # 200 REST streams (the gateway in the same process)
    python bench/logs.py --stall 10          # then every client stops reading for 10 s while the logs flood

The server runs as `gantry serve` in its own process (every interceptor on, log level WARNING) on real PostgreSQL
and Redis (embedded, started here, unless GANTRY_DATABASE_URL / GANTRY_REDIS_URL are set). The instance's log
endpoint is tests/integration/logserver.py in its own process (its memory is not the server's): one line every
`--interval` seconds per connection, each line `--line-bytes` long. One user (owner of a private chute) opens every
stream with its API key, all to one instance row. RSS per stream = the server's RSS growth from idle to N open
streams that have each read `--lines` lines, / N. With `--stall S` every client then stops reading for S seconds
while the log server writes as fast as the sockets take it: the server's RSS growth over the stall shows whether a
slow reader makes the relay buffer (it should not: the relay reads upstream only as fast as the client reads).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _limits import ADMIN_TOKEN, BENCH_ENV  # noqa: E402
from events import BENCH_KEK, rss_kib  # noqa: E402
from run import free_port, wait_serving  # noqa: E402


# -- the log endpoint ----------------------------------------------------------------------------------------------
def log_server_main(interval: float, line_bytes: int, pipe) -> None:
    asyncio.run(_log_server(interval, line_bytes, pipe))


async def _log_server(interval: float, line_bytes: int, pipe) -> None:
    from tests.integration import logserver

    pad = "x" * max(0, line_bytes - 60)
    plain = logserver.live_line
    logserver.live_line = lambda i: f"{plain(i)} {pad}"  # noqa: E731 - this process's lines only
    async with logserver.LogServer(interval=interval) as server:
        pipe.send(server.port)
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until told to stop


# -- rows ----------------------------------------------------------------------------------------------------------
async def put_rows(database_url: str, user_id: str, log_port: int) -> None:
    from sqlalchemy import insert

    from gantry_server.store import db
    from gantry_server.store.models import chutes, images, instances

    now = datetime.now(timezone.utc)
    engine = db.create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(images).values(image_id="bench-img", user_id=user_id, name="bench", tag="1",
                                                     created_at=now, updated_at=now))
            await conn.execute(insert(chutes).values(chute_id="bench-chute", user_id=user_id, name="bench",
                                                     image_id="bench-img", version="1", public=False,
                                                     created_at=now, updated_at=now))
            await conn.execute(insert(instances).values(
                instance_id="bench-inst", chute_id="bench-chute", version="1", host="127.0.0.1", port=1,
                port_mappings=[{"proto": "tcp", "internal_port": 8001, "external_port": log_port}], miner_uid=1,
                miner_hotkey="5bench", miner_coldkey="cold", active=True, verified=True, created_at=now,
                symmetric_key_enc=b"envelope"))
    finally:
        await engine.dispose()


# -- clients -------------------------------------------------------------------------------------------------------
async def run_clients(face: str, grpc_addr: str, http_addr: str, secret: str, n: int, lines: int,
                      measure, stall: float, bdp: bool = True) -> tuple[int, list[str]]:
    """Open n streams, read `lines` lines on each, call `measure()` (all open), stall, then close them all."""
    import httpx

    from gantry.instances.v1 import instances_pb2, instances_pb2_grpc

    read_enough = asyncio.Event()
    release = asyncio.Event()
    done = 0
    failures: list[str] = []

    async def finished_reading() -> None:
        nonlocal done
        done += 1
        if done == n:
            read_enough.set()

    channel = grpc.aio.insecure_channel(grpc_addr, options=[] if bdp else [("grpc.http2.bdp_probe", 0)])
    http = httpx.AsyncClient(base_url=f"http://{http_addr}", timeout=60,
                             limits=httpx.Limits(max_connections=None))

    async def one_grpc() -> None:
        call = instances_pb2_grpc.InstanceServiceStub(channel).StreamLogs(
            instances_pb2.StreamLogsRequest(instance_id="bench-inst", backfill=0),
            metadata=(("authorization", f"Bearer {secret}"),))
        try:
            for _ in range(lines):
                if await call.read() is grpc.aio.EOF:
                    raise RuntimeError("stream ended")
            await finished_reading()
            await release.wait()
        except Exception as exc:  # noqa: BLE001
            failures.append(repr(exc))
            await finished_reading()
        finally:
            call.cancel()

    async def one_rest() -> None:
        try:
            async with http.stream("GET", "/instances/bench-inst/logs?backfill=0",
                                   headers={"Authorization": f"Bearer {secret}"}) as r:
                body = b""
                async for chunk in r.aiter_raw():
                    body += chunk
                    if body.count(b"\n\n") >= lines:
                        break
                await finished_reading()
                await release.wait()
        except Exception as exc:  # noqa: BLE001
            failures.append(repr(exc))
            await finished_reading()

    tasks = [asyncio.create_task(one_grpc() if face == "grpc" else one_rest()) for _ in range(n)]
    await read_enough.wait()
    await asyncio.sleep(1.0)
    result = measure()
    if stall:
        await asyncio.sleep(stall)  # nobody reads; the log server keeps writing
    release.set()
    await asyncio.gather(*tasks)
    await channel.close()
    await http.aclose()
    return result, failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="concurrent StreamLogs streams")
    ap.add_argument("--face", choices=("grpc", "rest"), default="grpc")
    ap.add_argument("--lines", type=int, default=20, help="lines each stream reads before memory is measured")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between log lines per connection")
    ap.add_argument("--line-bytes", type=int, default=200, help="length of one log line")
    ap.add_argument("--stall", type=float, default=0.0, help="then stop reading for this many seconds")
    ap.add_argument("--no-bdp", action="store_true",
                    help="gRPC clients keep the 64 KiB HTTP/2 window (no BDP probing that grows it)")
    args = ap.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="gantry-bench-logs-"))
    backing = None
    database_url = os.environ.get("GANTRY_DATABASE_URL")
    redis_url = os.environ.get("GANTRY_REDIS_URL")
    if not (database_url and redis_url):
        from gantry_server import embedded

        backing = embedded.start(data_dir / "backing", need_postgres=not database_url, need_redis=not redis_url)
        database_url = database_url or backing.database_url
        redis_url = redis_url or backing.redis_url

    grpc_addr, http_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = dict(os.environ, GANTRY_DATA_DIR=str(data_dir), GANTRY_GRPC_ADDR=grpc_addr, GANTRY_HTTP_ADDR=http_addr,
               GANTRY_LOG_LEVEL="WARNING", GANTRY_DATABASE_URL=database_url, GANTRY_REDIS_URL=redis_url,
               GANTRY_LOGS_IDLE_TIMEOUT_SECONDS=str(max(60.0, args.stall * 3)), **BENCH_ENV)
    env.setdefault("GANTRY_KEK", BENCH_KEK)
    log = open(data_dir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gantry_server.cli", "serve"], env=env, stdout=log, stderr=log)
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    logs_proc = ctx.Process(target=log_server_main, args=(args.interval, args.line_bytes, child_end))
    logs_proc.start()
    try:
        log_port = parent_end.recv()
        wait_serving(grpc_addr, proc)
        from gantry.admin.v1 import admin_pb2, admin_pb2_grpc

        admin_md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        with grpc.insecure_channel(grpc_addr) as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            user = admin.CreateUser(admin_pb2.CreateUserRequest(username="bench"), metadata=admin_md, timeout=10)
            secret = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user.user_id), metadata=admin_md,
                                        timeout=10).secret_key
        asyncio.run(put_rows(database_url, user.user_id, log_port))
        time.sleep(1.0)
        rss_idle = rss_kib(proc.pid)
        t_open = time.perf_counter()
        stall_samples: list[int] = []

        def measure() -> int:
            stall_samples.append(rss_kib(proc.pid))
            return stall_samples[0]

        async def with_stall_samples():
            async def sample():
                while True:
                    await asyncio.sleep(1.0)
                    if stall_samples:
                        stall_samples.append(rss_kib(proc.pid))
            sampler = asyncio.create_task(sample())
            try:
                return await run_clients(args.face, grpc_addr, http_addr, secret, args.n, args.lines, measure,
                                         args.stall, not args.no_bdp)
            finally:
                sampler.cancel()

        rss_open, failures = asyncio.run(with_stall_samples())
        seconds = time.perf_counter() - t_open
    finally:
        parent_end.send("stop")
        logs_proc.join(10)
        if logs_proc.is_alive():
            logs_proc.kill()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if backing is not None:
            backing.stop()

    print(f"{args.face} streams {args.n}, {args.lines} lines of {args.line_bytes} B read on each, "
          f"failed {len(failures)}" + (f" (first: {failures[0]})" if failures else "") + f", {seconds:.1f} s")
    print(f"server RSS: idle {rss_idle / 1024:.0f} MiB, with streams {rss_open / 1024:.0f} MiB, "
          f"per stream {(rss_open - rss_idle) / max(1, args.n):.1f} KiB")
    if args.stall:
        print(f"stall {args.stall:.0f} s: server RSS over the stall (MiB) "
              + " ".join(f"{s / 1024:.0f}" for s in stall_samples)
              + f"; growth {(max(stall_samples) - stall_samples[0]) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
