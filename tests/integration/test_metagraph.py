"""Operators load the metagraph through AdminService; miners read it from MinerService.GetMetagraph."""
from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import func, select

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry.miner.v1 import miner_pb2, miner_pb2_grpc
from gantry_server.store.models import metagraph_nodes

from ..conftest import ADMIN_METADATA

# Well-known development accounts (Alice, Bob): valid SS58 addresses.
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"


def node(hotkey: str, uid: int, netuid: int = 64, **kw) -> admin_pb2.MetagraphNode:
    fields = dict(coldkey=BOB, ip="203.0.113.7", ip_type=4, port=8091, stake=12.5) | kw
    return admin_pb2.MetagraphNode(hotkey=hotkey, netuid=netuid, node_id=uid, **fields)


async def test_upserted_nodes_are_listed_for_the_subnet(channel, clean_db):
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    response = await admin.UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
        nodes=[node(ALICE, 3), node(BOB, 1), node("5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy", 9, netuid=1)]),
        metadata=ADMIN_METADATA)
    assert response.upserted == 3

    graph = await miner_pb2_grpc.MinerServiceStub(channel).GetMetagraph(miner_pb2.GetMetagraphRequest())
    assert [(n.hotkey, n.node_id) for n in graph.items] == [(BOB, 1), (ALICE, 3)]  # subnet 64 only, by uid
    assert graph.items[1].stake == 12.5 and graph.items[1].port == 8091
    assert not graph.items[1].HasField("blacklist_reason")
    assert graph.items[1].synced_at.seconds > 0


async def test_upsert_updates_in_place(channel, clean_db):
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    await admin.UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(nodes=[node(ALICE, 3)]),
                                     metadata=ADMIN_METADATA)
    await admin.UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(nodes=[node(ALICE, 4)]),
                                     metadata=ADMIN_METADATA)
    graph = await miner_pb2_grpc.MinerServiceStub(channel).GetMetagraph(miner_pb2.GetMetagraphRequest())
    assert [(n.hotkey, n.node_id) for n in graph.items] == [(ALICE, 4)]


async def test_bad_nodes_are_refused_naming_each_field_and_nothing_is_written(channel, clean_db):
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
            nodes=[node(ALICE, 1), node("not-a-hotkey", 2), node(BOB, 3, port=70000)]), metadata=ADMIN_METADATA)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    details = rpc_status.from_call(err.value).details
    assert any(d.Unpack(bad_request) for d in details)
    assert {v.field for v in bad_request.field_violations} == {"nodes[1].hotkey", "nodes[2].port"}
    async with clean_db.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(metagraph_nodes)) == 0


@pytest.mark.parametrize(("metadata", "code"), [
    ((), grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization", "Basic test-admin-token"),), grpc.StatusCode.UNAUTHENTICATED),
])
async def test_admin_rpcs_need_the_admin_token(channel, clean_db, metadata, code):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin_pb2_grpc.AdminServiceStub(channel).UpsertMetagraphNodes(
            admin_pb2.UpsertMetagraphNodesRequest(nodes=[node(ALICE, 1)]), metadata=metadata)
    assert err.value.code() == code
    assert "admin" in err.value.details()


async def test_blacklist_is_set_shown_and_cleared(channel, clean_db):
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    miner = miner_pb2_grpc.MinerServiceStub(channel)
    await admin.UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(nodes=[node(ALICE, 3)]),
                                     metadata=ADMIN_METADATA)
    set_ = await admin.SetBlacklist(admin_pb2.SetBlacklistRequest(hotkey=ALICE, reason="weight copying"),
                                    metadata=ADMIN_METADATA)
    assert set_.blacklist_reason == "weight copying"
    graph = await miner.GetMetagraph(miner_pb2.GetMetagraphRequest())
    assert graph.items[0].blacklist_reason == "weight copying"

    cleared = await admin.SetBlacklist(admin_pb2.SetBlacklistRequest(hotkey=ALICE, reason=""), metadata=ADMIN_METADATA)
    assert not cleared.HasField("blacklist_reason")
    graph = await miner.GetMetagraph(miner_pb2.GetMetagraphRequest())
    assert not graph.items[0].HasField("blacklist_reason")


async def test_blacklisting_an_unknown_or_malformed_hotkey_is_refused(channel, clean_db):
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.SetBlacklist(admin_pb2.SetBlacklistRequest(hotkey=BOB, reason="x"), metadata=ADMIN_METADATA)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.SetBlacklist(admin_pb2.SetBlacklistRequest(hotkey="nope", reason="x"), metadata=ADMIN_METADATA)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "hotkey" in err.value.details()
