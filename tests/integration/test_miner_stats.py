"""Miner stats, scores, unique-chute history, thrash cooldowns and metrics on a live server (gRPC and REST), from
audit and compute-history rows written at times relative to the server's ManualClock. Every number is worked out
beside the row that produces it.

    hotkey  coldkey  instance  chute    created   activated  deleted               history / multiplier
    A       cold-1   a1        chute-a  NOW-3h    NOW-2h     alive (bounty)        0.5 NOW-3h..-2h, 2.0 from -2h
    A       cold-1   a2        chute-b  NOW-30h   NOW-29h    NOW-26h (public, 3h)  none, 1.5
    B       cold-1   b1        chute-a  NOW-1h    NOW-50m    alive                 none, null (1)
    C       cold-2   c1        chute-b  NOW-2h    NOW-2h     NOW-30m (valid)       3.0 NOW-2h..-30m
    C       cold-2   c2        chute-b  NOW-50m   NOW-45m    NOW-20m (public, 25m) none: excluded, a thrash
    D       cold-3   d1        chute-a  NOW-1h    NOW-1h     alive                 10.0 from NOW-1h; blacklisted
    E       (not registered)   e1       chute-b   NOW-1h     NOW-1h  alive         none, 1
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import grpc
import httpx
import pytest
from sqlalchemy import insert

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.miner.v1 import miner_pb2, miner_pb2_grpc
from gantry_client import Signer, connect
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.store.models import chutes, images, instance_audit, instance_compute_history, users

from ..conftest import ADMIN_METADATA, make_settings

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
M = timedelta(minutes=1)
E_HOTKEY = "5" + "E" * 47  # 48 alphanumerics, never registered


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture(scope="module")
async def app(database_url, redis_url, tmp_path_factory, clock):
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("stats")), clock=clock)
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture
async def http(app):
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def miners(clock) -> dict[str, Signer]:
    return {name: Signer.from_ed25519_seed(bytes([n]) * 32, clock=lambda: clock.now().timestamp())
            for n, name in enumerate("ABCD", start=1)}


async def audit(conn, instance_id, hotkey, chute_id, created, activated, deleted=None, spans=(), **kw):
    await conn.execute(insert(instance_audit).values(
        instance_id=instance_id, chute_id=chute_id, version="1", miner_uid=1, miner_hotkey=hotkey,
        created_at=created, activated_at=activated, deleted_at=deleted, **kw))
    for multiplier, started, ended in spans:
        await conn.execute(insert(instance_compute_history).values(
            instance_id=instance_id, compute_multiplier=multiplier, started_at=started, ended_at=ended))


@pytest.fixture
async def world(app, channel, clean_db, redis, miners):
    a, b, c, d = (miners[k].hotkey for k in "ABCD")
    cold1, cold2, cold3 = (Signer.from_ed25519_seed(bytes([n]) * 32).hotkey for n in (11, 12, 13))
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    await admin.UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(nodes=[
        admin_pb2.MetagraphNode(hotkey=hk, coldkey=cold, netuid=64, node_id=uid)
        for uid, (hk, cold) in enumerate(((a, cold1), (b, cold1), (c, cold2), (d, cold3)), start=1)]),
        metadata=ADMIN_METADATA)
    await admin.SetBlacklist(admin_pb2.SetBlacklistRequest(hotkey=d, reason="weight copying"),
                             metadata=ADMIN_METADATA)
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(users).values(user_id="u-owner", username="owner"))
        await conn.execute(insert(images).values(image_id="img-1", user_id="u-owner", name="vllm", tag="0.9",
                                                 created_at=NOW, updated_at=NOW))
        for chute_id, gpus in (("chute-a", 2), ("chute-b", 1)):
            await conn.execute(insert(chutes).values(
                chute_id=chute_id, user_id="u-owner", name=f"{chute_id} name", image_id="img-1", version="1",
                public=True, node_selector={"gpu_count": gpus}, created_at=NOW, updated_at=NOW))
        await audit(conn, "a1", a, "chute-a", NOW - 3 * H, NOW - 2 * H, bounty=True, compute_multiplier=2.0,
                    hourly_rate=3.6, spans=[(0.5, NOW - 3 * H, NOW - 2 * H), (2.0, NOW - 2 * H, None)])
        await audit(conn, "a2", a, "chute-b", NOW - 30 * H, NOW - 29 * H, NOW - 26 * H,
                    deletion_reason="miner initialized", compute_multiplier=1.5)
        await audit(conn, "b1", b, "chute-a", NOW - H, NOW - 50 * M)
        await audit(conn, "c1", c, "chute-b", NOW - 2 * H, NOW - 2 * H, NOW - 30 * M, valid_termination=True,
                    deletion_reason="scaled down", compute_multiplier=3.0, spans=[(3.0, NOW - 2 * H, NOW - 30 * M)])
        await audit(conn, "c2", c, "chute-b", NOW - 50 * M, NOW - 45 * M, NOW - 20 * M,
                    deletion_reason="miner initialized", compute_multiplier=1.0)
        await audit(conn, "d1", d, "chute-a", NOW - H, NOW - H, compute_multiplier=10.0, hourly_rate=7.2,
                    spans=[(10.0, NOW - H, None)])
        await audit(conn, "e1", E_HOTKEY, "chute-b", NOW - H, NOW - H)
    return a, b, c, d


def row(hotkey, total, bounty, seconds, units):
    return {"miner_hotkey": hotkey, "chute_id": None, "total_instances": total, "bounty_count": bounty,
            "compute_seconds": seconds, "compute_units": units, "invocation_count": total, "total_bounty": bounty}


async def test_stats_over_rest_give_each_window_exactly(http, world):
    a, b, c, d = world
    r = await http.get("/miner/stats")
    assert r.status_code == 200, r.text
    body = r.json()
    # past hour: D 10 x 3600; A 2.0 x 3600 (a2 was deleted before the hour); C 3.0 x 1800 (until NOW-30m);
    # B has no history: 1 x 3600 from created_at; E is not registered
    assert body["past_hour"]["instance_stats"] == [row(d, 1, 0, 3600.0, 36000.0), row(a, 1, 1, 3600.0, 7200.0),
                                                   row(c, 1, 0, 1800.0, 5400.0), row(b, 1, 0, 3600.0, 3600.0)]
    assert body["past_hour"]["compute_units"] == body["past_hour"]["instance_stats"]
    assert body["past_hour"]["bounties"] == [{"miner_hotkey": hk, "total_bounty": n}
                                             for hk, n in ((d, 0), (a, 1), (c, 0), (b, 0))]
    # past day: A's a1 from created NOW-3h: 0.5 x 3600 + 2.0 x 7200 = 16200; C's c1 3.0 x 5400 = 16200
    # (tie: by hotkey); a2 (deleted NOW-26h) is outside the day
    day = {r["miner_hotkey"]: (r["compute_seconds"], r["compute_units"]) for r in body["past_day"]["instance_stats"]}
    assert day == {a: (10800.0, 16200.0), b: (3600.0, 3600.0), c: (5400.0, 16200.0), d: (3600.0, 36000.0)}
    # all (7 days): A adds a2, NOW-30h .. NOW-26h at 1.5 without history: 14400 s, 21600 units
    assert body["all"]["instance_stats"][0] == row(a, 2, 1, 25200.0, 37800.0)
    assert [r["miner_hotkey"] for r in body["all"]["instance_stats"]] == [a, d, c, b]
    r = await http.get("/miner/stats", params={"miner_hotkey": b, "per_chute": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["past_hour"] == {"bounties": [], "instance_stats": [
        {**row(b, 1, 0, 3600.0, 3600.0), "chute_id": "chute-a", "total_bounty": None}],
        "compute_units": [{**row(b, 1, 0, 3600.0, 3600.0), "chute_id": "chute-a", "total_bounty": None}]}


async def test_stats_filtered_to_one_hotkey_per_chute_over_grpc(channel, world):
    a = world[0]
    stub = miner_pb2_grpc.MinerServiceStub(channel)
    got = await stub.GetStats(miner_pb2.GetStatsRequest(miner_hotkey=a, per_chute=True))
    rows = [(r.miner_hotkey, r.chute_id, r.total_instances, r.compute_seconds, r.compute_units,
             r.HasField("total_bounty")) for r in got.all.instance_stats]
    assert rows == [(a, "chute-b", 1, 14400.0, 21600.0, False), (a, "chute-a", 1, 10800.0, 16200.0, False)]
    assert list(got.all.bounties) == [] and list(got.past_hour.bounties) == []
    assert [r.chute_id for r in got.past_hour.instance_stats] == ["chute-a"]


async def test_a_malformed_miner_hotkey_is_refused_naming_the_field_even_when_stats_are_cached(http, channel, world):
    assert (await http.get("/miner/stats")).status_code == 200  # cached now
    r = await http.get("/miner/stats", params={"miner_hotkey": "not-a-hotkey"})
    assert r.status_code == 422, r.text  # the validator family's body for INVALID_ARGUMENT with a field
    assert [d["loc"][-1] for d in r.json()["detail"]] == ["miner_hotkey"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await miner_pb2_grpc.MinerServiceStub(channel).GetStats(miner_pb2.GetStatsRequest(miner_hotkey="x" * 47))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "miner_hotkey" in err.value.details()


async def test_scores_weigh_one_hotkey_per_coldkey_and_leave_out_the_blacklisted(http, channel, world):
    a, b, c, d = world
    got = await miner_pb2_grpc.MinerServiceStub(channel).GetScores(miner_pb2.GetScoresRequest())
    # 7-day units: A 37800, B 3600 (A's coldkey: dropped), C 16200, D blacklisted: 37800 / 54000, 16200 / 54000
    assert dict(got.final_scores) == {a: pytest.approx(0.7), c: pytest.approx(0.3)}
    assert sum(got.final_scores.values()) == pytest.approx(1.0)
    assert set(got.raw_values) == {a, b, c}
    r = await http.get("/miner/scores", params={"hotkey": a})
    assert r.status_code == 200, r.text
    assert r.json() == {"raw_values": {a: {"total_instances": 2, "bounty_score": 1.0, "instance_seconds": 25200.0,
                                           "instance_compute_units": 37800.0}},
                        "final_scores": {a: pytest.approx(0.7)}}
    assert (await http.get("/miner/scores", params={"hotkey": d})).json() == {"raw_values": {}, "final_scores": {}}


async def test_results_are_reused_until_the_cache_is_flushed(app, channel, world, redis):
    stub = miner_pb2_grpc.MinerServiceStub(channel)
    before = await stub.GetScores(miner_pb2.GetScoresRequest())
    async with app.rt.engine.begin() as conn:  # C gains 100 x 3600 units: it would now take a larger share
        await conn.execute(insert(instance_audit).values(
            instance_id="a3", chute_id="chute-a", version="1", miner_uid=1, miner_hotkey=world[2],
            created_at=NOW - H, activated_at=NOW - H, compute_multiplier=100.0))
    assert await stub.GetScores(miner_pb2.GetScoresRequest()) == before
    await redis.flushdb()
    after = await stub.GetScores(miner_pb2.GetScoresRequest())
    # C: 16200 + 100 x 3600 = 376200 of 414000
    assert after.final_scores[world[2]] == pytest.approx(376200 / 414000)


async def test_unique_chute_history_counts_chutes_per_hour_weighted_by_gpus(http, world):
    a = world[0]
    r = await http.get(f"/miner/unique_chute_history/{a}")
    assert r.status_code == 200, r.text
    points = r.json()
    assert len(points) == 168 and points[0]["time"] == ts(NOW - 167 * H) and points[-1]["time"] == ts(NOW)
    # a1 on chute-a (2 GPUs) since NOW-2h; a2 on chute-b (1 GPU) from NOW-29h until NOW-26h
    assert [(p["count"], p["total_count"]) for p in points[-4:]] == [(0, 0), (1, 2), (1, 2), (1, 2)]
    assert [(p["time"], p["count"], p["total_count"]) for p in points if p["count"]][:4] == [
        (ts(NOW - 29 * H), 1, 1), (ts(NOW - 28 * H), 1, 1), (ts(NOW - 27 * H), 1, 1), (ts(NOW - 2 * H), 1, 2)]


async def test_unique_chute_history_of_an_unregistered_hotkey_is_not_found(http, channel, world):
    assert (await http.get(f"/miner/unique_chute_history/{E_HOTKEY}")).status_code == 404
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await miner_pb2_grpc.MinerServiceStub(channel).GetUniqueChuteHistory(
            miner_pb2.GetUniqueChuteHistoryRequest(hotkey=E_HOTKEY))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_thrash_cooldowns_list_the_callers_recent_unjustified_deletions(app, http, miners, world):
    c = miners["C"]
    r = await http.get("/miner/thrash_cooldowns", headers=c.v1_purpose_headers("miner"))
    assert r.status_code == 200, r.text
    # c2 was deleted 20 minutes ago without a valid termination; c1's valid termination does not count
    assert r.json() == [{"chute_id": "chute-b", "chute_name": "chute-b name", "deleted_at": ts(NOW - 20 * M),
                         "cooldown_expires_at": ts(NOW + 100 * M)}]
    async with connect(app.grpc_addr, signer=miners["A"]) as channel:
        mine = await miner_pb2_grpc.MinerServiceStub(channel).GetThrashCooldowns(miner_pb2.GetThrashCooldownsRequest())
    assert list(mine.items) == []  # a2 was deleted 26 h ago
    assert (await http.get("/miner/thrash_cooldowns")).status_code == 401


async def test_metrics_stream_one_row_per_chute_of_the_last_hour(channel, world):
    got = [m.metrics async for m in miner_pb2_grpc.MinerServiceStub(channel).GetMetrics(miner_pb2.GetMetricsRequest())]
    assert [m.chute_id for m in got] == ["chute-a", "chute-b"]
    a = got[0]
    # a1 2.0 and d1 10.0 over the whole hour (b1 has no history): (7200 + 36000) / 7200; a1, b1, d1;
    # mean of the hourly rates 3.6 and 7.2, per second
    assert (a.compute_multiplier, a.instance_count) == (6.0, 3)
    assert a.per_second_price_usd == pytest.approx(5.4 / 3600)
    assert (a.start_date.ToDatetime(timezone.utc), a.end_date.ToDatetime(timezone.utc)) == (NOW - H, NOW)
    assert (a.total_invocations, a.total_compute_time, a.error_count, a.rate_limit_count) == (0, 0.0, 0, 0)
    assert got[1].instance_count == 3  # c1, c2 and e1 were alive in the hour
