"""Cost accounting against real PostgreSQL: recording at termination, live accrual, summaries, REST shapes.

Session rows are inserted directly (the sessions code is tested on its own); the server runs on a ManualClock.
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from gantry.broker.v1 import costs_pb2, costs_pb2_grpc
from gantry_server.broker.costs import cost_fields, record_session_cost
from gantry_server.clock import ManualClock
from gantry_server.store.models import broker_costs, broker_sessions

from .broker_harness import providerless_app

UTC = timezone.utc
START = datetime(2026, 3, 1, 0, 30, tzinfo=UTC)
SUMMARY_KEYS = {"consumer_id", "total_cost", "session_count", "hours_used", "by_provider", "by_gpu_type",
                "period_start", "period_end", "currency"}


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(scope="module")
async def app(database_url, redis_url, tmp_path_factory, clock):
    """This module's server: a ManualClock; no providers and no loops touching the rows the tests insert."""
    async with providerless_app(database_url, redis_url, tmp_path_factory.mktemp("costs"), clock) as gantry:
        yield gantry


@pytest.fixture
def costs(channel) -> costs_pb2_grpc.CostServiceStub:
    return costs_pb2_grpc.CostServiceStub(channel)


def move_to(clock: ManualClock, when: datetime) -> None:
    delta = when - clock.now()
    clock.advance(days=delta.days, seconds=delta.seconds, microseconds=delta.microseconds)


async def add_session(engine, *, consumer="app-a", provider="vastai", gpu="RTX 4090", price=0.45,
                      status="running", billing: datetime | None = None) -> str:
    sid = str(uuid.uuid4())
    created = billing or START
    async with engine.begin() as conn:
        await conn.execute(broker_sessions.insert().values(
            id=sid, consumer_id=consumer, provider=provider, offer_id=f"{provider}-{sid}", gpu_type=gpu,
            status=status, ssh_public_key="ssh-ed25519 AAAA test", workload_type="llm", reservation_hours=2,
            price_per_hour=price, created_at=created, expires_at=created + timedelta(hours=2),
            provision_deadline=created + timedelta(minutes=10), billing_started_at=billing, updated_at=created))
    return sid


async def terminate(engine, sid: str, end: datetime, *, status="stopped") -> Decimal:
    """What the lifecycle does: the terminal status and the cost in one transaction."""
    async with engine.begin() as conn:
        row = (await conn.execute(update(broker_sessions).where(broker_sessions.c.id == sid)
                                  .values(status=status, stopped_at=end).returning(broker_sessions))).first()
        return await record_session_cost(conn, **cost_fields(row), end=end, now=end)


async def stored_rows(engine, sid: str) -> list[tuple[datetime, float, Decimal]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(broker_costs.c.hour, broker_costs.c.seconds, broker_costs.c.amount)
                                  .where(broker_costs.c.session_id == sid).order_by(broker_costs.c.hour))
        return [tuple(r) for r in rows]


def accrued(provider: str) -> float:
    return REGISTRY.get_sample_value("gpu_cost_accrued_usd_total", {"provider": provider}) or 0.0


# ---------------------------------------------------------------------------------------------------- recording
async def test_a_90_second_session_is_billed_pro_rata(clean_db):
    sid = await add_session(clean_db, billing=at(2026, 3, 1, 10, 0, 0))
    assert await terminate(clean_db, sid, at(2026, 3, 1, 10, 1, 30)) == Decimal("0.01125")
    assert await stored_rows(clean_db, sid) == [(at(2026, 3, 1, 10), 90.0, Decimal("0.011250"))]


async def test_a_session_across_clock_hours_gets_one_row_per_hour(clean_db):
    sid = await add_session(clean_db, price=1.2, billing=at(2026, 3, 1, 9, 40))
    total = await terminate(clean_db, sid, at(2026, 3, 1, 11, 10))
    assert await stored_rows(clean_db, sid) == [
        (at(2026, 3, 1, 9), 1200.0, Decimal("0.400000")),
        (at(2026, 3, 1, 10), 3600.0, Decimal("1.200000")),
        (at(2026, 3, 1, 11), 600.0, Decimal("0.200000")),
    ]
    assert total == Decimal("1.8")  # the sum of the rows, exactly


async def test_a_disk_kept_for_months_is_billed_in_full(clean_db):
    """Thousands of hour rows (a preserved disk, a destroy that took long to verify) in one terminal transaction."""
    sid = await add_session(clean_db, price=0.5, billing=at(2026, 1, 1, 0, 0))
    total = await terminate(clean_db, sid, at(2026, 3, 1, 0, 0))  # 59 days: 1,416 hours
    rows = await stored_rows(clean_db, sid)
    assert len(rows) == 1416 and total == Decimal("708")


