"""Session cost: what a provider instance cost while it existed, priced at the session's price per hour.

Billing runs from `billing_started_at` (the provider instance was created) to the moment it stopped existing,
to the second: a 90 s session at $0.45/h costs $0.01125. The reference charged every started clock hour in full
and charged failed creates at least an hour (domain-broker §9.3 item 2); a session whose instance was never
created costs nothing here.

Recording. The sessions/lifecycle code calls `record_session_cost` inside the transaction that moves a session
to its terminal status, on every termination path. It writes one `broker_costs` row per clock hour (UTC) the
instance existed in. A session is recorded once: later calls for the same session (another termination path,
a retry) add nothing and return 0.

Rounding. Each hour row's amount is `price_per_hour * seconds / 3600` rounded to 6 decimal places
(ROUND_HALF_EVEN), the column's scale. Every total is the exact sum of its rows, so a session's total, the
summary total and the sum of `by_provider` (or `by_gpu_type`) agree to the micro-dollar; they are reported with
those 6 decimals, never rounded to cents (a short session would otherwise show $0).

Live accrual. A session that is not terminal yet and has an instance accrues at query time: its hours from
`billing_started_at` to now are computed with the same split and rounding (never stored), so
`GET /api/v1/costs?session_id=` moves while the session runs. At termination the recorded rows replace it.

Windows. Summaries count a row by its `hour` in UTC (the reference used the server's local time):
`start <= hour < end`; see `resolve_window` for the period/date rules.

Metric. `gpu_cost_accrued_usd{provider}` grows by the amount actually inserted, once, when the recording
transaction commits (a rolled-back termination adds nothing). Live accrual does not move it.
"""
from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain.validation import Violations
from ..errors import NotFound
from ..store.models import TERMINAL_SESSION_STATUSES
from ..store.repositories import costs as repo
from . import metrics

CURRENCY = "USD"
PERIODS = ("daily", "monthly")
HOUR = timedelta(hours=1)
MICRO = Decimal("0.000001")
ZERO = Decimal("0.000000")


