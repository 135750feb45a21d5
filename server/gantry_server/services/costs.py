"""CostService: GET /api/v1/costs and /api/v1/costs/summary over the recorded hour rows plus live accrual.

Rules (windows, rounding, live accrual) live in `broker.costs`; this file checks the query and maps to protos.
Each answer is one database statement, so one snapshot: a session terminating meanwhile is counted exactly once
(either as live accrual or as its recorded rows), with no transaction round trips around it.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from gantry.broker.v1 import costs_pb2, costs_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..broker import costs
from ..broker.consumers import owner_of_call
from ..domain.validation import Violations
from ..runtime import Runtime


@asynccontextmanager
async def _snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection with no transaction begun: the single statement of the answer is its snapshot."""
    async with engine.connect() as conn:
        yield conn


def _check_id(v: Violations, name: str, value: str) -> None:
    v.require(len(value) <= 255, name, "must be at most 255 characters")
    v.require("\x00" not in value, name, "must not contain NUL characters")


def _timestamp(value) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _money(values: dict[str, Decimal]) -> dict[str, float]:
    return {k: float(amount) for k, amount in values.items()}


def _summary_fields(s: costs.Summary) -> dict:
    fields = dict(total_cost=float(s.total), session_count=s.session_count, hours_used=s.hours_used,
                  by_provider=_money(s.by_provider), by_gpu_type=_money(s.by_gpu_type),
                  period_start=_timestamp(s.window.start), period_end=_timestamp(s.window.end),
                  currency=costs.CURRENCY)
    if s.consumer_id:
        fields["consumer_id"] = s.consumer_id
    return fields


class CostService(costs_pb2_grpc.CostServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def _consumer(self, requested: str) -> str:
        """Whose costs: the authenticated consumer's only (required), or as asked, "" for everyone (open)."""
        return owner_of_call(requested, required=self.rt.settings.broker.auth_required) or requested

    async def GetCosts(self, request, context):
        """One session's cost (session_id set; dates and period are checked but do not apply) or a summary."""
        v = Violations()
        _check_id(v, "consumer_id", request.consumer_id)
        _check_id(v, "session_id", request.session_id)
        now = self.rt.clock.now()
        window = costs.resolve_window(period=request.period, start_date=request.start_date,
                                      end_date=request.end_date, now=now, v=v)
        v.raise_if_any()
        consumer_id = self._consumer(request.consumer_id)
        async with _snapshot(self.rt.engine) as conn:
            if request.session_id:
                total = await costs.session_cost(conn, request.session_id, consumer_id=consumer_id, now=now)
                return costs_pb2.GetCostsResponse(session_id=request.session_id, total_cost=float(total),
                                                  currency=costs.CURRENCY)
            summary = await costs.summarize(conn, window, consumer_id=consumer_id, now=now)
        return costs_pb2.GetCostsResponse(**_summary_fields(summary))

    async def GetCostSummary(self, request, context):
        """This calendar month (UTC), for one consumer or (open broker) everyone."""
        v = Violations()
        _check_id(v, "consumer_id", request.consumer_id)
        v.raise_if_any()
        consumer_id = self._consumer(request.consumer_id)
        now = self.rt.clock.now()
        async with _snapshot(self.rt.engine) as conn:
            summary = await costs.summarize(conn, costs.month_of(now), consumer_id=consumer_id, now=now)
        return costs_pb2.GetCostSummaryResponse(summary=costs_pb2.CostSummary(**_summary_fields(summary)))
