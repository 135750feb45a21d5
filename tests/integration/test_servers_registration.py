"""Server registration against a fake attestation endpoint (a real HTTP server on loopback), the caller's server
records, and runtime attestation, over gRPC and REST.
"""
from __future__ import annotations

import base64
import json

import grpc
import pytest
from sqlalchemy import func, select

from gantry.servers.v1 import servers_pb2, servers_pb2_grpc
from gantry_client import connect
from gantry_server.store.models import nodes, server_attestations, servers

from .servers_harness import MRTD, RUNTIME_RTMRS, error_info, reg, servers_world

MINER_SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))


@pytest.fixture(scope="module")
async def world(database_url, redis_url, tmp_path_factory):
    async with servers_world(database_url, redis_url, tmp_path_factory.mktemp("servers-reg")) as w:
        yield w


@pytest.fixture
async def w(world, clean_db, redis):
    await world.load_policy()
    world.endpoint.mode = "good"
    world.fake.requests.clear()
    miner = world.signer(MINER_SEED)
    await world.register_hotkey(miner.hotkey)
    return world


def gpu(i: int, model: str = "h100") -> servers_pb2.NodeArgs:
    return servers_pb2.NodeArgs(uuid=f"GPU-{i:04d}", name="NVIDIA H100 80GB HBM3", memory=85_899_345_920, major=9,
                                minor=0, processors=132, sxm=True, clock_rate=1980.0, max_threads_per_processor=2048,
                                concurrent_kernels=True, ecc=True, device_index=i, gpu_identifier=model,
                                verification_host="127.0.0.1", verification_port=8000 + i)


def create_request(**kw) -> servers_pb2.CreateServerRequest:
    fields = dict(host="127.0.0.1", id="node-uid-1", name="gpu-box-1", gpus=[gpu(0), gpu(1)]) | kw
    return servers_pb2.CreateServerRequest(**fields)


async def rows(w, table) -> list[dict]:
    async with w.app.rt.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(select(table))).mappings()]


async def create(w, request=None, seed=MINER_SEED):
    async with connect(w.app.grpc_addr, signer=w.signer(seed)) as channel:
        return await servers_pb2_grpc.ServerServiceStub(channel).CreateServer(request or create_request())


async def test_registration_pulls_fresh_evidence_and_registers_the_gpus_as_nodes(w):
    assert (await create(w)).message == "Server registered successfully."
    [pulled] = w.fake.requests
    assert pulled.startswith("/server/attest?nonce=") and "server_id=node-uid-1" in pulled
    [server] = await rows(w, servers)
    assert (server["server_id"], server["name"], server["ip"], server["version"]) == \
        ("node-uid-1", "gpu-box-1", "127.0.0.1", "0.3.1")
    gpus = sorted(await rows(w, nodes), key=lambda r: r["device_index"])
    assert [(g["uuid"], g["gpu_identifier"], g["server_id"], g["seed"]) for g in gpus] == [
        ("GPU-0000", "h100", "node-uid-1", 0), ("GPU-0001", "h100", "node-uid-1", 0)]
    assert all(g["verified_at"] is not None for g in gpus)
    [attempt] = await rows(w, server_attestations)
    assert attempt["kind"] == "registration" and attempt["verified"] and attempt["tcb_status"] == "UpToDate"


@pytest.mark.parametrize(("mode", "reason"), [
    ("stale_nonce", "NONCE_MISMATCH"),
    ("boot_measurements", "MEASUREMENT_MISMATCH"),
    ("http_500", "EVIDENCE_UNAVAILABLE"),
    ("unbound_gpu_evidence", "GPU_EVIDENCE_INVALID"),
])
async def test_failed_registration_leaves_no_server_row_but_records_the_attempt(w, mode, reason):
    w.endpoint.mode = mode
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(w)
    info = error_info(err.value)
    assert info.reason == reason and info.metadata["http_status"] == "400", err.value.details()
    assert err.value.details().startswith("Server registration failed: ")
    assert await rows(w, servers) == [] and await rows(w, nodes) == []
    [attempt] = await rows(w, server_attestations)
    assert (attempt["server_id"], attempt["verified"], attempt["error_reason"]) == ("node-uid-1", False, reason)


