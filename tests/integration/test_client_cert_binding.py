"""Boot attestation with client-certificate binding on (GANTRY_TDX_CLIENT_CERT_BINDING, issue 17).

The TLS terminator (a trusted proxy, 127.0.0.1 here) forwards the VM's certificate as URL-encoded PEM in
`x-client-cert`; the quote must carry sha256 of that certificate's public key in report_data[32:64]. A forwarded
value that is not a PEM certificate is the VM's problem to fix: 401 CLIENT_CERT_MISSING saying so, and the
failed attempt is recorded like any other; never INTERNAL. Hostile values never reach INTERNAL either.
"""
from __future__ import annotations

import hashlib
from datetime import timedelta
from urllib.parse import quote as urlquote
from urllib.parse import unquote

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from gantry.servers.v1 import servers_pb2, servers_pb2_grpc
from gantry_server.store.models import boot_attestations

from ..tdx_builder import report_data_for
from .servers_harness import BOOT_RTMRS, MRTD, NOW, error_info, servers_world

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"


def client_cert() -> tuple[str, bytes]:
    """(URL-encoded PEM as a TLS terminator forwards it, sha256 of its SubjectPublicKeyInfo)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vm-1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return urlquote(cert.public_bytes(serialization.Encoding.PEM).decode()), hashlib.sha256(spki).digest()


CERT, CERT_HASH = client_cert()


@pytest.fixture(scope="module")
async def world(database_url, redis_url, tmp_path_factory):
    async with servers_world(database_url, redis_url, tmp_path_factory.mktemp("cert-binding"),
                             trusted_proxies=("127.0.0.1/32",), client_cert_binding=True) as w:
        yield w


@pytest.fixture
async def w(world, clean_db, redis):
    await world.load_policy()
    return world


def stub(w) -> servers_pb2_grpc.ServerServiceStub:
    return servers_pb2_grpc.ServerServiceStub(w.channel)


def bound_quote(w, nonce: str, key_hash: bytes = CERT_HASH) -> str:
    import base64

    raw = w.kit.quote(report_data=report_data_for(nonce, key_hash), mrtd=MRTD, rtmrs=BOOT_RTMRS)
    return base64.b64encode(raw).decode()


async def grpc_boot(w, cert: str | None, key_hash: bytes = CERT_HASH):
    nonce = (await stub(w).GetNonce(servers_pb2.GetNonceRequest())).nonce
    metadata = [("x-chutes-nonce", nonce)] + ([("x-client-cert", cert)] if cert is not None else [])
    return await stub(w).VerifyBootAttestation(servers_pb2.VerifyBootAttestationRequest(
        quote=bound_quote(w, nonce, key_hash), miner_hotkey=ALICE, vm_name="vm-1"), metadata=metadata)


async def rest_boot(w, cert: bytes | str | None, key_hash: bytes = CERT_HASH):
    nonce = (await w.http.get("/servers/nonce")).json()["nonce"]
    headers = {"X-Chutes-Nonce": nonce} | ({"X-Client-Cert": cert} if cert is not None else {})
    return await w.http.post("/servers/boot/attestation", headers=headers, json={
        "quote": bound_quote(w, nonce, key_hash), "miner_hotkey": ALICE, "vm_name": "vm-1"})


async def recorded(w) -> list[tuple[bool, str | None, str | None]]:
    """(verified, error_reason, verification_error) of every boot attempt, sorted (one clock: one created_at)."""
    async with w.app.rt.engine.connect() as conn:
        rows = (await conn.execute(select(boot_attestations.c.verified, boot_attestations.c.error_reason,
                                          boot_attestations.c.verification_error))).all()
    return sorted((tuple(r) for r in rows), key=repr)


async def test_a_quote_bound_to_the_forwarded_certificate_boots(w):
    answer = await grpc_boot(w, CERT)
    assert len(answer.boot_token) == 64
    rest = await rest_boot(w, CERT)
    assert rest.status_code == 200, rest.text
    assert [r[:2] for r in await recorded(w)] == [(True, None), (True, None)]


@pytest.mark.parametrize("cert", ["not a certificate", "-----BEGIN CERTIFICATE-----%0AAAAA%0A-----END CERTIFICATE-----",
                                  urlquote("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n")])
async def test_a_forwarded_value_that_is_not_a_pem_certificate_is_401_and_recorded(w, cert):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_boot(w, cert)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == "the forwarded client certificate is not a PEM certificate"
    assert error_info(err.value).reason == "CLIENT_CERT_MISSING"
    rest = await rest_boot(w, cert)
    assert rest.status_code == 401
    assert rest.json()["detail"] == "the forwarded client certificate is not a PEM certificate"
    assert await recorded(w) == [(False, "CLIENT_CERT_MISSING",
                                  "the forwarded client certificate is not a PEM certificate")] * 2


async def test_no_certificate_is_401_and_another_certificate_is_403(w):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await grpc_boot(w, None)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and error_info(err.value).reason == "CLIENT_CERT_MISSING"
    assert "a client certificate is required (mTLS)" in err.value.details()
    other, _ = client_cert()
    rest = await rest_boot(w, other)
    assert rest.status_code == 403 and "expected sha256 of the client certificate's public key" in rest.json()["detail"]
    assert [r[:2] for r in await recorded(w)] == [(False, "CLIENT_CERT_MISMATCH"), (False, "CLIENT_CERT_MISSING")]


def carries_our_key(value: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(unquote(value).encode())
    except ValueError:
        return False
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest() == CERT_HASH


_PEMISH = st.builds(lambda body: f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n",
                    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", max_size=300))
HOSTILE_CERTS = st.one_of(
    st.sampled_from(["", "%", "%ZZ", "%00", "%FF%FE", "..", "\x00", CERT[:200], CERT + "garbage", CERT.upper(),
                     CERT.replace("%0A", ""), urlquote(urlquote(CERT))]),
    st.text(max_size=300), _PEMISH, _PEMISH.map(urlquote),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(cert=HOSTILE_CERTS)
async def test_hostile_forwarded_certificates_never_reach_internal(world, cert):
    """Refused with CLIENT_CERT_MISSING / _MISMATCH, or accepted only when the value is still a PEM of the real
    certificate (the PEM reader skips text around it and tolerates missing line breaks)."""
    await world.load_policy()
    printable = "".join(c for c in cert if " " <= c <= "~")
    try:
        await grpc_boot(world, printable)
        assert carries_our_key(printable), f"booted with {printable!r}"
    except grpc.aio.AioRpcError as err:
        assert err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), err.details()
        assert error_info(err).reason in ("CLIENT_CERT_MISSING", "CLIENT_CERT_MISMATCH"), err.details()
    header = cert.encode("utf-8", "surrogatepass").translate(None, bytes(range(0x20)) + b"\x7f").strip(b" \t")
    rest = await rest_boot(world, header)
    if rest.status_code == 200:
        assert carries_our_key(header.decode("latin-1")), f"booted with {header!r}"
        return
    assert rest.status_code in (401, 403), rest.text
    assert rest.json()["detail"].startswith(("the forwarded client certificate is not a PEM certificate",
                                             "a client certificate is required", "report_data[32:64] is "))
