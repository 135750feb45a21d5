"""What a miner agent reads from MinerService, over REST as a stock Chutes miner calls it (v1 `miner` signatures,
SSE lists) and over gRPC: chutes, images, nodes, instances, open jobs, servers, inventory, active instances, one
chute, releasing a job, and the unauthenticated chute state (rolling updates, utilization, supported GPUs).

Rows are written with SQLAlchemy Core at chosen timestamps; the server runs on a ManualClock.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import grpc
import httpx
import orjson
import pytest
from sqlalchemy import insert, select, update

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.miner.v1 import miner_pb2, miner_pb2_grpc
from gantry_client import Signer, connect
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.config import MinerSettings
from gantry_server.services.miner_lists import MinerListsMixin
from gantry_server.store import redis_keys
from gantry_server.store.repositories.miner import MinerRepository
from gantry_server.store.models import (chutes, event_outbox, images, instance_compute_history, instance_nodes,
                                        instances, jobs, launch_configs, nodes, rolling_updates, servers, users)

from ..conftest import ADMIN_METADATA, make_settings

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
ALICE_SEED = "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a"  # //Alice, sr25519
OTHER_SEED = bytes(range(9, 41))
CODE = "from chutes.chute import Chute\nchute = Chute(username='owner', name='llm')\n"


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture(scope="module")
async def app(database_url, redis_url, tmp_path_factory, clock):
    """This module's server on a ManualClock, with the outbox relay off: released jobs' events stay in the outbox
    table for the tests to read (the relay to Redis is tested on its own)."""
    settings = make_settings(database_url, redis_url, tmp_path_factory.mktemp("miner-lists"),
                             miner=MinerSettings(background_loops=False))
    gantry = GantryApp(settings, clock=clock)
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture
async def http(app):
    async with httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=30) as client:
        yield client


def chute_values(chute_id: str, **kw) -> dict:
    return dict(chute_id=chute_id, user_id="u-owner", name=chute_id, image_id="img-1", version="v1",
                created_at=NOW, updated_at=NOW) | kw


@pytest.fixture
async def world(app, channel, clean_db, redis, clock):
    """Two registered miners (the sr25519 //Alice a stock miner signs with, and another), an owner whose username
    has capitals, an image, a public chute with everything a miner reads, and a server with two GPUs each."""
    miner = Signer.from_sr25519_seed(ALICE_SEED, clock=lambda: clock.now().timestamp())
    other = Signer.from_ed25519_seed(OTHER_SEED, clock=lambda: clock.now().timestamp())
    await admin_pb2_grpc.AdminServiceStub(channel).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
        nodes=[admin_pb2.MetagraphNode(hotkey=miner.hotkey, netuid=64, node_id=7),
               admin_pb2.MetagraphNode(hotkey=other.hotkey, netuid=64, node_id=8)]), metadata=ADMIN_METADATA)
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(users).values(user_id="u-owner", username="Owner"))
        await conn.execute(insert(images).values(image_id="img-1", user_id="u-owner", name="VLLM", tag="0.9.1",
                                                 patch_version="p2", chutes_version="0.4.9", created_at=NOW,
                                                 updated_at=NOW))
        await conn.execute(insert(chutes).values(**chute_values(
            "chute-llm", chutes_version="0.4.9", public=True, code=CODE, filename="llm.py", ref_str="llm:chute",
            node_selector={"gpu_count": 2, "include": ["h100", "h200"]}, bounty=50, max_instances=3,
            cords=[{"method": "POST", "path": "/generate", "function": "generate", "stream": True,
                    "passthrough": False, "public_api_path": "/v1/completions", "extra": "dropped"}],
            jobs=[{"name": "train", "ports": [{"proto": "tcp", "port": 7000}]}])))
        for i, who in enumerate((miner, other)):
            await conn.execute(insert(servers).values(server_id=f"srv-{i}", name=f"box-{i}", ip=f"10.0.0.{i + 1}",
                                                      miner_hotkey=who.hotkey, netuid=64, version="0.3.1",
                                                      created_at=NOW + timedelta(minutes=i)))
            await conn.execute(insert(nodes), [dict(
                uuid=f"GPU-{i}-{g}", miner_hotkey=who.hotkey, server_id=f"srv-{i}", gpu_identifier="h100",
                name="NVIDIA H100", memory=85_899_345_920, processors=132, clock_rate=1980.0,
                max_threads_per_processor=2048, device_index=g, verification_host="10.0.0.1",
                verification_port=30443, seed=12345678901, created_at=NOW) for g in range(2)])
    return miner, other


def sse_rows(response: httpx.Response) -> list[dict]:
    """The rows of a miner list as a stock miner reads them: `data: {json}\\n\\n` per row."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.content.split(b"\n\n")
    assert frames[-1] == b""
    assert all(f.startswith(b"data: ") for f in frames[:-1])
    return [orjson.loads(f[len(b"data: "):]) for f in frames[:-1]]


async def get_as(http, who: Signer, path: str, **kw) -> httpx.Response:
    return await http.get(path, headers=who.v1_purpose_headers("miner"), **kw)


_PORTS = iter(range(20000, 60000))


async def put_instance(app, instance_id: str, who: Signer, *, chute_id: str = "chute-llm", version: str = "v1",
                       active: bool = True, verified: bool = True, multiplier: float | None = 2.0,
                       history: float | None = None, gpus: tuple[str, ...] = ()) -> None:
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(instances).values(
            instance_id=instance_id, chute_id=chute_id, version=version, host="203.0.113.9", port=next(_PORTS),
            port_mappings=[{"proto": "tcp", "internal_port": 8000, "external_port": 31000}], miner_uid=7,
            miner_hotkey=who.hotkey, miner_coldkey="cold-7", active=active, verified=verified,
            created_at=NOW - timedelta(hours=3), activated_at=NOW - timedelta(hours=2) if active else None,
            last_verified_at=NOW - timedelta(hours=2), compute_multiplier=multiplier, symmetric_key_enc=b"secret",
            rint_nonce="rint-secret", extra={"e2e_pubkey": "pk"}))
        if gpus:
            await conn.execute(insert(instance_nodes), [{"instance_id": instance_id, "node_id": g} for g in gpus])
        if history is not None:
            await conn.execute(insert(instance_compute_history).values(
                instance_id=instance_id, compute_multiplier=history, started_at=NOW - timedelta(hours=2)))


