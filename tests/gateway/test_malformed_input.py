"""Malformed requests get the family's 4xx body (422 FastAPI list / 400 broker), never a 5xx."""
from __future__ import annotations

import time
import uuid

import pytest
from bittensor_wallet import Keypair

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry_server.domain.auth import signatures as s

from ..conftest import ADMIN_METADATA

ALICE = Keypair.create_from_uri("//Alice")


async def test_bad_json_validator_422_broker_400(http):
    v = await http.post("/servers/", content=b'{"name": ', headers={"content-type": "application/json"})
    assert v.status_code == 422
    [item] = v.json()["detail"]
    assert item["type"] == "json_invalid" and item["loc"][0] == "body"
    b = await http.post("/api/v1/sessions", content=b"{nope", headers={"X-Request-ID": "bad-json",
                                                                       "content-type": "application/json"})
    assert b.status_code == 400
    assert b.json()["request_id"] == "bad-json" and b.json()["error"].startswith("invalid request body")


async def test_wrong_types_name_the_field(http):
    v = await http.post("/servers/", json={"name": 5})
    assert v.status_code == 422
    assert v.json()["detail"] == [{"loc": ["body", "name"], "msg": "Input should be a valid string",
                                   "type": "string_type"}]
    b = await http.post("/api/v1/sessions", json={"reservation_hours": "twelve"})
    assert b.status_code == 400 and "reservation_hours" in b.json()["error"]
    nested = await http.post("/admin/v1/metagraph/nodes", json={"nodes": [{"port": "x"}]})
    assert nested.status_code == 400 and "nodes.0.port" in nested.json()["error"]


async def test_query_numbers_and_bools_parsed_with_clear_errors(http):
    b = await http.get("/api/v1/inventory", params={"min_vram": "lots"})
    assert b.status_code == 400
    assert b.json()["error"].startswith("invalid min_vram: Input should be a valid integer")
    v = await http.get("/miner/instances/", params={"explicit_null": "maybe"})
    assert v.status_code == 422
    assert v.json()["detail"][0]["loc"] == ["query", "explicit_null"]
    assert v.json()["detail"][0]["type"] == "bool_parsing"


async def test_repeated_singular_query_key_is_refused(http):
    b = await http.get("/api/v1/inventory?provider=vastai&provider=tensordock")
    assert b.status_code == 400 and "too many values" in b.json()["error"] and "provider" in b.json()["error"]


async def test_missing_body_is_field_required(http):
    v = await http.post("/servers/")
    assert v.status_code == 422
    assert v.json()["detail"] == [{"loc": ["body"], "msg": "Field required", "type": "missing"}]
    b = await http.post("/api/v1/sessions")
    assert b.status_code == 400 and b.json()["error"] == "request body is required"


async def test_body_that_is_not_an_object(http):
    v = await http.post("/servers/", json=[1, 2])
    assert v.status_code == 422 and v.json()["detail"][0]["type"] == "model_attributes_type"


@pytest.mark.parametrize("path,family", [("/servers/", "validator"), ("/api/v1/sessions", "broker")])
async def test_oversized_body_is_413_in_the_family_body(app, http, path, family):
    big = b"{" + b'"x": "' + b"a" * (app.settings.http_max_body_bytes + 10) + b'"}'
    response = await http.post(path, content=big, headers={"X-Request-ID": "big-1"})
    assert response.status_code == 413
    if family == "broker":
        assert response.json() == {"error": "http: request body too large", "request_id": "big-1"}
    else:
        assert response.json() == {"detail": "Request body too large"}


@pytest.mark.parametrize("raw", ["/servers/..%2F..%2Fetc", "/servers/%2e%2e", "/servers/a%00b", "/servers/%FF%FE"])
async def test_path_traversal_and_bad_path_values_are_refused(http, raw):
    response = await http.get(raw)
    assert response.status_code == 422, response.text
    [item] = response.json()["detail"]
    assert item["loc"] == ["path", "server_id"]


async def test_unicode_is_carried_not_crashed(http):
    body = await http.post("/servers/", json={"name": "сервер-✓-🚀"})
    assert body.status_code in (401, 403, 501)  # reached the server: auth or not built yet
    path = await http.get("/miner/unique_chute_history/%E2%9C%93")
    assert path.status_code in (401, 403, 404, 501) and "detail" in path.json()
    query = await http.get("/api/v1/inventory", params={"gpu_type": "Ж100"})
    assert query.status_code < 500 or query.status_code == 501


async def test_client_supplied_gateway_headers_are_dropped(http, channel, clean_db):
    """A REST client cannot tell the server which path and body its v2 signature covers: the gateway's own
    `x-gantry-http-path` / `x-gantry-body-sha256` replace forged ones, so a signature made for another request
    (here: another path, another body hash) is refused on this one."""
    await admin_pb2_grpc.AdminServiceStub(channel).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
        nodes=[admin_pb2.MetagraphNode(hotkey=ALICE.ss58_address, netuid=64, node_id=1)]), metadata=ADMIN_METADATA)

    def signed(path: str, body_sha256: str | None) -> dict:
        nonce = f"{int(time.time())}.{uuid.uuid4().hex[:12]}"
        message = s.v2_message(ALICE.ss58_address, "DELETE", path, nonce, body_sha256)
        return {"X-Chutes-Hotkey": ALICE.ss58_address, "X-Chutes-Nonce": nonce, "X-Chutes-Sig-Version": "2",
                "X-Chutes-Signature": ALICE.sign(message.encode()).hex()}

    forged = await http.delete("/miner/jobs/job-1", headers=signed("/miner/jobs/other", "ab" * 32) | {
        "x-gantry-http-path": "/miner/jobs/other", "x-gantry-body-sha256": "ab" * 32})
    assert forged.status_code == 401 and "signature" in forged.text.lower(), forged.text
    honest = await http.delete("/miner/jobs/job-1", headers=signed("/miner/jobs/job-1", None))
    assert honest.status_code == 404, honest.text  # the same caller, signing what it sends, gets past auth
