"""What miners are paid by, pinned on small hand-computed data sets (domain/miner/scoring.py).

All times are relative to NOW; every expected number is worked out in the comment beside it.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gantry_server.domain.miner.scoring import (DAY, HOUR, WEEK, Audited, Node, Span, billing_interval, chute_metrics,
                                                counts, normalise, scores, stats_window, thrash_cooldowns,
                                                unique_chute_history, weighted_seconds)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
H = HOUR
M = timedelta(minutes=1)


def inst(instance_id="i1", hotkey="hk-a", chute_id="c1", *, created=NOW - 3 * H, activated=NOW - 2 * H,
         **kw) -> Audited:
    return Audited(instance_id, hotkey, chute_id, created_at=created, activated_at=activated, **kw)


def one_row(instances, window, spans=None, **kw):
    [row] = stats_window(instances, spans or {}, NOW, window, {i.miner_hotkey for i in instances}, **kw)
    return row


# -- billing interval: each edge of the window ---------------------------------------------------------------------
def test_an_instance_created_before_the_window_is_paid_from_the_window_start():
    i = inst(compute_multiplier=2.0)  # created NOW-3h, alive, no history
    assert billing_interval(i, NOW, H) == (NOW - H, NOW)
    row = one_row([i], H)
    assert (row.compute_seconds, row.compute_units) == (3600.0, 7200.0)  # 1 h x 2
    row = one_row([i], DAY)
    assert (row.compute_seconds, row.compute_units) == (10800.0, 21600.0)  # from created_at: 3 h x 2 (warmup too)


def test_an_instance_deleted_inside_the_window_is_paid_until_its_deletion():
    i = inst(created=NOW - 5 * H, activated=NOW - 4 * H, deleted_at=NOW - 30 * M, deletion_reason="miner initialized")
    assert billing_interval(i, NOW, H) == (NOW - H, NOW - 30 * M)
    assert one_row([i], H).compute_seconds == 1800.0
    assert one_row([i], DAY).compute_seconds == 4.5 * 3600  # created NOW-5h .. deleted NOW-30m


def test_stop_billing_at_before_now_ends_the_interval():
    i = inst(stop_billing_at=NOW - 15 * M)
    assert billing_interval(i, NOW, H) == (NOW - H, NOW - 15 * M)
    assert one_row([i], H).compute_seconds == 2700.0


def test_an_instance_deleted_before_the_window_started_earns_nothing_in_it():
    i = inst(created=NOW - 6 * H, activated=NOW - 5 * H, deleted_at=NOW - 2 * H, deletion_reason="miner initialized")
    assert billing_interval(i, NOW, H) is None
    assert stats_window([i], {}, NOW, H, {"hk-a"}) == []
    assert one_row([i], DAY).compute_seconds == 4 * 3600.0  # NOW-6h .. NOW-2h


def test_billing_stopped_before_the_window_leaves_an_empty_interval():
    assert billing_interval(inst(stop_billing_at=NOW - 90 * M), NOW, H) is None


def test_the_7_day_window_clips_an_older_instance_to_7_days():
    i = inst(created=NOW - 10 * DAY, activated=NOW - 10 * DAY + H)
    assert one_row([i], WEEK).compute_seconds == 7 * 86400.0


# -- compute units from the compute history ------------------------------------------------------------------------
def test_compute_units_weigh_each_overlapping_span_by_its_multiplier():
    i = inst(compute_multiplier=3.0)  # created NOW-3h, activated NOW-2h
    spans = {"i1": [Span(0.5, NOW - 3 * H, NOW - 2 * H),  # warmup
                    Span(2.0, NOW - 2 * H, NOW - 30 * M),
                    Span(3.0, NOW - 30 * M, None)]}  # open: runs until now
    # past hour [NOW-1h, NOW]: 2.0 x 1800 + 3.0 x 1800 = 9000
    assert one_row([i], H, spans).compute_units == 9000.0
    # past day [NOW-3h, NOW]: 0.5 x 3600 + 2.0 x 5400 + 3.0 x 1800 = 1800 + 10800 + 5400 = 18000
    row = one_row([i], DAY, spans)
    assert (row.compute_seconds, row.compute_units) == (10800.0, 18000.0)


def test_a_span_is_clipped_to_the_billing_end():
    i = inst(stop_billing_at=NOW - 30 * M)
    spans = {"i1": [Span(4.0, NOW - 2 * H, None)]}
    assert one_row([i], H, spans).compute_units == 4.0 * 1800  # NOW-1h .. stop_billing_at


def test_without_history_the_audit_multiplier_applies_and_defaults_to_1():
    assert weighted_seconds(NOW - H, NOW, [], 2.5, NOW) == 9000.0
    assert weighted_seconds(NOW - H, NOW, [], None, NOW) == 3600.0
    assert one_row([inst(compute_multiplier=None)], H).compute_units == 3600.0


def test_history_that_does_not_overlap_the_interval_falls_back_to_the_audit_multiplier():
    spans = [Span(9.0, NOW - 5 * H, NOW - 4 * H)]
    assert weighted_seconds(NOW - H, NOW, spans, 2.0, NOW) == 7200.0


def test_rows_are_summed_per_hotkey_and_sorted_by_compute_units_descending():
    instances = [inst("i1", "hk-a", compute_multiplier=1.0, bounty=True),
                 inst("i2", "hk-a", "c2", compute_multiplier=1.0),
                 inst("i3", "hk-b", compute_multiplier=5.0, bounty=True)]
    rows = stats_window(instances, {}, NOW, H, {"hk-a", "hk-b"})
    assert [(r.miner_hotkey, r.chute_id, r.total_instances, r.bounty_count, r.compute_seconds, r.compute_units)
            for r in rows] == [("hk-b", None, 1, 1, 3600.0, 18000.0), ("hk-a", None, 2, 1, 7200.0, 7200.0)]
    per_chute = stats_window(instances, {}, NOW, H, {"hk-a", "hk-b"}, per_chute=True)
    assert [(r.miner_hotkey, r.chute_id, r.compute_units) for r in per_chute] == [
        ("hk-b", "c1", 18000.0), ("hk-a", "c1", 3600.0), ("hk-a", "c2", 3600.0)]


def test_only_registered_hotkeys_with_compute_appear():
    instances = [inst("i1", "hk-a"), inst("i2", "hk-unregistered"), inst("i3", "hk-zero", compute_multiplier=0.0)]
    rows = stats_window(instances, {}, NOW, H, {"hk-a", "hk-zero"})
    assert [r.miner_hotkey for r in rows] == ["hk-a"]


# -- which instances count -----------------------------------------------------------------------------------------
def deleted(lived: timedelta, **kw) -> Audited:
    return inst(created=NOW - 5 * H, activated=NOW - 4 * H, deleted_at=NOW - 4 * H + lived, **kw)


@pytest.mark.parametrize("instance,counted", [
    (inst(), True),  # still alive
    (inst(activated=None), False),  # never activated
    (deleted(59 * M, deletion_reason="miner initialized"), False),  # public, lived under an hour
    (deleted(H, deletion_reason="miner initialized"), True),  # public, lived exactly an hour
    (deleted(3 * H, billed_to="u1", deletion_reason="miner initialized"), False),  # private: lifetime is no excuse
    (deleted(10 * M, valid_termination=True, deletion_reason="scaled down"), True),
    (deleted(10 * M, valid_termination=False, deletion_reason="scaled down"), False),
    (deleted(10 * M, billed_to="u1", deletion_reason="user has zero/negative balance (private chute)"), True),
    (deleted(10 * M, deletion_reason="job has been terminated due to insufficient user balance"), True),
    (deleted(10 * M, deletion_reason="user-defined/private chute instance has not been used since "
                                     "shutdown_after_seconds"), True),
    (deleted(10 * M, deletion_reason="chute c1 has an old version 1.0, now 1.1"), True),
    (deleted(10 * M, deletion_reason="User has zero/negative balance (private chute)"), False),  # exact match only
])
def test_inclusion_rules(instance, counted):
    assert counts(instance) is counted


def test_a_short_lived_public_deletion_earns_nothing_but_a_valid_termination_does():
    short = deleted(30 * M, deletion_reason="miner initialized")  # NOW-4h .. NOW-3h30
    valid = deleted(30 * M, valid_termination=True, instance_id="i2", hotkey="hk-b")
    rows = stats_window([short, valid], {}, NOW, DAY, {"hk-a", "hk-b"})
    assert [(r.miner_hotkey, r.compute_seconds) for r in rows] == [("hk-b", 5400.0)]  # created NOW-5h .. NOW-3h30


# -- scores --------------------------------------------------------------------------------------------------------
def test_scores_keep_one_hotkey_per_coldkey_drop_blacklisted_and_sum_to_1():
    instances = [inst("a", "hk-a", compute_multiplier=3.0, created=NOW - H),  # 3 x 3600 = 10800
                 inst("b", "hk-b", compute_multiplier=1.0, created=NOW - H),  # 3600, same coldkey as hk-a
                 inst("c", "hk-c", compute_multiplier=1.0, created=NOW - H, bounty=True),  # 3600
                 inst("d", "hk-d", compute_multiplier=9.0, created=NOW - H),  # blacklisted
                 inst("e", "hk-e", compute_multiplier=9.0, created=NOW - H)]  # not registered
    nodes = {"hk-a": Node("cold-1"), "hk-b": Node("cold-1"), "hk-c": Node("cold-2"),
             "hk-d": Node("cold-3", blacklisted=True)}
    result = scores(instances, {}, NOW, nodes)
    assert result.final_scores == {"hk-a": 0.75, "hk-c": 0.25}  # 10800 / 14400 and 3600 / 14400
    assert sum(result.final_scores.values()) == 1.0
    assert sorted(result.raw_values) == ["hk-a", "hk-b", "hk-c"]  # the purged hotkey keeps its raw values
    c = result.raw_values["hk-c"]
    assert (c.total_instances, c.bounty_count, c.compute_seconds, c.compute_units) == (1, 1, 3600.0, 3600.0)


def test_the_lower_hotkey_of_a_coldkey_is_dropped_whichever_is_listed_first():
    instances = [inst("a", "hk-a", compute_multiplier=1.0), inst("z", "hk-z", compute_multiplier=2.0)]
    result = scores(instances, {}, NOW, {"hk-a": Node("cold"), "hk-z": Node("cold")})
    assert result.final_scores == {"hk-z": 1.0}


def test_hotkeys_with_an_unknown_coldkey_are_not_merged():
    instances = [inst("a", "hk-a", compute_multiplier=1.0), inst("b", "hk-b", compute_multiplier=1.0)]
    result = scores(instances, {}, NOW, {"hk-a": Node(""), "hk-b": Node("")})
    assert result.final_scores == {"hk-a": 0.5, "hk-b": 0.5}


def test_scores_are_uniform_when_every_score_is_zero():
    instances = [inst(str(n), f"hk-{n}", compute_multiplier=0.0) for n in range(4)]
    result = scores(instances, {}, NOW, {f"hk-{n}": Node(f"cold-{n}") for n in range(4)})
    assert result.final_scores == {f"hk-{n}": 0.25 for n in range(4)}


def test_normalise_clips_negative_scores_to_zero():
    assert normalise({"a": -1.0, "b": 1.0, "c": 3.0}) == {"a": 0.0, "b": 0.25, "c": 0.75}
    assert normalise({}) == {}


def test_scores_use_the_7_day_window():
    old = inst("old", "hk-a", created=NOW - 9 * DAY, activated=NOW - 9 * DAY,
               deleted_at=NOW - 8 * DAY, deletion_reason="miner initialized")
    recent = inst("new", "hk-b", created=NOW - 2 * DAY, activated=NOW - 2 * DAY)
    result = scores([old, recent], {}, NOW, {"hk-a": Node("1"), "hk-b": Node("2")})
    assert list(result.raw_values) == ["hk-b"] and result.raw_values["hk-b"].compute_seconds == 2 * 86400.0


# -- unique chute history ------------------------------------------------------------------------------------------
def test_history_has_168_hour_aligned_points_oldest_first_ending_with_the_current_hour():
    now = NOW + 30 * M  # 12:30
    points = unique_chute_history([], {}, now)
    assert len(points) == 168
    assert points[-1].time == NOW and points[0].time == NOW - 167 * H
    assert all(b.time - a.time == H for a, b in zip(points, points[1:]))


def test_history_counts_distinct_chutes_per_hour_and_weighs_them_by_gpu_count():
    now = NOW + 30 * M  # 12:30; hours 10:00, 11:00, 12:00 are the last three points
    instances = [
        inst("a1", chute_id="c1", activated=NOW - 2 * H, deleted_at=NOW - H),  # 10:00 .. 11:00 exactly
        inst("a2", chute_id="c1", activated=NOW - 2 * H + 10 * M, deleted_at=NOW - H - 5 * M),  # same chute
        inst("b1", chute_id="c2", activated=NOW - M),  # 11:59, alive
        inst("x", chute_id="c3", activated=None),  # never active
    ]
    points = unique_chute_history(instances, {"c1": 4, "c2": 2}, now)
    assert [(p.time, p.count, p.total_count) for p in points[-4:]] == [
        (NOW - 3 * H, 0, 0), (NOW - 2 * H, 1, 4), (NOW - H, 1, 2), (NOW, 1, 2)]
    assert sum(p.count for p in points) == 3


def test_an_instance_alive_all_week_counts_in_every_hour_and_a_vanished_chute_weighs_1():
    points = unique_chute_history([inst(chute_id="gone", activated=NOW - 30 * DAY)], {}, NOW)
    assert {(p.count, p.total_count) for p in points} == {(1, 1)}


# -- thrash cooldowns ----------------------------------------------------------------------------------------------
def test_thrash_cooldowns_keep_the_latest_deletion_per_chute_and_end_2h_after_it():
    instances = [
        inst("a", chute_id="c1", deleted_at=NOW - 90 * M),
        inst("b", chute_id="c1", deleted_at=NOW - 30 * M),  # the latest on c1
        inst("c", chute_id="c2", deleted_at=NOW - 60 * M),
        inst("d", chute_id="c3", deleted_at=NOW - 10 * M, valid_termination=True),  # not thrash
        inst("e", chute_id="c4", deleted_at=NOW - 2 * H),  # cooldown over exactly now
        inst("f", chute_id="c5", activated=None, deleted_at=NOW - 5 * M),  # never activated
        inst("g", chute_id="c6"),  # alive
    ]
    assert [(c.chute_id, c.deleted_at, c.cooldown_expires_at) for c in thrash_cooldowns(instances, NOW)] == [
        ("c1", NOW - 30 * M, NOW + 90 * M), ("c2", NOW - 60 * M, NOW + 60 * M)]


# -- metrics -------------------------------------------------------------------------------------------------------
def test_metrics_average_the_multiplier_over_the_hour_and_price_per_second():
    instances = [inst("i1", chute_id="c1", hourly_rate=3.6),
                 inst("i2", chute_id="c1", activated=NOW - 15 * M, created=NOW - 20 * M, hourly_rate=7.2),
                 inst("i3", chute_id="c1", deleted_at=NOW - 2 * H + M, hourly_rate=100.0),  # gone before the hour
                 inst("i4", chute_id="c2", compute_multiplier=None)]
    spans = {"i1": [Span(2.0, NOW - 2 * H, NOW - 30 * M), Span(4.0, NOW - 30 * M, None)],
             "i2": [Span(0.3, NOW - 20 * M, NOW - 15 * M), Span(1.0, NOW - 15 * M, None)]}
    [c1, c2] = chute_metrics(instances, spans, NOW)
    # (2 x 1800 + 4 x 1800 + 0.3 x 300 + 1 x 900) / (3600 + 1200) = 11790 / 4800
    assert c1.compute_multiplier == pytest.approx(11790 / 4800)
    assert (c1.chute_id, c1.instance_count, c1.start, c1.end) == ("c1", 2, NOW - H, NOW)
    assert c1.per_second_price_usd == pytest.approx((3.6 + 7.2) / 2 / 3600)
    assert (c2.chute_id, c2.compute_multiplier, c2.instance_count, c2.per_second_price_usd) == ("c2", 1.0, 1, 0.0)
