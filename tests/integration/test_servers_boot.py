"""Boot attestation and LUKS passphrases over gRPC and REST, on real PostgreSQL and Redis.

A VM asks for a nonce, quotes over it (test-root quotes, verified by dcap-qvl), gets the root-disk key and a boot
token, then syncs its volume passphrases with the token, once.
"""
from __future__ import annotations

import base64

import grpc
import pytest
from sqlalchemy import func, select

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.servers.v1 import servers_pb2, servers_pb2_grpc
from gantry_server.domain.attestation.passphrases import context
from gantry_server.domain.auth.nonces import AttestationNonces
from gantry_server.domain.secrets_at_rest import Keyring, SecretsError
from gantry_server.store.models import boot_attestations, vm_luks_passphrases

from ..conftest import ADMIN_METADATA
from .servers_harness import BOOT_RTMRS, LUKS_ROOT_KEY, MRTD, POLICY, RUNTIME_RTMRS, error_info, reg, servers_world

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"


@pytest.fixture(scope="module")
async def world(database_url, redis_url, tmp_path_factory):
    async with servers_world(database_url, redis_url, tmp_path_factory.mktemp("servers-boot")) as w:
        yield w


@pytest.fixture
async def w(world, clean_db, redis):
    await world.load_policy()
    return world


def stub(w) -> servers_pb2_grpc.ServerServiceStub:
    return servers_pb2_grpc.ServerServiceStub(w.channel)


async def boot(w, vm: str = "vm-1", **quote) -> servers_pb2.VerifyBootAttestationResponse:
    nonce = (await stub(w).GetNonce(servers_pb2.GetNonceRequest())).nonce
    return await stub(w).VerifyBootAttestation(
        servers_pb2.VerifyBootAttestationRequest(quote=w.boot_quote(nonce, **quote), miner_hotkey=ALICE, vm_name=vm),
        metadata=(("x-chutes-nonce", nonce),))


async def sync(w, token: str, volumes, rekey=(), vm: str = "vm-1") -> dict[str, str]:
    response = await stub(w).SyncLuksPassphrases(
        servers_pb2.SyncLuksPassphrasesRequest(vm_name=vm, volumes=volumes, rekey=rekey),
        metadata=(("x-chutes-hotkey", ALICE), ("x-boot-token", token)))
    return dict(response.passphrases)


