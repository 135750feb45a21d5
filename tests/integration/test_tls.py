"""TLS on both faces, mTLS, and the client certificate of the TDX report-data binding (issue 13, findings 4 and 7).

A throwaway CA signs the server's certificate (127.0.0.1) and a VM's client certificate. Three live servers:
TLS only (every client connects with the CA file), mTLS with the report-data binding on (the certificate comes
from the connection), and plaintext with the binding on (an `X-Client-Cert` header from an untrusted peer is
not believed).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import socket
import ssl
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote as urlquote

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select

from gantry.admin.v1 import admin_pb2_grpc
from gantry.servers.v1 import servers_pb2, servers_pb2_grpc
from gantry_client import connect
from gantry_server import admin_cli
from gantry_server.app import GantryApp
from gantry_server.clock import ManualClock
from gantry_server.config import AttestationSettings, ConfigError, Settings
from gantry_server.store.models import boot_attestations
from gantry_server.tls import refuse_public_plaintext

from ..conftest import ADMIN_METADATA, make_settings
from ..tdx_builder import QuoteKit, report_data_for
from .servers_harness import BOOT_RTMRS, ISSUED, LUKS_ROOT_KEY, MRTD, NOW, POLICY, error_info

GO_MODULE = Path(__file__).resolve().parents[2] / "clients" / "go"
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"


# -- a throwaway PKI -------------------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False, usage=None,
          san: list | None = None) -> x509.Certificate:
    now = datetime.now(timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False),
                            critical=True)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _spki_hash(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client: x509.Certificate  # the VM's certificate (signed by the CA)
    stranger: x509.Certificate  # a certificate an attacker names in a header (self-signed, never presented)

    def ssl(self, *, client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if client_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    import ipaddress

    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("gantry test CA", ca_key, _name("gantry test CA"), ca_key, ca=True)
    server_key, client_key, stranger_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    server = _cert("gantry", server_key, ca.subject, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                   san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client = _cert("tdx-vm-1", client_key, ca.subject, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _cert("someone-else", stranger_key, _name("someone-else"), stranger_key)
    files = {"ca.pem": _pem(ca), "server.pem": _pem(server), "server.key": _key_pem(server_key),
             "client.pem": _pem(client), "client.key": _key_pem(client_key)}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return Pki(ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server.key",
               client_cert=d / "client.pem", client_key=d / "client.key", client=client, stranger=stranger)


def _attestation(tmp: Path) -> tuple[QuoteKit, AttestationSettings]:
    """The servers harness's test TDX root, with the client-certificate binding required."""
    kit = QuoteKit.create(ISSUED)
    (tmp / "collateral").mkdir()
    (tmp / "collateral" / "test_collateral.json").write_text(kit.collateral_json())
    (tmp / "root.pem").write_text(kit.root_ca_pem)
    return kit, AttestationSettings(collateral_dir=tmp / "collateral", root_ca_file=tmp / "root.pem",
                                    luks_passphrase=LUKS_ROOT_KEY, client_cert_binding=True)


async def _started(settings: Settings, **kw) -> GantryApp:
    app = GantryApp(settings, **kw)
    await app.start()
    return app


@pytest.fixture(scope="module")
async def tls_app(database_url, redis_url, tmp_path_factory, pki):
    app = await _started(make_settings(database_url, redis_url, tmp_path_factory.mktemp("tls"),
                                       tls_cert_file=pki.server_cert, tls_key_file=pki.server_key))
    yield app
    await app.stop(0)


@dataclass
class BindingWorld:
    app: GantryApp
    kit: QuoteKit


@pytest.fixture(scope="module")
async def mtls(database_url, redis_url, tmp_path_factory, pki):
    tmp = tmp_path_factory.mktemp("mtls")
    kit, cfg = _attestation(tmp)
    app = await _started(make_settings(database_url, redis_url, tmp / "data", attestation=cfg,
                                       tls_cert_file=pki.server_cert, tls_key_file=pki.server_key,
                                       tls_client_ca_file=pki.ca), clock=ManualClock(NOW))
    yield BindingWorld(app, kit)
    await app.stop(0)


