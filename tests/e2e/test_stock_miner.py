"""A stock Chutes miner agent against Gantry, written from ../shared/docs/miner-contract.md (not from Gantry's
code): the calls gepetto makes at start-up and on every reconcile, with the fields it indexes, and its
Socket.IO event client.

What it does like the real agent:
- signs every call v1 (`"{ss58}:{nonce}:{purpose}"`, sr25519, hex without 0x), nonce = unix seconds, and
  reuses one header set for several calls in the same second;
- reads the lists as SSE, line by line: `data: {json}` per row, `data: NO_ITEMS` for an empty list;
- indexes the hard fields (a KeyError here is the crash the real miner would have);
- connects a python-socketio AsyncClient over the websocket transport, emits `authenticate` with the headers
  as a dict, and handles `miner_broadcast {reason, message?, data}`.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import grpc
import httpx
import pytest
import socketio
from bittensor_wallet import Keypair
from google.protobuf import struct_pb2

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry_server.app import GantryApp
from gantry_server.domain import events
from gantry_server.store.db import unit_of_work

from ..conftest import ADMIN_METADATA, make_settings

pytestmark = pytest.mark.timeout(120)

MINER = Keypair.create_from_seed("0x" + "11" * 32)
OTHER_MINER = Keypair.create_from_seed("0x" + "22" * 32)
STRANGER = Keypair.create_from_seed("0x" + "33" * 32)  # not registered on the subnet

# Fields the agent indexes (miner-contract.md §a, A1/A2/A4/A8) and the event keys it reads (§b).
CHUTE_HARD = ("version", "name", "image", "code", "ref_str", "preemptible", "chutes_version", "supported_gpus")
GET_CHUTE_HARD = CHUTE_HARD + ("filename", "tee")
IMAGE_HARD = ("username", "name", "tag", "chutes_version")
JOB_CREATED_HARD = ("chute_id", "job_id", "gpu_count", "compute_multiplier", "disk_gb")


def miner_headers(kp: Keypair, purpose: str) -> dict[str, str]:
    nonce = str(int(time.time()))
    signature = kp.sign(f"{kp.ss58_address}:{nonce}:{purpose}".encode()).hex()
    return {"X-Chutes-Hotkey": kp.ss58_address, "X-Chutes-Nonce": nonce, "X-Chutes-Signature": signature}


async def sse_rows(client: httpx.AsyncClient, path: str, headers: dict) -> list[dict] | None:
    """gepetto's reading of a list: None for `data: NO_ITEMS`, else the rows (raise_for_status first)."""
    rows: list[dict] = []
    async with client.stream("GET", path, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            line = line.strip()
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            if payload == "NO_ITEMS":
                return None
            rows.append(json.loads(payload))
    return rows


def struct(value: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


@pytest.fixture(scope="module")
async def gantry(database_url, redis_url, tmp_path_factory):
    app = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("stock-miner")))
    await app.start()
    yield app
    await app.stop(0)


@pytest.fixture(scope="module")
async def admin(gantry):
    async with grpc.aio.insecure_channel(gantry.grpc_addr) as channel:
        yield admin_pb2_grpc.AdminServiceStub(channel)


@pytest.fixture(scope="module")
async def world(gantry, admin):
    """A subnet with two registered miners, one image and one chute (what an operator sets up)."""
    await admin.UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(nodes=[
        admin_pb2.MetagraphNode(hotkey=MINER.ss58_address, coldkey=MINER.ss58_address, netuid=64, node_id=11),
        admin_pb2.MetagraphNode(hotkey=OTHER_MINER.ss58_address, coldkey=OTHER_MINER.ss58_address, netuid=64,
                                node_id=12),
    ]), metadata=ADMIN_METADATA)
    suffix = uuid.uuid4().hex[:8]
    user = await admin.CreateUser(admin_pb2.CreateUserRequest(username=f"Chutes-{suffix}"), metadata=ADMIN_METADATA)
    image_id, chute_id = f"img-{suffix}", f"chute-{suffix}"
    await admin.UpsertImage(admin_pb2.UpsertImageRequest(
        image_id=image_id, user_id=user.user_id, name="VLLM", tag="0.9.2", patch_version="p3",
        compute_type="gpu", chutes_version="0.5.5"), metadata=ADMIN_METADATA)
    await admin.UpsertChute(admin_pb2.UpsertChuteRequest(
        chute_id=chute_id, user_id=user.user_id, name="llama-8b", image_id=image_id, version="v7",
        chutes_version="0.5.5", node_selector=struct({"gpu_count": 2, "include": ["h100", "h200"]}),
        public=True, code="from chutes.chute import Chute\nchute = Chute()\n", filename="llama_8b.py"),
        metadata=ADMIN_METADATA)
    return {"user_id": user.user_id, "image_id": image_id, "chute_id": chute_id,
            "username": f"chutes-{suffix}"}