async def test_boot_nonce_is_issued_bound_to_the_caller_ip_and_consumed_once(w):
    issued = await stub(w).GetNonce(servers_pb2.GetNonceRequest())
    assert len(issued.nonce) == 64 and issued.expires_at.seconds == int(w.clock.now().timestamp()) + 600
    request = servers_pb2.VerifyBootAttestationRequest(quote=w.boot_quote(issued.nonce), miner_hotkey=ALICE,
                                                       vm_name="vm-1")
    answer = await stub(w).VerifyBootAttestation(request, metadata=(("x-chutes-nonce", issued.nonce),))
    assert answer.key == LUKS_ROOT_KEY and len(answer.boot_token) == 64 and not answer.HasField("luks_quote_nonce")
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the same nonce again
        await stub(w).VerifyBootAttestation(request, metadata=(("x-chutes-nonce", issued.nonce),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and error_info(err.value).reason == "NONCE_UNKNOWN"
    elsewhere = await AttestationNonces(w.app.rt.redis, w.clock).issue("boot", "198.51.100.7")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(w).VerifyBootAttestation(request, metadata=(("x-chutes-nonce", elsewhere.nonce),))
    assert error_info(err.value).reason == "NONCE_WRONG_IP"


async def test_rest_boot_flow_answers_the_legacy_shapes(w):
    nonce = (await w.http.get("/servers/nonce")).json()
    assert set(nonce) == {"nonce", "expires_at"} and nonce["expires_at"].endswith("Z")
    body = {"quote": w.boot_quote(nonce["nonce"]), "miner_hotkey": ALICE, "vm_name": "vm-rest"}
    answer = await w.http.post("/servers/boot/attestation", json=body, headers={"X-Chutes-Nonce": nonce["nonce"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["key"] == LUKS_ROOT_KEY and answer.json()["luks_quote_nonce"] is None
    token = answer.json()["boot_token"]
    synced = await w.http.post("/servers/vm-rest/luks", json={"volumes": ["storage"]},
                               headers={"X-Chutes-Hotkey": ALICE, "X-Boot-Token": token})
    assert synced.status_code == 200 and list(synced.json()) == ["storage"] and len(synced.json()["storage"]) == 128
    again = await w.http.post("/servers/vm-rest/luks", json={"volumes": ["storage"]},
                              headers={"X-Chutes-Hotkey": ALICE, "X-Boot-Token": token})
    assert again.status_code == 401 and "not found or expired" in again.json()["detail"]


async def test_quote_without_the_nonce_is_refused_and_says_so(w):
    issued = await stub(w).GetNonce(servers_pb2.GetNonceRequest())
    stale = w.boot_quote("cd" * 32)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(w).VerifyBootAttestation(servers_pb2.VerifyBootAttestationRequest(
            quote=stale, miner_hotkey=ALICE, vm_name="vm-1"), metadata=(("x-chutes-nonce", issued.nonce),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(err.value)
    assert info.reason == "NONCE_MISMATCH" and info.metadata["expected_nonce"] == issued.nonce
    assert info.metadata["http_status"] == "400"

    nonce = (await w.http.get("/servers/nonce")).json()["nonce"]
    rest = await w.http.post("/servers/boot/attestation", headers={"X-Chutes-Nonce": nonce},
                             json={"quote": stale, "miner_hotkey": ALICE, "vm_name": "vm-1"})
    assert rest.status_code == 400 and rest.json()["detail"].startswith("Nonce mismatch: the quote's report_data")


async def test_measurement_mismatch_names_the_registers_in_errorinfo_and_words(w):
    tweaked = (BOOT_RTMRS[0], reg(0xEE), BOOT_RTMRS[2], reg(0xEF))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await boot(w, rtmrs=tweaked)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(err.value)
    assert info.reason == "MEASUREMENT_MISMATCH" and info.metadata["registers"] == "RTMR1,RTMR3"
    assert info.metadata["closest_policy"] == "sek8s-h100" and info.metadata["actual_rtmr1"] == reg(0xEE).hex()

    nonce = (await w.http.get("/servers/nonce")).json()["nonce"]
    rest = await w.http.post("/servers/boot/attestation", headers={"X-Chutes-Nonce": nonce}, json={
        "quote": w.boot_quote(nonce, rtmrs=RUNTIME_RTMRS), "miner_hotkey": ALICE, "vm_name": "vm-1"})
    assert rest.status_code == 403
    assert rest.json()["detail"].startswith("Measurement mismatch: RTMR0, RTMR1, RTMR2 and RTMR3 differ from the "
                                            "closest allowed boot measurements ('sek8s-h100' version 0.3.1)")


async def test_tampered_quote_is_a_signature_failure(w):
    nonce = (await stub(w).GetNonce(servers_pb2.GetNonceRequest())).nonce
    raw = bytearray(base64.b64decode(w.boot_quote(nonce)))
    raw[48 + 200] ^= 1  # inside the signed TD report
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(w).VerifyBootAttestation(servers_pb2.VerifyBootAttestationRequest(
            quote=base64.b64encode(bytes(raw)).decode(), miner_hotkey=ALICE, vm_name="vm-1"),
            metadata=(("x-chutes-nonce", nonce),))
    assert error_info(err.value).reason == "SIGNATURE_INVALID"


async def test_every_boot_attempt_is_recorded(w):
    await boot(w)
    with pytest.raises(grpc.aio.AioRpcError):
        await boot(w, mrtd=reg(0x99))
    async with w.app.rt.engine.connect() as conn:
        rows = (await conn.execute(select(boot_attestations).order_by(boot_attestations.c.verified.desc()))).mappings().all()
    assert [(r["verified"], r["error_reason"]) for r in rows] == [(True, None), (False, "MEASUREMENT_MISMATCH")]
    ok, failed = rows
    assert ok["measurement_version"] == "0.3.1" and ok["tcb_status"] == "UpToDate" and ok["verified_at"] is not None
    assert ok["server_ip"] == "127.0.0.1" and ok["miner_hotkey"] == ALICE and ok["vm_name"] == "vm-1"
    assert "MRTD differs" in failed["verification_error"] and failed["verified_at"] is None


async def test_boot_request_is_validated_field_by_field(w):
    nonce = (await stub(w).GetNonce(servers_pb2.GetNonceRequest())).nonce
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(w).VerifyBootAttestation(servers_pb2.VerifyBootAttestationRequest(
            quote="", miner_hotkey="nope", vm_name="a/b"), metadata=(("x-chutes-nonce", nonce),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(f in err.value.details() for f in ("quote:", "miner_hotkey:", "vm_name:"))


async def test_luks_sync_creates_returns_the_same_rekeys_only_what_is_asked_and_prunes(w):
    first = await sync(w, (await boot(w)).boot_token, ["storage", "tdx-cache"])
    assert set(first) == {"storage", "tdx-cache"} and first["storage"] != first["tdx-cache"]

    second = await sync(w, (await boot(w)).boot_token, ["storage", "tdx-cache"])
    assert second == first  # the next boot opens the same disks

    third = await sync(w, (await boot(w)).boot_token, ["storage", "tdx-cache", "chutefs-data"], rekey=["tdx-cache"])
    assert third["storage"] == first["storage"] and third["tdx-cache"] != first["tdx-cache"]
    assert len(third["chutefs-data"]) == 128

    fourth = await sync(w, (await boot(w)).boot_token, ["storage"])
    assert fourth == {"storage": first["storage"]}
    async with w.app.rt.engine.connect() as conn:
        volumes = (await conn.execute(select(vm_luks_passphrases.c.volume))).scalars().all()
    assert volumes == ["storage"]  # tdx-cache and chutefs-data pruned

    legacy = await stub(w).GetCacheLuksPassphrase(servers_pb2.GetCacheLuksPassphraseRequest(
        vm_name="vm-1", hotkey=ALICE), metadata=(("x-boot-token", (await boot(w)).boot_token),))
    assert legacy.passphrase == first["storage"]


async def test_a_used_or_foreign_boot_token_is_refused(w):
    token = (await boot(w)).boot_token
    await sync(w, token, ["storage"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sync(w, token, ["storage"])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "not found or expired" in err.value.details()
    other = (await boot(w, vm="vm-2")).boot_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sync(w, other, ["storage"], vm="vm-1")
    assert error_info(err.value).reason == "BOOT_TOKEN_MISMATCH"
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the legacy GET validates too, and 404s without a key
        await stub(w).GetCacheLuksPassphrase(servers_pb2.GetCacheLuksPassphraseRequest(vm_name="vm-2", hotkey=ALICE),
                                             metadata=(("x-boot-token", other),))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_volume_lists_are_the_legacy_400_naming_the_field(w):
    token = (await boot(w)).boot_token
    rest = await w.http.post("/servers/vm-1/luks", json={"volumes": ["storage"], "rekey": ["swap"]},
                             headers={"X-Chutes-Hotkey": ALICE, "X-Boot-Token": token})
    assert rest.status_code == 400 and rest.json()["detail"].startswith("rekey[0]: 'swap' is not in volumes")
    assert len(await sync(w, token, ["storage"])) == 1  # a refused sync does not consume the token


async def test_stored_passphrases_are_not_readable_without_the_key(w):
    secret = (await sync(w, (await boot(w)).boot_token, ["storage"]))["storage"]
    async with w.app.rt.engine.connect() as conn:
        blob = bytes(await conn.scalar(select(vm_luks_passphrases.c.ciphertext)))
        assert await conn.scalar(select(func.count()).select_from(vm_luks_passphrases).where(
            func.encode(vm_luks_passphrases.c.ciphertext, "escape").contains(secret))) == 0
    assert blob.startswith(b"GSE1") and secret.encode() not in blob
    with pytest.raises(SecretsError):
        Keyring.from_keys([b"k" * 32]).decrypt(blob, context=context(ALICE, "vm-1", "storage"))
    with pytest.raises(SecretsError):  # the right key, but bound to another VM
        w.app.rt.keyring.decrypt(blob, context=context(ALICE, "vm-2", "storage"))
    assert w.app.rt.keyring.decrypt(blob, context=context(ALICE, "vm-1", "storage")).decode() == secret


async def test_measurement_policies_are_loaded_and_listed_through_admin(w):
    admin = admin_pb2_grpc.AdminServiceStub(w.channel)
    replaced = await admin.PutMeasurementPolicy(admin_pb2.PutMeasurementPolicyRequest(
        **{**{f.name: getattr(POLICY, f.name) for f in POLICY.DESCRIPTOR.fields if f.name != "gpu_count"},
           "version": "0.3.2"}), metadata=ADMIN_METADATA)
    assert not replaced.created and replaced.policy.version == "0.3.2" and not replaced.policy.HasField("gpu_count")
    listed = await admin.ListMeasurementPolicies(admin_pb2.ListMeasurementPoliciesRequest(), metadata=ADMIN_METADATA)
    assert [(p.name, p.version, p.mrtd) for p in listed.policies] == [("sek8s-h100", "0.3.2", MRTD.hex())]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.PutMeasurementPolicy(admin_pb2.PutMeasurementPolicyRequest(
            name="bad", version="1", mrtd="xyz", boot_rtmrs=["00"]), metadata=ADMIN_METADATA)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"mrtd", "boot_rtmrs", "runtime_rtmrs"} <= {p.split(":")[0] for p in err.value.details().split("; ")}
    rest = await w.http.put("/admin/v1/measurements/rest-entry", headers={"Authorization": "Bearer test-admin-token"},
                            json={"version": "1", "mrtd": MRTD.hex(), "boot_rtmrs": [r.hex() for r in BOOT_RTMRS],
                                  "runtime_rtmrs": [r.hex() for r in RUNTIME_RTMRS]})
    assert rest.status_code == 200 and rest.json()["created"] is True
