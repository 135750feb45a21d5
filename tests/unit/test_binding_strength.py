"""Report-data binding refusals, exactly as a VM operator reads them (issue 17): reason, words and the values
recorded with the failed attempt, for a wrong nonce, a missing, unreadable or different client certificate."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from urllib.parse import quote as urlquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gantry_server.domain.attestation import AttestationFailure, cert_key_hash, check_report_data, parse_quote
from gantry_server.domain.attestation import failures as f

from ..tdx_builder import QuoteKit

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
NONCE = "ab" * 32


def client_cert() -> tuple[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vm")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(START).not_valid_after(START + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return urlquote(cert.public_bytes(serialization.Encoding.PEM).decode()), hashlib.sha256(spki).digest()


@pytest.fixture(scope="module")
def kit() -> QuoteKit:
    return QuoteKit.create(START)


def refusal(*args, **kwargs) -> AttestationFailure:
    with pytest.raises(AttestationFailure) as err:
        check_report_data(*args, **kwargs)
    return err.value


def test_a_forwarded_value_that_is_not_pem_is_client_cert_missing_in_words():
    for value in ("not a certificate", "-----BEGIN CERTIFICATE-----%0AAAAA%0A-----END CERTIFICATE-----", "%ZZ", ""):
        with pytest.raises(AttestationFailure) as err:
            cert_key_hash(value)
        assert (err.value.reason, err.value.message) == (
            f.CLIENT_CERT_MISSING, "the forwarded client certificate is not a PEM certificate")


def test_the_binding_is_the_sha256_of_the_public_key_of_the_url_encoded_pem():
    header, key_hash = client_cert()
    assert cert_key_hash(header) == key_hash
    assert cert_key_hash(header.replace("%0A", "%0a")) == key_hash  # percent-escapes in either case


def test_a_quote_over_another_nonce_names_both(kit):
    quote = parse_quote(kit.quote(report_data=bytes.fromhex("cd" * 32)))
    failure = refusal(quote, NONCE)
    assert failure.reason == f.NONCE_MISMATCH
    assert failure.message == (f"Nonce mismatch: the quote's report_data[0:32] is {'cd' * 32}, expected the nonce "
                               f"{NONCE}; request a fresh nonce and generate the quote with report_data = nonce || "
                               f"binding")
    assert failure.metadata == {"expected_nonce": NONCE, "report_data": "cd" * 32}


def test_without_a_certificate_when_one_is_required(kit):
    quote = parse_quote(kit.quote(report_data=bytes.fromhex(NONCE)))
    check_report_data(quote, NONCE)  # not required: the nonce is enough
    for missing in (None, ""):
        failure = refusal(quote, NONCE, client_cert=missing, require_cert=True)
        assert (failure.reason, failure.message) == (
            f.CLIENT_CERT_MISSING, "a client certificate is required (mTLS) and none was forwarded")


def test_a_quote_bound_to_another_certificate_names_the_expected_hash(kit):
    header, key_hash = client_cert()
    _, other_hash = client_cert()
    quote = parse_quote(kit.quote(report_data=bytes.fromhex(NONCE) + other_hash))
    failure = refusal(quote, NONCE, client_cert=header, require_cert=True)
    assert failure.reason == f.CLIENT_CERT_MISMATCH
    assert failure.message == (f"report_data[32:64] is {other_hash.hex()}, expected sha256 of the client "
                               f"certificate's public key {key_hash.hex()}; quote with the key of the certificate "
                               f"this connection uses")
    assert failure.metadata == {"expected_cert_hash": key_hash.hex()}
    bound = parse_quote(kit.quote(report_data=bytes.fromhex(NONCE) + key_hash))
    check_report_data(bound, NONCE, client_cert=header, require_cert=True)