@pytest.fixture
async def api(gantry):
    async with httpx.AsyncClient(base_url=f"http://{gantry.http_addr}", timeout=10) as client:
        yield client


async def test_reconcile_reads_every_list_with_the_fields_it_indexes(api, world):
    headers = miner_headers(MINER, "miner")  # one header set for the whole reconcile, as the agent does
    chutes = await sse_rows(api, "/miner/chutes/", headers)
    mine = {row["chute_id"]: row for row in chutes}[world["chute_id"]]
    for key in CHUTE_HARD:
        assert key in mine, f"chute row lacks hard field {key!r}"
    assert mine["node_selector"]["gpu_count"] == 2
    assert mine["image"] == f"{world['username']}/vllm:0.9.2-p3"
    assert mine["ref_str"] == "llama_8b:chute"
    assert mine["chutes_version"] == "0.5.5" and mine["version"] == "v7"
    assert sorted(mine["supported_gpus"]) == ["h100", "h200"]
    assert mine["preemptible"] is True  # a public chute
    assert mine.get("effective_compute_multiplier", 1.0) > 0

    images = await sse_rows(api, "/miner/images/", headers)
    image = {row["image_id"]: row for row in images}[world["image_id"]]
    assert {k: image[k] for k in IMAGE_HARD} == {"username": world["username"], "name": "vllm",
                                                 "tag": "0.9.2", "chutes_version": "0.5.5"}
    assert image["patch_version"] == "p3"

    assert await sse_rows(api, "/miner/nodes/", headers) == []
    assert await sse_rows(api, "/miner/instances/?explicit_null=True", headers) is None  # data: NO_ITEMS
    metrics = await sse_rows(api, "/miner/metrics/", headers)
    assert isinstance(metrics, list)

    active = await api.get("/miner/active_instances/", headers=headers)
    active.raise_for_status()
    assert isinstance(active.json(), list)
    servers = await api.get("/miner/servers/", headers=headers)
    servers.raise_for_status()
    assert servers.json() == {"servers": []}


async def test_get_chute_carries_code_and_filename(api, world):
    headers = miner_headers(MINER, "miner")
    resp = await api.get(f"/miner/chutes/{world['chute_id']}/v7", headers=headers)
    resp.raise_for_status()
    chute = resp.json()
    for key in GET_CHUTE_HARD:
        assert key in chute, f"get chute lacks hard field {key!r}"
    assert chute["node_selector"]["gpu_count"] == 2
    assert chute["code"].startswith("from chutes.chute import Chute")
    assert chute["filename"] == "llama_8b.py" and chute["tee"] is False
    assert (await api.get(f"/miner/chutes/{world['chute_id']}/v6", headers=headers)).status_code == 404


async def test_unauthenticated_routes_answer_without_credentials(api, world):
    rolling = await api.get("/chutes/rolling_updates")
    assert rolling.status_code == 200 and isinstance(rolling.json(), list)
    assert all("chute_id" in row for row in rolling.json())
    utilization = (await api.get("/chutes/utilization")).json()
    row = {r["chute_id"]: r for r in utilization}[world["chute_id"]]
    assert row["scalable"] is True and row["update_in_progress"] is False
    supported = (await api.get("/nodes/supported")).json()
    assert isinstance(supported, dict) and {"h100", "h200"} <= set(supported)


async def test_a_list_signed_by_an_unregistered_hotkey_is_refused(api, world):
    resp = await api.get("/miner/chutes/", headers=miner_headers(STRANGER, "miner"))
    assert resp.status_code in (401, 403)
    assert "detail" in resp.json()


