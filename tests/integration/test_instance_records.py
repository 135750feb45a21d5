"""Instance records on a live server (gRPC and REST): the auditor's reconciliation and compute-history CSVs with
their time windows, and a miner disabling or deleting its own instance (404 for anyone else's), with the job it
ran failed and the last-active-instance penalty.

The server runs on a ManualClock, so every window edge is an exact instant; rows are written with SQLAlchemy Core
at chosen timestamps.
"""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import grpc
import httpx
import pytest
from sqlalchemy import insert, select, update

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.instances.v1 import instances_pb2, instances_pb2_grpc
from gantry_client import Signer, connect
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.store.models import (chutes, images, instance_audit, instance_compute_history, instance_nodes,
                                        instances, jobs, nodes, servers, users)

from ..conftest import ADMIN_METADATA, make_settings
from .servers_harness import error_info

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
MINER_SEED = bytes(range(32))
OTHER_SEED = bytes(range(9, 41))
RECONCILIATION_EDGE = NOW - timedelta(days=7, hours=1)
HISTORY_EDGE = NOW - timedelta(days=8)
US = timedelta(microseconds=1)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture(scope="module")
async def app(database_url, redis_url, tmp_path_factory, clock):
    """This module's server: conftest's, on a ManualClock (conftest's `channel` connects to it)."""
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("records")), clock=clock)
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture
async def http(app):
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=30) as client:
        yield client


def signer(clock, seed: bytes) -> Signer:
    return Signer.from_ed25519_seed(seed, clock=lambda: clock.now().timestamp())


@pytest.fixture
async def miners(app, channel, clean_db, redis, clock):
    """Two registered miners and the rows every test stands on: an owner, an image, a public and a private
    chute, a server with four GPUs per miner."""
    clock.advance(microseconds=(NOW - clock.now()) // US)  # back to NOW after a test that moved it
    miner, other = signer(clock, MINER_SEED), signer(clock, OTHER_SEED)
    await admin_pb2_grpc.AdminServiceStub(channel).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
        nodes=[admin_pb2.MetagraphNode(hotkey=miner.hotkey, netuid=64, node_id=7),
               admin_pb2.MetagraphNode(hotkey=other.hotkey, netuid=64, node_id=8)]), metadata=ADMIN_METADATA)
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(users).values(user_id="u-owner", username="owner"))
        await conn.execute(insert(images).values(image_id="img-1", user_id="u-owner", name="vllm", tag="0.9",
                                                 created_at=NOW, updated_at=NOW))
        for chute_id, public in (("chute-public", True), ("chute-private", False)):
            await conn.execute(insert(chutes).values(chute_id=chute_id, user_id="u-owner", name=chute_id,
                                                     image_id="img-1", version="1", public=public,
                                                     created_at=NOW, updated_at=NOW))
        for i, who in enumerate((miner, other)):
            await conn.execute(insert(servers).values(server_id=f"srv-{i}", name=f"box-{i}", ip=f"10.0.0.{i + 1}",
                                                      miner_hotkey=who.hotkey, netuid=64, created_at=NOW))
            await conn.execute(insert(nodes), [dict(
                uuid=f"GPU-{i}-{g}", miner_hotkey=who.hotkey, server_id=f"srv-{i}", gpu_identifier="h100",
                name="NVIDIA H100", memory=85_899_345_920, processors=132, clock_rate=1980.0,
                max_threads_per_processor=2048, device_index=g, verification_host="127.0.0.1",
                verification_port=8000 + g, created_at=NOW) for g in range(4)])
    return miner, other


_PORTS = iter(range(20000, 60000))