async def test_gpus_outside_the_measurement_set_are_refused(w):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(w, create_request(gpus=[gpu(0), gpu(1, "a100")]))
    info = error_info(err.value)
    assert info.reason == "GPU_MISMATCH" and info.metadata["unexpected"] == "a100"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(w, create_request(gpus=[gpu(0)]))
    assert error_info(err.value).reason == "GPU_MISMATCH" and "requires 2" in err.value.details()
    assert await rows(w, servers) == []


async def test_rest_registration_answers_201_and_conflicts_409(w):
    body = json.dumps({"host": "127.0.0.1", "id": "node-uid-2", "gpus": [
        {"uuid": f"GPU-R{i}", "name": "H100", "memory": 1, "processors": 132, "clock_rate": 1980,
         "max_threads_per_processor": 2048, "device_index": i, "gpu_identifier": "h100",
         "verification_host": "127.0.0.1", "verification_port": 8000} for i in range(2)]}).encode()
    miner = w.signer(MINER_SEED)
    created = await w.http.post("/servers/", content=body, headers=miner.v2_headers("POST", "/servers/", body))
    assert created.status_code == 201 and created.json() == {"message": "Server registered successfully."}
    [server] = await rows(w, servers)
    assert server["name"] == "node-uid-2"  # name defaults to the id
    again = await w.http.post("/servers/", content=body, headers=miner.v2_headers("POST", "/servers/", body))
    assert again.status_code == 409 and "GPU-R0" in again.json()["detail"]


