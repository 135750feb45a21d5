"""The Go signer (clients/go/gantry/signer.go) makes grpc-v1 signed calls that a live Gantry server accepts.

Two random hotkeys (sr25519 and ed25519) are registered on the metagraph through AdminService, then
`go test -run Live` signs MinerService calls with them (clients/go/gantry/auth_live_test.go).
"""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from bittensor_wallet import Keypair
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry_server.domain.auth.ss58 import encode_ss58

from ..conftest import ADMIN_METADATA

GO_MODULE = Path(__file__).resolve().parents[2] / "clients" / "go"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"

LIVE_TESTS = ("TestLiveSignedUnaryCallPassesAuth", "TestLiveSignedServerStreamPassesAuth",
              "TestLiveUnsignedCallIsUnauthenticated", "TestLiveWrongSignatureIsUnauthenticated",
              "TestLiveReplayedNonceIsRefused", "TestLiveUnregisteredHotkeyIsRefused")


def _node(hotkey: str, uid: int) -> admin_pb2.MetagraphNode:
    return admin_pb2.MetagraphNode(hotkey=hotkey, netuid=64, node_id=uid, coldkey=BOB, ip="203.0.113.7",
                                   ip_type=4, port=8091, stake=1.0)


@pytest.mark.skipif(shutil.which("go") is None and not os.environ.get("CI"),
                    reason="no go binary on this machine (CI always runs this test)")
async def test_go_signed_calls_against_live_server(app, channel, clean_db):
    sr_seed = os.urandom(32)
    sr_hotkey = Keypair.create_from_seed(sr_seed.hex()).ss58_address
    ed_seed = os.urandom(32)
    ed_public = Ed25519PrivateKey.from_private_bytes(ed_seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ed_hotkey = encode_ss58(ed_public)
    response = await admin_pb2_grpc.AdminServiceStub(channel).UpsertMetagraphNodes(
        admin_pb2.UpsertMetagraphNodesRequest(nodes=[_node(sr_hotkey, 1), _node(ed_hotkey, 2)]),
        metadata=ADMIN_METADATA)
    assert response.upserted == 2

    env = dict(os.environ, GANTRY_TEST_GRPC_ADDR=app.grpc_addr, CI=os.environ.get("CI", "1"),
               GANTRY_TEST_SR25519_SEED=sr_seed.hex(), GANTRY_TEST_SR25519_HOTKEY=sr_hotkey,
               GANTRY_TEST_ED25519_SEED=ed_seed.hex(), GANTRY_TEST_ED25519_HOTKEY=ed_hotkey)
    # Async subprocess: the server under test runs on this same event loop.
    proc = await asyncio.create_subprocess_exec(
        "go", "test", "-count=1", "-v", "-run", "Live", "./...", cwd=GO_MODULE, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    text = out.decode()
    assert proc.returncode == 0, text
    for name in LIVE_TESTS:
        assert f"--- PASS: {name} " in text, text  # passed, not skipped