async def test_no_instance_means_no_cost(clean_db):
    provider = "nocost-provider"
    before = accrued(provider)
    sid = await add_session(clean_db, provider=provider, status="pending", billing=None)
    assert await terminate(clean_db, sid, START + timedelta(hours=3), status="failed") == 0
    assert await stored_rows(clean_db, sid) == []
    assert accrued(provider) == before


async def test_a_second_termination_path_records_nothing_more(clean_db):
    provider = "twice-provider"
    before = accrued(provider)
    sid = await add_session(clean_db, provider=provider, price=2.0, billing=at(2026, 3, 1, 10))
    first = await terminate(clean_db, sid, at(2026, 3, 1, 10, 30))
    rows = await stored_rows(clean_db, sid)
    # e.g. the expiry loop after DELETE, even with a later end crossing into another hour
    assert await terminate(clean_db, sid, at(2026, 3, 1, 11, 45)) == 0
    assert first == Decimal("1.0")
    assert await stored_rows(clean_db, sid) == rows
    assert accrued(provider) == pytest.approx(before + 1.0)  # moved once, by what was inserted


async def test_concurrent_termination_paths_record_once(clean_db):
    provider = "race-provider"
    before = accrued(provider)
    sid = await add_session(clean_db, provider=provider, price=0.9, billing=at(2026, 3, 1, 10))
    results = await asyncio.gather(*(terminate(clean_db, sid, at(2026, 3, 1, 10, 20 + i)) for i in range(3)))
    assert sorted(results, reverse=True)[1:] == [0, 0]
    rows = await stored_rows(clean_db, sid)
    assert sum(r[2] for r in rows) == max(results) > 0
    assert accrued(provider) == pytest.approx(before + float(max(results)))


async def test_a_rolled_back_termination_records_nothing_and_moves_no_metric(clean_db):
    provider = "rollback-provider"
    before = accrued(provider)
    sid = await add_session(clean_db, provider=provider, price=3.0, billing=at(2026, 3, 1, 10))

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with clean_db.begin() as conn:
            row = (await conn.execute(select(broker_sessions).where(broker_sessions.c.id == sid))).first()
            assert await record_session_cost(conn, **cost_fields(row), end=at(2026, 3, 1, 11), now=START) == 3
            raise Abort
    assert await stored_rows(clean_db, sid) == []
    assert accrued(provider) == before
    assert await terminate(clean_db, sid, at(2026, 3, 1, 11)) == 3  # the real termination still records
    assert accrued(provider) == pytest.approx(before + 3.0)


# ---------------------------------------------------------------------------------------------------- one session
async def test_session_cost_over_grpc_and_rest(clean_db, costs, http):
    sid = await add_session(clean_db, billing=at(2026, 2, 27, 12))
    await terminate(clean_db, sid, at(2026, 2, 27, 15))  # 3 h at 0.45, in a past month: dates do not apply
    answer = await costs.GetCosts(costs_pb2.GetCostsRequest(session_id=sid))
    assert (answer.session_id, answer.total_cost, answer.currency) == (sid, 1.35, "USD")

    response = await http.get("/api/v1/costs", params={"session_id": sid}, headers={"X-Request-ID": "cost-sess"})
    assert response.status_code == 200
    assert response.json() == {"session_id": sid, "total_cost": 1.35, "currency": "USD"}
    assert response.headers["x-request-id"] == "cost-sess"


async def test_a_running_session_accrues_while_it_runs_and_stops_at_termination(clean_db, clock, http):
    move_to(clock, at(2026, 3, 1, 10, 0))
    sid = await add_session(clean_db, price=0.6, billing=clock.now())

    async def total() -> float:
        response = await http.get("/api/v1/costs", params={"session_id": sid})
        assert response.status_code == 200, response.text
        return response.json()["total_cost"]

    assert await total() == 0
    clock.advance(minutes=30)
    assert await total() == 0.3
    clock.advance(minutes=45)
    assert await total() == 0.75  # across the clock hour
    await terminate(clean_db, sid, clock.now())
    clock.advance(hours=2)
    assert await total() == 0.75  # nothing after termination
    assert sum(r[2] for r in await stored_rows(clean_db, sid)) == Decimal("0.75")


async def test_a_session_without_an_instance_costs_nothing_yet(clean_db, costs):
    sid = await add_session(clean_db, status="provisioning", billing=None)
    assert (await costs.GetCosts(costs_pb2.GetCostsRequest(session_id=sid))).total_cost == 0


