"""Attestation evidence pulls are bounded: a miner's host that answers too much, or too slowly, is refused.

The hosts are real sockets on loopback (asyncio servers on the test's loop): one streams an endless body without a
Content-Length, one lies about nothing but sends far too much, one drip-feeds a byte at a time so that no single
read ever times out. Limits are small through settings, so nothing here waits more than about a second.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import grpc
import pytest
from sqlalchemy import select

from gantry.servers.v1 import servers_pb2, servers_pb2_grpc
from gantry_client import Signer, connect
from gantry_server.app import GantryApp
from gantry_server.config import AttestationSettings
from gantry_server.domain.attestation.evidence import EvidenceClient
from gantry_server.domain.attestation.failures import AttestationFailure
from gantry_server.store.models import nodes, server_attestations, servers

from ..conftest import make_settings
from .servers_harness import error_info

MAX_BYTES = 4096
DEADLINE = 0.5
MINER_SEED = bytes(range(32))


class EvilHost:
    """An attestation endpoint that misbehaves per `mode`; counts what it managed to send."""

    def __init__(self) -> None:
        self.mode = "endless"
        self.sent = 0
        self.server: asyncio.base_events.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            if self.mode == "declared_large":  # says up front it is 100 MiB
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n")
                for _ in range(1600):  # a bounded 100 MiB, in 64 KiB pieces
                    writer.write(b"x" * 65536)
                    self.sent += 65536
                    await writer.drain()
            elif self.mode == "endless":  # no length: the body ends when the connection does
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n")
                writer.write(b'{"tdx_quote": "')
                for _ in range(1600):
                    writer.write(b"A" * 65536)
                    self.sent += 65536
                    await writer.drain()
            elif self.mode == "gzip":  # 1 KiB on the wire that would inflate to 1 MiB
                import gzip

                bomb = gzip.compress(b"0" * (1 << 20))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
                             b"content-length: " + str(len(bomb)).encode() + b"\r\n\r\n" + bomb)
                await writer.drain()
            elif self.mode == "drip":  # every read gets a byte quickly, the answer never completes
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n")
                for _ in range(1000):
                    writer.write(b" ")
                    self.sent += 1
                    await writer.drain()
                    await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]


@asynccontextmanager
async def evil_host():
    host = EvilHost()
    host.server = await asyncio.start_server(host.handle, "127.0.0.1", 0)
    try:
        yield host
    finally:
        host.server.close()


def client(port: int) -> EvidenceClient:
    return EvidenceClient(f"http://{{host}}:{port}/server/attest?nonce={{nonce}}", allow_private_hosts=True,
                          timeout=5.0, max_bytes=MAX_BYTES, deadline=DEADLINE)


@pytest.mark.parametrize("mode", ["endless", "declared_large"])
async def test_an_oversized_answer_is_refused_without_reading_it_all(mode):
    async with evil_host() as host:
        host.mode = mode
        with pytest.raises(AttestationFailure) as err:
            await client(host.port).fetch(host="127.0.0.1", nonce="n")
        await asyncio.sleep(0)
    assert err.value.reason == "EVIDENCE_UNAVAILABLE"
    assert f"answer is larger than {MAX_BYTES} bytes" in err.value.message
    assert host.sent < 100 * 65536  # the validator hung up long before the host was done


async def test_a_compressed_answer_is_refused_not_inflated():
    async with evil_host() as host:
        host.mode = "gzip"
        with pytest.raises(AttestationFailure) as err:
            await client(host.port).fetch(host="127.0.0.1", nonce="n")
    assert err.value.reason == "EVIDENCE_UNAVAILABLE"
    assert "answer is gzip-encoded; only an uncompressed answer is accepted" in err.value.message


async def test_a_drip_fed_answer_is_cut_off_at_the_overall_deadline():
    async with evil_host() as host:
        host.mode = "drip"
        started = time.monotonic()
        with pytest.raises(AttestationFailure) as err:
            await client(host.port).fetch(host="127.0.0.1", nonce="n")
        took = time.monotonic() - started
    assert err.value.reason == "EVIDENCE_UNAVAILABLE"
    assert f"answer not complete within {DEADLINE:g} s" in err.value.message
    assert took < DEADLINE + 1.0  # not 1000 bytes x 50 ms: no per-read timeout ever fired


def test_the_limits_come_from_the_environment():
    from gantry_server.config import Settings

    s = Settings.from_env({"GANTRY_TDX_EVIDENCE_MAX_BYTES": "1024", "GANTRY_TDX_EVIDENCE_DEADLINE_SECONDS": "2.5"})
    assert (s.attestation.evidence_max_bytes, s.attestation.evidence_deadline_seconds) == (1024, 2.5)


# ---- through the API: registration refused, nothing registered ----------------------------------------------------

@pytest.fixture(scope="module")
async def evil():
    async with evil_host() as host:
        yield host


@pytest.fixture(scope="module")
async def limited_app(database_url, redis_url, tmp_path_factory, evil):
    cfg = AttestationSettings(attestation_url=f"http://{{host}}:{evil.port}/server/attest?nonce={{nonce}}",
                              attestation_allow_private_hosts=True, evidence_max_bytes=MAX_BYTES,
                              evidence_deadline_seconds=DEADLINE)
    app = GantryApp(make_settings(database_url, redis_url, tmp_path_factory.mktemp("evidence"), attestation=cfg))
    await app.start()
    yield app
    await app.stop(0)


@pytest.mark.parametrize(("mode", "words"), [
    ("endless", f"answer is larger than {MAX_BYTES} bytes"),
    ("drip", f"answer not complete within {DEADLINE:g} s"),
])
async def test_registration_against_a_hostile_evidence_host_is_refused_and_registers_nothing(
        limited_app, evil, clean_db, mode, words):
    from gantry.admin.v1 import admin_pb2, admin_pb2_grpc

    from ..conftest import ADMIN_METADATA

    signer = Signer.from_ed25519_seed(MINER_SEED)
    async with connect(limited_app.grpc_addr) as ch:
        await admin_pb2_grpc.AdminServiceStub(ch).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
            nodes=[admin_pb2.MetagraphNode(hotkey=signer.hotkey, netuid=64, node_id=1)]), metadata=ADMIN_METADATA)
    evil.mode = mode
    request = servers_pb2.CreateServerRequest(host="127.0.0.1", id="node-uid-1", name="box", gpus=[
        servers_pb2.NodeArgs(uuid="GPU-0000", name="NVIDIA H100 80GB HBM3", memory=85_899_345_920, processors=132,
                             clock_rate=1980.0, gpu_identifier="h100", verification_host="127.0.0.1",
                             verification_port=8000)])
    async with connect(limited_app.grpc_addr, signer=signer) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await servers_pb2_grpc.ServerServiceStub(channel).CreateServer(request)
    assert error_info(err.value).reason == "EVIDENCE_UNAVAILABLE" and words in err.value.details()
    async with limited_app.rt.engine.connect() as conn:
        assert (await conn.execute(select(servers))).all() == [] and (await conn.execute(select(nodes))).all() == []
        [attempt] = (await conn.execute(select(server_attestations))).mappings().all()
    assert attempt["verified"] is False and attempt["error_reason"] == "EVIDENCE_UNAVAILABLE"
