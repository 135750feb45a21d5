"""Every change Gantry announces to miners writes its event into `event_outbox` in the change's own transaction:
AdminService (images, chutes, bounties, jobs, rolling updates) and the launch flow (claim, verify, activate, every
instance deletion). A refused call writes no event.

What is checked is the outbox row a miner's event comes from: its reason, its recipients (NULL: every miner) and
exactly the catalogue's payload keys (domain/events/catalogue.py) with their values. The relay to Redis is tested
in test_events_pipeline.py; here it is off, so the rows stay in the table for the tests to read.
"""
from __future__ import annotations

import uuid

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from sqlalchemy import delete, insert, select

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.instances.v1 import instances_pb2, instances_pb2_grpc
from gantry_client import connect
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.config import LaunchSettings, MinerSettings
from gantry_server.domain import events
from gantry_server.domain.miner.jobs import job_compute_multiplier
from gantry_server.store import redis_keys
from gantry_server.store.models import chutes, event_outbox, images, instances, jobs, rolling_updates

from ..conftest import ADMIN_METADATA, make_settings
from .servers_harness import error_info, servers_world
from .test_admin_chutes import START, chute_request, new_user, put_image, refusal, rows, struct
from .test_launch_configs import (MATRIX_N, MINER_SEED, bearer, graval_claim, launch_config, proof_for, stub,
                                  tee_claim)
from .test_launch_configs import w  # noqa: F401 - the launch world: owner, img-1, chute-graval, chute-tee, GPUs

# -- reading the outbox ------------------------------------------------------------------------------------------


async def take(engine) -> list[dict]:
    """The queued events in outbox order, removed: what a test's next step writes is then all there is."""
    async with engine.begin() as conn:
        found = [dict(r) for r in (await conn.execute(select(event_outbox).order_by(event_outbox.c.id))).mappings()]
        await conn.execute(delete(event_outbox))
    return found


def check(row: dict, reason: str, /, *, to: list[str] | None = None, **data) -> None:
    """`row` is the event `reason` for `to` (None: every miner) with exactly the catalogue's keys and `data`."""
    recipients, keys = events.CATALOGUE[reason]
    assert row["reason"] == reason
    assert row["recipients"] == to and (to is None) == (recipients == "all"), row["recipients"]
    assert set(row["data"]) == set(keys), f"{reason} carries {sorted(row['data'])}, the catalogue says {keys}"
    assert row["data"] == data
    assert row["message"]


# == AdminService ===================================================================================================
@pytest.fixture(scope="module")
async def admin_app(database_url, redis_url, tmp_path_factory):
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("producers"),
                                     miner=MinerSettings(background_loops=False)), clock=ManualClock(START))
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture(scope="module")
async def admin_channel(admin_app):
    async with grpc.aio.insecure_channel(admin_app.grpc_addr) as channel:
        yield channel


@pytest.fixture
async def admin(admin_channel, clean_db):
    return admin_pb2_grpc.AdminServiceStub(admin_channel)


@pytest.fixture
def clock(admin_app) -> ManualClock:
    return admin_app.rt.clock


async def owner(admin, username: str | None = None) -> str:
    if username is None:
        return await new_user(admin)
    return (await admin.CreateUser(admin_pb2.CreateUserRequest(username=username), metadata=ADMIN_METADATA)).user_id


async def put_chute(admin, user_id: str, chute_id: str = "chute-1", **kw) -> admin_pb2.UpsertChuteResponse:
    return await admin.UpsertChute(chute_request(user_id, chute_id=chute_id, **kw), metadata=ADMIN_METADATA)


_PORTS = iter(range(30000, 40000))


async def put_instance(engine, instance_id: str, *, chute_id: str = "chute-1", version: str = "v1",
                       hotkey: str = "5HotkeyA") -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(instances).values(
            instance_id=instance_id, chute_id=chute_id, version=version, host="203.0.113.9", port=next(_PORTS),
            miner_uid=7, miner_hotkey=hotkey, miner_coldkey=hotkey, created_at=START, symmetric_key_enc=b"k"))