async def put_instance(app, instance_id: str, who: Signer, *, chute_id: str = "chute-public", active: bool = True,
                       multiplier: float = 2.0, bounty: bool = True, gpus: tuple[str, ...] = ()) -> None:
    """An instance as activation leaves it: the row, its GPUs, its audit row and (once activated) an open
    compute-history row started at activation."""
    created, activated = NOW - timedelta(hours=3), NOW - timedelta(hours=2)
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(instances).values(
            instance_id=instance_id, chute_id=chute_id, version="1", host="127.0.0.1", port=next(_PORTS),
            miner_uid=7, miner_hotkey=who.hotkey, miner_coldkey="cold", active=active, verified=True,
            created_at=created, activated_at=activated, last_verified_at=activated, compute_multiplier=multiplier,
            bounty=bounty, symmetric_key_enc=b"envelope"))
        if gpus:
            await conn.execute(insert(instance_nodes), [{"instance_id": instance_id, "node_id": g} for g in gpus])
        await conn.execute(insert(instance_audit).values(
            instance_id=instance_id, chute_id=chute_id, version="1", miner_uid=7, miner_hotkey=who.hotkey,
            created_at=created, verified_at=activated, activated_at=activated, compute_multiplier=multiplier,
            bounty=bounty))
        await conn.execute(insert(instance_compute_history).values(
            instance_id=instance_id, compute_multiplier=multiplier, started_at=activated))


async def rows(app, table, *where) -> list[dict]:
    async with app.rt.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(select(table).where(*where))).mappings()]


async def one(app, table, *where) -> dict:
    [row] = await rows(app, table, *where)
    return row


async def as_miner(app, who: Signer, rpc: str, request):
    async with connect(app.grpc_addr, signer=who) as channel:
        return await getattr(instances_pb2_grpc.InstanceServiceStub(channel), rpc)(request)


async def csv_over_grpc(channel, rpc: str) -> list[bytes]:
    request = getattr(instances_pb2, f"{rpc}Request")()
    return [m.data async for m in getattr(instances_pb2_grpc.InstanceServiceStub(channel), rpc)(request)]


def parse(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode(), newline="")))


# -- reconciliation CSV ------------------------------------------------------------------------------------------
async def put_audit(app, instance_id: str, *, activated_at: datetime | None, deleted_at: datetime | None) -> None:
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(instance_audit).values(
            instance_id=instance_id, chute_id="chute-public", version="1", miner_uid=7, miner_hotkey="5Hk",
            created_at=NOW - timedelta(days=30), activated_at=activated_at, deleted_at=deleted_at,
            deletion_reason="gone" if deleted_at else None))


async def test_reconciliation_csv_lists_activated_instances_live_or_deleted_within_7_days_1_hour(app, channel,
                                                                                                  http, miners):
    activated = NOW - timedelta(days=20)
    await put_audit(app, "a-live", activated_at=activated, deleted_at=None)
    await put_audit(app, "b-deleted-at-edge", activated_at=activated, deleted_at=RECONCILIATION_EDGE)
    await put_audit(app, "c-deleted-before-edge", activated_at=activated, deleted_at=RECONCILIATION_EDGE - US)
    await put_audit(app, "d-deleted-yesterday", activated_at=activated,
                    deleted_at=NOW - timedelta(days=1, microseconds=-250))
    await put_audit(app, "e-never-activated", activated_at=None, deleted_at=None)

    body = b"".join(await csv_over_grpc(channel, "GetInstanceReconciliationCsv"))
    assert body.startswith(b"instance_id,deleted_at\r\n")
    assert sorted(parse(body)[1:]) == [
        ["a-live", ""],
        ["b-deleted-at-edge", "2026-02-23 11:00:00"],
        ["d-deleted-yesterday", "2026-03-01 12:00:00.000250"],
    ]

    r = await http.get("/instances/reconciliation_csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="audit-reconciliation.csv"'
    assert r.content == body


async def test_reconciliation_window_moves_with_the_server_clock(app, channel, clock, miners):
    await put_audit(app, "deleted", activated_at=NOW - timedelta(days=9), deleted_at=NOW - timedelta(days=7))
    assert parse(b"".join(await csv_over_grpc(channel, "GetInstanceReconciliationCsv")))[1:] == [
        ["deleted", "2026-02-23 12:00:00"]]
    clock.advance(hours=1, microseconds=1)
    assert parse(b"".join(await csv_over_grpc(channel, "GetInstanceReconciliationCsv"))) == [
        ["instance_id", "deleted_at"]]


async def test_an_empty_export_is_the_header_alone(app, channel, http, miners):
    assert await csv_over_grpc(channel, "GetInstanceReconciliationCsv") == [b"instance_id,deleted_at\r\n"]
    r = await http.get("/instances/compute_history_csv")
    assert r.status_code == 200 and r.text == "instance_id,compute_multiplier,started_at,ended_at\r\n"


async def test_large_exports_stream_in_chunks_of_1000_rows_with_one_header(app, channel, miners):
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(instance_audit), [dict(
            instance_id=f"i-{n:05d}", chute_id="chute-public", version="1", miner_uid=7, miner_hotkey="5Hk",
            created_at=NOW, activated_at=NOW) for n in range(2500)])
    chunks = await csv_over_grpc(channel, "GetInstanceReconciliationCsv")
    assert [len(parse(c)) for c in chunks] == [1001, 1000, 500]  # the header rides in the first
    records = parse(b"".join(chunks))
    assert records[0] == ["instance_id", "deleted_at"] and records.count(["instance_id", "deleted_at"]) == 1
    assert [r[0] for r in records[1:]] == [f"i-{n:05d}" for n in range(2500)]


