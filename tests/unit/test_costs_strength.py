"""Cost rules at their edges (issue 17): the documented date bounds, a window's exclusive end, a zero price."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from gantry_server.broker.costs import Window, as_price, hour_rows, resolve_window
from gantry_server.domain.validation import Violations
from gantry_server.errors import InvalidArgument

UTC = timezone.utc
NOW = datetime(2026, 3, 15, 13, 45, tzinfo=UTC)


def window(**query) -> Window:
    v = Violations()
    w = resolve_window(**({"period": "", "start_date": "", "end_date": ""} | query), now=NOW, v=v)
    v.raise_if_any()
    return w


@pytest.mark.parametrize(("field", "value"), [("start_date", "1970-01-01"), ("end_date", "1970-01-02"),
                                              ("start_date", "9998-12-31"), ("end_date", "9998-12-31")])
def test_the_first_and_last_allowed_dates_are_accepted(field, value):
    assert window(**{field: value}).start.year in (1970, 9998)


@pytest.mark.parametrize(("field", "value"), [("start_date", "1969-12-31"), ("end_date", "1969-12-31"),
                                              ("start_date", "9999-01-01"), ("end_date", "9999-12-31")])
def test_dates_outside_1970_to_9998_are_refused_naming_the_field(field, value):
    with pytest.raises(InvalidArgument) as err:
        window(**{field: value})
    assert [(v.field, v.description) for v in err.value.violations] == [
        (field, "year must be between 1970 and 9998")]


def test_a_window_holds_its_start_hour_and_not_its_end_hour():
    w = Window(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    assert w.start in w and w.end - timedelta(hours=1) in w
    assert w.end not in w and w.start - timedelta(hours=1) not in w


def test_a_zero_price_is_allowed_and_costs_nothing():
    assert as_price(0) == Decimal(0) and as_price(0.0) == Decimal(0) and as_price("0") == Decimal(0)
    start = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    assert [a for _, _, a in hour_rows(as_price(0), start, start + timedelta(hours=2))] == [Decimal("0.000000")] * 3


@pytest.fixture
def server_in_new_york():
    """The process's local zone is not UTC (as on a server set to local time); restored afterwards."""
    import os
    import time

    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_today_and_this_month_are_utc_whatever_the_servers_local_zone(server_in_new_york):
    from gantry_server.broker.costs import month_of

    evening = datetime(2026, 3, 31, 23, 30, tzinfo=timezone(timedelta(hours=-4)))  # 1 April 03:30 UTC
    assert month_of(evening) == Window(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC))
    v = Violations()
    assert resolve_window(period="daily", start_date="", end_date="", now=evening, v=v) == \
        Window(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC))