class SocketMiner:
    """The agent's socket client: authenticate on connect, collect `miner_broadcast` messages."""

    def __init__(self, url: str, kp: Keypair | None) -> None:
        self.url, self.kp = url, kp
        self.sio = socketio.AsyncClient(reconnection=False)
        self.broadcasts: list[dict] = []
        self.auth: asyncio.Future = asyncio.get_running_loop().create_future()
        self.arrived = asyncio.Event()
        self.sio.on("connect", self._on_connect)
        self.sio.on("auth_success", lambda data: self._auth("auth_success", data))
        self.sio.on("auth_failed", lambda data: self._auth("auth_failed", data))
        self.sio.on("miner_broadcast", self._on_broadcast)

    async def _on_connect(self) -> None:
        if self.kp is not None:
            await self.sio.emit("authenticate", miner_headers(self.kp, "sockets"))

    def _auth(self, event: str, data) -> None:
        if not self.auth.done():
            self.auth.set_result((event, data))

    def _on_broadcast(self, data) -> None:
        self.broadcasts.append(data)
        self.arrived.set()

    async def __aenter__(self) -> "SocketMiner":
        await self.sio.connect(self.url, transports=["websocket"], socketio_path="socket.io")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.sio.disconnect()

    async def wait_for(self, predicate, timeout: float) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for message in self.broadcasts:
                if predicate(message):
                    return message
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no matching broadcast within {timeout}s; got {self.broadcasts}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                pass


async def test_socket_miner_gets_jobs_and_only_its_own_instance_events(gantry, admin, world):
    url = f"http://{gantry.http_addr}"
    async with SocketMiner(url, MINER) as miner, SocketMiner(url, OTHER_MINER) as other, \
            SocketMiner(url, None) as anonymous:
        assert (await asyncio.wait_for(miner.auth, 5))[0] == "auth_success"
        assert (await asyncio.wait_for(other.auth, 5))[0] == "auth_success"

        posted = time.monotonic()
        job = await admin.CreateJob(admin_pb2.CreateJobRequest(
            chute_id=world["chute_id"], user_id=world["user_id"], method="train",
            job_args=struct({"_disk_gb": 120})), metadata=ADMIN_METADATA)
        message = await miner.wait_for(lambda m: m["reason"] == "job_created"
                                       and m["data"]["job_id"] == job.job_id, timeout=5)
        assert time.monotonic() - posted < 1.0, "job_created must reach the miner within a second"
        for key in JOB_CREATED_HARD:
            assert key in message["data"], f"job_created lacks {key!r}"
        assert message["data"]["disk_gb"] == 120 and isinstance(message["data"]["disk_gb"], int)
        assert message["data"]["chute_id"] == world["chute_id"]
        assert "excluded" in message["data"]
        assert "filter_recipients" not in message and "validator" not in message["data"]

        # Targeted events (what the launch flow publishes for each miner's instances).
        async with unit_of_work(gantry.rt.engine) as conn:
            now = gantry.rt.clock.now()
            await events.publish(conn, events.instance_verified(instance_id="inst-mine",
                                                                miner_hotkey=MINER.ss58_address), now=now)
            await events.publish(conn, events.instance_verified(instance_id="inst-other",
                                                                miner_hotkey=OTHER_MINER.ss58_address), now=now)
            await events.publish(conn, events.chute_updated(world["chute_id"], "v7", False), now=now)
        await miner.wait_for(lambda m: m["reason"] == "chute_updated", timeout=5)
        await other.wait_for(lambda m: m["reason"] == "chute_updated", timeout=5)
        mine = [m["data"]["instance_id"] for m in miner.broadcasts if m["reason"] == "instance_verified"]
        theirs = [m["data"]["instance_id"] for m in other.broadcasts if m["reason"] == "instance_verified"]
        assert mine == ["inst-mine"] and theirs == ["inst-other"]
        assert anonymous.broadcasts == [], "an unauthenticated socket must receive nothing"


async def test_socket_miner_gets_open_jobs_replayed_after_authenticating(gantry, admin, world):
    job = await admin.CreateJob(admin_pb2.CreateJobRequest(
        chute_id=world["chute_id"], user_id=world["user_id"], method="infer"), metadata=ADMIN_METADATA)
    async with SocketMiner(f"http://{gantry.http_addr}", MINER) as late:
        assert (await asyncio.wait_for(late.auth, 5))[0] == "auth_success"
        replayed = await late.wait_for(lambda m: m["reason"] == "job_created"
                                       and m["data"]["job_id"] == job.job_id, timeout=5)
        assert isinstance(replayed["data"]["disk_gb"], int)


async def test_socket_with_a_bad_signature_is_told_and_disconnected(gantry, world):
    forged = SocketMiner(f"http://{gantry.http_addr}", None)
    async with forged:
        headers = miner_headers(MINER, "sockets")
        headers["X-Chutes-Signature"] = "00" * 64
        await forged.sio.emit("authenticate", headers)
        event, data = await asyncio.wait_for(forged.auth, 5)
        assert event == "auth_failed" and data["error"]
        for _ in range(50):
            if not forged.sio.connected:
                break
            await asyncio.sleep(0.05)
        assert not forged.sio.connected