# ---------------------------------------------------------------------------------------------------- arithmetic
def split_hours(start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """The UTC clock hours `[start, end)` touches, each with the seconds of the interval inside it.

    >>> t = datetime(2026, 1, 1, 9, 59, 30, tzinfo=timezone.utc)
    >>> [(h.hour, s) for h, s in split_hours(t, t + timedelta(seconds=90))]
    [(9, 30.0), (10, 60.0)]
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("split_hours needs timezone-aware datetimes")
    cursor, end = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
    hour = cursor.replace(minute=0, second=0, microsecond=0)
    out: list[tuple[datetime, float]] = []
    while cursor < end:
        step = min(hour + HOUR, end)
        out.append((hour, (step - cursor).total_seconds()))
        cursor, hour = step, hour + HOUR
    return out


def as_price(price_per_hour: float | Decimal | str) -> Decimal:
    """The price as the decimal a person wrote (0.45, not 0.450000000000000011102230246251565)."""
    price = Decimal(repr(price_per_hour)) if isinstance(price_per_hour, float) else Decimal(price_per_hour)
    if not price.is_finite() or price < 0:
        raise ValueError(f"price_per_hour must be a finite amount >= 0, got {price_per_hour!r}")
    return price


def row_amount(price_per_hour: Decimal, seconds: float) -> Decimal:
    """One hour row's amount: pro rata, 6 decimal places, ROUND_HALF_EVEN.

    >>> row_amount(Decimal("0.45"), 90.0)
    Decimal('0.011250')
    """
    # repr() of a total_seconds() value is its exact decimal (at most 6 places), so nothing is lost here.
    return (price_per_hour * Decimal(repr(seconds)) / 3600).quantize(MICRO, rounding=ROUND_HALF_EVEN)


def hour_rows(price_per_hour: Decimal, start: datetime, end: datetime) -> list[tuple[datetime, float, Decimal]]:
    """(hour, seconds, amount) for every clock hour of `[start, end)`."""
    return [(hour, secs, row_amount(price_per_hour, secs)) for hour, secs in split_hours(start, end)]


# ---------------------------------------------------------------------------------------------------- recording
def cost_fields(session: Any) -> dict[str, Any]:
    """The keyword arguments of `record_session_cost` taken from a `broker_sessions` row.

        await record_session_cost(conn, **cost_fields(row), end=stopped_at, now=now)
    """
    m = getattr(session, "_mapping", session)
    return {"session_id": m["id"], "consumer_id": m["consumer_id"], "provider": m["provider"],
            "gpu_type": m["gpu_type"], "price_per_hour": m["price_per_hour"],
            "billing_started_at": m["billing_started_at"]}


INSERT_BATCH = 1000  # rows per INSERT: 9 parameters each stays under PostgreSQL's 32,767 per statement


async def record_session_cost(conn: AsyncConnection, *, session_id: str, consumer_id: str, provider: str,
                              gpu_type: str, price_per_hour: float | Decimal, billing_started_at: datetime | None,
                              end: datetime, now: datetime) -> Decimal:
    """Record a terminated session's cost; returns the amount recorded by this call.

    Call it in the same transaction as the terminal status change, with `end` the moment the provider instance
    stopped existing (or was last known to exist). Returns 0 and writes nothing when no instance was ever
    created (`billing_started_at` None), when `end` is not after it, or when the session was already recorded.
    The session row is locked for the rest of the transaction.
    """
    if billing_started_at is None:
        return ZERO
    rows = hour_rows(as_price(price_per_hour), billing_started_at, end)
    if not rows:
        return ZERO
    if not await repo.lock_session(conn, session_id):
        raise NotFound(f"session not found: {session_id}")
    if await repo.has_rows(conn, session_id):
        return ZERO
    values = [{"session_id": session_id, "hour": hour, "consumer_id": consumer_id, "provider": provider,
               "gpu_type": gpu_type, "seconds": secs, "amount": amount, "currency": CURRENCY, "recorded_at": now}
              for hour, secs, amount in rows]
    inserted = []
    for start in range(0, len(values), INSERT_BATCH):  # a long-kept disk can span months of hours
        inserted += await repo.insert_rows(conn, values[start:start + INSERT_BATCH])
    if not inserted:
        return ZERO
    total = sum(inserted, ZERO)
    _after_commit(conn, lambda: metrics.COST_ACCRUED.labels(provider).inc(float(total)))
    return total


_ON_COMMIT: "weakref.WeakKeyDictionary[Connection, list[Callable[[], None]]]" = weakref.WeakKeyDictionary()


def _after_commit(conn: AsyncConnection, fn: Callable[[], None]) -> None:
    """Run `fn` when the connection's current transaction commits; drop it if the transaction rolls back."""
    sync = conn.sync_connection
    queue = _ON_COMMIT.get(sync)
    if queue is None:
        queue = _ON_COMMIT[sync] = []
        event.listen(sync, "commit", _run_queued)
        event.listen(sync, "rollback", _drop_queued)
    queue.append(fn)


def _run_queued(sync: Connection) -> None:
    queue = _ON_COMMIT.get(sync, [])
    pending, queue[:] = list(queue), []
    for fn in pending:
        fn()


def _drop_queued(sync: Connection) -> None:
    _ON_COMMIT.get(sync, []).clear()


# ---------------------------------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class Window:
    start: datetime  # inclusive, UTC midnight
    end: datetime  # exclusive, UTC midnight

    def __contains__(self, hour: datetime) -> bool:
        return self.start <= hour < self.end


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)


def _next_month(d: date) -> date:
    return (d.replace(day=28) + timedelta(days=4)).replace(day=1)


def _parse_date(value: str, name: str, v: Violations) -> date | None:
    if not value:
        return None
    try:
        parsed = date.fromisoformat(value) if _DATE.match(value) else None
    except ValueError:
        parsed = None
    if not v.require(parsed is not None, name, f"must be a date as YYYY-MM-DD, got {value!r}"):
        return None
    if not v.require(1970 <= parsed.year <= 9998, name, "year must be between 1970 and 9998"):
        return None
    return parsed


