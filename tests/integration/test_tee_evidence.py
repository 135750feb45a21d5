"""A user's fresh evidence of a running TEE instance (GET /instances/{instance_id}/evidence?nonce=), over gRPC and
REST: pulled with the caller's nonce from the instance server's attestation proxy (a real local HTTP server) through
the hardened evidence client, handed back with the report data the quote must bind.

The TEE instance comes from the real claim flow (test_launch_configs' world); the hostile hosts are the asyncio
servers of test_evidence_limits.
"""
from __future__ import annotations

import base64
import hashlib
import time
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from gantry.admin.v1 import admin_pb2
from gantry.instances.v1 import instances_pb2
from gantry_server.domain.attestation.evidence import EvidenceClient
from gantry_server.domain.launch.tee_evidence import InstanceEvidence
from gantry_server.errors import Unavailable
from gantry_server.store.models import instances

from ..conftest import ADMIN_METADATA
from .servers_harness import error_info
from .test_evidence_limits import DEADLINE, MAX_BYTES, evil_host
from .test_launch_configs import admin, bearer, launch_config, put_chute, rows, stub, tee_claim, w, world  # noqa: F401

E2E_PUBKEY = "e2e-public-key-of-the-instance"
NONCE = "ab" * 32


async def api_key(w, *, roles=()) -> str:
    user = await admin(w).CreateUser(admin_pb2.CreateUserRequest(username=f"u{time.monotonic_ns()}", roles=roles),
                                     metadata=ADMIN_METADATA)
    key = await admin(w).CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user.user_id, name="k"),
                                      metadata=ADMIN_METADATA)
    return key.secret_key


async def owner_key(w) -> str:
    key = await admin(w).CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=w.owner_id, name="k"),
                                      metadata=ADMIN_METADATA)
    return key.secret_key


@pytest.fixture
async def tee_instance(w) -> str:
    """A verified TEE instance of deployment dep-1, its chute then on chutes 0.6.1 (the evidence era)."""
    issued = await launch_config(w, "chute-tee")
    nonce = (await stub(w).GetInstanceNonce(instances_pb2.GetInstanceNonceRequest())).nonce
    w.endpoint.deployments["dep-1"] = nonce
    await tee_claim(w, issued, nonce, e2e_pubkey=E2E_PUBKEY)
    await stub(w).VerifyTeeLaunchConfigInstance(
        instances_pb2.VerifyTeeLaunchConfigInstanceRequest(config_id=issued.config_id), metadata=bearer(issued.token))
    await put_chute(w, "chute-tee", tee=True, gpu_count=2, version="0.6.1")
    [instance] = await rows(w, instances)
    return instance["instance_id"]


def evidence_request(instance_id: str, nonce: str = NONCE):
    return instances_pb2.GetTeeInstanceEvidenceRequest(instance_id=instance_id, nonce=nonce)


async def test_the_evidence_is_pulled_with_the_callers_nonce_and_names_the_report_data_to_expect(w, tee_instance):
    got = await stub(w).GetTeeInstanceEvidence(evidence_request(tee_instance), metadata=bearer(await owner_key(w)))
    pulled = urlsplit(w.fake.requests[-1])
    assert pulled.path == "/service/chute-service-dep-1/verify" and parse_qs(pulled.query) == {"nonce": [NONCE]}
    assert base64.b64decode(got.quote)[:2] == b"\x04\x00"  # a TDX v4 quote, relayed as the proxy sent it
    assert [sorted(e) for e in got.gpu_evidence] == [["certificate", "evidence"]]  # nvtrust evidence_list items
    assert got.e2e_pubkey == E2E_PUBKEY
    assert got.expected_report_data == hashlib.sha256((NONCE + E2E_PUBKEY).encode()).hexdigest()


