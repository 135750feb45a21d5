"""Cost edges that mutation testing showed untested (issue 17): a summary window's end is exclusive for live
accrual too, a zero price is allowed and its session terminates, the documented date bounds hold at their
edges, and recording the cost of a session that does not exist is NOT_FOUND, writing nothing."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select

from gantry.broker.v1 import costs_pb2, costs_pb2_grpc
from gantry_server.broker.costs import as_price, record_session_cost
from gantry_server.clock import ManualClock
from gantry_server.errors import NotFound
from gantry_server.store.models import broker_costs

from .broker_harness import providerless_app
from .test_broker_costs import add_session, move_to, stored_rows, terminate

UTC = timezone.utc


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(at(2026, 3, 1, 0, 30))


@pytest.fixture(scope="module")
async def app(database_url, redis_url, tmp_path_factory, clock):
    async with providerless_app(database_url, redis_url, tmp_path_factory.mktemp("costs-strength"), clock) as gantry:
        yield gantry


@pytest.fixture
def costs(channel) -> costs_pb2_grpc.CostServiceStub:
    return costs_pb2_grpc.CostServiceStub(channel)


async def test_live_accrual_past_a_windows_end_is_not_counted_in_it(clean_db, clock, costs, http):
    """A session running since 28 Feb 23:00 at $1/h, asked about at 1 Mar 00:30: February holds its 23:00 hour
    ($1), not the 00:00 hour that starts exactly at the window's (exclusive) end; March holds that half hour."""
    move_to(clock, at(2026, 3, 1, 0, 30))
    await add_session(clean_db, price=1.0, billing=at(2026, 2, 28, 23))
    february = await costs.GetCosts(costs_pb2.GetCostsRequest(start_date="2026-02-01", end_date="2026-03-01"))
    assert (february.total_cost, february.session_count, february.hours_used) == (1.0, 1, 1.0)
    march = await costs.GetCosts(costs_pb2.GetCostsRequest(start_date="2026-03-01", end_date="2026-03-02"))
    assert (march.total_cost, march.session_count, march.hours_used) == (0.5, 1, 0.5)
    body = (await http.get("/api/v1/costs", params={"end_date": "2026-03-01"})).json()
    assert body["total_cost"] == 1.0 and body["by_provider"] == {"vastai": 1.0}


async def test_a_zero_price_session_terminates_and_costs_nothing(clean_db, clock, costs):
    move_to(clock, at(2026, 3, 1, 0, 30))
    assert as_price(0) == Decimal(0) and as_price("0.00") == Decimal(0)
    sid = await add_session(clean_db, price=0.0, billing=at(2026, 3, 1, 0, 0))
    assert (await costs.GetCosts(costs_pb2.GetCostsRequest(session_id=sid))).total_cost == 0
    assert await terminate(clean_db, sid, at(2026, 3, 1, 0, 20)) == 0  # no error: the session can end
    assert await stored_rows(clean_db, sid) == [(at(2026, 3, 1, 0), 1200.0, Decimal("0.000000"))]
    summary = await costs.GetCosts(costs_pb2.GetCostsRequest(period="daily"))
    assert (summary.total_cost, summary.session_count) == (0, 1)


async def test_recording_the_cost_of_an_unknown_session_is_not_found_and_writes_nothing(clean_db):
    async with clean_db.begin() as conn:
        with pytest.raises(NotFound, match="session not found: no-such-session"):
            await record_session_cost(conn, session_id="no-such-session", consumer_id="app-a", provider="vastai",
                                      gpu_type="RTX 4090", price_per_hour=1.0, billing_started_at=at(2026, 3, 1),
                                      end=at(2026, 3, 1, 1), now=at(2026, 3, 1, 1))
    async with clean_db.connect() as conn:
        assert (await conn.execute(select(broker_costs))).first() is None


@pytest.mark.parametrize(("params", "status"), [
    ({"start_date": "1970-01-01"}, 200), ({"start_date": "1969-12-31"}, 400),
    ({"end_date": "9998-12-31"}, 200), ({"end_date": "9999-01-01"}, 400),
    ({"start_date": "1970-01-01", "end_date": "9998-12-31"}, 200),
])
async def test_the_documented_date_bounds_hold_at_their_edges(clean_db, http, params, status):
    response = await http.get("/api/v1/costs", params=params)
    assert response.status_code == status, response.text
    if status == 400:
        assert "year must be between 1970 and 9998" in response.text
    else:
        assert response.json()["total_cost"] == 0