def cords(*items: dict) -> struct_pb2.ListValue:
    out = struct_pb2.ListValue()
    out.extend(list(items))
    return out


# -- images ----------------------------------------------------------------------------------------------------------
async def test_a_new_image_announces_image_created_and_a_replaced_one_image_updated_with_what_miners_pull(
        admin, clean_db):
    user_id = await owner(admin, "Ops.Team")
    await put_image(admin, user_id, tag="0.9", chutes_version="0.4.9")
    [created] = await take(clean_db)
    check(created, "image_created", image_id="img-1")

    await put_chute(admin, user_id, "chute-b")
    await put_chute(admin, user_id, "chute-a")
    await put_image(admin, user_id, "img-2")  # another image: its chutes are not img-1's
    await put_chute(admin, user_id, "chute-c", image_id="img-2")
    await take(clean_db)
    await put_image(admin, user_id, tag="0.9", patch_version="p1", chutes_version="0.5.0")
    [updated] = await take(clean_db)
    check(updated, "image_updated", image_id="img-1", short_tag="0.9", patch_version="p1", chutes_version="0.5.0",
          chute_ids=["chute-a", "chute-b"], image="ops.team/vllm:0.9-p1")
    [row] = await rows(clean_db, images, images.c.image_id == "img-1")
    assert row["chutes_version"] == "0.5.0"

    await put_image(admin, user_id, tag="1.0", patch_version="initial")  # "initial" is not appended
    [updated] = await take(clean_db)
    assert (updated["data"]["image"], updated["data"]["chutes_version"]) == ("ops.team/vllm:1.0", None)