async def test_create_server_input_is_validated_naming_fields(w):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(w, create_request(id="", gpus=[gpu(0), gpu(0)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "id:" in err.value.details() and "gpus[1].uuid: appears twice" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(w, create_request(host="not a host!"))
    assert error_info(err.value).reason == "INVALID_HOST"
    assert w.fake.requests == []  # nothing was pulled for a refused request


async def test_an_unregistered_hotkey_cannot_register_a_server(w):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(w, seed=OTHER_SEED)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "not registered" in err.value.details()


async def test_the_caller_reads_renames_and_removes_its_own_server(w):
    await create(w)
    async with connect(w.app.grpc_addr, signer=w.signer(MINER_SEED)) as mine, \
            connect(w.app.grpc_addr, signer=w.signer(OTHER_SEED)) as theirs:
        stub, other = servers_pb2_grpc.ServerServiceStub(mine), servers_pb2_grpc.ServerServiceStub(theirs)
        details = await stub.GetServerDetails(servers_pb2.GetServerDetailsRequest(server_id="node-uid-1"))
        assert (details.name, details.ip, details.version) == ("gpu-box-1", "127.0.0.1", "0.3.1")
        assert not details.HasField("updated_at") and not details.HasField("target_version")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await other.GetServerDetails(servers_pb2.GetServerDetailsRequest(server_id="node-uid-1"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details() == "Server node-uid-1 not found"

        renamed = await stub.PatchServerName(servers_pb2.PatchServerNameRequest(server_id="node-uid-1",
                                                                                server_name="box-renamed"))
        assert renamed.name == "box-renamed" and renamed.HasField("updated_at")
        removed = await stub.RemoveServer(servers_pb2.RemoveServerRequest(server_name_or_id="box-renamed"))
        assert (removed.name, removed.message) == ("box-renamed", "Server removed successfully")
    assert await rows(w, servers) == [] and await rows(w, nodes) == [] and await rows(w, server_attestations) == []


async def test_rest_server_records_use_purpose_tee(w):
    await create(w)
    miner = w.signer(MINER_SEED)
    got = await w.http.get("/servers/node-uid-1", headers=miner.v1_purpose_headers("tee"))
    assert got.status_code == 200, got.text
    assert got.json() | {"created_at": None} == {
        "server_id": "node-uid-1", "name": "gpu-box-1", "ip": "127.0.0.1", "created_at": None, "updated_at": None,
        "version": "0.3.1", "maintenance_pending_window_id": None, "target_version": None}
    patched = await w.http.patch("/servers/node-uid-1?server_name=box-2", headers=miner.v1_purpose_headers("tee"))
    assert patched.status_code == 200 and patched.json()["name"] == "box-2"
    status = await w.http.get("/servers/node-uid-1/attestation/status", headers=miner.v1_purpose_headers("tee"))
    assert status.json()["attestation_status"] == "verified"
    assert status.json()["last_attestation"]["verification_error"] is None
    gone = await w.http.delete("/servers/node-uid-1", headers=miner.v1_purpose_headers("tee"))
    assert gone.status_code == 200 and gone.json() == {"name": "box-2", "message": "Server removed successfully"}
    missing = await w.http.delete("/servers/node-uid-1", headers=miner.v1_purpose_headers("tee"))
    assert missing.status_code == 404 and missing.json() == {"detail": "Server node-uid-1 not found"}


async def test_runtime_attestation_round_trip_and_status(w):
    await create(w)
    miner = w.signer(MINER_SEED)
    nonce = (await w.http.get("/servers/node-uid-1/nonce", headers=miner.v1_purpose_headers("tee"))).json()["nonce"]
    quote = base64.b64encode(w.kit.quote(report_data=bytes.fromhex(nonce), mrtd=MRTD, rtmrs=RUNTIME_RTMRS)).decode()
    ok = await w.http.post("/servers/node-uid-1/attestation", json={"quote": quote}, headers={"X-Chutes-Nonce": nonce})
    assert ok.status_code == 200 and ok.json()["status"] == "verified" and ok.json()["verified_at"].endswith("Z")

    nonce = (await w.http.get("/servers/node-uid-1/nonce", headers=miner.v1_purpose_headers("tee"))).json()["nonce"]
    drifted = (RUNTIME_RTMRS[0], RUNTIME_RTMRS[1], reg(0x99), RUNTIME_RTMRS[3])
    bad = base64.b64encode(w.kit.quote(report_data=bytes.fromhex(nonce), mrtd=MRTD, rtmrs=drifted)).decode()
    refused = await w.http.post("/servers/node-uid-1/attestation", json={"quote": bad},
                                headers={"X-Chutes-Nonce": nonce})
    assert refused.status_code == 403 and refused.json()["detail"].startswith("Measurement mismatch: RTMR2 differs")

    status = (await w.http.get("/servers/node-uid-1/attestation/status",
                               headers=miner.v1_purpose_headers("tee"))).json()
    assert status["attestation_status"] == "failed" and status["last_attestation"]["verified"] is False
    assert "RTMR2" in status["last_attestation"]["verification_error"]
    attempts = await rows(w, server_attestations)
    assert sorted((a["kind"], a["verified"]) for a in attempts) == [
        ("registration", True), ("runtime", False), ("runtime", True)]


async def test_runtime_nonce_is_for_the_servers_own_address_only(w):
    await create(w)
    async with w.app.rt.engine.begin() as conn:
        await conn.execute(servers.update().values(ip="198.51.100.9"))
    async with connect(w.app.grpc_addr, signer=w.signer(MINER_SEED)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await servers_pb2_grpc.ServerServiceStub(channel).GetRuntimeNonce(
                servers_pb2.GetRuntimeNonceRequest(server_id="node-uid-1"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and error_info(err.value).reason == "IP_MISMATCH"
    async with w.app.rt.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(server_attestations)) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.7", "169.254.169.254", "::1"])
async def test_a_miner_cannot_point_the_validator_at_a_private_address(host):
    """The registration pull connects where the miner says: never into the validator's own network."""
    from gantry_server.domain.attestation.evidence import EvidenceClient
    from gantry_server.domain.attestation.failures import AttestationFailure

    client = EvidenceClient("http://{host}:1/server/attest?nonce={nonce}")
    with pytest.raises(AttestationFailure) as err:
        await client.fetch(host=host, server_id="s", nonce="n")
    assert err.value.reason == "EVIDENCE_UNAVAILABLE" and "not a public address" in err.value.message