@pytest.fixture(scope="module")
async def plaintext_binding(database_url, redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plain-binding")
    kit, cfg = _attestation(tmp)
    app = await _started(make_settings(database_url, redis_url, tmp / "data", attestation=cfg,
                                       trusted_proxies=("10.0.0.0/8",)), clock=ManualClock(NOW))
    yield BindingWorld(app, kit)
    await app.stop(0)


async def _serving(channel) -> bool:
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


# -- TLS on both faces -----------------------------------------------------------------------------------------
async def test_both_faces_serve_over_tls_verified_by_the_test_ca(tls_app, pki):
    async with connect(tls_app.grpc_addr, ca_file=pki.ca) as channel:
        assert await _serving(channel)
    async with httpx.AsyncClient(base_url=f"https://{tls_app.http_addr}", verify=pki.ssl(), timeout=10) as http:
        answer = await http.get("/health")
    assert answer.status_code == 200 and answer.url.scheme == "https"


async def test_a_plaintext_client_gets_no_answer_from_a_tls_server(tls_app):
    async with grpc.aio.insecure_channel(tls_app.grpc_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _serving(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    async with httpx.AsyncClient(base_url=f"http://{tls_app.http_addr}", timeout=10) as http:
        with pytest.raises(httpx.TransportError):
            await http.get("/health")


async def test_gantry_admin_connects_with_the_ca_file(tls_app, pki, clean_db, monkeypatch, capsys):
    monkeypatch.setenv("GANTRY_ADMIN_TOKEN", "test-admin-token")
    upsert = ["metagraph", "upsert", "--hotkey", ALICE, "--uid", "3", "--addr", tls_app.grpc_addr, "--json"]
    assert await admin_cli.amain(upsert + ["--ca-file", str(pki.ca)]) == admin_cli.EXIT_OK
    assert ALICE in capsys.readouterr().out
    monkeypatch.setenv("GANTRY_CA_FILE", str(pki.ca))
    assert await admin_cli.amain(upsert) == admin_cli.EXIT_OK
    monkeypatch.delenv("GANTRY_CA_FILE")
    assert await admin_cli.amain(upsert + ["--timeout", "3"]) == admin_cli.EXIT_RPC  # plaintext to a TLS port
    assert "UNAVAILABLE" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("go") is None and not os.environ.get("CI"),
                    reason="no go binary on this machine (CI always runs this test)")
async def test_the_go_client_dials_with_the_ca_file_and_a_client_certificate(tls_app, mtls, pki):
    env = dict(os.environ, GANTRY_TEST_TLS_GRPC_ADDR=tls_app.grpc_addr, GANTRY_TEST_CA_FILE=str(pki.ca),
               GANTRY_TEST_MTLS_GRPC_ADDR=mtls.app.grpc_addr, GANTRY_TEST_CERT_FILE=str(pki.client_cert),
               GANTRY_TEST_KEY_FILE=str(pki.client_key))
    env.pop("GANTRY_TEST_GRPC_ADDR", None)
    proc = await asyncio.create_subprocess_exec(
        "go", "test", "-count=1", "-v", "-run", "TestDialWith|TestWithCAFile", "./gantry/", cwd=GO_MODULE,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    text = out.decode()
    assert proc.returncode == 0, text
    for name in ("TestDialWithCAFile", "TestDialWithClientCert", "TestWithCAFileRefusesAMissingFile"):
        assert f"--- PASS: {name}" in text, text


async def test_the_remote_gateway_reaches_a_tls_upstream_with_the_ca_file(tls_app, pki, tmp_path):
    """`gantry gateway --upstream HOST:PORT --ca-file ca.pem`, the real command."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GANTRY_HTTP_ADDR=f"127.0.0.1:{port}", GANTRY_DATA_DIR=str(tmp_path))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gantry_server.cli", "gateway", "--upstream", tls_app.grpc_addr,
        "--ca-file", str(pki.ca), env=env, stderr=asyncio.subprocess.PIPE)
    try:
        line = b""
        while b"serving REST on" not in line:  # log lines first
            line = await asyncio.wait_for(proc.stderr.readline(), timeout=60)
            assert line, "gantry gateway exited"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            ready = await http.get("/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
    finally:
        proc.terminate()
        await proc.wait()


async def test_gantry_admin_presents_a_client_certificate_to_an_mtls_server(mtls, pki, clean_db, monkeypatch):
    monkeypatch.setenv("GANTRY_ADMIN_TOKEN", "test-admin-token")
    upsert = ["metagraph", "upsert", "--hotkey", ALICE, "--uid", "4", "--addr", mtls.app.grpc_addr, "--json",
              "--ca-file", str(pki.ca), "--timeout", "5"]
    assert await admin_cli.amain(upsert) == admin_cli.EXIT_RPC  # no certificate: the handshake fails
    assert await admin_cli.amain(upsert + ["--cert-file", str(pki.client_cert), "--key-file",
                                           str(pki.client_key)]) == admin_cli.EXIT_OK


# -- mTLS --------------------------------------------------------------------------------------------------------
async def test_mtls_refuses_a_client_without_a_certificate_on_both_faces(mtls, pki):
    app = mtls.app
    async with connect(app.grpc_addr, ca_file=pki.ca) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _serving(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    async with httpx.AsyncClient(base_url=f"https://{app.http_addr}", verify=pki.ssl(), timeout=10) as http:
        with pytest.raises(httpx.TransportError):
            await http.get("/health")

    async with connect(app.grpc_addr, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key) as ch:
        assert await _serving(ch)
    async with httpx.AsyncClient(base_url=f"https://{app.http_addr}", verify=pki.ssl(client_cert=True),
                                 timeout=10) as http:
        assert (await http.get("/health")).status_code == 200


async def _boot_rows(engine) -> list[tuple[bool, str | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(boot_attestations.c.verified, boot_attestations.c.error_reason))
    return [tuple(r) for r in rows]


def _quote(kit: QuoteKit, nonce: str, cert: x509.Certificate) -> str:
    report = report_data_for(nonce, _spki_hash(cert))
    return base64.b64encode(kit.quote(report_data=report, mrtd=MRTD, rtmrs=BOOT_RTMRS)).decode()


async def test_the_report_data_binding_takes_the_certificate_of_the_mtls_connection(mtls, pki, clean_db):
    """The VM quotes over its own certificate's key: accepted on both faces. A quote bound to another key, with
    that key's certificate in an X-Client-Cert header, is refused: the header does not replace the connection's."""
    async with connect(mtls.app.grpc_addr, ca_file=pki.ca, cert_file=pki.client_cert,
                       key_file=pki.client_key) as channel:
        await admin_pb2_grpc.AdminServiceStub(channel).PutMeasurementPolicy(POLICY, metadata=ADMIN_METADATA)
        servers = servers_pb2_grpc.ServerServiceStub(channel)

        async def boot(cert: x509.Certificate, vm: str, header: x509.Certificate | None = None):
            nonce = (await servers.GetNonce(servers_pb2.GetNonceRequest())).nonce
            md = (("x-chutes-nonce", nonce),)
            if header is not None:
                md += (("x-client-cert", urlquote(_pem(header).decode())),)
            return await servers.VerifyBootAttestation(servers_pb2.VerifyBootAttestationRequest(
                quote=_quote(mtls.kit, nonce, cert), miner_hotkey=ALICE, vm_name=vm), metadata=md)

        assert (await boot(pki.client, "vm-1")).key == LUKS_ROOT_KEY
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await boot(pki.stranger, "vm-2", header=pki.stranger)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(err.value).reason == "CLIENT_CERT_MISMATCH"

    async with httpx.AsyncClient(base_url=f"https://{mtls.app.http_addr}", verify=pki.ssl(client_cert=True),
                                 timeout=30) as http:
        nonce = (await http.get("/servers/nonce")).json()["nonce"]
        answer = await http.post("/servers/boot/attestation", headers={"X-Chutes-Nonce": nonce}, json={
            "quote": _quote(mtls.kit, nonce, pki.client), "miner_hotkey": ALICE, "vm_name": "vm-rest"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["key"] == LUKS_ROOT_KEY
        nonce = (await http.get("/servers/nonce")).json()["nonce"]
        forged = await http.post("/servers/boot/attestation", json={
            "quote": _quote(mtls.kit, nonce, pki.stranger), "miner_hotkey": ALICE, "vm_name": "vm-rest-2"},
            headers={"X-Chutes-Nonce": nonce, "X-Client-Cert": urlquote(_pem(pki.stranger).decode())})
        assert forged.status_code == 403 and "client certificate" in forged.json()["detail"]
    assert sorted(await _boot_rows(mtls.app.rt.engine), key=str) == sorted(
        [(True, None), (True, None), (False, "CLIENT_CERT_MISMATCH"), (False, "CLIENT_CERT_MISMATCH")], key=str)


async def test_a_forged_x_client_cert_from_an_untrusted_peer_is_ignored(plaintext_binding, pki, clean_db):
    """127.0.0.1 is not in GANTRY_TRUSTED_PROXIES: a header naming the certificate the quote binds does not make
    the quote acceptable; the attempt is refused on both faces and no VM gets the root-disk key."""
    w = plaintext_binding
    async with grpc.aio.insecure_channel(w.app.grpc_addr) as channel:
        await admin_pb2_grpc.AdminServiceStub(channel).PutMeasurementPolicy(POLICY, metadata=ADMIN_METADATA)
        servers = servers_pb2_grpc.ServerServiceStub(channel)
        nonce = (await servers.GetNonce(servers_pb2.GetNonceRequest())).nonce
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await servers.VerifyBootAttestation(servers_pb2.VerifyBootAttestationRequest(
                quote=_quote(w.kit, nonce, pki.stranger), miner_hotkey=ALICE, vm_name="vm-1"),
                metadata=(("x-chutes-nonce", nonce), ("x-client-cert", urlquote(_pem(pki.stranger).decode()))))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(err.value).reason == "CLIENT_CERT_MISSING"
    assert "client certificate is required" in err.value.details()

    async with httpx.AsyncClient(base_url=f"http://{w.app.http_addr}", timeout=30) as http:
        nonce = (await http.get("/servers/nonce")).json()["nonce"]
        forged = await http.post("/servers/boot/attestation", json={
            "quote": _quote(w.kit, nonce, pki.stranger), "miner_hotkey": ALICE, "vm_name": "vm-2"},
            headers={"X-Chutes-Nonce": nonce, "X-Client-Cert": urlquote(_pem(pki.stranger).decode())})
    assert forged.status_code == 401 and "client certificate is required" in forged.json()["detail"]
    assert "key" not in forged.json()
    assert await _boot_rows(w.app.rt.engine) == [(False, "CLIENT_CERT_MISSING")] * 2


# -- plaintext beyond loopback -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,addr", [("grpc_addr", "0.0.0.0:0"), ("http_addr", "[::]:0"),
                                       ("grpc_addr", "192.0.2.10:50051")])
async def test_a_public_listener_without_tls_is_refused_at_start(database_url, redis_url, tmp_path, name, addr):
    app = GantryApp(make_settings(database_url, redis_url, tmp_path).with_(**{name: addr}))
    with pytest.raises(ConfigError) as err:
        await app.start()
    env = "GANTRY_GRPC_ADDR" if name == "grpc_addr" else "GANTRY_HTTP_ADDR"
    assert f"refusing to listen without TLS on {env}={addr}" in str(err.value)
    assert app.server is None and app.http is None


def test_gantry_serve_refuses_a_public_plaintext_listener_with_one_line_and_exit_2(tmp_path, capfd, process_logging):
    from gantry_server.cli import main

    env = {"GANTRY_GRPC_ADDR": "0.0.0.0:50051", "GANTRY_DATA_DIR": str(tmp_path), "GANTRY_BROKER_PROVIDERS": ""}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k in ("GANTRY_TLS_CERT_FILE", "GANTRY_TLS_KEY_FILE", "GANTRY_ALLOW_PLAINTEXT"):
            mp.delenv(k, raising=False)
        assert main(["serve"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["gantry: refusing to listen without TLS on GANTRY_GRPC_ADDR=0.0.0.0:50051: set "
                   "GANTRY_TLS_CERT_FILE and GANTRY_TLS_KEY_FILE, or GANTRY_ALLOW_PLAINTEXT=true behind a "
                   "TLS-terminating proxy"]


def test_plaintext_beyond_loopback_is_allowed_behind_a_tls_proxy_or_with_tls(pki):
    public = {"GANTRY_GRPC_ADDR": "0.0.0.0:50051", "GANTRY_HTTP_ADDR": "10.0.0.5:8080"}
    refuse_public_plaintext(Settings(allow_plaintext=True), public)
    refuse_public_plaintext(Settings(tls_cert_file=pki.server_cert, tls_key_file=pki.server_key), public)
    refuse_public_plaintext(Settings(), {"GANTRY_GRPC_ADDR": "127.0.0.1:1", "GANTRY_HTTP_ADDR": "[::1]:2"})
    for addr in ("0.0.0.0:1", "127.example.com:1", "[::]:1"):
        with pytest.raises(ConfigError):
            refuse_public_plaintext(Settings(), {"GANTRY_GRPC_ADDR": addr})
