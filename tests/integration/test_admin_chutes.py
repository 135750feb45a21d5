"""Operators register images and chutes, post jobs and delete chutes through AdminService (gRPC and REST).

What is checked is what lands in PostgreSQL, what a refusal names, and that a refusal writes nothing. Time is
the server's ManualClock (shared by the module, only moving forward), so created_at/updated_at are exact.
"""
from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import delete, func, select

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.store.db import unit_of_work
from gantry_server.store.models import chutes, images, instances, jobs, launch_configs
from gantry_server.store.repositories.chutes import ChuteRepository, MissingReference

from ..conftest import ADMIN_METADATA, make_settings

START = datetime(2026, 4, 1, 9, 0, 0, tzinfo=timezone.utc)
HOTKEY = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
NO_SUCH_USER = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
async def chute_app(database_url, redis_url, tmp_path_factory):
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("chutes")),
                       clock=ManualClock(START))
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture(scope="module")
async def ch(chute_app):
    async with grpc.aio.insecure_channel(chute_app.grpc_addr) as channel:
        yield channel


@pytest.fixture
async def admin(ch, clean_db):
    return admin_pb2_grpc.AdminServiceStub(ch)


@pytest.fixture
def clock(chute_app) -> ManualClock:
    return chute_app.rt.clock


