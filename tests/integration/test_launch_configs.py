"""Launch configs end to end on a live server: issue, the one-time claim recorded in PostgreSQL, Graval proof of
work, TEE attestation pulled from the server's proxy, verification and activation, over gRPC and REST.

The miner side is played by the test: its GPUs come from a TDX server registered through the real flow
(servers_harness), the Graval work by the reference solver, the deployment's evidence by the fake proxy.
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import grpc
import jwt
import pytest
from google.protobuf import struct_pb2
from sqlalchemy import select

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.instances.v1 import instances_pb2, instances_pb2_grpc
from gantry.servers.v1 import servers_pb2, servers_pb2_grpc
from gantry_client import connect
from gantry_server.config import LaunchSettings
from gantry_server.domain import graval
from gantry_server.domain.graval import solver
from gantry_server.store import redis_keys
from gantry_server.store.models import instance_audit, instance_compute_history, instances, jobs, launch_configs

from ..conftest import ADMIN_METADATA
from .servers_harness import error_info, servers_world

MINER_SEED = bytes(range(32))
OTHER_SEED = bytes(range(7, 39))
MATRIX_N = 16
H100_BYTES = 85_899_345_920


@pytest.fixture(scope="module")
async def world(database_url, redis_url, tmp_path_factory):
    async with servers_world(database_url, redis_url, tmp_path_factory.mktemp("launch"),
                             launch=LaunchSettings(graval_matrix_n=MATRIX_N)) as w:
        yield w


def gpu(i: int) -> servers_pb2.NodeArgs:
    return servers_pb2.NodeArgs(uuid=f"GPU-{i:04d}", name="NVIDIA H100 80GB HBM3", memory=H100_BYTES, major=9, minor=0,
                                processors=132, sxm=True, clock_rate=1980.0, max_threads_per_processor=2048,
                                concurrent_kernels=True, ecc=True, device_index=i, gpu_identifier="h100",
                                verification_host="127.0.0.1", verification_port=8000 + i)


def admin(w):
    return admin_pb2_grpc.AdminServiceStub(w.channel)


async def put_chute(w, chute_id: str, *, tee: bool = False, gpu_count: int = 1, version: str = "0.3.0",
                    public: bool = True, **fields) -> None:
    selector = struct_pb2.Struct()
    selector.update({"gpu_count": gpu_count})
    await admin(w).UpsertChute(admin_pb2.UpsertChuteRequest(
        chute_id=chute_id, user_id=w.owner_id, name=chute_id, image_id="img-1", version="1", chutes_version=version,
        node_selector=selector, public=public, tee=tee, code="print('hello')", filename="app.py", **fields),
        metadata=ADMIN_METADATA)


@pytest.fixture
async def w(world, clean_db, redis):
    await world.load_policy()
    world.endpoint.mode = "good"
    world.endpoint.deployments.clear()
    miner = world.signer(MINER_SEED)
    await world.register_hotkey(miner.hotkey, uid=7)
    await world.register_hotkey(world.signer(OTHER_SEED).hotkey, uid=8)
    async with connect(world.app.grpc_addr, signer=miner) as channel:
        await servers_pb2_grpc.ServerServiceStub(channel).CreateServer(servers_pb2.CreateServerRequest(
            host="127.0.0.1", id="node-uid-1", name="gpu-box-1", gpus=[gpu(0), gpu(1)]))
    user = await admin(world).CreateUser(admin_pb2.CreateUserRequest(username="owner"), metadata=ADMIN_METADATA)
    world.owner_id = user.user_id
    await admin(world).UpsertImage(admin_pb2.UpsertImageRequest(
        image_id="img-1", user_id=user.user_id, name="vllm", tag="0.9", compute_type="gpu"), metadata=ADMIN_METADATA)
    await put_chute(world, "chute-graval")
    await put_chute(world, "chute-tee", tee=True, gpu_count=2)
    return world


async def launch_config(w, chute_id: str, *, seed: bytes = MINER_SEED, job_id: str | None = None):
    async with connect(w.app.grpc_addr, signer=w.signer(seed)) as channel:
        request = instances_pb2.GetLaunchConfigRequest(chute_id=chute_id, job_id=job_id)
        return await instances_pb2_grpc.InstanceServiceStub(channel).GetLaunchConfig(request)


def stub(w):
    return instances_pb2_grpc.InstanceServiceStub(w.channel)


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def claim_request(cls, config_id: str, *, gpus=("GPU-0000",), external_port: int = 32000, **kw):
    structs = []
    for uid in gpus:
        s = struct_pb2.Struct()
        s.update({"uuid": uid, "name": "NVIDIA H100 80GB HBM3"})
        structs.append(s)
    return cls(config_id=config_id, gpus=structs, host="127.0.0.1", env="encrypted-env", port_mappings=[
        instances_pb2.PortMapping(proto="tcp", internal_port=8000, external_port=external_port),
        instances_pb2.PortMapping(proto="tcp", internal_port=8001, external_port=external_port + 1)], **kw)


async def rows(w, table, *where) -> list[dict]:
    async with w.app.rt.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(select(table).where(*where))).mappings()]


async def graval_claim(w, issued, **kw):
    request = claim_request(instances_pb2.ClaimGravalLaunchConfigRequest, issued.config_id, **kw)
    return (await stub(w).ClaimGravalLaunchConfig(request, metadata=bearer(issued.token))).challenge


def proof_for(issued, challenge, *, seed_override: int | None = None):
    """What the miner's instance does: open the key with the env_key of its JWT, encrypt the response, do the work."""
    env_key = claims_of(issued.token)["env_key"]
    key = graval.open_symmetric_key(challenge.symmetric_key.ciphertext, env_key=env_key, config_id=issued.config_id,
                                    seed=challenge.seed, gpu_uuid=challenge.symmetric_key.uuid)
    response, iv = graval.make_response(key, issued.config_id, challenge.seed)
    params = graval.params_for("h100", H100_BYTES, matrix_n=MATRIX_N)
    work = solver.solve(seed_override or challenge.seed, challenge.symmetric_key.uuid, params)
    return instances_pb2.VerifyGravalLaunchConfigInstanceRequest(
        config_id=issued.config_id, response=response, iv=iv,
        proof={challenge.symmetric_key.uuid: instances_pb2.GravalWorkProof(work_product=work)})