async def put_job(app, job_id: str, *, claimed_by: Signer | None = None, instance_id: str | None = None,
                  finished: bool = False, created_at: datetime = NOW, **kw) -> None:
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(jobs).values(
            job_id=job_id, chute_id="chute-llm", user_id="u-owner", method="train", created_at=created_at,
            job_args={"_disk_gb": 250, "epochs": 3}, ports=[{"name": "p", "port": 7000, "proto": "tcp"}],
            port_mappings=[{"proto": "tcp", "internal_port": 7000, "external_port": 32000}],
            miner_hotkey=claimed_by.hotkey if claimed_by else None, miner_uid=7 if claimed_by else None,
            miner_coldkey="cold-7" if claimed_by else None, instance_id=instance_id,
            miner_history=[claimed_by.hotkey] if claimed_by else [], finished_at=NOW if finished else None, **kw))


# -- chutes --------------------------------------------------------------------------------------------------------
async def test_a_stock_miner_reads_every_chute_field_it_indexes_from_the_sse_list(world, http):
    miner, _ = world
    [chute] = sse_rows(await get_as(http, miner, "/miner/chutes/"))

    # miner-contract.md A1/A8 hard fields
    assert chute["chute_id"] == "chute-llm" and chute["version"] == "v1" and chute["name"] == "chute-llm"
    assert chute["image"] == "owner/vllm:0.9.1-p2"
    assert chute["code"] == CODE and chute["filename"] == "llm.py" and chute["ref_str"] == "llm:chute"
    assert chute["chutes_version"] == "0.4.9"
    assert chute["preemptible"] is True  # public
    assert chute["tee"] is False
    assert chute["node_selector"]["gpu_count"] == 2 and isinstance(chute["node_selector"]["gpu_count"], int)
    assert chute["supported_gpus"] == ["h200", "h100"] == chute["node_selector"]["supported_gpus"]
    # 2 GPUs x the cheaper of h100 (2.50/5.00) and h200 (3.50/5.00); a public chute starts there
    assert chute["node_selector"]["compute_multiplier"] == pytest.approx(1.0)
    assert chute["effective_compute_multiplier"] == pytest.approx(1.0)
    # soft fields
    assert chute["image_id"] == "img-1" and chute["bounty"] == 50 and chute["max_instances"] == 3
    assert chute["jobs"] == [{"name": "train", "ports": [{"proto": "tcp", "port": 7000}]}]
    assert chute["cords"][0]["path"] == "/generate" and chute["cords"][0]["stream"] is True
    assert "extra" not in chute["cords"][0]
    assert chute["created_at"] == "2026-03-02T12:00:00Z"