async def test_a_refused_image_put_announces_nothing(admin, clean_db):
    user_id = await owner(admin)
    await take(clean_db)
    code, _, _, fields = await refusal(admin.UpsertImage, admin_pb2.UpsertImageRequest(
        image_id="img-1", user_id=user_id, name="vllm", tag="1", chutes_version="latest"))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"chutes_version"})
    code, _, reason, _ = await refusal(admin.UpsertImage, admin_pb2.UpsertImageRequest(
        image_id="img-1", user_id=str(uuid.uuid4()), name="vllm", tag="1"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    assert await take(clean_db) == [] and await rows(clean_db, images) == []


async def test_deleting_an_image_announces_image_deleted_and_is_refused_while_a_chute_uses_it(
        admin, clean_db, admin_app):
    user_id = await owner(admin)
    await put_image(admin, user_id)
    await put_chute(admin, user_id)
    await take(clean_db)

    code, details, reason, _ = await refusal(admin.DeleteImage, admin_pb2.DeleteImageRequest(image_id="img-1"))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_IN_USE") and "chute-1" in details
    async with httpx.AsyncClient(base_url=f"http://{admin_app.http_addr}", timeout=10) as http:
        busy = await http.delete("/admin/v1/images/img-1", headers={"authorization": "Bearer test-admin-token"})
    assert busy.status_code == 409
    code, _, reason, _ = await refusal(admin.DeleteImage, admin_pb2.DeleteImageRequest(image_id="img-404"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND")
    code, _, _, fields = await refusal(admin.DeleteImage, admin_pb2.DeleteImageRequest(image_id="img/1"))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"image_id"})
    assert await take(clean_db) == [] and len(await rows(clean_db, images)) == 1

    await admin.DeleteChute(admin_pb2.DeleteChuteRequest(chute_id="chute-1"), metadata=ADMIN_METADATA)
    await take(clean_db)
    await admin.DeleteImage(admin_pb2.DeleteImageRequest(image_id="img-1"), metadata=ADMIN_METADATA)
    [deleted] = await take(clean_db)
    check(deleted, "image_deleted", image_id="img-1")
    assert await rows(clean_db, images) == []


# -- chutes ----------------------------------------------------------------------------------------------------------
async def test_a_chute_put_announces_created_then_updated_with_job_only_and_stores_ref_str_and_cords(
        admin, clean_db):
    user_id = await owner(admin)
    await put_image(admin, user_id)
    await take(clean_db)
    await put_chute(admin, user_id, filename="llama.py", jobs=cords({"name": "train"}))
    [created] = await take(clean_db)
    check(created, "chute_created", chute_id="chute-1", version="v1", job_only=True)  # jobs and no cords
    [row] = await rows(clean_db, chutes)
    assert (row["ref_str"], row["cords"]) == ("llama:chute", [])  # the SDK's default: the file's module

    await put_chute(admin, user_id, version="v2", ref_str="pkg.app:chute_70b", jobs=cords({"name": "train"}),
                    cords=cords({"method": "generate", "stream": True}))
    [updated] = await take(clean_db)
    check(updated, "chute_updated", chute_id="chute-1", version="v2", job_only=False)
    [row] = await rows(clean_db, chutes)
    assert (row["ref_str"], row["cords"]) == ("pkg.app:chute_70b", [{"method": "generate", "stream": True}])

    await put_chute(admin, user_id, "chute-2")  # no filename, no jobs
    [created] = await take(clean_db)
    check(created, "chute_created", chute_id="chute-2", version="v1", job_only=False)
    assert (await rows(clean_db, chutes, chutes.c.chute_id == "chute-2"))[0]["ref_str"] == "main:chute"


@pytest.mark.parametrize(("change", "fields"), [
    (dict(ref_str=""), {"ref_str"}),
    (dict(ref_str="app"), {"ref_str"}),
    (dict(ref_str="app:"), {"ref_str"}),
    (dict(ref_str=":chute"), {"ref_str"}),
    (dict(ref_str="app:chute:x"), {"ref_str"}),
    (dict(ref_str="1app:chute"), {"ref_str"}),
    (dict(ref_str="pkg..app:chute"), {"ref_str"}),
    (dict(ref_str="app:class"), {"ref_str"}),
    (dict(ref_str="app:chute\n"), {"ref_str"}),
    (dict(ref_str="a" * 250 + ":chute"), {"ref_str"}),
    (dict(filename="my-chute.py"), {"ref_str"}),  # the default it derives is no module
    (dict(cords=cords({"method": "generate", "bad": "a\x00b"})), {"cords[0].bad"}),
])
async def test_a_bad_ref_str_or_cords_is_named_and_nothing_is_written_or_announced(admin, clean_db, change, fields):
    user_id = await owner(admin)
    await put_image(admin, user_id)
    await take(clean_db)
    code, details, _, named = await refusal(admin.UpsertChute, chute_request(user_id, **change))
    assert (code, named) == (grpc.StatusCode.INVALID_ARGUMENT, fields)
    assert all(f"{field}: " in details for field in fields)
    assert await rows(clean_db, chutes) == [] and await take(clean_db) == []


async def test_a_chute_naming_a_missing_image_announces_nothing(admin, clean_db):
    user_id = await owner(admin)
    code, _, reason, _ = await refusal(admin.UpsertChute, chute_request(user_id, image_id="img-404"))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND")
    assert await take(clean_db) == []


async def test_deleting_a_chute_announces_chute_deleted_with_its_version_unless_refused(admin, clean_db):
    user_id = await owner(admin)
    await put_image(admin, user_id)
    await put_chute(admin, user_id, version="v7")
    await put_instance(clean_db, "inst-1", version="v7")
    await take(clean_db)
    code, _, reason, _ = await refusal(admin.DeleteChute, admin_pb2.DeleteChuteRequest(chute_id="chute-1"))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CHUTE_HAS_INSTANCES")
    assert await take(clean_db) == []

    async with clean_db.begin() as conn:
        await conn.execute(delete(instances))
    await admin.DeleteChute(admin_pb2.DeleteChuteRequest(chute_id="chute-1"), metadata=ADMIN_METADATA)
    [deleted] = await take(clean_db)
    check(deleted, "chute_deleted", chute_id="chute-1", version="v7")


# -- rolling updates -------------------------------------------------------------------------------------------------
async def test_a_version_change_under_old_version_instances_tells_each_owner_to_replace_its_instance(
        admin, clean_db, clock):
    user_id = await owner(admin)
    await put_image(admin, user_id)
    await put_chute(admin, user_id)
    await put_chute(admin, user_id, "chute-2")
    await put_instance(clean_db, "inst-a", hotkey="5HotkeyA")
    await put_instance(clean_db, "inst-b", hotkey="5HotkeyB")
    await put_instance(clean_db, "inst-new", hotkey="5HotkeyC", version="v2")  # already on the new version
    await put_instance(clean_db, "inst-other", chute_id="chute-2", hotkey="5HotkeyD")  # another chute's
    await put_chute(admin, user_id, name="renamed")  # same version: no rolling update
    assert await rows(clean_db, rolling_updates) == []
    await take(clean_db)

    clock.advance(minutes=5)
    await put_chute(admin, user_id, version="v2")
    [updated, *rolling] = await take(clean_db)
    check(updated, "chute_updated", chute_id="chute-1", version="v2", job_only=False)
    assert len(rolling) == 2
    for row, (instance_id, hotkey) in zip(rolling, (("inst-a", "5HotkeyA"), ("inst-b", "5HotkeyB"))):
        check(row, "rolling_update", to=[hotkey], chute_id="chute-1", instance_id=instance_id, miner_hotkey=hotkey,
              old_version="v1", new_version="v2", reason="chute updated")
    assert await rows(clean_db, rolling_updates) == [
        dict(chute_id="chute-1", old_version="v1", new_version="v2", started_at=clock.now())]


async def test_a_version_change_without_old_version_instances_starts_no_rolling_update(admin, clean_db):
    user_id = await owner(admin)
    await put_image(admin, user_id)
    await put_chute(admin, user_id)
    await put_instance(clean_db, "inst-other", hotkey="5HotkeyA", version="v0")
    await take(clean_db)
    await put_chute(admin, user_id, version="v2")
    assert [r["reason"] for r in await take(clean_db)] == ["chute_updated"]
    assert await rows(clean_db, rolling_updates) == []


# -- bounties --------------------------------------------------------------------------------------------------------
async def test_a_bounty_is_offered_raised_kept_across_a_chute_put_and_withdrawn_each_announced(
        admin, clean_db, clock):
    user_id = await owner(admin)
    await put_image(admin, user_id)
    await put_chute(admin, user_id)
    await take(clean_db)

    offered = await admin.SetChuteBounty(admin_pb2.SetChuteBountyRequest(chute_id="chute-1", bounty=500),
                                         metadata=ADMIN_METADATA)
    assert (offered.chute_id, offered.bounty) == ("chute-1", 500)
    set_at = clock.now()
    [event] = await take(clean_db)
    check(event, "bounty_change", chute_id="chute-1", bounty=500)

    clock.advance(minutes=10)
    await admin.SetChuteBounty(admin_pb2.SetChuteBountyRequest(chute_id="chute-1", bounty=1_000_000),
                               metadata=ADMIN_METADATA)
    await put_chute(admin, user_id, name="renamed")  # replacing the chute is not withdrawing its bounty
    [raised, _] = await take(clean_db)
    check(raised, "bounty_change", chute_id="chute-1", bounty=1_000_000)
    [row] = await rows(clean_db, chutes)
    assert (row["name"], row["bounty"], row["bounty_set_at"]) == ("renamed", 1_000_000, set_at)  # the offer's age

    withdrawn = await admin.SetChuteBounty(admin_pb2.SetChuteBountyRequest(chute_id="chute-1", bounty=0),
                                           metadata=ADMIN_METADATA)
    assert not withdrawn.HasField("bounty")
    [event] = await take(clean_db)
    check(event, "bounty_change", chute_id="chute-1", bounty=0)
    [row] = await rows(clean_db, chutes)
    assert (row["bounty"], row["bounty_set_at"]) == (None, None)


async def test_a_refused_bounty_names_the_field_and_announces_nothing(admin, clean_db):
    user_id = await owner(admin)
    await put_image(admin, user_id)
    await put_chute(admin, user_id)
    await take(clean_db)
    for bounty in (-1, 1_000_001):
        code, details, _, fields = await refusal(admin.SetChuteBounty, admin_pb2.SetChuteBountyRequest(
            chute_id="chute-1", bounty=bounty))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"bounty"}) and "bounty: " in details
    code, _, _, fields = await refusal(admin.SetChuteBounty, admin_pb2.SetChuteBountyRequest(chute_id="", bounty=1))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"chute_id"})
    code, _, reason, _ = await refusal(admin.SetChuteBounty, admin_pb2.SetChuteBountyRequest(
        chute_id="chute-404", bounty=1))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CHUTE_NOT_FOUND")
    assert await take(clean_db) == []
    assert (await rows(clean_db, chutes))[0]["bounty"] is None