async def test_unknown_session_is_404_in_the_broker_body(clean_db, costs, http):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await costs.GetCosts(costs_pb2.GetCostsRequest(session_id="no-such-session"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    response = await http.get("/api/v1/costs", params={"session_id": "no-such-session"},
                              headers={"X-Request-ID": "cost-404"})
    assert response.status_code == 404
    assert response.json() == {"error": "session not found: no-such-session", "request_id": "cost-404"}


async def test_another_consumers_session_is_not_found(clean_db, http):
    sid = await add_session(clean_db, consumer="app-a", billing=START)
    response = await http.get("/api/v1/costs", params={"session_id": sid, "consumer_id": "app-b"})
    assert response.status_code == 404


# ---------------------------------------------------------------------------------------------------- summaries
async def seed_month_boundary(engine) -> dict[str, str]:
    """Sessions around the February/March boundary (clock: 1 March 00:30 UTC).

    a: app-a, vastai RTX 4090 at $1/h, 28 Feb 23:30 -> 1 Mar 00:15 (0.50 Feb + 0.25 Mar), recorded
    b: app-b, tensordock A100 at $2/h, 1 Mar 00:00 -> 00:06 (0.20 Mar), recorded
    c: app-a, tensordock RTX 4090 at $1.5/h, billing since 1 Mar 00:10, still running (live 0.50 at 00:30)
    d: app-a, vastai A100, failed before any instance existed (no cost)
    e: app-a, vastai RTX 4090 at $1/h, 14 Feb 10:00 -> 12:00 (2.00 Feb), recorded
    """
    ids = {
        "a": await add_session(engine, price=1.0, billing=at(2026, 2, 28, 23, 30)),
        "b": await add_session(engine, consumer="app-b", provider="tensordock", gpu="A100", price=2.0,
                               billing=at(2026, 3, 1, 0, 0)),
        "c": await add_session(engine, provider="tensordock", price=1.5, billing=at(2026, 3, 1, 0, 10)),
        "d": await add_session(engine, gpu="A100", status="provisioning"),
        "e": await add_session(engine, price=1.0, billing=at(2026, 2, 14, 10)),
    }
    await terminate(engine, ids["a"], at(2026, 3, 1, 0, 15))
    await terminate(engine, ids["b"], at(2026, 3, 1, 0, 6))
    await terminate(engine, ids["d"], at(2026, 3, 1, 0, 20), status="failed")
    await terminate(engine, ids["e"], at(2026, 2, 14, 12))
    return ids


@pytest.mark.parametrize(("query", "total", "sessions", "hours", "start", "end"), [
    # this month (March): a's March part, b, c live
    ({}, 0.95, 3, 0.25 + 0.1 + 1 / 3, at(2026, 3, 1), at(2026, 4, 1)),
    ({"period": "monthly"}, 0.95, 3, 0.25 + 0.1 + 1 / 3, at(2026, 3, 1), at(2026, 4, 1)),
    ({"period": "daily"}, 0.95, 3, 0.25 + 0.1 + 1 / 3, at(2026, 3, 1), at(2026, 3, 2)),
    # February: e and a's February half
    ({"start_date": "2026-02-01", "end_date": "2026-03-01"}, 2.5, 2, 2.5, at(2026, 2, 1), at(2026, 3, 1)),
    ({"end_date": "2026-03-01"}, 2.5, 2, 2.5, at(2026, 2, 1), at(2026, 3, 1)),
    ({"start_date": "2026-02-28"}, 0.5, 1, 0.5, at(2026, 2, 28), at(2026, 3, 1)),
    ({"start_date": "2026-02-15", "end_date": "2026-03-02"}, 1.45, 3, 0.5 + 0.25 + 0.1 + 1 / 3,
     at(2026, 2, 15), at(2026, 3, 2)),
    ({"start_date": "2026-01-01", "end_date": "2026-01-01"}, 0, 0, 0, at(2026, 1, 1), at(2026, 1, 1)),
], ids=lambda x: str(x) if isinstance(x, dict) else "")
async def test_summary_windows(clean_db, clock, costs, query, total, sessions, hours, start, end):
    move_to(clock, START)
    await seed_month_boundary(clean_db)
    answer = await costs.GetCosts(costs_pb2.GetCostsRequest(**query))
    assert answer.total_cost == pytest.approx(total)
    assert answer.session_count == sessions
    assert answer.hours_used == pytest.approx(round(hours, 6))
    assert (answer.period_start.ToDatetime(UTC), answer.period_end.ToDatetime(UTC)) == (start, end)
    assert not answer.HasField("session_id") and not answer.HasField("consumer_id")
    assert round(sum(answer.by_provider.values()), 6) == round(sum(answer.by_gpu_type.values()), 6) \
        == answer.total_cost


async def test_summary_breaks_down_by_provider_and_gpu_type(clean_db, clock, costs):
    move_to(clock, START)
    await seed_month_boundary(clean_db)
    march = await costs.GetCosts(costs_pb2.GetCostsRequest())
    assert dict(march.by_provider) == pytest.approx({"vastai": 0.25, "tensordock": 0.7})
    assert dict(march.by_gpu_type) == pytest.approx({"RTX 4090": 0.75, "A100": 0.2})
    assert march.currency == "USD"


async def test_consumer_filter(clean_db, clock, costs, http):
    move_to(clock, START)
    await seed_month_boundary(clean_db)
    only_a = await costs.GetCosts(costs_pb2.GetCostsRequest(consumer_id="app-a"))
    assert (only_a.consumer_id, only_a.total_cost, only_a.session_count) == ("app-a", 0.75, 2)
    assert dict(only_a.by_provider) == pytest.approx({"vastai": 0.25, "tensordock": 0.5})
    nobody = await costs.GetCosts(costs_pb2.GetCostsRequest(consumer_id="app-z"))
    assert (nobody.total_cost, nobody.session_count, dict(nobody.by_provider)) == (0, 0, {})

    body = (await http.get("/api/v1/costs", params={"consumer_id": "app-b"})).json()
    assert set(body) == SUMMARY_KEYS
    assert body["consumer_id"] == "app-b" and body["total_cost"] == 0.2 and body["by_gpu_type"] == {"A100": 0.2}


async def test_live_accrual_moves_the_summary(clean_db, clock, costs):
    move_to(clock, START)
    await seed_month_boundary(clean_db)
    clock.advance(minutes=60)  # c has now run 80 minutes at $1.5/h
    answer = await costs.GetCosts(costs_pb2.GetCostsRequest(consumer_id="app-a"))
    assert answer.total_cost == pytest.approx(0.25 + 2.0)
    assert answer.hours_used == pytest.approx(round(0.25 + 80 / 60, 6))


async def test_rest_summary_shapes(clean_db, clock, http):
    move_to(clock, START)
    await seed_month_boundary(clean_db)
    costs_body = (await http.get("/api/v1/costs", headers={"X-Request-ID": "sum-1"})).json()
    assert set(costs_body) == SUMMARY_KEYS
    assert costs_body["consumer_id"] is None  # not filtered
    assert costs_body["total_cost"] == 0.95 and costs_body["session_count"] == 3
    assert costs_body["by_provider"] == {"vastai": 0.25, "tensordock": 0.7}
    assert (costs_body["period_start"], costs_body["period_end"]) == ("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z")

    summary = await http.get("/api/v1/costs/summary", headers={"X-Request-ID": "sum-2"})
    assert summary.status_code == 200 and summary.headers["x-request-id"] == "sum-2"
    assert summary.json() == costs_body  # the same month, the same numbers
    mine = (await http.get("/api/v1/costs/summary", params={"consumer_id": "app-a"})).json()
    assert set(mine) == SUMMARY_KEYS and mine["consumer_id"] == "app-a" and mine["total_cost"] == 0.75


async def test_empty_database_gives_zeros(clean_db, costs):
    answer = (await costs.GetCostSummary(costs_pb2.GetCostSummaryRequest())).summary
    assert (answer.total_cost, answer.session_count, answer.hours_used) == (0, 0, 0)
    assert dict(answer.by_provider) == {} and answer.currency == "USD"


async def test_totals_stay_exact_over_many_small_rows(clean_db, clock, costs):
    move_to(clock, at(2026, 3, 20))
    for i in range(7):  # 7 sessions of 61 s at $0.33/h: each 0.005592 (0.00559166.. rounded)
        sid = await add_session(clean_db, price=0.33, billing=at(2026, 3, 10, 8, i))
        await terminate(clean_db, sid, at(2026, 3, 10, 8, i, 1) + timedelta(minutes=1))
    answer = await costs.GetCosts(costs_pb2.GetCostsRequest())
    assert answer.total_cost == float(Decimal("0.005592") * 7)
    assert answer.by_provider["vastai"] == answer.total_cost


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("params", "fields"), [
    ({"start_date": "2026-13-01"}, {"start_date"}),
    ({"end_date": "01/02/2026"}, {"end_date"}),
    ({"period": "weekly"}, {"period"}),
    ({"start_date": "2026-03-10", "end_date": "2026-03-01"}, {"end_date"}),
])
async def test_bad_queries_are_400_naming_the_field(clean_db, costs, http, params, fields):
    response = await http.get("/api/v1/costs", params=params, headers={"X-Request-ID": "cost-400"})
    assert response.status_code == 400
    body = response.json()
    assert body["request_id"] == "cost-400" and all(f in body["error"] for f in fields)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await costs.GetCosts(costs_pb2.GetCostsRequest(**params))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in rpc_status.from_call(err.value).details)
    assert {v.field for v in bad.field_violations} == fields


async def test_bad_dates_are_refused_even_with_a_session_id(clean_db, http):
    sid = await add_session(clean_db, billing=START)
    response = await http.get("/api/v1/costs", params={"session_id": sid, "start_date": "soon"})
    assert response.status_code == 400 and "start_date" in response.json()["error"]
