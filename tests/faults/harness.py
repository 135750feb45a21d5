"""The fault run: two `gantry serve` replicas on one PostgreSQL and one Redis, the fake Vast.ai server (real SSH
behind each instance) behind a fault-injecting proxy, a bounded load, a seeded fault schedule, then invariants
read from the database and from the fake provider's own records (never from Gantry's answers).

    report = await run_faults(FaultPlan(seed=15), root)
    assert report.violations == []

Everything listens on loopback; the load and the schedule are bounded in count and time.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from gantry_server.broker.sessions import billing_end
from gantry_server.store import db
from gantry_server.store.models import broker_costs, broker_sessions

from ..conftest import TEST_KEK
from ..fakes.ssh_hosts import SshHostPool
from ..fakes.vastai import FakeVastAi
from .proxy import FaultProxy
from .services import StoppablePostgres, StoppableRedis, free_port

TRANSITIONAL = ("pending", "stopping")
LIVE = ("pending", "provisioning", "running", "stopping")
DEPLOYMENT = "faults"
ADMIN_TOKEN = "faults-admin-token-0123456789abcdef"


@dataclass
class FaultPlan:
    seed: int = 15
    kills: int = 6  # SIGKILLs of a replica (each restarted at once)
    db_restarts: int = 1  # PostgreSQL stopped for `db_down_seconds`, then started
    redis_restarts: int = 1  # Redis killed (its data lost) and started
    redis_flushes: int = 1  # FLUSHALL while running
    provider_faults: int = 4  # proxy latency / reset / blackhole / lost answers, and 5xx bursts from the fake
    load_seconds: float = 45.0  # the schedule is spread over this window, under load
    concurrency: int = 4  # load workers (consumers)
    offers: int = 48
    db_down_seconds: float = 3.0
    fault_seconds: float = 3.0  # how long a proxy fault lasts
    settle_seconds: float = 90.0  # most time given to reach quiet after the load (reconciler window included)


@dataclass
class Report:
    seed: int
    faults: list[tuple[float, str]] = field(default_factory=list)  # (seconds into the run, what)
    load: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    db_recovery_seconds: list[float] = field(default_factory=list)  # PostgreSQL started -> both replicas /ready
    takeover_seconds: list[float] = field(default_factory=list)  # SIGKILL -> its in-flight sessions moved on
    billing_overrun_seconds: list[float] = field(default_factory=list)  # billed past the `done` that ended it
    slow_takeovers: list[str] = field(default_factory=list)  # a killed replica's sessions still waiting at 120 s
    sessions: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # "ended_<status>_<stop reason>" -> sessions
    instances_created: int = 0
    duration_seconds: float = 0.0

    def summary(self) -> str:
        def stats(xs):
            if not xs:
                return "n/a"
            xs = sorted(xs)
            return f"n={len(xs)} median={xs[len(xs) // 2]:.2f}s max={xs[-1]:.2f}s"
        kinds: dict[str, int] = {}
        for _, what in self.faults:
            kinds[what.split(" ")[0]] = kinds.get(what.split(" ")[0], 0) + 1
        return "\n".join([
            f"seed={self.seed} duration={self.duration_seconds:.0f}s sessions={self.sessions} "
            f"provider instances={self.instances_created}",
            f"faults: {dict(sorted(kinds.items()))}",
            f"load: {dict(sorted(self.load.items()))}",
            f"sessions by outcome: {dict(sorted(self.outcomes.items()))}",
            f"PostgreSQL back -> both replicas ready: {stats(self.db_recovery_seconds)}",
            f"replica SIGKILL -> its in-flight sessions carried on: {stats(self.takeover_seconds)}; "
            f"not within 120 s: {len(self.slow_takeovers)}",
            f"billed past `done` (done -> instance destroy confirmed): {stats(self.billing_overrun_seconds)}",
            f"violations: {len(self.violations)}",
            *[f"  - {v}" for v in self.violations[:50]],
        ])


class Replica:
    def __init__(self, name: str, root: Path, env: dict[str, str]) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.grpc_port = free_port(), free_port()
        self.env = dict(env, GANTRY_DATA_DIR=str(self.dir), GANTRY_GRPC_ADDR=f"127.0.0.1:{self.grpc_port}",
                        GANTRY_HTTP_ADDR=f"127.0.0.1:{self.http_port}")
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.restarting = False
        self.failed_starts = 0  # starts that exited before ready (the database restarting under them)

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float = 120.0, attempts: int = 5) -> None:
        """Start and wait for /ready; a start that fails (its database restarting under it) is tried again, as
        a supervisor (systemd, Kubernetes) would, and counted in `failed_starts`."""
        self.restarting = True
        try:
            await self._start(timeout, attempts)
        finally:
            self.restarting = False

    async def _start(self, timeout: float, attempts: int) -> None:
        for attempt in range(attempts):
            log = open(self.dir / "server.log", "ab")
            self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gantry_server.cli", "serve",
                                                             env=self.env, stdout=log, stderr=log)
            self.starts += 1
            try:
                await self.ready(timeout)
                return
            except RuntimeError:
                if self.up or attempt == attempts - 1:
                    raise
                self.failed_starts += 1
                await asyncio.sleep(1.0)

    async def ready(self, timeout: float) -> float:
        """Seconds until /ready answered 200."""
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.base, timeout=2) as http:
            while time.monotonic() - started < timeout:
                if self.proc is not None and self.proc.returncode is not None:
                    raise RuntimeError(f"{self.name} exited {self.proc.returncode}: "
                                       f"{(self.dir / 'server.log').read_text()[-3000:]}")
                try:
                    if (await http.get("/ready")).status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s")

    def kill(self) -> None:
        if self.up:
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.up:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class NonceProbe:
    """v2 (grpc-v1) signature nonces under faults: each signed call is sent to one replica, then replayed to the
    other; the replay must never be accepted. A Redis restart or FLUSHALL between the two loses the record by
    design (docs/reliability.md): such pairs are counted apart, not judged."""

    RPC = "/gantry.miner.v1.MinerService/ReleaseJob"

    def __init__(self, replicas: list[Replica], report: "Report") -> None:
        from bittensor_wallet import Keypair  # noqa: PLC0415

        self.key = Keypair.create_from_uri("//Alice")
        self.replicas = replicas
        self.report = report
        self.redis_epoch = 0  # bumped by every Redis restart or flush
        self.stats: dict[str, int] = {}
        self._stop = asyncio.Event()

    async def register(self) -> None:
        import grpc  # noqa: PLC0415

        from gantry.admin.v1 import admin_pb2, admin_pb2_grpc  # noqa: PLC0415

        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.replicas[0].grpc_port}") as ch:
            await admin_pb2_grpc.AdminServiceStub(ch).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
                nodes=[admin_pb2.MetagraphNode(hotkey=self.key.ss58_address, netuid=64, node_id=1,
                                               ip="203.0.113.7", ip_type=4)]),
                metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),), timeout=10)

    async def _send(self, replica: Replica, nonce: str) -> str:
        import grpc  # noqa: PLC0415

        from gantry.miner.v1 import miner_pb2, miner_pb2_grpc  # noqa: PLC0415
        from gantry_server.domain.auth import signatures as sig  # noqa: PLC0415

        request = miner_pb2.ReleaseJobRequest(job_id="job-faults")
        message = sig.grpc_message(self.key.ss58_address, self.RPC, nonce, sig.request_sha256(request))
        md = (("x-chutes-hotkey", self.key.ss58_address), ("x-chutes-nonce", nonce),
              ("x-chutes-sig-version", "2"), ("x-chutes-signature", self.key.sign(message.encode()).hex()))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as ch:
                await miner_pb2_grpc.MinerServiceStub(ch).ReleaseJob(request, metadata=md, timeout=5)
        except grpc.aio.AioRpcError as err:
            return "accepted" if err.code() == grpc.StatusCode.NOT_FOUND else err.code().name
        return "accepted"

    async def run(self) -> None:
        while not self._stop.is_set():
            first, second = self.replicas if random.random() < 0.5 else self.replicas[::-1]
            nonce = f"{int(time.time())}.{uuid.uuid4().hex[:12]}"
            epoch = self.redis_epoch
            a = await self._send(first, nonce)
            b = await self._send(second, nonce)
            if a == "accepted" and b == "accepted":
                if self.redis_epoch != epoch:
                    self.stats["nonce_replayed_across_redis_loss"] = self.stats.get(
                        "nonce_replayed_across_redis_loss", 0) + 1
                else:
                    self.report.violations.append(f"nonce {nonce} accepted twice (replicas {first.name}, "
                                                  f"{second.name})")
            self.stats[f"nonce_{a}"] = self.stats.get(f"nonce_{a}", 0) + 1
            self.stats[f"nonce_replay_{b}"] = self.stats.get(f"nonce_replay_{b}", 0) + 1
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()


class Load:
    """Consumers creating, verifying (waiting for running), extending and finishing sessions through either
    replica, retrying with the same idempotency key when a replica or a dependency is down."""

    def __init__(self, replicas: list[Replica], rng: random.Random, concurrency: int) -> None:
        self.replicas = replicas
        self.rng = rng
        self.concurrency = concurrency
        self.stats: dict[str, int] = {}
        self.done_at: dict[str, float] = {}  # session id -> wall time of the accepted done
        self.session_ids: set[str] = set()
        self._stop = asyncio.Event()
        self._clients = {r.name: httpx.AsyncClient(base_url=r.base, timeout=20) for r in replicas}

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    async def call(self, method: str, path: str, *, tries: int = 40, **kw) -> httpx.Response | None:
        """Through any live replica; transport errors and 502/503/504 are retried (the same request)."""
        for _ in range(tries):
            if self._stop.is_set() and tries > 1 and method == "POST" and path == "/api/v1/sessions":
                return None
            live = [r for r in self.replicas if r.up] or self.replicas
            replica = self.rng.choice(live)
            try:
                r = await self._clients[replica.name].request(method, path, **kw)
            except httpx.TransportError:
                self.count("retried_transport")
                await asyncio.sleep(0.25)
                continue
            if r.status_code in (502, 503, 504) and "stale" not in r.text and "provider_unavailable" not in r.text:
                self.count(f"retried_{r.status_code}")
                await asyncio.sleep(0.25)
                continue
            return r
        if tries > 2:
            self.count("gave_up")
        return None

    async def worker(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            inv = await self.call("GET", "/api/v1/inventory", tries=5)
            offers = inv.json().get("offers", []) if inv is not None and inv.status_code == 200 else []
            if not offers:
                await asyncio.sleep(0.5)
                continue
            offer = self.rng.choice(offers)["id"]
            key = uuid.uuid4().hex
            r = await self.call("POST", "/api/v1/sessions", headers={"Idempotency-Key": key},
                                json={"consumer_id": f"load-{n}", "offer_id": offer, "workload_type": "batch",
                                      "reservation_hours": 1})
            if r is None or r.status_code != 201:
                self.count(f"create_{r.status_code if r is not None else 'none'}")
                await asyncio.sleep(1.0)  # a consumer backs off (the provider's breaker may be open)
                continue
            self.count("created")
            sid = r.json()["session"]["id"]
            self.session_ids.add(sid)
            status = await self._await_running(sid)
            if status == "running":
                self.count("verified")
                ext = await self.call("POST", f"/api/v1/sessions/{sid}/extend", json={"additional_hours": 1})
                if ext is not None and ext.status_code == 200:
                    self.count("extended")
            ended = await self.call("POST", f"/api/v1/sessions/{sid}/done")
            if ended is not None and ended.status_code == 200:
                self.done_at.setdefault(sid, time.time())
                self.count("done")

    async def _await_running(self, sid: str, limit: float = 40.0) -> str:
        started = time.monotonic()
        status = "?"
        while time.monotonic() - started < limit and not self._stop.is_set():
            r = await self.call("GET", f"/api/v1/sessions/{sid}", tries=3)
            if r is not None and r.status_code == 200:
                status = r.json().get("status", "?")
                if status not in ("pending", "provisioning"):
                    return status
            await asyncio.sleep(0.2)
        return status

    async def run(self) -> None:
        await asyncio.gather(*(self.worker(n) for n in range(self.concurrency)))

    def stop(self) -> None:
        self._stop.set()

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()


def schedule(plan: FaultPlan, rng: random.Random) -> list[tuple[float, str]]:
    """(offset seconds, fault) sorted; the seed fixes kinds, order and moments."""
    events: list[str] = []
    events += [f"kill {rng.choice(('a', 'b'))}" for _ in range(plan.kills)]
    events += ["db_restart"] * plan.db_restarts
    events += ["redis_restart"] * plan.redis_restarts
    events += ["redis_flush"] * plan.redis_flushes
    kinds = ("latency", "reset", "blackhole", "lose_response", "http_5xx")
    events += [f"provider {kinds[i % len(kinds)]}" for i in range(plan.provider_faults)]
    # Faults fall in the first 70% of the load window: the load goes on for the rest, so what a fault left (an
    # open provider circuit breaker, a destroy waiting on its backoff) is worked off under load, not only after.
    start, end = 3.0, max(plan.load_seconds * 0.7, 4.0)
    return sorted((round(rng.uniform(start, end), 2), e) for e in events)


async def run_faults(plan: FaultPlan, root: Path, *, log=print) -> Report:
    rng = random.Random(plan.seed)
    report = Report(seed=plan.seed)
    log(f"fault run: seed={plan.seed} (replay with --seed {plan.seed})")
    started_wall = time.monotonic()
    pg, redis = StoppablePostgres(root), StoppableRedis(root)
    fake = FakeVastAi(api_key="vast-test-key")
    (root / "hosts").mkdir(exist_ok=True)
    pool = SshHostPool(root / "hosts").attach(fake)
    fake.ssh_proxy_host = "127.0.0.1"
    destroyed_hook = fake.on_instance_destroyed

    async def release_offer(inst) -> None:  # the machine can be rented again once its instance is gone
        bundle = fake.offers.get(int(inst.offer_id)) if inst.offer_id.isdigit() else None
        if bundle is not None:
            bundle.update(rentable=True, rented=False)
        await destroyed_hook(inst)

    fake.on_instance_destroyed = release_offer
    for i in range(plan.offers):
        fake.add_offer(gpu_name=("RTX 4090", "A100", "L4")[i % 3], dph_total=round(0.3 + i / 100, 4))
    await fake.start()
    upstream = httpx.URL(fake.base_url)
    proxy = FaultProxy(upstream.host, upstream.port)
    await proxy.start()
    vast_url = f"http://127.0.0.1:{proxy.port}{upstream.path}"
    env = dict(os.environ, GANTRY_DATABASE_URL=pg.url, GANTRY_REDIS_URL=redis.url, GANTRY_KEK=TEST_KEK,
               GANTRY_ADMIN_TOKEN=ADMIN_TOKEN, GANTRY_LOG_LEVEL="WARNING",
               GANTRY_WORKERS="1", GANTRY_SHUTDOWN_GRACE_SECONDS="2", GANTRY_DEPLOYMENT_ID=DEPLOYMENT,
               GANTRY_BROKER_PROVIDERS="vastai", GANTRY_VASTAI_API_KEY="vast-test-key",
               GANTRY_VASTAI_BASE_URL=vast_url, GANTRY_VASTAI_RATE_PER_SECOND="1000", GANTRY_VASTAI_BURST="1000",
               GANTRY_BROKER_LIFECYCLE_INTERVAL_SECONDS="1", GANTRY_BROKER_RECONCILE_INTERVAL_SECONDS="2",
               GANTRY_BROKER_GHOST_GRACE_MINUTES="0", GANTRY_BROKER_INVENTORY_TTL_SECONDS="2",
               GANTRY_BROKER_SHUTDOWN_POLICY="keep", GANTRY_BROKER_AUTH="open",
               GANTRY_RATE_LIMITS="session_create=off,session_watch=off,inventory=off,public=off")
    replicas = [Replica("a", root, env), Replica("b", root, env)]
    engine = create_async_engine(db.async_url(pg.url), poolclass=NullPool)  # survives PostgreSQL restarts
    load = Load(replicas, random.Random(plan.seed + 1), plan.concurrency)
    try:
        await asyncio.gather(*(r.start() for r in replicas))  # one migrates, the other waits on its lock
        nonces = NonceProbe(replicas, report)
        await nonces.register()
        t0 = time.monotonic()
        load_task = asyncio.create_task(load.run())
        nonce_task = asyncio.create_task(nonces.run())
        restarts: set[asyncio.Task] = set()
        for offset, fault in schedule(plan, rng):
            await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
            report.faults.append((round(time.monotonic() - t0, 2), fault))
            try:
                if fault.startswith("redis"):
                    nonces.redis_epoch += 1
                await _inject(fault, plan, replicas, pg, redis, fake, proxy, engine, report, restarts, log)
                if fault.startswith("redis"):
                    nonces.redis_epoch += 1
            except Exception as exc:  # a fault that could not be injected is reported, the run goes on
                report.violations.append(f"harness: {fault} failed: {exc!r}"[:300])
        await asyncio.sleep(max(0.0, t0 + plan.load_seconds - time.monotonic()))
        load.stop()
        nonces.stop()
        proxy.set_mode("pass")
        await asyncio.gather(*restarts, return_exceptions=True)
        for r in replicas:
            if not r.up:
                await r.start()
        await asyncio.wait_for(load_task, 120)
        await asyncio.wait_for(nonce_task, 30)
        await _settle(load, engine, fake, plan, log)
        await _check(report, engine, fake, load)
        report.load = dict(load.stats) | nonces.stats
        report.load["replica_starts"] = sum(r.starts for r in replicas)
        report.load["replica_failed_starts"] = sum(r.failed_starts for r in replicas)
        report.instances_created = len(fake.destroyed) + len(fake.instances)
    finally:
        load.stop()
        await load.aclose()
        for r in replicas:
            await r.stop()
        await engine.dispose()
        await proxy.stop()
        await fake.stop()
        await pool.aclose()
        redis.close()
        pg.close()
    report.duration_seconds = time.monotonic() - started_wall
    return report


async def _inject(fault: str, plan: FaultPlan, replicas, pg, redis, fake, proxy, engine, report, restarts,
                  log) -> None:
    kind, _, arg = fault.partition(" ")
    if kind == "kill":
        replica = next(r for r in replicas if r.name == arg)
        # A kill lands while the other replica serves, so "carried on by the other replica" is what is measured
        # (the previous kill's restart may still be under way: wait for it, at most a minute).
        waited = time.monotonic()
        while not all(r.up and not r.restarting for r in replicas) and time.monotonic() - waited < 60:
            await asyncio.sleep(0.1)
        if not replica.up or replica.restarting:
            report.faults[-1] = (report.faults[-1][0], f"{fault} skipped (a replica did not come back)")
            return
        pid = replica.proc.pid
        held = await _leases_of(engine, pid)
        replica.kill()
        await replica.proc.wait()
        killed_at = time.monotonic()
        task = asyncio.create_task(_after_kill(replica, pid, held, killed_at, engine, report))
        restarts.add(task)
        task.add_done_callback(restarts.discard)
    elif kind == "db_restart":
        pg.stop()
        await asyncio.sleep(plan.db_down_seconds)
        pg.start()
        back = time.monotonic()
        waits = await asyncio.gather(*(r.ready(120) for r in replicas if r.up and not r.restarting),
                                     return_exceptions=True)
        if any(isinstance(w, Exception) for w in waits):
            report.violations.append(f"after PostgreSQL restart a replica did not become ready: {waits}")
        else:
            report.db_recovery_seconds.append(time.monotonic() - back)
    elif kind == "redis_restart":
        redis.stop()
        await asyncio.sleep(1.0)
        redis.start()
    elif kind == "redis_flush":
        from redis.asyncio import Redis  # noqa: PLC0415

        client = Redis.from_url(redis.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
    elif kind == "provider":
        if arg == "http_5xx":
            fake.fail_next(6, status=502)
            return
        if arg == "latency":
            proxy.latency = 2.0
        proxy.set_mode(arg)
        await asyncio.sleep(plan.fault_seconds)
        proxy.set_mode("pass")


async def _leases_of(engine, pid: int) -> dict[str, str]:
    """Sessions in flight whose lease the process `pid` holds: id -> status."""
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(broker_sessions.c.id, broker_sessions.c.status).where(
                broker_sessions.c.lease_owner.like(f"gantry-{pid}-%"),
                broker_sessions.c.status.in_(LIVE)))).all()
        return {r.id: r.status for r in rows}
    except Exception:  # PostgreSQL may be down at that moment
        return {}


async def _after_kill(replica: Replica, pid: int, held: dict[str, str], killed_at: float, engine,
                      report: Report) -> None:
    """Restart the killed replica, and time how long until every session it was working on (its lease) has
    been moved on (another status) or taken over (another lease) by a live process."""
    restart = asyncio.create_task(replica.start())
    try:
        pending = dict(held)
        prefix = f"gantry-{pid}-"
        deadline = killed_at + 120
        while pending and time.monotonic() < deadline:
            try:
                async with engine.connect() as conn:
                    rows = (await conn.execute(select(
                        broker_sessions.c.id, broker_sessions.c.status, broker_sessions.c.lease_owner).where(
                        broker_sessions.c.id.in_(list(pending))))).all()
            except Exception:  # PostgreSQL restarting: look again
                rows = []
            for r in rows:
                if r.status != pending[r.id] or not (r.lease_owner or "").startswith(prefix):
                    pending.pop(r.id, None)
            if pending:
                await asyncio.sleep(0.1)
        if held and not pending:
            report.takeover_seconds.append(time.monotonic() - killed_at)
        elif held:  # a timing figure, not an invariant: reported apart (a loaded machine can be slow)
            report.slow_takeovers.append(f"{sorted(pending)} not carried on within 120 s of the kill")
    finally:
        await restart


async def _settle(load: Load, engine, fake: FakeVastAi, plan: FaultPlan, log) -> None:
    """End every session still live (as its consumer would), then wait for the loops and the reconciler to bring
    everything to rest: no live session, no instance of ours at the provider."""
    deadline = time.monotonic() + plan.settle_seconds
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            live = [r.id for r in (await conn.execute(select(broker_sessions.c.id).where(
                broker_sessions.c.status.in_(LIVE)))).all()]
        ours = [i for i in fake.instances.values() if i.label.startswith(f"gantry-{DEPLOYMENT}-")]
        if not live and not ours:
            return
        for sid in live:
            await load.call("DELETE", f"/api/v1/sessions/{sid}", tries=2)
        await asyncio.sleep(1.0)
    log("settle: the deadline passed with sessions or instances still live")


async def _check(report: Report, engine, fake: FakeVastAi, load: Load) -> None:
    v = report.violations
    async with engine.connect() as conn:
        sessions = (await conn.execute(select(broker_sessions))).all()
        costs = (await conn.execute(select(broker_costs))).all()
    report.sessions = len(sessions)
    for s in sessions:
        key = f"ended_{s.status}_{s.stop_reason or '-'}"
        report.outcomes[key] = report.outcomes.get(key, 0) + 1
    by_session: dict[str, list] = {}
    for c in costs:
        by_session.setdefault(c.session_id, []).append(c)
    ours = {i.id: i for i in fake.instances.values() if i.label.startswith(f"gantry-{DEPLOYMENT}-")}
    for inst in ours.values():
        v.append(f"orphan: provider instance {inst.id} ({inst.label}) still exists with no live session")
    if len(fake.destroyed) != len(set(fake.destroyed)):
        v.append("an instance was destroyed twice at the provider")
    for s in sessions:
        if s.status in LIVE:
            v.append(f"session {s.id} still {s.status} after the settle window (deadline passed)")
            continue
        rows = by_session.get(s.id, [])
        if s.provider_instance_id and s.provider_instance_id in fake.instances:
            v.append(f"ghost: session {s.id} is {s.status} but its instance {s.provider_instance_id} still exists")
        if s.provider_instance_id and s.provider_instance_id not in fake.destroyed:
            if str(s.provider_instance_id) in {str(i) for i in fake.instances}:
                v.append(f"session {s.id}: instance {s.provider_instance_id} never destroyed")
        if s.billing_started_at is None:
            if rows:
                v.append(f"session {s.id}: cost recorded without any instance")
            continue
        if s.stopped_at is None:
            v.append(f"session {s.id}: terminal without stopped_at")
            continue
        if len({r.hour for r in rows}) != len(rows):
            v.append(f"session {s.id}: an hour billed twice")
        end = billing_end(s, s.stopped_at)
        expected = max((end - s.billing_started_at).total_seconds(), 0)
        billed = sum(r.seconds for r in rows)
        if expected >= 1 and not rows:
            v.append(f"session {s.id}: no cost record for {expected:.0f}s billed")
        elif abs(billed - expected) > 1.5:
            v.append(f"session {s.id}: billed {billed}s, expected {expected:.0f}s")
        amount = sum((Decimal(r.amount) for r in rows), Decimal(0))
        if rows and abs(amount - Decimal(str(s.price_per_hour)) * Decimal(billed) / 3600) > Decimal("0.01"):
            v.append(f"session {s.id}: amount {amount} does not match {billed}s at {s.price_per_hour}/h")
        if s.id in load.done_at and s.stop_reason == "done":
            report.billing_overrun_seconds.append(max(0.0, s.stopped_at.timestamp() - load.done_at[s.id]))