# -- helpers -------------------------------------------------------------------------------------------------------
def struct(value: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


async def new_user(admin) -> str:
    response = await admin.CreateUser(admin_pb2.CreateUserRequest(username=f"u{uuid.uuid4().hex[:12]}"),
                                      metadata=ADMIN_METADATA)
    return response.user_id


async def put_image(admin, user_id: str, image_id: str = "img-1", **kw) -> admin_pb2.UpsertImageResponse:
    fields = dict(name="vllm", tag="0.8.4", compute_type="gpu") | kw
    return await admin.UpsertImage(admin_pb2.UpsertImageRequest(image_id=image_id, user_id=user_id, **fields),
                                   metadata=ADMIN_METADATA)


def chute_request(user_id: str, image_id: str = "img-1", chute_id: str = "chute-1",
                  **kw) -> admin_pb2.UpsertChuteRequest:
    fields = dict(name="llama-70b", version="v1", node_selector=struct({"gpu_count": 2})) | kw
    return admin_pb2.UpsertChuteRequest(chute_id=chute_id, user_id=user_id, image_id=image_id, **fields)


async def world(admin, *, chute_id: str = "chute-1", **chute) -> str:
    """A user owning image img-1 and a chute; returns the user id."""
    user_id = await new_user(admin)
    await put_image(admin, user_id)
    await admin.UpsertChute(chute_request(user_id, chute_id=chute_id, **chute), metadata=ADMIN_METADATA)
    return user_id


async def refusal(call, request) -> tuple[grpc.StatusCode, str, str, set[str]]:
    """(code, details, ErrorInfo reason, BadRequest fields) of a call expected to fail."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request, metadata=ADMIN_METADATA)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for detail in rpc_status.from_call(err.value).details:
        detail.Unpack(info) or detail.Unpack(bad)
    return err.value.code(), err.value.details() or "", info.reason, {v.field for v in bad.field_violations}


async def rows(engine, table, *where) -> list[dict]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(select(table).where(*where))).mappings()]


async def count(engine, table) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(table))


async def add_instance(engine, chute_id: str, instance_id: str = "inst-1", config_id: str | None = None) -> None:
    async with engine.begin() as conn:
        await conn.execute(instances.insert().values(
            instance_id=instance_id, chute_id=chute_id, version="v1", config_id=config_id, host="203.0.113.9",
            port=30000, miner_uid=7, miner_hotkey=HOTKEY, miner_coldkey=HOTKEY, created_at=START,
            symmetric_key_enc=b"\x01envelope"))


# -- images --------------------------------------------------------------------------------------------------------
async def test_an_image_is_created_then_replaced_keeping_its_creation_time(admin, clean_db, clock):
    t0 = clock.now()
    user_id = await new_user(admin)
    first = await put_image(admin, user_id, patch_version="20260401", compute_type="", chutes_version="0.4.9")
    assert (first.image_id, first.created) == ("img-1", True)
    [row] = await rows(clean_db, images)
    assert row == dict(image_id="img-1", user_id=user_id, name="vllm", tag="0.8.4", patch_version="20260401",
                       compute_type="gpu", chutes_version="0.4.9", created_at=t0,
                       updated_at=t0)  # compute_type defaults to gpu

    clock.advance(hours=1)
    second = await put_image(admin, user_id, tag="0.9.0", compute_type="cpu")
    assert second.created is False
    [row] = await rows(clean_db, images)
    assert (row["tag"], row["patch_version"], row["compute_type"], row["chutes_version"]) == (
        "0.9.0", None, "cpu", None)
    assert (row["created_at"], row["updated_at"]) == (t0, t0 + timedelta(hours=1))


async def test_an_image_needs_an_existing_owner(admin, clean_db):
    code, details, reason, _ = await refusal(admin.UpsertImage, admin_pb2.UpsertImageRequest(
        image_id="img-1", user_id=NO_SUCH_USER, name="vllm", tag="1", compute_type="gpu"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    assert details.startswith("user_id: no user ")
    user_id = await new_user(admin)
    code, _, _, fields = await refusal(admin.UpsertImage, admin_pb2.UpsertImageRequest(
        image_id="img-1", user_id=user_id + "\n", name="vllm", tag="1"))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"user_id"})
    assert await count(clean_db, images) == 0


async def test_bad_image_fields_are_each_named_and_nothing_is_written(admin, clean_db):
    code, details, _, fields = await refusal(admin.UpsertImage, admin_pb2.UpsertImageRequest(
        image_id="img/1", user_id="alice", name="my image", tag="x" * 256, patch_version="", compute_type="tpu",
        chutes_version="0.4.9-rc1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == {"image_id", "user_id", "name", "tag", "patch_version", "compute_type", "chutes_version"}
    assert "tag: must be at most 255 characters" in details and "compute_type: must be \"gpu\" or \"cpu\"" in details

    user_id = await new_user(admin)
    _, details, _, fields = await refusal(admin.UpsertImage, admin_pb2.UpsertImageRequest(
        image_id="img-1", user_id=user_id, name="vllm\x1b[31m", tag=""))
    assert fields == {"name", "tag"} and "no control characters" in details and "tag: is required" in details
    assert await count(clean_db, images) == 0


# -- chutes --------------------------------------------------------------------------------------------------------
async def test_a_chute_is_stored_as_sent(admin, clean_db, clock):
    user_id = await new_user(admin)
    await put_image(admin, user_id)
    jobs_list = struct_pb2.ListValue()
    jobs_list.extend([{"name": "train", "ports": [{"name": "rpc", "port": 9000, "proto": "tcp"}], "timeout": 3600}])
    response = await admin.UpsertChute(chute_request(
        user_id, chutes_version="0.4.9", public=True, tee=True, boost=2.5, allow_external_egress=True,
        standard_template="vllm", code="import chutes\n\tchute = 1\n", filename="llama.py",
        shutdown_after_seconds=600, concurrency=8, encrypted_fs=True, preemptible=True, max_instances=4,
        node_selector=struct({"gpu_count": 4, "min_vram_gb_per_gpu": 80, "include": ["h100", "h200"],
                              "exclude": [], "compute_type": "gpu"}),
        jobs=jobs_list, ref_str="llama.app:chute_70b"), metadata=ADMIN_METADATA)
    assert (response.chute_id, response.created) == ("chute-1", True)

    [row] = await rows(clean_db, chutes)
    assert row == dict(
        chute_id="chute-1", user_id=user_id, name="llama-70b", image_id="img-1", version="v1", chutes_version="0.4.9",
        node_selector={"gpu_count": 4, "min_vram_gb_per_gpu": 80, "include": ["h100", "h200"], "exclude": [],
                       "compute_type": "gpu"},
        public=True, tee=True, disabled=False, boost=2.5, allow_external_egress=True,
        lock_modules=None,  # absent: the domain applies "true when standard_template is set"
        standard_template="vllm", code="import chutes\n\tchute = 1\n", filename="llama.py",
        shutdown_after_seconds=600, concurrency=8, encrypted_fs=True, preemptible=True, max_instances=4,
        jobs=[{"name": "train", "ports": [{"name": "rpc", "port": 9000, "proto": "tcp"}], "timeout": 3600}],
        ref_str="llama.app:chute_70b", cords=[], bounty=None, bounty_set_at=None,
        created_at=clock.now(), updated_at=clock.now())
    assert type(row["node_selector"]["gpu_count"]) is int  # Struct numbers are doubles; stored as integers


async def test_replacing_a_chute_keeps_created_at_and_rewrites_everything_else(admin, clean_db, clock):
    t0 = clock.now()
    user_id = await world(admin, boost=3.0, max_instances=5, lock_modules=True, chutes_version="0.3.1")
    clock.advance(minutes=30)
    replaced = await admin.UpsertChute(chute_request(user_id, name="llama-70b-v2", disabled=True),
                                       metadata=ADMIN_METADATA)
    assert replaced.created is False
    [row] = await rows(clean_db, chutes)
    assert (row["name"], row["disabled"]) == ("llama-70b-v2", True)
    assert (row["boost"], row["max_instances"], row["lock_modules"], row["chutes_version"]) == (None, None, None, None)
    assert (row["created_at"], row["updated_at"]) == (t0, t0 + timedelta(minutes=30))


async def test_a_chute_needs_its_owner_and_its_image(admin, clean_db):
    user_id = await new_user(admin)
    code, details, reason, _ = await refusal(admin.UpsertChute, chute_request(user_id, image_id="img-404"))
    assert (code, reason, details) == (grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND", "image_id: no image img-404")

    await put_image(admin, user_id)
    code, details, reason, _ = await refusal(admin.UpsertChute, chute_request(NO_SUCH_USER))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND") and details.startswith("user_id: ")
    assert await count(clean_db, chutes) == 0


@pytest.mark.parametrize(("change", "fields"), [
    (dict(chute_id="", name=" ", version=""), {"chute_id", "name", "version"}),
    (dict(chute_id="a" * 37, image_id="img 1"), {"chute_id", "image_id"}),
    (dict(chute_id="chute-1\n", image_id="img-1\n", chutes_version="0.4.9\n"),
     {"chute_id", "image_id", "chutes_version"}),
    (dict(version="v" * 65), {"version"}),
    (dict(chutes_version="latest"), {"chutes_version"}),
    (dict(chutes_version="0.4.9-rc1"), {"chutes_version"}),
    (dict(node_selector=struct({})), {"node_selector.gpu_count"}),
    (dict(node_selector=struct({"gpu_count": 0})), {"node_selector.gpu_count"}),
    (dict(node_selector=struct({"gpu_count": 9})), {"node_selector.gpu_count"}),
    (dict(node_selector=struct({"gpu_count": 1.5})), {"node_selector.gpu_count"}),
    (dict(node_selector=struct({"gpu_count": "2"})), {"node_selector.gpu_count"}),
    (dict(node_selector=struct({"gpu_count": True})), {"node_selector.gpu_count"}),
    (dict(node_selector=struct({"gpu_count": 1, "min_vram_gb_per_gpu": -1})), {"node_selector.min_vram_gb_per_gpu"}),
    (dict(node_selector=struct({"gpu_count": 1, "min_vram_gb_per_gpu": 24.5})), {"node_selector.min_vram_gb_per_gpu"}),
    (dict(node_selector=struct({"gpu_count": 1, "include": "h100"})), {"node_selector.include"}),
    (dict(node_selector=struct({"gpu_count": 1, "include": ["h100", ""], "exclude": ["a100", 3]})),
     {"node_selector.include[1]", "node_selector.exclude[1]"}),
    (dict(node_selector=struct({"gpu_count": 1, "compute_type": "tpu"})), {"node_selector.compute_type"}),
    (dict(node_selector=struct({"gpu_cnt": 2})), {"node_selector.gpu_cnt", "node_selector.gpu_count"}),
    (dict(node_selector=struct({"gpu_count": 1, "vram": 80, "gpu": "h100"})),
     {"node_selector.vram", "node_selector.gpu"}),
    (dict(boost=0.0), {"boost"}),
    (dict(boost=-1.0), {"boost"}),
    (dict(boost=1000.5), {"boost"}),
    (dict(boost=math.nan), {"boost"}),
    (dict(shutdown_after_seconds=0, concurrency=-1, max_instances=0),
     {"shutdown_after_seconds", "concurrency", "max_instances"}),
    (dict(standard_template=""), {"standard_template"}),
    (dict(filename="../../etc/cron.d/x"), {"filename"}),
    (dict(code="print(1)\x00"), {"code"}),
])
async def test_bad_chute_fields_are_each_named_and_nothing_is_written(admin, clean_db, change, fields):
    user_id = await new_user(admin)
    await put_image(admin, user_id)
    code, details, _, named = await refusal(admin.UpsertChute, chute_request(user_id, **change))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert named == fields
    assert all(f"{field}: " in details for field in fields)
    assert await count(clean_db, chutes) == 0


async def test_free_form_json_postgresql_cannot_store_is_refused_naming_the_path(admin, clean_db):
    user_id = await new_user(admin)
    await put_image(admin, user_id)
    jobs_list = struct_pb2.ListValue()
    jobs_list.extend([{"name": "ok"}, {"name": "bad\x00name", "timeout": math.inf}])
    _, details, _, named = await refusal(admin.UpsertChute, chute_request(user_id, jobs=jobs_list))
    assert named == {"jobs[1].name", "jobs[1].timeout"} and "must be a finite number" in details
    assert await count(clean_db, chutes) == 0


# -- deleting a chute ----------------------------------------------------------------------------------------------
async def test_delete_is_refused_while_an_instance_exists_then_cascades(admin, clean_db):
    user_id = await world(admin)
    job = await admin.CreateJob(admin_pb2.CreateJobRequest(chute_id="chute-1", user_id=user_id, method="train"),
                                metadata=ADMIN_METADATA)
    async with clean_db.begin() as conn:
        await conn.execute(launch_configs.insert().values(
            config_id="cfg-1", chute_id="chute-1", job_id=job.job_id, env_key="0" * 32, env_type="graval",
            miner_uid=7, miner_hotkey=HOTKEY, miner_coldkey=HOTKEY, created_at=START))
    await add_instance(clean_db, "chute-1", config_id="cfg-1")

    code, details, reason, _ = await refusal(admin.DeleteChute, admin_pb2.DeleteChuteRequest(chute_id="chute-1"))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CHUTE_HAS_INSTANCES")
    assert "still has 1 instance:" in details and "disabled=true" in details
    assert len(await rows(clean_db, chutes)) == 1 and len(await rows(clean_db, instances)) == 1
    assert len(await rows(clean_db, jobs)) == 1 and len(await rows(clean_db, launch_configs)) == 1

    async with clean_db.begin() as conn:
        await conn.execute(delete(instances))
    await admin.DeleteChute(admin_pb2.DeleteChuteRequest(chute_id="chute-1"), metadata=ADMIN_METADATA)
    assert [await count(clean_db, t) for t in (chutes, jobs, launch_configs)] == [0, 0, 0]
    assert len(await rows(clean_db, images)) == 1  # the image is not the chute's to delete

    code, details, reason, _ = await refusal(admin.DeleteChute, admin_pb2.DeleteChuteRequest(chute_id="chute-1"))
    assert (code, reason, details) == (grpc.StatusCode.NOT_FOUND, "CHUTE_NOT_FOUND", "no chute chute-1")


async def test_delete_counts_every_instance_and_touches_only_that_chute(admin, clean_db):
    user_id = await world(admin)
    await admin.UpsertChute(chute_request(user_id, chute_id="chute-2"), metadata=ADMIN_METADATA)
    await add_instance(clean_db, "chute-1", "inst-1")
    async with clean_db.begin() as conn:
        await conn.execute(instances.insert().values(
            instance_id="inst-2", chute_id="chute-1", version="v1", host="203.0.113.10", port=30001, miner_uid=8,
            miner_hotkey=HOTKEY, miner_coldkey=HOTKEY, created_at=START, symmetric_key_enc=b"k"))
    _, details, _, _ = await refusal(admin.DeleteChute, admin_pb2.DeleteChuteRequest(chute_id="chute-1"))
    assert "still has 2 instances:" in details

    await admin.DeleteChute(admin_pb2.DeleteChuteRequest(chute_id="chute-2"), metadata=ADMIN_METADATA)
    assert [r["chute_id"] for r in await rows(clean_db, chutes)] == ["chute-1"]
    assert len(await rows(clean_db, instances)) == 2


# -- jobs ----------------------------------------------------------------------------------------------------------
async def test_a_job_is_posted_pending_with_a_generated_id(admin, clean_db, clock):
    user_id = await world(admin)
    payer = await new_user(admin)
    response = await admin.CreateJob(admin_pb2.CreateJobRequest(
        chute_id="chute-1", user_id=payer, method="train",
        job_args=struct({"steps": 100, "lr": 0.001, "dataset": {"name": "c4", "shards": [1, 2]}}),
        ports=[admin_pb2.JobPort(name="rpc", port=9000, proto="tcp"),
               admin_pb2.JobPort(name="rpc-udp", port=9000, proto="udp")]), metadata=ADMIN_METADATA)
    assert str(uuid.UUID(response.job_id)) == response.job_id

    [row] = await rows(clean_db, jobs)
    assert row["job_id"] == response.job_id and row["user_id"] == payer != user_id
    assert (row["chute_id"], row["method"], row["status"], row["miner_history"]) == ("chute-1", "train", "pending", [])
    assert row["job_args"] == {"steps": 100, "lr": 0.001, "dataset": {"name": "c4", "shards": [1, 2]}}
    assert type(row["job_args"]["steps"]) is int
    assert row["ports"] == [{"name": "rpc", "port": 9000, "proto": "tcp"},
                            {"name": "rpc-udp", "port": 9000, "proto": "udp"}]
    assert (row["compute_multiplier"], row["miner_hotkey"], row["instance_id"]) == (None, None, None)
    assert row["created_at"] == clock.now()

    async with clean_db.connect() as conn:
        assert (await ChuteRepository(conn).get_job(response.job_id))["method"] == "train"


async def test_a_given_job_id_is_kept_and_cannot_be_taken_twice(admin, clean_db):
    user_id = await world(admin)
    request = admin_pb2.CreateJobRequest(job_id="job-1", chute_id="chute-1", user_id=user_id, method="train",
                                         compute_multiplier=2.5)
    assert (await admin.CreateJob(request, metadata=ADMIN_METADATA)).job_id == "job-1"
    request.method = "other"
    code, details, reason, _ = await refusal(admin.CreateJob, request)
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "JOB_EXISTS") and details.startswith("job_id: ")
    [row] = await rows(clean_db, jobs)
    assert (row["job_id"], row["method"], row["compute_multiplier"]) == ("job-1", "train", 2.5)


async def test_job_ports_are_checked_one_by_one(admin, clean_db):
    user_id = await world(admin)
    ports = [admin_pb2.JobPort(name="ok", port=9000, proto="tcp"),
             admin_pb2.JobPort(name="", port=9001, proto="tcp"),
             admin_pb2.JobPort(name="api", port=8000, proto="tcp"),
             admin_pb2.JobPort(name="logs", port=8001, proto="udp"),
             admin_pb2.JobPort(name="zero", port=0, proto="tcp"),
             admin_pb2.JobPort(name="high", port=65536, proto="tcp"),
             admin_pb2.JobPort(name="sctp", port=9002, proto="sctp"),
             admin_pb2.JobPort(name="again", port=9000, proto="tcp")]
    code, details, _, named = await refusal(admin.CreateJob, admin_pb2.CreateJobRequest(
        chute_id="chute-1", user_id=user_id, method="train", ports=ports))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert named == {"ports[1].name", "ports[2].port", "ports[3].port", "ports[4].port", "ports[5].port",
                     "ports[6].proto", "ports[7].port"}
    assert "8000 is reserved (the API port" in details and "8001 is reserved (the log port" in details
    assert "ports[7].port: tcp 9000 is already declared by ports[0]" in details
    assert await count(clean_db, jobs) == 0


async def test_bad_job_fields_are_each_named(admin, clean_db):
    user_id = await world(admin)
    code, details, _, named = await refusal(admin.CreateJob, admin_pb2.CreateJobRequest(
        job_id="j" * 37, chute_id="", user_id=user_id, method="", compute_multiplier=0.0,
        job_args=struct({"prompt": "a\x00b", "n": math.nan})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert named == {"job_id", "chute_id", "method", "compute_multiplier", "job_args.prompt", "job_args.n"}
    assert await count(clean_db, jobs) == 0


async def test_a_job_needs_an_existing_enabled_chute_and_payer(admin, clean_db):
    user_id = await world(admin)
    code, details, reason, _ = await refusal(admin.CreateJob, admin_pb2.CreateJobRequest(
        chute_id="chute-404", user_id=user_id, method="train"))
    assert (code, reason, details) == (grpc.StatusCode.NOT_FOUND, "CHUTE_NOT_FOUND", "chute_id: no chute chute-404")

    code, details, reason, _ = await refusal(admin.CreateJob, admin_pb2.CreateJobRequest(
        chute_id="chute-1", user_id=NO_SUCH_USER, method="train"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND") and details.startswith("user_id: ")

    await admin.UpsertChute(chute_request(user_id, disabled=True), metadata=ADMIN_METADATA)
    code, details, reason, _ = await refusal(admin.CreateJob, admin_pb2.CreateJobRequest(
        chute_id="chute-1", user_id=user_id, method="train"))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CHUTE_DISABLED") and "disabled" in details
    assert await count(clean_db, jobs) == 0


# -- the race the existence checks leave open: a foreign key refuses, and the column is named ------------------
async def test_a_foreign_key_refusal_names_the_referencing_column(admin, clean_db):
    user_id = await world(admin)
    base_image = dict(image_id="img-2", name="n", tag="t", patch_version=None, compute_type="gpu")
    base_chute = dict(chute_id="chute-9", user_id=user_id, image_id="img-1", name="c", version="v")
    base_job = dict(job_id="job-9", chute_id="chute-1", user_id=user_id, method="m", job_args={}, ports=[],
                    compute_multiplier=None)
    cases = [("upsert_image", {**base_image, "user_id": NO_SUCH_USER}, "user_id"),
             ("upsert_chute", {**base_chute, "image_id": "img-404"}, "image_id"),
             ("upsert_chute", {**base_chute, "user_id": NO_SUCH_USER}, "user_id"),
             ("create_job", {**base_job, "chute_id": "chute-404"}, "chute_id"),
             ("create_job", {**base_job, "user_id": NO_SUCH_USER}, "user_id")]
    for method, row, field in cases:
        with pytest.raises(MissingReference) as err:
            async with unit_of_work(clean_db) as conn:
                await getattr(ChuteRepository(conn), method)(row, now=START)
        assert err.value.field == field, method
    assert [await count(clean_db, t) for t in (images, chutes, jobs)] == [1, 1, 0]


# -- REST through the gateway --------------------------------------------------------------------------------------
async def test_rest_registers_a_chute_posts_a_job_and_refuses_deleting_a_busy_chute(admin, clean_db, chute_app):
    user_id = await new_user(admin)
    auth = {"authorization": "Bearer test-admin-token"}
    async with httpx.AsyncClient(base_url=f"http://{chute_app.http_addr}", timeout=10) as http:
        image = await http.put("/admin/v1/images/img-1", headers=auth,
                               json={"user_id": user_id, "name": "vllm", "tag": "0.8.4", "compute_type": "gpu"})
        assert (image.status_code, image.json()) == (200, {"image_id": "img-1", "created": True})

        body = {"chute_id": "ignored", "user_id": user_id, "name": "llama", "image_id": "img-1", "version": "v1",
                "node_selector": {"gpu_count": 2, "include": ["h100"]}, "jobs": [{"name": "train"}]}
        created = await http.put("/admin/v1/chutes/chute-1", headers=auth, json=body)
        assert (created.status_code, created.json()) == (200, {"chute_id": "chute-1", "created": True})
        [row] = await rows(clean_db, chutes)
        assert (row["chute_id"], row["node_selector"], row["jobs"]) == (
            "chute-1", {"gpu_count": 2, "include": ["h100"]}, [{"name": "train"}])  # the path names the chute

        bad = await http.put("/admin/v1/chutes/chute-1", headers=auth,
                             json={**body, "node_selector": {"gpu_count": 12}})
        assert bad.status_code == 400 and "node_selector.gpu_count" in bad.json()["error"]

        job = await http.post("/admin/v1/jobs", headers=auth, json={
            "chute_id": "chute-1", "user_id": user_id, "method": "train", "job_args": {"steps": 10},
            "ports": [{"name": "rpc", "port": 9000, "proto": "tcp"}]})
        assert job.status_code == 200, job.text
        [job_row] = await rows(clean_db, jobs)
        assert job_row["job_id"] == job.json()["job_id"] and job_row["job_args"] == {"steps": 10}

        await add_instance(clean_db, "chute-1")
        busy = await http.delete("/admin/v1/chutes/chute-1", headers=auth)
        assert busy.status_code == 409 and "disable it first" in busy.json()["error"]
        assert (await http.delete("/admin/v1/chutes/chute-1")).status_code == 401  # the admin token is required

        async with clean_db.begin() as conn:
            await conn.execute(delete(instances))
        gone = await http.delete("/admin/v1/chutes/chute-1", headers=auth)
        assert (gone.status_code, gone.json()) == (200, {})
        assert (await http.delete("/admin/v1/chutes/chute-1", headers=auth)).status_code == 404
    assert await count(clean_db, jobs) == 0