# -- issue -----------------------------------------------------------------------------------------------------
async def test_issue_signs_a_launch_jwt_naming_a_new_config_row(w):
    issued = await launch_config(w, "chute-graval")
    claims = claims_of(issued.token)
    assert jwt.get_unverified_header(issued.token)["alg"] == "ES256"
    assert claims["sub"] == issued.config_id and claims["chute_id"] == "chute-graval"
    assert claims["iss"] == "chutes" and claims["exp"] - claims["iat"] == 3 * 3600 + 1800
    assert claims["env_type"] == "graval" and len(claims["env_key"]) == 32
    assert claims["url"].endswith(f"/instances/launch_config/{issued.config_id}")
    [row] = await rows(w, launch_configs)
    assert row["config_id"] == issued.config_id and row["retrieved_at"] is None
    assert (row["miner_uid"], row["env_key"], row["nonce"]) == (7, claims["env_key"], None)


async def test_issue_refusals_say_why(w):
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await launch_config(w, "no-such-chute")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    await put_chute(w, "chute-off", disabled=True)
    with pytest.raises(grpc.aio.AioRpcError) as disabled:
        await launch_config(w, "chute-off")
    assert error_info(disabled.value).metadata["http_status"] == "423"
    await w.app.rt.redis.set(redis_keys.scale_target("chute-graval"), 0)
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await launch_config(w, "chute-graval")
    assert error_info(full.value).reason == "CHUTE_AT_CAPACITY"
    assert await rows(w, launch_configs) == []