# -- jobs ------------------------------------------------------------------------------------------------------------
async def test_a_posted_job_is_announced_with_an_integer_disk_gb_and_both_exclusion_keys(admin, clean_db):
    user_id = await owner(admin)
    await put_image(admin, user_id)
    await put_chute(admin, user_id)  # two GPUs
    await take(clean_db)

    await admin.CreateJob(admin_pb2.CreateJobRequest(job_id="job-1", chute_id="chute-1", user_id=user_id,
                                                     method="train", compute_multiplier=2.5), metadata=ADMIN_METADATA)
    [event] = await take(clean_db)
    check(event, "job_created", job_id="job-1", method="train", chute_id="chute-1", image_id="img-1", gpu_count=2,
          compute_multiplier=2.5, exclude=[], excluded=[], disk_gb=10)

    await admin.CreateJob(admin_pb2.CreateJobRequest(job_id="job-2", chute_id="chute-1", user_id=user_id,
                                                     method="eval", job_args=struct({"_disk_gb": 250})),
                          metadata=ADMIN_METADATA)
    [event] = await take(clean_db)
    [job] = await rows(clean_db, jobs, jobs.c.job_id == "job-2")
    [chute] = await rows(clean_db, chutes)
    assert event["data"]["disk_gb"] == 250 and type(event["data"]["disk_gb"]) is int
    assert event["data"]["compute_multiplier"] == pytest.approx(job_compute_multiplier(job, chute))
    assert event["data"]["exclude"] == event["data"]["excluded"] == []


