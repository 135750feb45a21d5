"""Broker consumers, tried as an attacker: who may rent, see, extend and end a session, over gRPC and REST.

GANTRY_BROKER_AUTH=required: a consumer is an API-key or user-token user; its sessions and costs are its own,
another consumer's answer NOT_FOUND and stay as they were; an idempotent retry hands the private key only to
the consumer that created the session. Open (the loopback simulated default): the seed's credential-less broker.
"""
from __future__ import annotations

import uuid

import grpc
import pytest
from sqlalchemy import func, select

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.broker.v1 import costs_pb2, costs_pb2_grpc, inventory_pb2, inventory_pb2_grpc, sessions_pb2
from gantry_server.config import ConfigError, Settings
from gantry_server.store.models import broker_sessions

from ..conftest import ADMIN_METADATA
from .broker_harness import running_broker

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def broker(database_url, redis_url, tmp_path, clean_db, redis):
    async with running_broker(database_url, redis_url, tmp_path, auth="required") as h:
        yield h


async def consumer(h, *, token: bool = False) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A new user: (user_id, gRPC metadata carrying its API key, or its user token)."""
    admin = admin_pb2_grpc.AdminServiceStub(h.channel)
    user = await admin.CreateUser(admin_pb2.CreateUserRequest(username=f"u{uuid.uuid4().hex[:12]}"),
                                  metadata=ADMIN_METADATA)
    if token:
        secret = (await admin.CreateUserToken(admin_pb2.CreateUserTokenRequest(user_id=user.user_id),
                                              metadata=ADMIN_METADATA)).token
    else:
        secret = (await admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user.user_id),
                                           metadata=ADMIN_METADATA)).secret_key
    return user.user_id, (("authorization", f"Bearer {secret}"),)


def headers(md) -> dict[str, str]:
    return {"Authorization": dict(md)["authorization"]}


async def create(h, md, **kw) -> sessions_pb2.CreateSessionResponse:
    req = sessions_pb2.CreateSessionRequest(offer_id=kw.pop("offer_id", None) or await h.offer(),
                                            workload_type="llm", reservation_hours=2, **kw)
    return await h.stub.CreateSession(req, metadata=md)


async def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details()


async def session_rows(h) -> list:
    async with h.app.rt.engine.connect() as conn:
        return list((await conn.execute(select(broker_sessions).order_by(broker_sessions.c.created_at))).all())


# ---- no credentials ----------------------------------------------------------------------------------------------

async def test_a_caller_without_credentials_can_neither_rent_nor_read_sessions_or_costs(broker):
    h = broker
    costs = costs_pb2_grpc.CostServiceStub(h.channel)
    offer = await h.offer()
    for call in (h.stub.CreateSession(sessions_pb2.CreateSessionRequest(
                     consumer_id="app", offer_id=offer, workload_type="llm", reservation_hours=2)),
                 h.stub.ListSessions(sessions_pb2.ListSessionsRequest()),
                 h.stub.GetSession(sessions_pb2.GetSessionRequest(id=str(uuid.uuid4()))),
                 costs.GetCosts(costs_pb2.GetCostsRequest()),
                 costs.GetCostSummary(costs_pb2.GetCostSummaryRequest())):
        code, details = await code_of(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer cpk_" in details
    watch = h.stub.WatchSession(sessions_pb2.WatchSessionRequest(id=str(uuid.uuid4())))
    assert (await code_of(watch.read()))[0] == grpc.StatusCode.UNAUTHENTICATED

    rest = await h.http.post("/api/v1/sessions", json={"consumer_id": "app", "offer_id": offer,
                                                       "workload_type": "llm", "reservation_hours": 2})
    assert rest.status_code == 401 and "Bearer cpk_" in rest.json()["error"]  # the broker family's body
    for path in ("/api/v1/sessions", "/api/v1/costs", "/api/v1/costs/summary"):
        answer = await h.http.get(path)
        assert answer.status_code == 401 and "Bearer cpk_" in answer.json()["error"], path
    bogus = await h.http.get("/api/v1/sessions", headers={"Authorization": "Bearer cpk_" + "0" * 64})
    assert bogus.status_code == 401 and "api key" in bogus.json()["error"]
    assert await session_rows(h) == [] and h.provider.alive_instances() == []
    # Inventory and templates stay open by default (GANTRY_BROKER_INVENTORY_AUTH=open).
    assert (await h.http.get("/api/v1/inventory")).status_code == 200


# ---- another consumer --------------------------------------------------------------------------------------------

async def test_another_consumers_session_is_not_found_and_stays_untouched(broker):
    h = broker
    alice, alice_md = await consumer(h)
    _, bob_md = await consumer(h)
    created = await create(h, alice_md, consumer_id=alice)
    sid = created.session.id
    assert created.session.consumer_id == alice  # the session belongs to the authenticated consumer
    h.clock.advance(seconds=h.app.settings.broker.simulated_boot_seconds + 1)
    await h.lifecycle.tick()
    before = await h.row(sid)
    assert before.status == "running"

    bob = headers(bob_md)
    for method, path, body in (("GET", f"/api/v1/sessions/{sid}", None),
                               ("GET", f"/api/v1/sessions/{sid}/diagnostics", None),
                               ("POST", f"/api/v1/sessions/{sid}/extend", {"additional_hours": 1}),
                               ("POST", f"/api/v1/sessions/{sid}/done", None),
                               ("DELETE", f"/api/v1/sessions/{sid}", None)):
        answer = await h.http.request(method, path, json=body, headers=bob)
        assert answer.status_code == 404 and "session not found" in answer.json()["error"], path
    costs = await h.http.get("/api/v1/costs", params={"session_id": sid}, headers=bob)
    assert costs.status_code == 404 and "session not found" in costs.json()["error"]

    for call in (h.stub.GetSession(sessions_pb2.GetSessionRequest(id=sid), metadata=bob_md),
                 h.stub.GetSessionDiagnostics(sessions_pb2.GetSessionDiagnosticsRequest(id=sid), metadata=bob_md),
                 h.stub.ExtendSession(sessions_pb2.ExtendSessionRequest(id=sid, additional_hours=1),
                                      metadata=bob_md),
                 h.stub.DoneSession(sessions_pb2.DoneSessionRequest(id=sid), metadata=bob_md),
                 h.stub.DestroySession(sessions_pb2.DestroySessionRequest(id=sid), metadata=bob_md),
                 costs_pb2_grpc.CostServiceStub(h.channel).GetCosts(costs_pb2.GetCostsRequest(session_id=sid),
                                                                    metadata=bob_md)):
        code, details = await code_of(call)
        assert code == grpc.StatusCode.NOT_FOUND and "session not found" in details
    watch = h.stub.WatchSession(sessions_pb2.WatchSessionRequest(id=sid), metadata=bob_md)
    assert (await code_of(watch.read()))[0] == grpc.StatusCode.NOT_FOUND

    after = await h.row(sid)
    assert (after.status, after.expires_at, after.version) == ("running", before.expires_at, before.version)
    assert len(h.provider.alive_instances()) == 1
    # Bob's lists and sums hold nothing of Alice's; hers hold her session.
    assert (await h.http.get("/api/v1/sessions", headers=bob)).json()["sessions"] == []
    summary = (await h.http.get("/api/v1/costs/summary", headers=bob)).json()
    assert summary["session_count"] == 0 and summary["total_cost"] == 0
    mine = (await h.http.get("/api/v1/sessions", headers=headers(alice_md))).json()["sessions"]
    assert [s["id"] for s in mine] == [sid]
    ended = await h.http.post(f"/api/v1/sessions/{sid}/done", headers=headers(alice_md))
    assert ended.status_code == 200 and (await h.row(sid)).status == "stopped"


async def test_naming_another_consumer_id_is_permission_denied_and_writes_nothing(broker):
    h = broker
    alice, _ = await consumer(h)
    _, bob_md = await consumer(h)
    code, details = await code_of(create(h, bob_md, consumer_id=alice))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "consumer_id" in details
    listed = await h.http.get("/api/v1/sessions", params={"consumer_id": alice}, headers=headers(bob_md))
    assert listed.status_code == 403 and "consumer_id" in listed.json()["error"]
    summary = await h.http.get("/api/v1/costs", params={"consumer_id": alice}, headers=headers(bob_md))
    assert summary.status_code == 403
    assert await session_rows(h) == [] and h.provider.alive_instances() == []


async def test_a_user_token_is_a_consumer_credential_too(broker):
    h = broker
    user_id, md = await consumer(h, token=True)
    created = await create(h, md, consumer_id=user_id)  # naming oneself is allowed
    listed = await h.stub.ListSessions(sessions_pb2.ListSessionsRequest(), metadata=md)
    assert [s.id for s in listed.sessions] == [created.session.id]


# ---- finding 3: the idempotency record is the creator's ----------------------------------------------------------

async def test_a_replayed_idempotency_key_never_hands_another_consumer_the_session_or_its_key(broker):
    h = broker
    alice, alice_md = await consumer(h)
    bob_id, bob_md = await consumer(h)
    offer, key = await h.offer(), str(uuid.uuid4())
    body = {"consumer_id": alice, "offer_id": offer, "workload_type": "llm", "reservation_hours": 2}
    first = await h.http.post("/api/v1/sessions", json=body,
                              headers={"Idempotency-Key": key, **headers(alice_md)})
    assert first.status_code == 201
    sid, private_key = first.json()["session"]["id"], first.json()["ssh_private_key"]

    anonymous = await h.http.post("/api/v1/sessions", json=body, headers={"Idempotency-Key": key})
    assert anonymous.status_code == 401 and private_key not in anonymous.text
    # The seed's hole: the same consumer id, key and offer from anyone returned the session and its key.
    replay = await h.http.post("/api/v1/sessions", json=body, headers={"Idempotency-Key": key, **headers(bob_md)})
    assert replay.status_code == 403 and "consumer_id" in replay.json()["error"]
    assert sid not in replay.text and private_key not in replay.text
    own = await h.http.post("/api/v1/sessions", json={**body, "consumer_id": ""},
                            headers={"Idempotency-Key": key, **headers(bob_md)})
    assert sid not in own.text and private_key not in own.text
    grpc_replay = await create(h, bob_md, offer_id=offer, request_id=key)
    assert grpc_replay.session.id != sid and grpc_replay.ssh_private_key != private_key
    assert grpc_replay.session.consumer_id == bob_id
    # The creator's own retry still gets its session and key back (a lost 201 strands nothing).
    again = await h.http.post("/api/v1/sessions", json=body, headers={"Idempotency-Key": key, **headers(alice_md)})
    assert again.status_code == 201 and again.json()["session"]["id"] == sid
    assert again.json()["ssh_private_key"] == private_key


# ---- open mode and the switches ----------------------------------------------------------------------------------

async def test_the_open_broker_keeps_the_seeds_credential_less_behaviour(database_url, redis_url, tmp_path, clean_db,
                                                                         redis):
    async with running_broker(database_url, redis_url, tmp_path) as h:  # simulated only: open by default
        assert h.app.settings.broker.auth_required is False
        offer = await h.offer()
        created = await h.http.post("/api/v1/sessions", json={
            "consumer_id": "app", "offer_id": offer, "workload_type": "llm", "reservation_hours": 2})
        assert created.status_code == 201 and created.json()["session"]["consumer_id"] == "app"
        sid = created.json()["session"]["id"]
        assert (await h.http.get(f"/api/v1/sessions/{sid}")).status_code == 200
        assert [s["id"] for s in (await h.http.get("/api/v1/sessions")).json()["sessions"]] == [sid]
        assert (await h.http.get("/api/v1/costs/summary")).status_code == 200
        assert (await h.http.post(f"/api/v1/sessions/{sid}/done")).status_code == 200


async def test_inventory_can_require_credentials_too(database_url, redis_url, tmp_path, clean_db, redis):
    async with running_broker(database_url, redis_url, tmp_path, inventory_auth="required") as h:
        inventory = inventory_pb2_grpc.InventoryServiceStub(h.channel)
        code, _ = await code_of(inventory.ListOffers(inventory_pb2.ListOffersRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert (await h.http.get("/api/v1/inventory")).status_code == 401
        _, md = await consumer(h)
        assert (await h.http.get("/api/v1/inventory", headers=headers(md))).status_code == 200
        assert (await h.http.get("/api/v1/sessions")).status_code == 200  # sessions stay open: simulated only


@pytest.mark.parametrize(("env", "required"), [
    ({}, False),  # embedded, loopback, simulated: the developer's laptop
    ({"GANTRY_BROKER_PROVIDERS": "vastai", "GANTRY_VASTAI_API_KEY": "k"}, True),
    ({"GANTRY_BROKER_PROVIDERS": "simulated,tensordock", "GANTRY_TENSORDOCK_API_TOKEN": "t",
      "GANTRY_TENSORDOCK_AUTH_ID": "a"}, True),
    ({"GANTRY_HTTP_ADDR": "0.0.0.0:8080"}, True),  # the simulated shell on a public address
    ({"GANTRY_BROKER_PROVIDERS": "vastai", "GANTRY_VASTAI_API_KEY": "k", "GANTRY_BROKER_AUTH": "open"}, False),
    ({"GANTRY_BROKER_AUTH": "required"}, True),
])
def test_broker_auth_is_required_by_default_whenever_a_real_provider_or_a_public_listener_is_configured(env,
                                                                                                        required):
    assert Settings.from_env(env).broker.auth_required is required


def test_broker_auth_switches_take_only_required_or_open():
    for name in ("GANTRY_BROKER_AUTH", "GANTRY_BROKER_INVENTORY_AUTH"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: "yes"})
    assert Settings.from_env({}).broker.inventory_auth == "open"


def test_every_broker_rpc_is_a_consumer_policy_naming_a_real_switch():
    from gantry_server.auth_policy import POLICIES
    from gantry_server.config import BrokerSettings

    broker = {rpc: p for rpc, p in POLICIES.items() if rpc.startswith("/gantry.broker.v1.")}
    assert broker and all(p.kind == "consumer" for p in broker.values())
    assert {p.setting for p in broker.values()} == {"auth", "inventory_auth"}
    assert all(hasattr(BrokerSettings(), p.setting) for p in broker.values())
    assert {rpc.split("/")[1] for rpc, p in broker.items() if p.setting == "inventory_auth"} == {
        "gantry.broker.v1.InventoryService", "gantry.broker.v1.TemplateService"}