async def test_a_private_chute_is_not_preemptible_and_starts_at_the_private_rate(world, app, http):
    miner, _ = world
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(chutes).values(**chute_values(
            "chute-private", node_selector={"gpu_count": 1, "include": ["h100"]}, filename="private.py")))
    by_id = {c["chute_id"]: c for c in sse_rows(await get_as(http, miner, "/miner/chutes/"))}
    private = by_id["chute-private"]
    assert private["preemptible"] is False
    assert private["effective_compute_multiplier"] == pytest.approx(0.5 * 2.0)
    assert private["ref_str"] == "private:chute"  # none stored: "{module}:chute"
    assert private["bounty"] is None and private["code"] == ""


async def test_more_chutes_than_one_keyset_page_stream_completely_and_in_order(world, app, monkeypatch):
    miner, _ = world
    monkeypatch.setattr(MinerListsMixin, "page_rows", 2)
    pages: list[tuple] = []  # (after, limit) of every page read
    read_page = MinerRepository.chutes_page

    async def counted(repo, after, limit):
        pages.append((after, limit))
        return await read_page(repo, after, limit)

    monkeypatch.setattr(MinerRepository, "chutes_page", counted)
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(chutes), [chute_values(f"chute-{n:02d}") for n in range(7)])
    async with connect(app.grpc_addr, signer=miner) as channel:  # grpc-v1
        stub = miner_pb2_grpc.MinerServiceStub(channel)
        listed = [m.chute.chute_id async for m in stub.ListChutes(miner_pb2.ListChutesRequest())]
    assert listed == [f"chute-{n:02d}" for n in range(7)] + ["chute-llm"]
    assert pages == [(None, 2), ("chute-01", 2), ("chute-03", 2), ("chute-05", 2), ("chute-llm", 2)]