async def test_a_refused_job_announces_nothing(admin, clean_db):
    user_id = await owner(admin)
    await put_image(admin, user_id)
    await put_chute(admin, user_id)
    await admin.CreateJob(admin_pb2.CreateJobRequest(job_id="job-1", chute_id="chute-1", user_id=user_id,
                                                     method="train"), metadata=ADMIN_METADATA)
    await take(clean_db)
    refused = [admin_pb2.CreateJobRequest(chute_id="chute-1", user_id=user_id, method=""),
               admin_pb2.CreateJobRequest(chute_id="chute-404", user_id=user_id, method="train"),
               admin_pb2.CreateJobRequest(job_id="job-1", chute_id="chute-1", user_id=user_id, method="train")]
    codes = [(await refusal(admin.CreateJob, request))[0] for request in refused]
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS]
    assert await take(clean_db) == []


# == the launch flow ================================================================================================
@pytest.fixture(scope="module")
async def world(database_url, redis_url, tmp_path_factory):
    """test_launch_configs' world (its `w` fixture builds on this), with the outbox relay stopped."""
    async with servers_world(database_url, redis_url, tmp_path_factory.mktemp("launch-events"),
                             launch=LaunchSettings(graval_matrix_n=MATRIX_N)) as world:
        await world.app.rt.events_relay.stop()
        yield world


