"""Two `gantry serve` processes on one database and one provider account: no orphan, no double destroy, every
cost once.

The provider is the fake Vast.ai server (its real wire format) running in this test's event loop; each of its
instances is a real SSH server, so both replicas verify sessions with the consumer's key for real. Sessions are
created and finished through both replicas' REST faces at once, while both replicas' lifecycle loops and
reconcilers run (every second and every two seconds) and race for the same rows.
"""
from __future__ import annotations

import asyncio
import os
import socket
import sys
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import func, select

from gantry_server.store.models import broker_costs, broker_sessions

from ..conftest import TEST_KEK
from ..fakes.ssh_hosts import SshHostPool
from ..fakes.vastai import FakeVastAi

SESSIONS = 200
CONCURRENCY = 24
pytestmark = pytest.mark.timeout(420)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_replica(database_url: str, redis_url: str, vast_url: str, data_dir) -> tuple:
    grpc_port, http_port = free_port(), free_port()
    env = dict(os.environ, GANTRY_DATABASE_URL=database_url, GANTRY_REDIS_URL=redis_url, GANTRY_KEK=TEST_KEK,
               GANTRY_DATA_DIR=str(data_dir), GANTRY_GRPC_ADDR=f"127.0.0.1:{grpc_port}",
               GANTRY_HTTP_ADDR=f"127.0.0.1:{http_port}", GANTRY_LOG_LEVEL="WARNING",
               GANTRY_BROKER_PROVIDERS="vastai", GANTRY_VASTAI_API_KEY="vast-test-key",
               GANTRY_VASTAI_BASE_URL=vast_url, GANTRY_VASTAI_RATE_PER_SECOND="1000", GANTRY_VASTAI_BURST="1000",
               GANTRY_BROKER_LIFECYCLE_INTERVAL_SECONDS="1", GANTRY_BROKER_RECONCILE_INTERVAL_SECONDS="2",
               GANTRY_BROKER_SHUTDOWN_POLICY="keep", GANTRY_WORKERS="1",  # two replicas of one process each
               GANTRY_RATE_LIMITS="session_create=1000/60",  # 200 sessions from one address in a minute
               GANTRY_BROKER_AUTH="open")  # 200 consumers by name; consumer auth: tests/integration/test_broker_auth.py
    log = open(data_dir / "server.log", "wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gantry_server.cli", "serve", env=env,
                                                stdout=log, stderr=log)
    base = f"http://127.0.0.1:{http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        for _ in range(600):
            if proc.returncode is not None:
                raise AssertionError((data_dir / "server.log").read_text())
            try:
                if (await http.get("/ready")).status_code == 200:
                    return proc, base
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("replica did not become ready")


async def metric_sum(http: httpx.AsyncClient, name: str) -> float:
    text = (await http.get("/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


async def test_two_replicas_200_sessions_zero_orphans_zero_double_destroys_costs_once(
        database_url, redis_url, clean_db, redis, tmp_path):
    fake = FakeVastAi(api_key="vast-test-key")
    pool = SshHostPool(tmp_path / "hosts").attach(fake)
    (tmp_path / "hosts").mkdir()
    # More machines than sessions in flight: one machine is rented by one session at a time, as on Vast.ai.
    offers = [fake.add_offer(gpu_name="RTX 4090", dph_total=round(0.3 + i / 1000, 4)) for i in range(64)]
    await fake.start()
    replicas = []
    try:
        for i in range(2):
            (tmp_path / f"r{i}").mkdir()
            replicas.append(await start_replica(database_url, redis_url, fake.base_url, tmp_path / f"r{i}"))
        clients = [httpx.AsyncClient(base_url=base, timeout=60) for _, base in replicas]
        offer_ids = [o["id"] for o in (await clients[0].get("/api/v1/inventory")).json()["offers"]]
        assert len(offer_ids) == len(offers)
        limit = asyncio.Semaphore(CONCURRENCY)
        finished: list[str] = []

        async def one(i: int) -> None:
            async with limit:
                creator, watcher, ender = clients[i % 2], clients[(i + 1) % 2], clients[i // 2 % 2]
                r = await creator.post("/api/v1/sessions", json={
                    "consumer_id": f"consumer-{i}", "offer_id": offer_ids[i % len(offer_ids)],
                    "workload_type": "batch", "reservation_hours": 1})
                assert r.status_code == 201, r.text
                sid = r.json()["session"]["id"]
                for _ in range(1500):
                    status = (await watcher.get(f"/api/v1/sessions/{sid}")).json()["status"]
                    if status != "provisioning":
                        break
                    await asyncio.sleep(0.02)
                assert status == "running", status
                done = await ender.post(f"/api/v1/sessions/{sid}/done")
                assert done.status_code == 200, done.text
                finished.append(sid)

        await asyncio.gather(*(one(i) for i in range(SESSIONS)))
        # Let both replicas' loops and reconcilers run a few more rounds over the finished sessions.
        for _ in range(200):
            async with clean_db.connect() as conn:
                open_rows = (await conn.execute(select(func.count()).select_from(broker_sessions).where(
                    broker_sessions.c.status != "stopped"))).scalar()
            if open_rows == 0:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(4.5)

        assert len(finished) == SESSIONS
        assert fake.alive == set(), "orphaned provider instances"
        assert len(fake.destroyed) == SESSIONS
        double = {iid: n for iid, n in fake.delete_calls.items() if n != 1}
        assert double == {}, f"instances destroyed more than once: {double}"
        async with clean_db.connect() as conn:
            statuses = (await conn.execute(select(broker_sessions.c.status, func.count())
                                           .group_by(broker_sessions.c.status))).all()
            per_session = (await conn.execute(select(broker_costs.c.session_id, func.sum(broker_costs.c.amount))
                                              .group_by(broker_costs.c.session_id))).all()
        assert dict(statuses) == {"stopped": SESSIONS}
        assert len(per_session) == SESSIONS and all(amount > 0 for _, amount in per_session)
        recorded = sum(Decimal(a) for _, a in per_session)
        accrued = sum([await metric_sum(c, "gpu_cost_accrued_usd_total") for c in clients])
        assert abs(Decimal(str(accrued)) - recorded) < Decimal("0.000001") * SESSIONS  # counted once, by one replica
        for c in clients:
            await c.aclose()
    finally:
        for proc, _ in replicas:
            proc.terminate()
        for proc, _ in replicas:
            await asyncio.wait_for(proc.wait(), 60)
        await fake.stop()
        await pool.aclose()