# -- compute-history CSV -----------------------------------------------------------------------------------------
async def test_compute_history_csv_has_open_rows_and_rows_ended_within_8_days_in_instance_then_start_order(
        app, channel, http, miners):
    h = [("inst-b", 1.5, NOW - timedelta(days=2), None),
         ("inst-a", 0.25, NOW - timedelta(days=9), HISTORY_EDGE),
         ("inst-a", 3.0, HISTORY_EDGE, None),
         ("inst-a", 1.0, NOW - timedelta(days=10), HISTORY_EDGE - US),
         ("inst-c", 0.1, NOW - timedelta(days=1, seconds=-1), NOW - timedelta(microseconds=500))]
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(instance_compute_history), [
            dict(instance_id=i, compute_multiplier=m, started_at=s, ended_at=e) for i, m, s, e in h])

    body = b"".join(await csv_over_grpc(channel, "GetInstanceComputeHistoryCsv"))
    assert parse(body) == [
        ["instance_id", "compute_multiplier", "started_at", "ended_at"],
        ["inst-a", "0.25", "2026-02-21 12:00:00", "2026-02-22 12:00:00"],
        ["inst-a", "3.0", "2026-02-22 12:00:00", ""],
        ["inst-b", "1.5", "2026-02-28 12:00:00", ""],
        ["inst-c", "0.1", "2026-03-01 12:00:01", "2026-03-02 11:59:59.999500"],
    ]

    r = await http.get("/instances/compute_history_csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="compute-history.csv"'
    assert r.content == body


async def test_compute_history_pages_keep_order_across_chunk_boundaries(app, channel, miners):
    """Rows sharing instance_id and started_at straddle a page boundary: none is lost or repeated."""
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(instance_compute_history), [
            dict(instance_id=f"inst-{n // 3:04d}", compute_multiplier=float(n), started_at=NOW - timedelta(hours=1),
                 ended_at=NOW) for n in range(1200)])
    chunks = await csv_over_grpc(channel, "GetInstanceComputeHistoryCsv")
    records = parse(b"".join(chunks))[1:]
    assert len(chunks) == 2 and len(records) == 1200
    assert sorted(float(r[1]) for r in records) == [float(n) for n in range(1200)]
    assert [r[0] for r in records] == sorted(r[0] for r in records)


# -- disable ---------------------------------------------------------------------------------------------------
async def test_disable_sets_active_false_and_leaves_verified(app, miners):
    miner, _ = miners
    await put_instance(app, "inst-1", miner)
    answer = await as_miner(app, miner, "DisableInstance",
                            instances_pb2.DisableInstanceRequest(chute_id="chute-public", instance_id="inst-1"))
    assert (answer.instance_id, answer.disabled) == ("inst-1", True)
    row = await one(app, instances, instances.c.instance_id == "inst-1")
    assert (row["active"], row["verified"]) == (False, True)


async def test_disable_over_rest_answers_the_legacy_body(app, http, miners):
    miner, _ = miners
    await put_instance(app, "inst-1", miner)
    r = await http.post("/instances/chute-public/inst-1/disable", headers=miner.v1_purpose_headers("instances"))
    assert r.status_code == 200 and r.json() == {"instance_id": "inst-1", "disabled": True}
    assert (await one(app, instances, instances.c.instance_id == "inst-1"))["active"] is False