async def test_get_chute_answers_the_listed_row_only_for_its_current_version(world, http, channel):
    miner, _ = world
    [listed] = sse_rows(await get_as(http, miner, "/miner/chutes/"))
    response = await get_as(http, miner, "/miner/chutes/chute-llm/v1")
    assert response.status_code == 200 and response.json() == listed

    stale = await get_as(http, miner, "/miner/chutes/chute-llm/v0")
    assert stale.status_code == 404 and "chute-llm" in stale.json()["detail"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await miner_pb2_grpc.MinerServiceStub(channel).GetChute(
            miner_pb2.GetChuteRequest(chute_id="chute-llm", version="v0"),
            metadata=tuple(miner.v1_purpose_headers("miner").items()))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- images and nodes ----------------------------------------------------------------------------------------------
async def test_images_are_listed_lowercased_with_their_sdk_version(world, http):
    miner, _ = world
    [image] = sse_rows(await get_as(http, miner, "/miner/images/"))
    assert (image["image_id"], image["username"], image["name"], image["tag"]) == ("img-1", "owner", "vllm", "0.9.1")
    assert image["chutes_version"] == "0.4.9" and image["patch_version"] == "p2"
    assert image["status"] == "built and pushed"


async def test_nodes_are_the_callers_gpus_only(world, http, channel):
    miner, other = world
    listed = sse_rows(await get_as(http, miner, "/miner/nodes/"))
    assert [n["uuid"] for n in listed] == ["GPU-0-0", "GPU-0-1"]
    assert listed[0]["seed"] == 12345678901 and listed[0]["server_id"] == "srv-0"
    # gRPC with v1 metadata, as the other miner
    rows = [m.node.uuid async for m in miner_pb2_grpc.MinerServiceStub(channel).ListNodes(
        miner_pb2.ListNodesRequest(), metadata=tuple(other.v1_purpose_headers("miner").items()))]
    assert rows == ["GPU-1-0", "GPU-1-1"]


# -- instances ------------------------------------------------------------------------------------------------------
async def test_no_instances_with_explicit_null_is_exactly_the_no_items_line(world, app, http):
    miner, other = world
    await put_instance(app, "inst-other", other)  # another miner's: never listed
    response = await get_as(http, miner, "/miner/instances/", params={"explicit_null": "True"})
    assert response.status_code == 200 and response.content == b"data: NO_ITEMS\n"
    assert (await get_as(http, miner, "/miner/instances/")).content == b""


async def test_instances_are_the_callers_own_without_address_or_secrets(world, app, http):
    miner, other = world
    await put_instance(app, "inst-mine", miner)
    await put_instance(app, "inst-other", other)
    [row] = sse_rows(await get_as(http, miner, "/miner/instances/", params={"explicit_null": "true"}))
    assert row["instance_id"] == "inst-mine" and row["chute_id"] == "chute-llm"
    assert row["active"] is True and row["last_verified_at"] == "2026-03-02T10:00:00Z"
    assert row["extra"] == {"e2e_pubkey": "pk"}
    for hidden in ("host", "port", "port_mappings", "symmetric_key", "symmetric_key_enc", "rint_nonce"):
        assert hidden not in row
    assert "203.0.113.9" not in (await get_as(http, miner, "/miner/instances/")).text


# -- jobs -----------------------------------------------------------------------------------------------------------
async def test_open_jobs_are_listed_and_claimed_or_finished_ones_are_not(world, app, http):
    miner, other = world
    await put_job(app, "job-open", compute_multiplier=4.5)
    await put_job(app, "job-claimed", claimed_by=other, instance_id="inst-x")
    await put_job(app, "job-done", finished=True)
    [job] = sse_rows(await get_as(http, miner, "/miner/jobs/"))
    assert job["job_id"] == "job-open" and job["version"] == "v1" and job["chutes_version"] == "0.4.9"
    assert job["job_args"] == {"_disk_gb": 250, "epochs": 3} and job["miner_history"] == []
    assert job["compute_multiplier"] == pytest.approx(4.5)
    assert "port_mappings" not in job


async def test_open_jobs_created_at_one_instant_page_by_id_without_gaps(world, app, monkeypatch):
    miner, _ = world
    monkeypatch.setattr(MinerListsMixin, "page_rows", 2)
    for n in range(5):
        await put_job(app, f"job-{n}")
    await put_job(app, "job-older", created_at=NOW - timedelta(seconds=1))
    async with connect(app.grpc_addr, signer=miner) as channel:
        stub = miner_pb2_grpc.MinerServiceStub(channel)
        listed = [m.job.job_id async for m in stub.ListAvailableJobs(miner_pb2.ListAvailableJobsRequest())]
    assert listed == ["job-older"] + [f"job-{n}" for n in range(5)]


async def test_releasing_a_job_reopens_it_and_announces_it_again_in_the_same_transaction(world, app, http):
    miner, other = world
    await put_instance(app, "inst-job", miner)
    await put_job(app, "job-1", claimed_by=miner, instance_id="inst-job")
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(launch_configs).values(
            config_id="cfg-1", chute_id="chute-llm", job_id="job-1", env_key="k" * 32, env_type="graval",
            miner_uid=7, miner_hotkey=miner.hotkey, miner_coldkey="cold-7", created_at=NOW, retrieved_at=NOW))
    assert sse_rows(await get_as(http, miner, "/miner/jobs/")) == []

    assert (await http.delete("/miner/jobs/job-1", headers=other.v1_purpose_headers("miner"))).status_code == 404
    response = await http.delete("/miner/jobs/job-1", headers=miner.v1_purpose_headers("miner"))
    assert response.status_code == 200 and response.content == b"null"

    [job] = sse_rows(await get_as(http, miner, "/miner/jobs/"))
    assert job["job_id"] == "job-1" and job["miner_hotkey"] is None and job["instance_id"] is None
    assert job["miner_history"] == [miner.hotkey]
    async with app.rt.engine.connect() as conn:
        [event] = (await conn.execute(select(event_outbox))).mappings().all()
        config = (await conn.execute(select(launch_configs))).mappings().one()
    assert event["reason"] == "job_created" and event["recipients"] is None
    data = event["data"]
    assert data["job_id"] == "job-1" and data["chute_id"] == "chute-llm" and data["image_id"] == "img-1"
    assert data["disk_gb"] == 250 and isinstance(data["disk_gb"], int)
    assert data["exclude"] == [miner.hotkey] == data["excluded"]
    assert data["gpu_count"] == 2 and data["method"] == "train"
    assert config["failed_at"] is not None  # another miner may race for the job now

    again = await http.delete("/miner/jobs/job-1", headers=miner.v1_purpose_headers("miner"))
    assert again.status_code == 404  # no longer the miner's


