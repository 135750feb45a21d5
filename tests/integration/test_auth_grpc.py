"""Auth end to end over gRPC: the interceptor, the policy table, Redis nonces and metagraph checks together.

RPCs whose handler is not built yet answer UNIMPLEMENTED once the caller is let through, so "UNIMPLEMENTED"
below means "authenticated", as does ReleaseJob's NOT_FOUND for a job nobody claimed and GetTeeInstanceEvidence's
NOT_FOUND for instance "i-1" (their handlers ran); the refusals are what a caller without the right credentials
sees.
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import grpc
import pytest
from bittensor_wallet import Keypair
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.instances.v1 import instances_pb2, instances_pb2_grpc
from gantry.miner.v1 import miner_pb2, miner_pb2_grpc
from gantry.servers.v1 import servers_pb2, servers_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.domain.auth import signatures as s
from gantry_server.domain.auth.nonces import AttestationNonces, BootTokens

from gantry_server.config import RateLimitSettings

from ..conftest import ADMIN_METADATA, make_settings

ALICE = Keypair.create_from_uri("//Alice")
BOB = Keypair.create_from_uri("//Bob")
CHARLIE = Keypair.create_from_uri("//Charlie")
START = datetime(2026, 1, 1, 0, 0, 10, tzinfo=timezone.utc)
NOW = int(START.timestamp())


@pytest.fixture(scope="module")
async def auth_app(database_url, redis_url, tmp_path_factory):
    gantry = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("auth"),
                                     limits=RateLimitSettings(rates=(("tee_evidence", 60, 60),))),
                       clock=ManualClock(START))
    await gantry.start()
    yield gantry
    await gantry.stop(0)


@pytest.fixture(scope="module")
async def ch(auth_app):
    async with grpc.aio.insecure_channel(auth_app.grpc_addr) as channel:
        yield channel


@pytest.fixture
async def world(ch, clean_db, redis):
    """Alice registered on netuid 64, Bob registered but blacklisted, Charlie unknown."""
    admin = admin_pb2_grpc.AdminServiceStub(ch)
    await admin.UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(nodes=[
        admin_pb2.MetagraphNode(hotkey=ALICE.ss58_address, netuid=64, node_id=1, ip="203.0.113.7", ip_type=4),
        admin_pb2.MetagraphNode(hotkey=BOB.ss58_address, netuid=64, node_id=2, ip="203.0.113.8", ip_type=4),
    ]), metadata=ADMIN_METADATA)
    async with clean_db.begin() as conn:
        from sqlalchemy import text
        await conn.execute(text("UPDATE metagraph_nodes SET blacklist_reason = 'sybil ring' WHERE hotkey = :h"),
                           {"h": BOB.ss58_address})
    return ch


def v1(kp: Keypair, purpose: str, nonce: int = NOW) -> tuple:
    message = s.v1_message(kp.ss58_address, str(nonce), purpose)
    return (("x-chutes-hotkey", kp.ss58_address), ("x-chutes-nonce", str(nonce)),
            ("x-chutes-signature", kp.sign(message.encode()).hex()))


def grpc_v1(kp: Keypair, rpc: str, request, nonce: str | None = None) -> tuple:
    nonce = nonce or f"{NOW}.{uuid.uuid4().hex[:12]}"
    message = s.grpc_message(kp.ss58_address, rpc, nonce, s.request_sha256(request))
    return (("x-chutes-hotkey", kp.ss58_address), ("x-chutes-nonce", nonce), ("x-chutes-sig-version", "2"),
            ("x-chutes-signature", kp.sign(message.encode()).hex()))


async def _code(call, request, metadata) -> tuple[grpc.StatusCode, str]:
    try:
        await call(request, metadata=metadata)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


LIST_SERVERS = "/gantry.miner.v1.MinerService/ListServers"
RELEASE_JOB = "/gantry.miner.v1.MinerService/ReleaseJob"


async def test_v1_signed_call_by_a_registered_hotkey_reaches_the_handler(world):
    miner = miner_pb2_grpc.MinerServiceStub(world)
    code, details = await _code(miner.ListServers, miner_pb2.ListServersRequest(), v1(ALICE, "miner"))
    assert (code, details) == (grpc.StatusCode.OK, "")


async def test_unsigned_call_is_told_what_was_expected(world):
    code, details = await _code(miner_pb2_grpc.MinerServiceStub(world).ListServers, miner_pb2.ListServersRequest(), ())
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "x-chutes-signature" in details and "purpose 'miner'" in details


async def test_wrong_purpose_stale_and_future_nonces_are_unauthenticated(world):
    call = miner_pb2_grpc.MinerServiceStub(world).ListServers
    code, details = await _code(call, miner_pb2.ListServersRequest(), v1(ALICE, "tee"))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "purpose 'miner'" in details
    for nonce, words in ((NOW - 600, "old"), (NOW + 601, "in the future")):
        code, details = await _code(call, miner_pb2.ListServersRequest(), v1(ALICE, "miner", nonce))
        assert code == grpc.StatusCode.UNAUTHENTICATED and words in details and "600 s" in details


async def test_grpc_canonical_signature_is_single_use(world):
    miner = miner_pb2_grpc.MinerServiceStub(world)
    request = miner_pb2.ReleaseJobRequest(job_id="job-1")
    md = grpc_v1(ALICE, RELEASE_JOB, request)
    assert (await _code(miner.ReleaseJob, request, md))[0] == grpc.StatusCode.NOT_FOUND
    code, details = await _code(miner.ReleaseJob, request, md)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "replay" in details


async def test_concurrent_replays_of_one_grpc_signature_let_exactly_one_through(world):
    miner = miner_pb2_grpc.MinerServiceStub(world)
    request = miner_pb2.ReleaseJobRequest(job_id="job-1")
    md = grpc_v1(ALICE, RELEASE_JOB, request)
    results = await asyncio.gather(*(_code(miner.ReleaseJob, request, md) for _ in range(12)))
    assert [code for code, _ in results].count(grpc.StatusCode.NOT_FOUND) == 1
    assert all(code == grpc.StatusCode.UNAUTHENTICATED and "replay" in details
               for code, details in results if code != grpc.StatusCode.NOT_FOUND)


async def test_a_forged_signature_does_not_use_up_the_nonce_of_the_genuine_request(world):
    """Seen a genuine request's nonce, a forger's copy with its own signature is refused without burning it."""
    miner = miner_pb2_grpc.MinerServiceStub(world)
    request = miner_pb2.ReleaseJobRequest(job_id="job-1")
    genuine = grpc_v1(ALICE, RELEASE_JOB, request)
    nonce = dict(genuine)["x-chutes-nonce"]
    forged_signature = BOB.sign(s.grpc_message(ALICE.ss58_address, RELEASE_JOB, nonce,
                                               s.request_sha256(request)).encode()).hex()
    forged = genuine[:3] + (("x-chutes-signature", forged_signature),)
    info = error_details_pb2.ErrorInfo()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await miner.ReleaseJob(request, metadata=forged)
    assert rpc_status.from_call(err.value).details[0].Unpack(info) and info.reason == "SIGNATURE_INVALID"
    assert (await _code(miner.ReleaseJob, request, genuine))[0] == grpc.StatusCode.NOT_FOUND


async def test_grpc_signature_does_not_cover_another_request_or_rpc(world):
    miner = miner_pb2_grpc.MinerServiceStub(world)
    md = grpc_v1(ALICE, RELEASE_JOB, miner_pb2.ReleaseJobRequest(job_id="job-1"))
    code, details = await _code(miner.ReleaseJob, miner_pb2.ReleaseJobRequest(job_id="job-2"), md)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "gRPC canonical string" in details
    code, _ = await _code(miner.ListServers, miner_pb2.ListServersRequest(), md)
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_native_grpc_clients_cannot_claim_a_rest_body_hash(world):
    """x-gantry-* metadata is believed only from the REST gateway, so a native caller cannot swap the body."""
    miner = miner_pb2_grpc.MinerServiceStub(world)
    nonce = f"{NOW}.abc"
    message = s.v2_message(ALICE.ss58_address, "DELETE", "/miner/jobs/job-1", nonce, "")
    md = (("x-chutes-hotkey", ALICE.ss58_address), ("x-chutes-nonce", nonce), ("x-chutes-sig-version", "2"),
          ("x-chutes-signature", ALICE.sign(message.encode()).hex()), ("x-gantry-http-method", "DELETE"),
          ("x-gantry-http-path", "/miner/jobs/job-1"), ("x-gantry-body-sha256", ""))
    code, details = await _code(miner.ReleaseJob, miner_pb2.ReleaseJobRequest(job_id="job-9"), md)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "gRPC canonical string" in details


async def test_unknown_hotkey_is_not_registered_and_blacklisted_is_denied_with_the_reason(world):
    call = miner_pb2_grpc.MinerServiceStub(world).ListServers
    code, details = await _code(call, miner_pb2.ListServersRequest(), v1(CHARLIE, "miner"))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "Hotkey is not registered on netuid 64")
    code, details = await _code(call, miner_pb2.ListServersRequest(), v1(BOB, "miner"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "sybil ring" in details


async def test_truncated_signature_is_unauthenticated(world):
    md = v1(ALICE, "miner")
    md = md[:2] + (("x-chutes-signature", md[2][1][:100]),)
    code, details = await _code(miner_pb2_grpc.MinerServiceStub(world).ListServers, miner_pb2.ListServersRequest(), md)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "128 hex" in details


async def test_boot_attestation_needs_a_boot_nonce_from_the_same_ip_used_once(world, auth_app):
    nonces = AttestationNonces(auth_app.rt.redis, auth_app.rt.clock)
    servers = servers_pb2_grpc.ServerServiceStub(world)
    request = servers_pb2.VerifyBootAttestationRequest(vm_name="vm-1")
    mine = await nonces.issue("boot", "127.0.0.1")
    # let through to the handler, which refuses the empty request
    assert (await _code(servers.VerifyBootAttestation, request, (("x-chutes-nonce", mine.nonce),)))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    code, details = await _code(servers.VerifyBootAttestation, request, (("x-chutes-nonce", mine.nonce),))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "already consumed" in details
    elsewhere = await nonces.issue("boot", "198.51.100.20")
    code, details = await _code(servers.VerifyBootAttestation, request, (("x-chutes-nonce", elsewhere.nonce),))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "another IP" in details
    info = error_details_pb2.ErrorInfo()
    try:
        await servers.VerifyBootAttestation(request, metadata=(("x-chutes-nonce", "0" * 64),))
    except grpc.aio.AioRpcError as err:
        assert rpc_status.from_call(err).details[0].Unpack(info)
    assert info.reason == "NONCE_UNKNOWN" and info.metadata["http_status"] == "401"


async def test_luks_get_needs_a_matching_boot_token(world, auth_app):
    token = await BootTokens(auth_app.rt.redis).issue(ALICE.ss58_address, "vm-1")
    servers = servers_pb2_grpc.ServerServiceStub(world)
    ok = servers_pb2.GetCacheLuksPassphraseRequest(vm_name="vm-1", hotkey=ALICE.ss58_address)
    assert (await _code(servers.GetCacheLuksPassphrase, ok, (("x-boot-token", token),)))[0] == \
        grpc.StatusCode.NOT_FOUND  # authenticated; no passphrase stored yet
    other_vm = servers_pb2.GetCacheLuksPassphraseRequest(vm_name="vm-2", hotkey=ALICE.ss58_address)
    code, details = await _code(servers.GetCacheLuksPassphrase, other_vm, (("x-boot-token", token),))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "does not match" in details
    code, _ = await _code(servers.GetCacheLuksPassphrase, ok, ())
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # the legacy 400 for a missing token


async def test_launch_token_must_be_for_the_config_in_the_path(world, auth_app):
    keys = auth_app.rt.launch_keys  # the deployment's shared key (service_keys)
    token = keys.issue(config_id="cfg-1", chute_id="c", url="u", env_key="0" * 32, egress=False, lock_modules=False,
                       env_type="graval", now=NOW)
    instances = instances_pb2_grpc.InstanceServiceStub(world)
    md = (("authorization", f"Bearer {token}"),)
    # the token is accepted: the handler runs and refuses the empty body, naming its fields
    code, details = await _code(instances.ClaimLaunchConfig, instances_pb2.ClaimLaunchConfigRequest(config_id="cfg-1"),
                                md)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "gpus" in details
    code, details = await _code(instances.ClaimLaunchConfig, instances_pb2.ClaimLaunchConfigRequest(config_id="cfg-2"),
                                md)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "another config" in details
    tampered = token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB")
    code, _ = await _code(instances.ClaimLaunchConfig, instances_pb2.ClaimLaunchConfigRequest(config_id="cfg-1"),
                          (("authorization", f"Bearer {tampered}"),))
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_api_keys_are_shown_once_work_as_user_credentials_and_stop_when_revoked(world, auth_app):
    admin = admin_pb2_grpc.AdminServiceStub(world)
    user = await admin.CreateUser(admin_pb2.CreateUserRequest(username="ada"), metadata=ADMIN_METADATA)
    key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user.user_id, name="laptop"),
                                   metadata=ADMIN_METADATA)
    assert key.secret_key.startswith("cpk_") and len(key.secret_key) == 68
    async with auth_app.rt.engine.connect() as conn:
        from sqlalchemy import text
        stored = (await conn.execute(text("SELECT key_hash, key_prefix FROM api_keys"))).one()
    assert key.secret_key not in stored and stored.key_hash == s.sha256_hex(key.secret_key.encode())

    instances = instances_pb2_grpc.InstanceServiceStub(world)
    request = instances_pb2.GetTeeInstanceEvidenceRequest(instance_id="i-1", nonce="0" * 64)
    md = (("authorization", f"Bearer {key.secret_key}"),)
    assert (await _code(instances.GetTeeInstanceEvidence, request, md))[0] == grpc.StatusCode.NOT_FOUND

    await admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(api_key_id=key.api_key_id), metadata=ADMIN_METADATA)
    code, details = await _code(instances.GetTeeInstanceEvidence, request, md)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "api key" in details
    code, _ = await _code(admin.RevokeApiKey, admin_pb2.RevokeApiKeyRequest(api_key_id=key.api_key_id),
                          ADMIN_METADATA)
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await _code(admin.CreateUser, admin_pb2.CreateUserRequest(username="ada"), ADMIN_METADATA)
    assert code == grpc.StatusCode.ALREADY_EXISTS


async def test_evidence_is_rate_limited_per_user_with_retry_info(world, auth_app):
    admin = admin_pb2_grpc.AdminServiceStub(world)
    user = await admin.CreateUser(admin_pb2.CreateUserRequest(username="bea"), metadata=ADMIN_METADATA)
    key = await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user.user_id), metadata=ADMIN_METADATA)
    instances = instances_pb2_grpc.InstanceServiceStub(world)
    request = instances_pb2.GetTeeInstanceEvidenceRequest(instance_id="i-1", nonce="0" * 64)
    md = (("authorization", f"Bearer {key.secret_key}"),)
    for _ in range(60):
        assert (await _code(instances.GetTeeInstanceEvidence, request, md))[0] == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await instances.GetTeeInstanceEvidence(request, metadata=md)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rpc_status.from_call(err.value).details)
    assert retry.retry_delay.seconds == 50  # the clock stands at :10 in a 60 s window


async def test_user_policy_accepts_a_hotkey_signature_with_its_purpose(world):
    admin = admin_pb2_grpc.AdminServiceStub(world)
    await admin.CreateUser(admin_pb2.CreateUserRequest(username="alice", hotkey=ALICE.ss58_address),
                           metadata=ADMIN_METADATA)
    instances = instances_pb2_grpc.InstanceServiceStub(world)
    request = instances_pb2.GetTeeInstanceEvidenceRequest(instance_id="i-1", nonce="0" * 64)
    assert (await _code(instances.GetTeeInstanceEvidence, request, v1(ALICE, "chutes")))[0] == \
        grpc.StatusCode.NOT_FOUND
    code, details = await _code(instances.GetTeeInstanceEvidence, request, v1(ALICE, "logs"))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "purpose 'chutes'" in details
