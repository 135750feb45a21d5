"""Servers under test: a live Gantry (gRPC + REST) trusting a test TDX root, a ManualClock, a fake attestation
endpoint (a real HTTP server on loopback) and a real GPU-evidence verifier command.

The quotes are built by tests/tdx_builder.py (real ECDSA and X.509 under a generated root) and verified by the
same dcap-qvl path as production; only the root of trust differs (Settings.attestation.root_ca_file).
"""
from __future__ import annotations

import base64
import json
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import AsyncIterator, Callable
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc
from gantry_client import Signer
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.config import AttestationSettings

from ..conftest import ADMIN_METADATA, make_settings
from ..tdx_builder import QuoteKit, report_data_for

ISSUED = datetime(2026, 3, 1, tzinfo=timezone.utc)  # the test collateral's issueDate
NOW = ISSUED + timedelta(days=1)
LUKS_ROOT_KEY = "root-disk-passphrase-for-tests"


def reg(byte: int) -> bytes:
    return bytes([byte]) * 48


MRTD = reg(0x11)
BOOT_RTMRS = (reg(0x20), reg(0x21), reg(0x22), reg(0x23))
RUNTIME_RTMRS = (reg(0x30), reg(0x31), reg(0x32), reg(0x33))
POLICY = admin_pb2.PutMeasurementPolicyRequest(
    name="sek8s-h100", version="0.3.1", mrtd=MRTD.hex(), boot_rtmrs=[r.hex() for r in BOOT_RTMRS],
    runtime_rtmrs=[r.hex() for r in RUNTIME_RTMRS], expected_gpus=["h100"], gpu_count=2)

# A real verifier process: accepts evidence that echoes the validator's nonce (what NVIDIA evidence binds).
GPU_VERIFIER = (sys.executable, "-c", "import json,sys; d=json.load(sys.stdin); e=json.loads(d['evidence']); "
                "sys.exit(0 if e.get('nonce') == d['nonce'] else 'GPU evidence is not bound to the nonce')")


class FakeHttp:
    """A real HTTP server on 127.0.0.1 in a thread; `handler(path, query)` -> (status, headers, body)."""

    def __init__(self, handler: Callable[[str, dict], tuple[int, dict, bytes]]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                url = urlsplit(self.path)
                outer.requests.append(self.path)
                status, headers, body = handler(url.path, {k: v[0] for k, v in parse_qs(url.query).items()})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def __enter__(self) -> "FakeHttp":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class AttestationEndpoint:
    """The server's attestation endpoint, as a booted TDX VM answers it: a fresh runtime quote over the nonce the
    validator sends, and GPU evidence (recorded shape, bound to the same nonce). `mode` makes it misbehave."""

    kit: QuoteKit
    mode: str = "good"  # good | stale_nonce | boot_measurements | http_500 | unbound_gpu_evidence
    recorded_nonce: str = "00" * 32
    # TEE chute deployments (`/service/chute-service-{id}/verify`): the report data each one's quote binds, which
    # the chute computed from the nonce of its claim (the validator sends none on this path).
    deployments: dict[str, str] = field(default_factory=dict)

    def __call__(self, path: str, query: dict) -> tuple[int, dict, bytes]:
        if self.mode == "http_500":
            return 500, {}, b"boom"
        nonce = query.get("nonce", "")
        if path.startswith("/service/chute-service-"):
            deployment = path.removeprefix("/service/chute-service-").removesuffix("/verify")
            if deployment not in self.deployments:
                return 404, {}, b"no such deployment"
            nonce = self.deployments[deployment]
        bound = self.recorded_nonce if self.mode == "stale_nonce" else nonce
        rtmrs = BOOT_RTMRS if self.mode == "boot_measurements" else RUNTIME_RTMRS
        quote = self.kit.quote(report_data=report_data_for(bound), mrtd=MRTD, rtmrs=rtmrs)
        evidence = {"nonce": nonce if self.mode != "unbound_gpu_evidence" else "ff" * 32,
                    "arch": "HOPPER", "evidence_list": [{"certificate": "...", "evidence": "..."}]}
        body = json.dumps({"tdx_quote": base64.b64encode(quote).decode(), "nvtrust_evidence": json.dumps(evidence)})
        return 200, {"content-type": "application/json"}, body.encode()


@dataclass
class ServersWorld:
    app: GantryApp
    clock: ManualClock
    kit: QuoteKit
    channel: grpc.aio.Channel
    http: httpx.AsyncClient
    endpoint: AttestationEndpoint
    fake: FakeHttp
    signers: dict[str, Signer] = field(default_factory=dict)

    def signer(self, seed: bytes) -> Signer:
        return Signer.from_ed25519_seed(seed, clock=lambda: self.clock.now().timestamp())

    def boot_quote(self, nonce: str, rtmrs=BOOT_RTMRS, mrtd=MRTD) -> str:
        return base64.b64encode(self.kit.quote(report_data=report_data_for(nonce), mrtd=mrtd, rtmrs=rtmrs)).decode()

    async def load_policy(self) -> None:
        await admin_pb2_grpc.AdminServiceStub(self.channel).PutMeasurementPolicy(POLICY, metadata=ADMIN_METADATA)

    async def register_hotkey(self, hotkey: str, uid: int = 1) -> None:
        await admin_pb2_grpc.AdminServiceStub(self.channel).UpsertMetagraphNodes(admin_pb2.UpsertMetagraphNodesRequest(
            nodes=[admin_pb2.MetagraphNode(hotkey=hotkey, netuid=64, node_id=uid)]), metadata=ADMIN_METADATA)


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    for detail in rpc_status.from_call(err).details:
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo in the status")


@asynccontextmanager
async def servers_world(database_url: str, redis_url: str, tmp: Path, *, launch=None, trusted_proxies=(),
                        **attestation) -> AsyncIterator[ServersWorld]:
    """`trusted_proxies` (e.g. ("127.0.0.1/32",)) lets the tests forward `x-client-cert` as a TLS terminator does,
    for `client_cert_binding=True`."""
    kit = QuoteKit.create(ISSUED)
    (tmp / "collateral").mkdir()
    (tmp / "collateral" / "test_collateral.json").write_text(kit.collateral_json())
    (tmp / "root.pem").write_text(kit.root_ca_pem)
    endpoint = AttestationEndpoint(kit)
    with FakeHttp(endpoint) as fake:
        cfg = AttestationSettings(
            collateral_dir=tmp / "collateral", root_ca_file=tmp / "root.pem", luks_passphrase=LUKS_ROOT_KEY,
            attestation_url=f"http://{{host}}:{fake.port}/server/attest?nonce={{nonce}}&server_id={{server_id}}",
            instance_evidence_url=f"http://{{host}}:{fake.port}/service/chute-service-{{deployment_id}}/verify",
            **({"attestation_allow_private_hosts": True, "gpu_evidence_verifier": GPU_VERIFIER} | attestation))
        clock = ManualClock(NOW)
        extra = {"launch": launch} if launch is not None else {}
        if trusted_proxies:
            extra["trusted_proxies"] = tuple(trusted_proxies)
        app = GantryApp(make_settings(database_url, redis_url, tmp / "data", attestation=cfg, **extra), clock=clock)
        await app.start()
        try:
            async with grpc.aio.insecure_channel(app.grpc_addr) as channel, \
                    httpx.AsyncClient(base_url=f"http://{app.http_addr}", timeout=30) as http:
                yield ServersWorld(app=app, clock=clock, kit=kit, channel=channel, http=http, endpoint=endpoint,
                                   fake=fake)
        finally:
            await app.stop(0)