async def test_disabling_another_miners_instance_is_404_and_changes_nothing(app, http, miners):
    miner, other = miners
    await put_instance(app, "theirs", other)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await as_miner(app, miner, "DisableInstance",
                       instances_pb2.DisableInstanceRequest(chute_id="chute-public", instance_id="theirs"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and error_info(err.value).reason == "INSTANCE_NOT_FOUND"
    path = "/instances/chute-public/theirs/disable"
    r = await http.post(path, headers=miner.v2_headers("POST", path, b""))
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    # the right miner naming the wrong chute is no better
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await as_miner(app, other, "DisableInstance",
                       instances_pb2.DisableInstanceRequest(chute_id="chute-private", instance_id="theirs"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await one(app, instances, instances.c.instance_id == "theirs"))["active"] is True


# -- delete ----------------------------------------------------------------------------------------------------
async def delete(app, who: Signer, instance_id: str, chute_id: str = "chute-public"):
    return await as_miner(app, who, "DeleteInstance",
                          instances_pb2.DeleteInstanceRequest(chute_id=chute_id, instance_id=instance_id))


async def test_delete_removes_the_instance_frees_its_gpus_and_audits_miner_initialized(app, miners):
    miner, other = miners
    await put_instance(app, "inst-1", miner, gpus=("GPU-0-0", "GPU-0-1"))
    await put_instance(app, "keeps-chute-alive", other)
    answer = await delete(app, miner, "inst-1")
    assert (answer.instance_id, answer.deleted) == ("inst-1", True)
    assert await rows(app, instances, instances.c.instance_id == "inst-1") == []
    assert await rows(app, instance_nodes, instance_nodes.c.instance_id == "inst-1") == []
    audit = await one(app, instance_audit, instance_audit.c.instance_id == "inst-1")
    assert (audit["deleted_at"], audit["deletion_reason"]) == (NOW, "miner initialized")
    [history] = await rows(app, instance_compute_history, instance_compute_history.c.instance_id == "inst-1")
    assert (history["ended_at"], history["compute_multiplier"]) == (NOW, 2.0)  # another instance is active


async def test_delete_over_rest_answers_the_legacy_body(app, http, miners):
    miner, _ = miners
    await put_instance(app, "inst-1", miner)
    path = "/instances/chute-public/inst-1"
    r = await http.delete(path, headers=miner.v2_headers("DELETE", path))
    assert r.status_code == 200 and r.json() == {"instance_id": "inst-1", "deleted": True}
    assert (await one(app, instance_audit, instance_audit.c.instance_id == "inst-1"))["deleted_at"] == NOW


async def test_deleting_another_miners_instance_is_404_and_keeps_it(app, http, miners):
    miner, other = miners
    await put_instance(app, "theirs", other)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await delete(app, miner, "theirs")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    path = "/instances/chute-public/theirs"
    assert (await http.delete(path, headers=miner.v2_headers("DELETE", path))).status_code == 404
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await delete(app, other, "theirs", chute_id="no-such-chute")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(await rows(app, instances, instances.c.instance_id == "theirs")) == 1
    assert (await one(app, instance_audit, instance_audit.c.instance_id == "theirs"))["deleted_at"] is None


@pytest.mark.parametrize(("chute_id", "rate", "bounty"), [("chute-public", 0.2, False), ("chute-private", 0.0, True)])
async def test_deleting_the_last_active_instance_is_penalised_public_by_0_1_private_to_0(app, miners, chute_id,
                                                                                           rate, bounty):
    miner, other = miners
    await put_instance(app, "last", miner, chute_id=chute_id, multiplier=2.0)
    await put_instance(app, "disabled", other, chute_id=chute_id, active=False)  # does not keep the chute alive
    await delete(app, miner, "last", chute_id=chute_id)
    [history] = await rows(app, instance_compute_history, instance_compute_history.c.instance_id == "last")
    assert history["ended_at"] == NOW and history["compute_multiplier"] == pytest.approx(rate)
    audit = await one(app, instance_audit, instance_audit.c.instance_id == "last")
    assert audit["compute_multiplier"] == pytest.approx(rate) and audit["bounty"] is bounty
    assert audit["deletion_reason"] == "miner initialized"


async def test_replacing_an_instance_left_by_a_rolling_update_is_not_penalised_and_counts_for_stats(app, miners):
    miner, _ = miners
    await put_instance(app, "old-version", miner, multiplier=2.0)  # version "1", the chute's only instance
    async with app.rt.engine.begin() as conn:
        await conn.execute(update(chutes).where(chutes.c.chute_id == "chute-public").values(version="2"))
    await delete(app, miner, "old-version")
    audit = await one(app, instance_audit, instance_audit.c.instance_id == "old-version")
    assert (audit["compute_multiplier"], audit["bounty"]) == (2.0, True)  # the last-instance penalty is not applied
    assert "has an old version" in audit["deletion_reason"]  # what stats and scores count as a valid end


async def test_no_penalty_while_another_active_instance_serves_the_chute(app, miners):
    miner, other = miners
    await put_instance(app, "first", miner, multiplier=2.0)
    await put_instance(app, "second", other, multiplier=4.0)
    await delete(app, miner, "first")
    first = await one(app, instance_audit, instance_audit.c.instance_id == "first")
    assert (first["compute_multiplier"], first["bounty"]) == (2.0, True)
    # now "second" is the last one: its delete is penalised, and only its own rows are touched
    await delete(app, other, "second")
    second = await one(app, instance_audit, instance_audit.c.instance_id == "second")
    assert second["compute_multiplier"] == pytest.approx(0.4) and second["bounty"] is False
    history = {r["instance_id"]: r["compute_multiplier"] for r in await rows(app, instance_compute_history)}
    assert history == {"first": 2.0, "second": pytest.approx(0.4)}


async def test_delete_fails_the_unfinished_job_as_terminated_by_the_miner(app, miners):
    miner, _ = miners
    await put_instance(app, "job-inst", miner)
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(jobs), [
            dict(job_id="job-running", chute_id="chute-public", user_id="u-owner", method="train", status="running",
                 miner_hotkey=miner.hotkey, instance_id="job-inst", created_at=NOW - timedelta(hours=2),
                 started_at=NOW - timedelta(hours=1)),
            dict(job_id="job-other", chute_id="chute-public", user_id="u-owner", method="train", status="running",
                 miner_hotkey=miner.hotkey, instance_id="another-inst", created_at=NOW, started_at=NOW)])
    await delete(app, miner, "job-inst")
    job = await one(app, jobs, jobs.c.job_id == "job-running")
    assert (job["status"], job["miner_terminated"], job["finished_at"]) == ("error", True, NOW)
    assert job["error_detail"] == f"Instance was terminated by miner: {miner.hotkey}"
    untouched = await one(app, jobs, jobs.c.job_id == "job-other")
    assert (untouched["status"], untouched["miner_terminated"], untouched["finished_at"]) == ("running", False, None)


async def test_a_finished_job_is_left_as_it_ended(app, miners):
    miner, _ = miners
    await put_instance(app, "job-inst", miner)
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(jobs).values(
            job_id="job-done", chute_id="chute-public", user_id="u-owner", method="train", status="complete",
            miner_hotkey=miner.hotkey, instance_id="job-inst", created_at=NOW - timedelta(hours=2),
            finished_at=NOW - timedelta(minutes=5)))
    await delete(app, miner, "job-inst")
    job = await one(app, jobs, jobs.c.job_id == "job-done")
    assert (job["status"], job["miner_terminated"], job["error_detail"]) == ("complete", False, None)


# -- input checks ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rpc", ["DisableInstance", "DeleteInstance"])
async def test_empty_or_oversized_ids_are_invalid_arguments_naming_the_field(app, http, miners, rpc):
    miner, _ = miners
    request = getattr(instances_pb2, f"{rpc}Request")(chute_id="", instance_id="x" * 37)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await as_miner(app, miner, rpc, request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chute_id" in err.value.details() and "instance_id" in err.value.details()
    path = f"/instances/chute-public/{'x' * 37}" + ("/disable" if rpc == "DisableInstance" else "")
    method = "POST" if rpc == "DisableInstance" else "DELETE"
    r = await http.request(method, path, headers=miner.v2_headers(method, path, b"" if method == "POST" else None))
    assert r.status_code == 422 and [e["loc"][-1] for e in r.json()["detail"]] == ["instance_id"]