def hotkey(w) -> str:
    return w.signer(MINER_SEED).hotkey


async def the_instance(w) -> dict:
    [row] = await rows(w.app.rt.engine, instances)
    return row


async def test_claim_verify_and_activate_each_tell_the_owner_only(w):
    engine = w.app.rt.engine
    issued = await launch_config(w, "chute-graval")
    await take(engine)
    challenge = await graval_claim(w, issued)
    instance = await the_instance(w)
    [created] = await take(engine)
    check(created, "instance_created", to=[hotkey(w)], chute_id="chute-graval", gpu_count=1,
          gpu_model_name="NVIDIA H100 80GB HBM3", miner_hotkey=hotkey(w), instance_id=instance["instance_id"],
          config_id=issued.config_id)

    await stub(w).VerifyGravalLaunchConfigInstance(proof_for(issued, challenge), metadata=bearer(issued.token))
    [verified] = await take(engine)
    check(verified, "instance_verified", to=[hotkey(w)], instance_id=instance["instance_id"],
          miner_hotkey=hotkey(w))

    activate = instances_pb2.ActivateLaunchConfigInstanceRequest(config_id=issued.config_id)
    await stub(w).ActivateLaunchConfigInstance(activate, metadata=bearer(issued.token))
    [activated] = await take(engine)
    check(activated, "instance_activated", to=[hotkey(w)], chute_id="chute-graval", miner_hotkey=hotkey(w),
          instance_id=instance["instance_id"], config_id=issued.config_id)
    await stub(w).ActivateLaunchConfigInstance(activate, metadata=bearer(issued.token))
    assert await take(engine) == [], "activating an active instance again changes nothing and says nothing"


async def test_a_claim_refused_after_creating_its_instance_announces_both(w):
    engine = w.app.rt.engine
    issued = await launch_config(w, "chute-tee")
    nonce = (await stub(w).GetInstanceNonce(instances_pb2.GetInstanceNonceRequest())).nonce
    w.endpoint.deployments["dep-1"] = "ab" * 32  # evidence bound to another nonce: the attestation fails
    await take(engine)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tee_claim(w, issued, nonce)
    assert error_info(err.value).reason == "NONCE_MISMATCH"
    created, deleted = await take(engine)
    instance_id = created["data"]["instance_id"]
    check(created, "instance_created", to=[hotkey(w)], chute_id="chute-tee", gpu_count=2,
          gpu_model_name="NVIDIA H100 80GB HBM3", miner_hotkey=hotkey(w), instance_id=instance_id,
          config_id=issued.config_id)
    check(deleted, "instance_deleted", to=[hotkey(w)], chute_id="chute-tee", miner_hotkey=hotkey(w),
          instance_id=instance_id, config_id=issued.config_id)
    assert "TEE attestation failed" in deleted["message"]


async def test_a_claim_refused_before_creating_an_instance_announces_nothing(w):
    issued = await launch_config(w, "chute-graval")
    await take(w.app.rt.engine)
    with pytest.raises(grpc.aio.AioRpcError):
        await graval_claim(w, issued, gpus=("GPU-0000", "GPU-0001"))  # the chute needs one GPU
    assert await take(w.app.rt.engine) == [] and await rows(w.app.rt.engine, instances) == []


async def test_a_late_proof_deletes_the_instance_and_says_so(w):
    engine = w.app.rt.engine
    issued = await launch_config(w, "chute-graval")
    challenge = await graval_claim(w, issued)
    instance = await the_instance(w)
    await take(engine)
    w.clock.advance(hours=1)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub(w).VerifyGravalLaunchConfigInstance(proof_for(issued, challenge), metadata=bearer(issued.token))
    [deleted] = await take(engine)
    check(deleted, "instance_deleted", to=[hotkey(w)], chute_id="chute-graval", miner_hotkey=hotkey(w),
          instance_id=instance["instance_id"], config_id=issued.config_id)


