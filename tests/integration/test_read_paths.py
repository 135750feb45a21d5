"""The hot read paths on real PostgreSQL: GET /api/v1/sessions and /api/v1/costs, one statement each.

Session rows are inserted directly (as in test_broker_costs.py); the server runs on a ManualClock.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from gantry_server.broker.costs import cost_fields, record_session_cost
from gantry_server.clock import ManualClock
from gantry_server.store.models import broker_sessions

from .broker_harness import providerless_app

UTC = timezone.utc
T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture(scope="module")
async def app(database_url, redis_url, tmp_path_factory, clock):
    async with providerless_app(database_url, redis_url, tmp_path_factory.mktemp("read-paths"), clock) as gantry:
        yield gantry


async def add_session(engine, *, created: datetime, consumer="app-a", provider="vastai", status="running",
                      price=0.6, billing: datetime | None = None, **extra) -> str:
    sid = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(broker_sessions.insert().values(
            id=sid, consumer_id=consumer, provider=provider, offer_id=f"{provider}-{sid}", gpu_type="RTX 4090",
            status=status, ssh_public_key="ssh-ed25519 AAAA test", workload_type="llm", reservation_hours=2,
            price_per_hour=price, created_at=created, expires_at=created + timedelta(hours=2),
            provision_deadline=created + timedelta(minutes=10), billing_started_at=billing, updated_at=created,
            **extra))
    return sid


async def terminate(engine, sid: str, end: datetime) -> None:
    async with engine.begin() as conn:
        row = (await conn.execute(update(broker_sessions).where(broker_sessions.c.id == sid)
                                  .values(status="stopped", stopped_at=end).returning(broker_sessions))).first()
        await record_session_cost(conn, **cost_fields(row), end=end, now=end)


# ---------------------------------------------------------------------------------------------------- sessions
async def test_session_list_filters_pages_and_shows_what_get_shows(clean_db, http):
    ids = []
    for i in range(7):  # newest last; two share a created_at, so the id breaks the tie in the page order
        created = T0 + timedelta(minutes=min(i, 5))
        ids.append(await add_session(clean_db, created=created, consumer=("app-a", "app-b")[i % 2],
                                     provider=("vastai", "tensordock")[i % 3 == 0],
                                     status=("running", "stopped")[i % 2], error="boom" if i == 4 else None,
                                     auto_retry=i == 2, retry_count=1 if i == 2 else 0))
    newest_first = sorted(ids, key=lambda sid: (min(ids.index(sid), 5), sid), reverse=True)

    everything = (await http.get("/api/v1/sessions")).json()
    assert [s["id"] for s in everything["sessions"]] == newest_first and everything["count"] == 7
    listed = {s["id"]: s for s in everything["sessions"]}
    for sid in (ids[2], ids[4]):  # a list entry is the same object GET /api/v1/sessions/{id} answers
        assert listed[sid] == (await http.get(f"/api/v1/sessions/{sid}")).json()
    assert listed[ids[4]]["error"] == "boom" and listed[ids[2]]["auto_retry"] is True
    assert not {"ssh_public_key", "ssh_private_key", "offer_id", "provider_instance_id"} & set(listed[ids[0]])

    async def listed_ids(**params) -> list[str]:
        r = await http.get("/api/v1/sessions", params=params)
        assert r.status_code == 200, r.text
        return [s["id"] for s in r.json()["sessions"]]

    assert await listed_ids(consumer_id="app-b") == [s for s in newest_first if ids.index(s) % 2 == 1]
    assert await listed_ids(status="running", provider="tensordock") == [
        s for s in newest_first if ids.index(s) % 2 == 0 and ids.index(s) % 3 == 0]
    assert await listed_ids(consumer_id="app-a", status="stopped") == []
    assert await listed_ids(limit=2) == newest_first[:2]

    pages, token = [], ""
    while True:  # pages of 3 continue exactly where the last one stopped, across the created_at tie
        r = (await http.get("/api/v1/sessions", params={"page_size": 3, **({"page_token": token} if token else {})})).json()
        pages.append([s["id"] for s in r["sessions"]])
        token = r["next_page_token"]
        if not token:
            break
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]


# ---------------------------------------------------------------------------------------------------- costs
async def test_a_terminated_session_is_in_the_very_next_summary(clean_db, clock, http):
    """The rule: nothing is cached, each answer is one statement, so a termination (its cost recorded) shows in
    the next GET /api/v1/costs, counted once, and its live accrual stops there."""
    clock.advance(days=1)
    start = clock.now()
    running = await add_session(clean_db, created=start, price=1.2, billing=start)
    other = await add_session(clean_db, created=start, consumer="app-b", price=2.4, billing=start)
    clock.advance(minutes=30)

    async def summary(**params) -> dict:
        r = await http.get("/api/v1/costs", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    live = await summary(consumer_id="app-a")
    assert (live["total_cost"], live["session_count"]) == (0.6, 1)  # 30 min at 1.2/h, accrued live
    await terminate(clean_db, running, clock.now())
    done = await summary(consumer_id="app-a")
    assert (done["total_cost"], done["session_count"], done["hours_used"]) == (0.6, 1, 0.5)
    clock.advance(minutes=30)
    later = await summary(consumer_id="app-a")
    assert (later["total_cost"], later["session_count"]) == (0.6, 1)  # stopped accruing at termination
    everyone = await summary()
    assert everyone["total_cost"] == pytest.approx(0.6 + 2.4)  # app-b's still runs: 1 h at 2.4/h, live
    assert everyone["session_count"] == 2
    assert (await http.get("/api/v1/costs", params={"session_id": other})).json()["total_cost"] == 2.4