async def test_a_finished_job_cannot_be_released_and_a_bad_job_id_is_named(world, app, channel):
    miner, _ = world
    await put_job(app, "job-done", claimed_by=miner, finished=True)
    stub = miner_pb2_grpc.MinerServiceStub(channel)
    md = tuple(miner.v1_purpose_headers("miner").items())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReleaseJob(miner_pb2.ReleaseJobRequest(job_id="job-done"), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ReleaseJob(miner_pb2.ReleaseJobRequest(job_id="j" * 37), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "job_id" in err.value.details()
    async with app.rt.engine.connect() as conn:
        assert (await conn.execute(select(event_outbox))).first() is None
        assert (await conn.execute(select(jobs.c.miner_hotkey))).scalar() == miner.hotkey


# -- servers, inventory, active instances ---------------------------------------------------------------------------
async def test_servers_are_newest_first_with_their_gpus_including_servers_without_any(world, app, http):
    miner, _ = world
    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(servers).values(
            server_id="srv-new", name="empty", ip="10.0.0.9", miner_hotkey=miner.hotkey, netuid=64,
            created_at=NOW + timedelta(hours=1), maintenance_pending_window_id="w-1"))
    response = await get_as(http, miner, "/miner/servers/")
    assert response.status_code == 200
    listed = response.json()["servers"]
    assert [s["server_id"] for s in listed] == ["srv-new", "srv-0"]
    assert listed[0]["gpus"] == [] and listed[0]["maintenance_pending"] is True and listed[0]["version"] is None
    assert [g["uuid"] for g in listed[1]["gpus"]] == ["GPU-0-0", "GPU-0-1"] and listed[1]["version"] == "0.3.1"
    assert listed[1]["gpus"][1]["device_index"] == 1 and listed[1]["ip"] == "10.0.0.1"


async def test_inventory_is_the_callers_gpus_attached_to_an_instance(world, app, http):
    miner, other = world
    await put_instance(app, "inst-mine", miner, gpus=("GPU-0-1",))
    await put_instance(app, "inst-other", other, gpus=("GPU-1-0",))
    response = await get_as(http, miner, "/miner/inventory")
    assert response.status_code == 200
    assert response.json() == [{"gpu_id": "GPU-0-1", "last_verified_at": "2026-03-02T10:00:00Z",
                                "verification_error": None, "active": True, "chute_id": "chute-llm",
                                "chute_name": "chute-llm"}]


async def test_active_instances_carry_the_open_history_multiplier_else_the_instances_else_one(world, app, http):
    miner, other = world
    await put_instance(app, "inst-a", miner, multiplier=2.0, history=3.5)
    await put_instance(app, "inst-b", other, multiplier=2.0)
    await put_instance(app, "inst-c", other, multiplier=None)
    await put_instance(app, "inst-d", other, active=False)
    await put_instance(app, "inst-e", other, verified=False)
    response = await get_as(http, miner, "/miner/active_instances/")
    assert response.status_code == 200
    assert {r["instance_id"]: r["compute_multiplier"] for r in response.json()} == {
        "inst-a": 3.5, "inst-b": 2.0, "inst-c": 1.0}
    assert response.json()[0]["miner_hotkey"] == miner.hotkey
    assert response.json()[0]["activated_at"] == "2026-03-02T10:00:00Z"


# -- unauthenticated chute state ----------------------------------------------------------------------------------
async def test_rolling_updates_without_credentials_list_only_updates_still_in_progress(world, app, http):
    miner, _ = world
    response = await http.get("/chutes/rolling_updates")
    assert response.status_code == 200 and response.json() == []

    async with app.rt.engine.begin() as conn:
        await conn.execute(insert(chutes).values(**chute_values("chute-done")))
        await conn.execute(update(chutes).where(chutes.c.chute_id == "chute-llm").values(version="v2"))
        await conn.execute(insert(rolling_updates), [
            dict(chute_id="chute-llm", old_version="v1", new_version="v2", started_at=NOW),
            dict(chute_id="chute-done", old_version="v0", new_version="v1", started_at=NOW)])
    await put_instance(app, "inst-old", miner, version="v1")
    await put_instance(app, "inst-new", miner, version="v2")
    await put_instance(app, "inst-done", miner, chute_id="chute-done", version="v1")
    assert (await http.get("/chutes/rolling_updates")).json() == [{
        "chute_id": "chute-llm", "chute_name": "chute-llm", "old_version": "v1", "new_version": "v2",
        "started_at": "2026-03-02T12:00:00Z", "instances_remaining": 1}]
    by_id = {u["chute_id"]: u for u in (await http.get("/chutes/utilization")).json()}
    assert by_id["chute-llm"]["update_in_progress"] is True and by_id["chute-done"]["update_in_progress"] is False


async def test_utilization_without_credentials_says_which_chutes_take_another_instance(world, app, http, redis):
    miner, _ = world
    async with app.rt.engine.begin() as conn:
        for values in (chute_values("chute-full", max_instances=1), chute_values("chute-off", disabled=True),
                       chute_values("chute-scaled", max_instances=1)):
            await conn.execute(insert(chutes).values(**values))
    await put_instance(app, "inst-full", miner, chute_id="chute-full")
    await put_instance(app, "inst-scaled", miner, chute_id="chute-scaled")
    await put_instance(app, "inst-pending", miner, chute_id="chute-scaled", active=False, verified=False)
    await redis.set(redis_keys.scale_target("chute-scaled"), 4)  # the autoscaler wants more than max_instances
    response = await http.get("/chutes/utilization")
    assert response.status_code == 200
    by_id = {u["chute_id"]: u for u in response.json()}
    assert by_id["chute-full"] == {"chute_id": "chute-full", "name": "chute-full", "scalable": False,
                                   "update_in_progress": False, "instance_count": 1, "active_instance_count": 1,
                                   "target_count": 1}
    assert by_id["chute-off"]["scalable"] is False and by_id["chute-off"]["target_count"] is None
    assert by_id["chute-scaled"]["scalable"] is True and by_id["chute-scaled"]["target_count"] == 4
    assert by_id["chute-scaled"]["instance_count"] == 2 and by_id["chute-scaled"]["active_instance_count"] == 1
    assert by_id["chute-llm"]["scalable"] is True and by_id["chute-llm"]["target_count"] == 3


async def test_supported_nodes_without_credentials_are_keyed_by_gpu_short_reference(http):
    response = await http.get("/nodes/supported")
    assert response.status_code == 200
    gpus = response.json()
    assert {"h100", "h200", "b200", "a100"} <= set(gpus)
    assert gpus["b200"]["compute_multiplier"] == 1.0
    assert gpus["h100"] == {"identifier": "h100", "hourly_rate": 2.5, "compute_multiplier": 0.5}


async def test_lists_need_a_miner_signature(world, http):
    response = await http.get("/miner/chutes/")
    assert response.status_code == 401