async def test_a_tee_chute_of_sdk_0_6_needs_servers_booted_on_a_recent_vm(w):
    await put_chute(w, "chute-tee-new", tee=True, gpu_count=2, version="0.6.1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await launch_config(w, "chute-tee-new")
    assert error_info(err.value).reason == "VM_TOO_OLD" and "gpu-box-1" in err.value.details()


# -- the one-time claim ---------------------------------------------------------------------------------------
async def test_a_launch_token_claims_once_and_the_use_is_recorded_in_the_database(w):
    issued = await launch_config(w, "chute-graval")
    challenge = await graval_claim(w, issued)
    assert challenge.symmetric_key.uuid == "GPU-0000"
    assert challenge.symmetric_key.response_plaintext == f"secret is {issued.config_id} {challenge.seed}"
    [row] = await rows(w, launch_configs)
    assert row["retrieved_at"] == w.clock.now() and row["seed"] == challenge.seed
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await graval_claim(w, issued, external_port=33000)
    assert again.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(again.value).reason == "LAUNCH_CONFIG_RETRIEVED"
    assert "already been retrieved" in again.value.details()
    assert len(await rows(w, instances)) == 1


async def test_concurrent_claims_of_one_config_exactly_one_wins(w):
    issued = await launch_config(w, "chute-graval")
    results = await asyncio.gather(*(graval_claim(w, issued, external_port=32000 + 10 * i) for i in range(8)),
                                   return_exceptions=True)
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 7
    assert {error_info(e).reason for e in lost} == {"LAUNCH_CONFIG_RETRIEVED"}
    assert len(await rows(w, instances)) == 1


async def test_a_token_for_another_config_or_tampered_is_refused(w):
    first = await launch_config(w, "chute-graval")
    second = await launch_config(w, "chute-graval")
    request = claim_request(instances_pb2.ClaimGravalLaunchConfigRequest, second.config_id)
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await stub(w).ClaimGravalLaunchConfig(request, metadata=bearer(first.token))
    assert other.value.code() == grpc.StatusCode.UNAUTHENTICATED and "another config" in other.value.details()
    head, body, sig = second.token.split(".")
    tampered = f"{head}.{body}.{sig[:-4]}AAAA"
    with pytest.raises(grpc.aio.AioRpcError) as forged:
        await stub(w).ClaimGravalLaunchConfig(request, metadata=bearer(tampered))
    assert forged.value.code() == grpc.StatusCode.UNAUTHENTICATED
    [untouched] = await rows(w, launch_configs, launch_configs.c.config_id == second.config_id)
    assert untouched["retrieved_at"] is None, "a refused token must not use the config up"


async def test_a_malformed_claim_is_refused_before_the_token_is_used(w):
    issued = await launch_config(w, "chute-graval")
    request = claim_request(instances_pb2.ClaimGravalLaunchConfigRequest, issued.config_id)
    request.ClearField("env")
    del request.gpus[:]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(w).ClaimGravalLaunchConfig(request, metadata=bearer(issued.token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gpus" in err.value.details() and "env" in err.value.details()
    [row] = await rows(w, launch_configs)
    assert row["retrieved_at"] is None
    assert (await graval_claim(w, issued)).seed > 0


# -- Graval: proof, verification, activation ------------------------------------------------------------------
async def test_graval_claim_verify_activate(w):
    issued = await launch_config(w, "chute-graval")
    challenge = await graval_claim(w, issued)
    w.clock.advance(seconds=5)
    verified = (await stub(w).VerifyGravalLaunchConfigInstance(proof_for(issued, challenge),
                                                               metadata=bearer(issued.token))).launch_config
    [instance] = await rows(w, instances)
    assert verified.instance_id == instance["instance_id"] and instance["verified"] and not instance["active"]
    assert verified.activation_url.endswith(f"/instances/launch_config/{issued.config_id}/activate")
    assert dict(verified.secrets) == {"PYTHONDONTWRITEBYTECODE": "1", "SGLANG_DISABLE_CUDNN_CHECK": "1"}
    assert not verified.HasField("code"), "code and fs_key are for chutes >= 0.3.61"
    w.clock.advance(seconds=30)
    assert (await stub(w).ActivateLaunchConfigInstance(
        instances_pb2.ActivateLaunchConfigInstanceRequest(config_id=issued.config_id),
        metadata=bearer(issued.token))).ok
    [instance] = await rows(w, instances)
    assert instance["active"] and instance["activated_at"] == w.clock.now()
    assert instance["billed_to"] is None and instance["compute_multiplier"] == pytest.approx(0.5)
    [audit] = await rows(w, instance_audit)
    assert audit["verified_at"] is not None and audit["activated_at"] == w.clock.now()
    history = sorted(await rows(w, instance_compute_history), key=lambda r: r["started_at"])
    assert [(h["started_at"], h["ended_at"]) for h in history] == [
        (instance["created_at"], w.clock.now()), (w.clock.now(), None)]
    again = await stub(w).ActivateLaunchConfigInstance(
        instances_pb2.ActivateLaunchConfigInstanceRequest(config_id=issued.config_id), metadata=bearer(issued.token))
    assert again.ok and len(await rows(w, instance_compute_history)) == 2, "activation is idempotent"


async def test_modern_chutes_get_their_code_and_an_fs_key_signed_by_the_launch_key(w):
    await put_chute(w, "chute-modern", version="0.3.61")
    issued = await launch_config(w, "chute-modern")
    challenge = await graval_claim(w, issued)
    verified = (await stub(w).VerifyGravalLaunchConfigInstance(proof_for(issued, challenge),
                                                               metadata=bearer(issued.token))).launch_config
    assert verified.code == "print('hello')"
    ts, _, signature = verified.fs_key.partition(":")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    import base64
    w.app.rt.launch_keys.public_key.verify(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                                           f"{ts}:chute-modern:{issued.config_id}".encode(), ec.ECDSA(hashes.SHA256()))


async def test_a_late_or_wrong_proof_fails_the_config_and_frees_the_gpu(w):
    issued = await launch_config(w, "chute-graval")
    challenge = await graval_claim(w, issued)
    estimate = graval.params_for("h100", H100_BYTES, matrix_n=MATRIX_N).estimate_seconds
    w.clock.advance(seconds=estimate * 2.15 + 1)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub(w).VerifyGravalLaunchConfigInstance(proof_for(issued, challenge), metadata=bearer(issued.token))
    assert late.value.code() == grpc.StatusCode.PERMISSION_DENIED and error_info(late.value).reason == "GRAVAL_TOO_SLOW"
    assert await rows(w, instances) == []
    [audit] = await rows(w, instance_audit)
    assert audit["deleted_at"] == w.clock.now() and "Graval proof arrived" in audit["deletion_reason"]
    [row] = await rows(w, launch_configs)
    assert row["failed_at"] is not None and "Graval proof arrived" in row["verification_error"]
    with pytest.raises(grpc.aio.AioRpcError) as after:
        await stub(w).VerifyGravalLaunchConfigInstance(proof_for(issued, challenge), metadata=bearer(issued.token))
    assert error_info(after.value).reason == "LAUNCH_CONFIG_FAILED"

    second = await launch_config(w, "chute-graval")
    challenge = await graval_claim(w, second)  # the GPU is free again
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await stub(w).VerifyGravalLaunchConfigInstance(proof_for(second, challenge, seed_override=challenge.seed + 1),
                                                       metadata=bearer(second.token))
    assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED and await rows(w, instances) == []


async def test_activation_needs_verification_and_expires_after_three_and_a_half_hours(w):
    issued = await launch_config(w, "chute-graval")
    challenge = await graval_claim(w, issued)
    activate = instances_pb2.ActivateLaunchConfigInstanceRequest(config_id=issued.config_id)
    with pytest.raises(grpc.aio.AioRpcError) as early:
        await stub(w).ActivateLaunchConfigInstance(activate, metadata=bearer(issued.token))
    assert early.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert early.value.details() == "Launch config has not been verified."
    await stub(w).VerifyGravalLaunchConfigInstance(proof_for(issued, challenge), metadata=bearer(issued.token))
    w.clock.advance(hours=3, minutes=31)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub(w).ActivateLaunchConfigInstance(activate, metadata=bearer(issued.token))
    assert late.value.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in late.value.details()
    # the never-activated instance no longer holds its GPU: the next claim of it takes it back
    second = await launch_config(w, "chute-graval")
    await graval_claim(w, second, external_port=33000)
    [instance] = await rows(w, instances)
    assert instance["config_id"] == second.config_id
    first = [a for a in await rows(w, instance_audit) if a["deleted_at"] is not None]
    assert [a["deletion_reason"] for a in first] == ["not activated within 3.5 h of its claim"]


async def test_the_runtime_integrity_nonce_is_handed_out_once(w):
    await put_chute(w, "chute-rint", version="0.4.9")
    issued = await launch_config(w, "chute-rint")
    request = instances_pb2.GetRintNonceRequest(config_id=issued.config_id)
    nonce = (await stub(w).GetRintNonce(request, metadata=bearer(issued.token))).nonce
    [row] = await rows(w, launch_configs)
    assert len(nonce) == 32 and nonce == row["nonce"]
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await stub(w).GetRintNonce(request, metadata=bearer(issued.token))
    assert again.value.code() == grpc.StatusCode.NOT_FOUND
    claim = claim_request(instances_pb2.ClaimGravalLaunchConfigRequest, issued.config_id, rint_nonce="ab" * 16)
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await stub(w).ClaimGravalLaunchConfig(claim, metadata=bearer(issued.token))
    assert error_info(wrong.value).reason == "RINT_NONCE_MISMATCH"


# -- TEE -------------------------------------------------------------------------------------------------------
async def tee_claim(w, issued, nonce: str, *, deployment: str = "dep-1", **kw):
    request = claim_request(instances_pb2.ClaimTeeLaunchConfigRequest, issued.config_id,
                            gpus=("GPU-0000", "GPU-0001"), deployment_id=deployment, **kw)
    return await stub(w).ClaimTeeLaunchConfig(request, metadata=bearer(issued.token) + (("x-chutes-nonce", nonce),))


async def test_tee_claim_pulls_the_deployments_evidence_then_verifies_and_activates(w):
    issued = await launch_config(w, "chute-tee")
    nonce = (await stub(w).GetInstanceNonce(instances_pb2.GetInstanceNonceRequest())).nonce
    w.endpoint.deployments["dep-1"] = nonce  # chutes < 0.6.0 bind the raw nonce
    claimed = await tee_claim(w, issued, nonce)
    [instance] = await rows(w, instances)
    assert len(claimed.symmetric_key) == 32 and instance["deployment_id"] == "dep-1"
    assert "/service/chute-service-dep-1/verify" in w.fake.requests[-1]
    verified = (await stub(w).VerifyTeeLaunchConfigInstance(
        instances_pb2.VerifyTeeLaunchConfigInstanceRequest(config_id=issued.config_id),
        metadata=bearer(issued.token))).launch_config
    assert verified.instance_id == instance["instance_id"]
    await stub(w).ActivateLaunchConfigInstance(
        instances_pb2.ActivateLaunchConfigInstanceRequest(config_id=issued.config_id), metadata=bearer(issued.token))
    [instance] = await rows(w, instances)
    assert instance["active"] and instance["compute_multiplier"] == pytest.approx(2 * 0.5 * 2.25)


async def test_tee_evidence_bound_to_another_nonce_fails_the_claim(w):
    issued = await launch_config(w, "chute-tee")
    nonce = (await stub(w).GetInstanceNonce(instances_pb2.GetInstanceNonceRequest())).nonce
    w.endpoint.deployments["dep-1"] = "ab" * 32
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await tee_claim(w, issued, nonce)
    assert error_info(err.value).reason == "NONCE_MISMATCH"
    assert await rows(w, instances) == []
    [row] = await rows(w, launch_configs)
    assert row["failed_at"] is not None and "TEE attestation failed" in row["verification_error"]


async def test_a_tee_claim_needs_a_fresh_instance_nonce_and_a_tee_chute(w):
    issued = await launch_config(w, "chute-tee")
    with pytest.raises(grpc.aio.AioRpcError) as no_nonce:
        await tee_claim(w, issued, "cd" * 32)
    assert no_nonce.value.code() == grpc.StatusCode.UNAUTHENTICATED
    graval_config = await launch_config(w, "chute-graval")
    nonce = (await stub(w).GetInstanceNonce(instances_pb2.GetInstanceNonceRequest())).nonce
    with pytest.raises(grpc.aio.AioRpcError) as not_tee:
        await tee_claim(w, graval_config, nonce)
    assert error_info(not_tee.value).reason == "NOT_TEE_CHUTE"


# -- jobs ------------------------------------------------------------------------------------------------------
async def test_each_miner_races_for_a_job_once(w):
    job = await admin(w).CreateJob(admin_pb2.CreateJobRequest(chute_id="chute-graval", user_id=w.owner_id,
                                                              method="train"), metadata=ADMIN_METADATA)
    issued = await launch_config(w, "chute-graval", job_id=job.job_id)
    assert claims_of(issued.token)["job_id"] == job.job_id
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await launch_config(w, "chute-graval", job_id=job.job_id)
    assert error_info(twice.value).reason == "JOB_ALREADY_ATTEMPTED"
    with pytest.raises(grpc.aio.AioRpcError) as live:
        await launch_config(w, "chute-graval", seed=OTHER_SEED, job_id=job.job_id)
    assert error_info(live.value).reason == "LAUNCH_CONFIG_CONFLICT"
    assert error_info(live.value).metadata["http_status"] == "409"
    [row] = await rows(w, jobs)
    assert row["miner_history"] == [w.signer(MINER_SEED).hotkey], "a refused attempt does not use up the other's try"


# -- REST and the unauthenticated helpers ------------------------------------------------------------------------
async def test_rest_paths_answer_like_the_reference(w):
    nonce = await w.http.get("/instances/nonce")
    assert nonce.status_code == 200 and isinstance(nonce.json(), str) and len(nonce.json()) == 64
    token = await w.http.get("/instances/token_check", params={"salt": "x"})
    assert token.status_code == 200 and uuid.UUID(token.json()["token"]).version == 5
    assert token.json() == (await w.http.get("/instances/token_check", params={"salt": "x"})).json()
    issued = await launch_config(w, "chute-graval")
    body = {"gpus": [{"uuid": "GPU-0000"}], "host": "127.0.0.1", "env": "x",
            "port_mappings": [{"proto": "tcp", "internal_port": 8000, "external_port": 32000}]}
    claimed = await w.http.post(f"/instances/launch_config/{issued.config_id}/graval", json=body,
                                headers={"Authorization": f"Bearer {issued.token}"})
    assert claimed.status_code == 200 and claimed.json()["symmetric_key"]["uuid"] == "GPU-0000"
    again = await w.http.post(f"/instances/launch_config/{issued.config_id}/graval", json=body,
                              headers={"Authorization": f"Bearer {issued.token}"})
    assert again.status_code == 401 and "already been retrieved" in again.json()["detail"]
    bad = await w.http.post(f"/instances/launch_config/{issued.config_id}/graval", json={"host": "127.0.0.1"},
                            headers={"Authorization": f"Bearer {issued.token}"})
    assert bad.status_code == 422 and {"gpus", "env"} <= {d["loc"][-1] for d in bad.json()["detail"]}