def resolve_window(*, period: str, start_date: str, end_date: str, now: datetime, v: Violations) -> Window | None:
    """The UTC window a summary covers (None when `v` got a violation).

    - `period=daily`: today; `period=monthly`: this calendar month (period wins over dates, as in the reference).
    - No period and no dates: this calendar month.
    - `start_date` and `end_date`: `[start_date, end_date)`; end before start is refused (reference bug #39).
    - Only `start_date`: from it to the first day of the next month.
    - Only `end_date`: from the first day of the month of the last day included (`end_date` - 1 day) to
      `end_date`, so `end_date=2026-02-01` means January rather than an empty window.
    """
    start = _parse_date(start_date, "start_date", v)
    end = _parse_date(end_date, "end_date", v)
    v.require(period in ("",) + PERIODS, "period", f'must be "daily" or "monthly", got {period!r}')
    if start and end:
        v.require(start <= end, "end_date", f"must not be before start_date ({start_date})")
    if v.items:
        return None
    today = now.astimezone(timezone.utc).date()
    if period == "daily":
        return Window(_midnight(today), _midnight(today + timedelta(days=1)))
    if period == "monthly" or (start is None and end is None):
        return month_of(now)
    if start and end:
        return Window(_midnight(start), _midnight(end))
    if start:
        return Window(_midnight(start), _midnight(_next_month(start)))
    assert end is not None
    return Window(_midnight((end - timedelta(days=1)).replace(day=1)), _midnight(end))


def month_of(now: datetime) -> Window:
    """The calendar month (UTC) containing `now`."""
    first = now.astimezone(timezone.utc).date().replace(day=1)
    return Window(_midnight(first), _midnight(_next_month(first)))


# ---------------------------------------------------------------------------------------------------- reading
@dataclass
class Summary:
    window: Window
    consumer_id: str = ""
    total: Decimal = ZERO
    seconds: float = 0.0
    session_count: int = 0
    by_provider: dict[str, Decimal] = field(default_factory=dict)
    by_gpu_type: dict[str, Decimal] = field(default_factory=dict)

    @property
    def hours_used(self) -> float:
        """Real hours (seconds / 3600), not the reference's count of hour rows."""
        return round(self.seconds / 3600, 6)

    def add(self, provider: str, gpu_type: str, seconds: float, amount: Decimal) -> None:
        self.total += amount
        self.seconds += seconds
        self.by_provider[provider] = self.by_provider.get(provider, ZERO) + amount
        self.by_gpu_type[gpu_type] = self.by_gpu_type.get(gpu_type, ZERO) + amount


def _live_rows(session: repo.CostSession, now: datetime) -> list[tuple[datetime, float, Decimal]]:
    """Hours accrued so far by a session that is not terminal, minus hours already recorded."""
    if session.status in TERMINAL_SESSION_STATUSES or session.billing_started_at is None:
        return []
    rows = hour_rows(as_price(session.price_per_hour), session.billing_started_at, now)
    return [r for r in rows if r[0] not in session.recorded]


async def session_cost(conn: AsyncConnection, session_id: str, *, consumer_id: str = "", now: datetime) -> Decimal:
    """A session's cost: its recorded rows plus, while it runs, what it accrued until `now`.

    NOT_FOUND for an unknown session, or one of another consumer when `consumer_id` is given.
    """
    session = await repo.cost_session(conn, session_id)
    if session is None or (consumer_id and session.consumer_id != consumer_id):
        raise NotFound(f"session not found: {session_id}")
    return session.recorded_amount + sum((amount for _, _, amount in _live_rows(session, now)), ZERO)


async def summarize(conn: AsyncConnection, window: Window, *, consumer_id: str = "", now: datetime) -> Summary:
    """Spend in `window` (recorded rows plus live accrual), overall, by provider and by GPU type.

    Nothing is cached: each call is one database statement (recorded totals and the running sessions read
    together, store/repositories/costs.py `summary`), so a session terminated (its cost recorded) is in the very
    next answer on every replica, and live accrual is to the second."""
    summary = Summary(window=window, consumer_id=consumer_id)
    totals, live = await repo.summary(conn, start=window.start, end=window.end, started_before=min(window.end, now),
                                      consumer_id=consumer_id)
    for row in totals:
        amount = row.amount if row.amount is not None else ZERO
        if row.level == 1:
            summary.by_provider[row.provider] = amount
        elif row.level == 2:
            summary.by_gpu_type[row.gpu_type] = amount
        else:
            summary.total, summary.seconds, summary.session_count = amount, row.seconds or 0.0, row.sessions
    for session in live:
        rows = [r for r in _live_rows(session, now) if r[0] in window]
        for _, secs, amount in rows:
            summary.add(session.provider, session.gpu_type, secs, amount)
        if rows and not any(h in window for h in session.recorded):
            summary.session_count += 1
    return summary