async def test_an_activation_refused_at_capacity_deletes_the_instance_and_says_so(w):
    engine = w.app.rt.engine
    issued = await launch_config(w, "chute-graval")
    challenge = await graval_claim(w, issued)
    await stub(w).VerifyGravalLaunchConfigInstance(proof_for(issued, challenge), metadata=bearer(issued.token))
    instance = await the_instance(w)
    await take(engine)
    await w.app.rt.redis.set(redis_keys.scale_target("chute-graval"), 0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(w).ActivateLaunchConfigInstance(
            instances_pb2.ActivateLaunchConfigInstanceRequest(config_id=issued.config_id),
            metadata=bearer(issued.token))
    assert error_info(err.value).reason == "CHUTE_AT_CAPACITY"
    [deleted] = await take(engine)
    check(deleted, "instance_deleted", to=[hotkey(w)], chute_id="chute-graval", miner_hotkey=hotkey(w),
          instance_id=instance["instance_id"], config_id=issued.config_id)


async def test_a_pending_instance_expired_by_the_next_claim_of_its_gpu_is_announced_deleted(w):
    engine = w.app.rt.engine
    first = await launch_config(w, "chute-graval")
    await graval_claim(w, first)
    old = await the_instance(w)
    w.clock.advance(hours=3, minutes=31)
    second = await launch_config(w, "chute-graval")
    await take(engine)
    await graval_claim(w, second, external_port=33000)
    new = await the_instance(w)
    deleted, created = await take(engine)
    check(deleted, "instance_deleted", to=[hotkey(w)], chute_id="chute-graval", miner_hotkey=hotkey(w),
          instance_id=old["instance_id"], config_id=first.config_id)
    assert "not activated within 3.5 h" in deleted["message"]
    assert (created["reason"], created["data"]["instance_id"]) == ("instance_created", new["instance_id"])


async def test_deleting_a_job_instance_announces_the_instance_and_the_job_it_ended(w):
    engine = w.app.rt.engine
    job = await admin_pb2_grpc.AdminServiceStub(w.channel).CreateJob(admin_pb2.CreateJobRequest(
        chute_id="chute-graval", user_id=w.owner_id, method="train"), metadata=ADMIN_METADATA)
    issued = await launch_config(w, "chute-graval", job_id=job.job_id)
    challenge = await graval_claim(w, issued)
    await stub(w).VerifyGravalLaunchConfigInstance(proof_for(issued, challenge), metadata=bearer(issued.token))
    instance = await the_instance(w)
    await take(engine)
    async with connect(w.app.grpc_addr, signer=w.signer(MINER_SEED)) as channel:
        await instances_pb2_grpc.InstanceServiceStub(channel).DeleteInstance(instances_pb2.DeleteInstanceRequest(
            chute_id="chute-graval", instance_id=instance["instance_id"]))
    deleted, ended = await take(engine)
    check(deleted, "instance_deleted", to=[hotkey(w)], chute_id="chute-graval", miner_hotkey=hotkey(w),
          instance_id=instance["instance_id"], config_id=issued.config_id)
    check(ended, "job_deleted", instance_id=instance["instance_id"], job_id=job.job_id)


async def test_deleting_an_instance_without_a_job_announces_only_the_instance(w):
    engine = w.app.rt.engine
    issued = await launch_config(w, "chute-graval")
    await graval_claim(w, issued)
    instance = await the_instance(w)
    await take(engine)
    async with connect(w.app.grpc_addr, signer=w.signer(MINER_SEED)) as channel:
        await instances_pb2_grpc.InstanceServiceStub(channel).DeleteInstance(instances_pb2.DeleteInstanceRequest(
            chute_id="chute-graval", instance_id=instance["instance_id"]))
    [deleted] = await take(engine)
    assert (deleted["reason"], deleted["recipients"], deleted["data"]["instance_id"]) == (
        "instance_deleted", [hotkey(w)], instance["instance_id"])
