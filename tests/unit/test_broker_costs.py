"""Cost arithmetic and summary windows: pro rata hours, the rounding rule, and which days a query covers."""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry_server.broker.costs import (Window, as_price, hour_rows, month_of, resolve_window, row_amount,
                                        split_hours)
from gantry_server.domain.validation import Violations
from gantry_server.errors import InvalidArgument

UTC = timezone.utc


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------------- split_hours
def test_an_interval_is_split_at_clock_hours():
    start = at(2026, 1, 1, 9, 59, 30)
    assert split_hours(start, start + timedelta(seconds=90)) == [(at(2026, 1, 1, 9), 30.0), (at(2026, 1, 1, 10), 60.0)]


def test_whole_hours_give_full_rows_and_no_empty_trailing_row():
    assert split_hours(at(2026, 1, 1, 10), at(2026, 1, 1, 12)) == [(at(2026, 1, 1, 10), 3600.0),
                                                                   (at(2026, 1, 1, 11), 3600.0)]


@pytest.mark.parametrize("delta", [timedelta(0), timedelta(seconds=-5)])
def test_an_empty_or_backwards_interval_has_no_hours(delta):
    start = at(2026, 1, 1, 10, 15)
    assert split_hours(start, start + delta) == []


def test_hours_are_utc_clock_hours_whatever_the_input_zone():
    india = timezone(timedelta(hours=5, minutes=30))
    start = datetime(2026, 1, 1, 10, 45, tzinfo=india)  # 05:15 UTC
    assert split_hours(start, start + timedelta(minutes=50)) == [(at(2026, 1, 1, 5), 2700.0),
                                                                 (at(2026, 1, 1, 6), 300.0)]


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError):
        split_hours(datetime(2026, 1, 1), datetime(2026, 1, 2))


_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])


@settings(max_examples=300, deadline=None)
@given(start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=_ZONES),
       duration=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)))
def test_split_hours_properties(start, duration):
    parts = split_hours(start, start + duration)
    # The seconds add up to the duration (float sums: within a microsecond per row).
    assert math.isclose(sum(s for _, s in parts), duration.total_seconds(), abs_tol=1e-6 * (len(parts) + 1))
    if not parts:
        assert duration == timedelta(0)
        return
    hours = [h for h, _ in parts]
    assert all(h.tzinfo == UTC and (h.minute, h.second, h.microsecond) == (0, 0, 0) for h in hours)
    assert hours[0] <= start < hours[0] + timedelta(hours=1)
    assert all(b - a == timedelta(hours=1) for a, b in zip(hours, hours[1:]))  # consecutive, no gap
    assert all(0 < s <= 3600 for _, s in parts)
    assert hours[-1] < start + duration <= hours[-1] + timedelta(hours=1)


# ---------------------------------------------------------------------------------------------------- amounts
def test_a_90_second_session_at_45_cents_costs_a_fortieth_of_an_hour_not_a_full_hour():
    assert row_amount(Decimal("0.45"), 90.0) == Decimal("0.01125")


def test_a_full_hour_costs_the_price():
    assert row_amount(Decimal("1.37"), 3600.0) == Decimal("1.37")


def test_amounts_round_to_six_places_half_even():
    price = Decimal("0.0036")  # 1e-6 USD per second
    assert row_amount(price, 0.5) == Decimal("0.000000")  # 0.5 micro-dollar: to even (0)
    assert row_amount(price, 1.5) == Decimal("0.000002")  # 1.5: to even (2)
    assert row_amount(price, 2.5) == Decimal("0.000002")
    assert row_amount(Decimal("0.45"), 1.0).as_tuple().exponent == -6


def test_hour_rows_are_pro_rata_per_hour():
    start = at(2026, 1, 1, 9, 30)
    rows = hour_rows(Decimal("1.00"), start, start + timedelta(minutes=90))
    assert [(h.hour, s, a) for h, s, a in rows] == [(9, 1800.0, Decimal("0.5")), (10, 3600.0, Decimal("1"))]


def test_prices_are_taken_as_written():
    assert as_price(0.45) == Decimal("0.45")
    assert as_price(2) == Decimal(2)
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            as_price(bad)


# ---------------------------------------------------------------------------------------------------- windows
NOW = at(2026, 3, 15, 13, 45)


def window(period="", start_date="", end_date="", now=NOW) -> Window:
    v = Violations()
    w = resolve_window(period=period, start_date=start_date, end_date=end_date, now=now, v=v)
    v.raise_if_any()
    return w


@pytest.mark.parametrize(("query", "start", "end"), [
    ({"period": "daily"}, at(2026, 3, 15), at(2026, 3, 16)),
    ({"period": "monthly"}, at(2026, 3, 1), at(2026, 4, 1)),
    ({}, at(2026, 3, 1), at(2026, 4, 1)),
    ({"start_date": "2026-01-15"}, at(2026, 1, 15), at(2026, 2, 1)),
    ({"start_date": "2025-12-20"}, at(2025, 12, 20), at(2026, 1, 1)),
    ({"end_date": "2026-02-10"}, at(2026, 2, 1), at(2026, 2, 10)),
    ({"end_date": "2026-02-01"}, at(2026, 1, 1), at(2026, 2, 1)),  # all of January, not an empty window
    ({"start_date": "2026-01-10", "end_date": "2026-02-20"}, at(2026, 1, 10), at(2026, 2, 20)),
    ({"start_date": "2026-01-10", "end_date": "2026-01-10"}, at(2026, 1, 10), at(2026, 1, 10)),
    ({"period": "daily", "start_date": "2026-01-10"}, at(2026, 3, 15), at(2026, 3, 16)),  # period wins
], ids=lambda x: str(x) if isinstance(x, dict) else "")
def test_window_rules(query, start, end):
    assert window(**query) == Window(start, end)


def test_today_and_this_month_are_utc_not_the_callers_zone():
    new_york_evening = datetime(2026, 3, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 1 April 04:30 UTC
    assert window(period="daily", now=new_york_evening) == Window(at(2026, 4, 1), at(2026, 4, 2))
    assert window(now=new_york_evening) == Window(at(2026, 4, 1), at(2026, 5, 1))


def test_december_rolls_into_next_year():
    assert month_of(at(2026, 12, 31, 23, 59)) == Window(at(2026, 12, 1), at(2027, 1, 1))


@pytest.mark.parametrize(("query", "fields"), [
    ({"start_date": "2026-1-5"}, {"start_date"}),
    ({"start_date": "2026/01/05"}, {"start_date"}),
    ({"end_date": "20260105"}, {"end_date"}),
    ({"end_date": "2026-02-30"}, {"end_date"}),
    ({"start_date": "yesterday"}, {"start_date"}),
    ({"start_date": "0001-01-01"}, {"start_date"}),
    ({"period": "weekly"}, {"period"}),
    ({"period": "DAILY"}, {"period"}),
    ({"start_date": "2026-02-10", "end_date": "2026-02-01"}, {"end_date"}),  # reference bug #39 accepted it
    ({"start_date": "x", "end_date": "y", "period": "hourly"}, {"start_date", "end_date", "period"}),
])
def test_bad_queries_name_each_offending_field(query, fields):
    with pytest.raises(InvalidArgument) as err:
        window(**query)
    assert {v.field for v in err.value.violations} == fields
    assert all(f in err.value.message for f in fields)