async def test_rest_answers_the_evidence_document(w, tee_instance):
    answer = await w.http.get(f"/instances/{tee_instance}/evidence", params={"nonce": NONCE},
                              headers={"Authorization": f"Bearer {await api_key(w)}"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["quote"] and body["gpu_evidence"][0]["certificate"]
    assert body["expected_report_data"] == hashlib.sha256((NONCE + E2E_PUBKEY).encode()).hexdigest()
    assert body["e2e_pubkey"] == E2E_PUBKEY


async def test_an_unknown_instance_is_404_and_a_bad_nonce_names_the_field(w, tee_instance):
    key = await owner_key(w)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub(w).GetTeeInstanceEvidence(evidence_request("no-such-instance"), metadata=bearer(key))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    rest = await w.http.get("/instances/no-such-instance/evidence", params={"nonce": NONCE},
                            headers={"Authorization": f"Bearer {key}"})
    assert rest.status_code == 404
    for bad in ("ab" * 31, "zz" * 32, ""):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub(w).GetTeeInstanceEvidence(evidence_request(tee_instance, bad), metadata=bearer(key))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nonce" in err.value.details()
    rest = await w.http.get(f"/instances/{tee_instance}/evidence", params={"nonce": "12"},
                            headers={"Authorization": f"Bearer {key}"})
    assert rest.status_code == 422 and "nonce" in rest.text


async def test_a_private_chute_shows_its_evidence_to_its_owner_and_the_subnet_roles_only(w, tee_instance):
    await put_chute(w, "chute-tee", tee=True, gpu_count=2, version="0.6.1", public=False)
    with pytest.raises(grpc.aio.AioRpcError) as stranger:
        await stub(w).GetTeeInstanceEvidence(evidence_request(tee_instance), metadata=bearer(await api_key(w)))
    assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for key in (await owner_key(w), await api_key(w, roles=["chutes_support"])):
        assert (await stub(w).GetTeeInstanceEvidence(evidence_request(tee_instance), metadata=bearer(key))).quote


async def test_an_unreachable_proxy_is_502(w, tee_instance):
    w.endpoint.mode = "http_500"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(w).GetTeeInstanceEvidence(evidence_request(tee_instance), metadata=bearer(await owner_key(w)))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(err.value).reason == "EVIDENCE_UNAVAILABLE"
    assert error_info(err.value).metadata["http_status"] == "502" and "HTTP 500" in err.value.details()


async def test_a_graval_instance_has_no_tee_evidence(w):
    from .test_launch_configs import graval_claim

    await graval_claim(w, await launch_config(w, "chute-graval"))
    [instance] = await rows(w, instances)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub(w).GetTeeInstanceEvidence(evidence_request(instance["instance_id"]),
                                             metadata=bearer(await owner_key(w)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value).reason == "NOT_TEE_INSTANCE"


# -- the hardened pull --------------------------------------------------------------------------------------------
def pull_through(w, port: int, *, allow_private: bool, max_bytes: int = MAX_BYTES) -> InstanceEvidence:
    client = EvidenceClient(f"http://{{host}}:{port}/service/chute-service-{{deployment_id}}/verify", timeout=5.0,
                            allow_private_hosts=allow_private, max_bytes=max_bytes, deadline=DEADLINE)
    return InstanceEvidence(w.app.rt, client)


async def test_a_private_server_address_is_refused_unless_allowed(w, tee_instance):
    before = len(w.fake.requests)
    with pytest.raises(Unavailable) as err:
        await pull_through(w, w.fake.port, allow_private=False).pull(tee_instance, nonce=NONCE, user_id=w.owner_id)
    assert "127.0.0.1, which is not a public address" in err.value.message and err.value.http_status == 502
    assert len(w.fake.requests) == before, "nothing was sent to the private host"
    allowed = await pull_through(w, w.fake.port, allow_private=True, max_bytes=1 << 20).pull(
        tee_instance, nonce=NONCE, user_id=w.owner_id)
    assert allowed.quote


async def test_an_oversized_answer_is_cut_off_and_a_slow_one_hits_the_deadline(w, tee_instance):
    async with evil_host() as host:
        host.mode = "endless"
        with pytest.raises(Unavailable) as big:
            await pull_through(w, host.port, allow_private=True).pull(tee_instance, nonce=NONCE, user_id=w.owner_id)
        assert f"answer is larger than {MAX_BYTES} bytes" in big.value.message
        assert host.sent < 100 * 65536  # hung up long before the host was done
        host.mode = "drip"
        started = time.monotonic()
        with pytest.raises(Unavailable) as slow:
            await pull_through(w, host.port, allow_private=True).pull(tee_instance, nonce=NONCE, user_id=w.owner_id)
        assert f"answer not complete within {DEADLINE:g} s" in slow.value.message
        assert time.monotonic() - started < DEADLINE + 1.0
