"""Report-data binding: the quote must carry our one-time nonce, and (with mTLS) the client certificate's key.

    report_data = nonce (32 bytes, the 64 hex we issued) || sha256(client cert SubjectPublicKeyInfo DER) or zeros

The nonce makes a quote single-use and fresh; the certificate half ties it to the TLS connection that presented
it, so a quote captured from one VM cannot be replayed through another connection.
"""
from __future__ import annotations

import hashlib
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .failures import CLIENT_CERT_MISMATCH, CLIENT_CERT_MISSING, NONCE_MISMATCH, AttestationFailure
from .quote import TdxQuote


def cert_key_hash(cert_header: str) -> bytes:
    """sha256 of the SubjectPublicKeyInfo of a PEM certificate (URL-encoded, as a TLS terminator forwards it)."""
    try:
        cert = x509.load_pem_x509_certificate(unquote(cert_header).encode())
    except ValueError:
        raise AttestationFailure(CLIENT_CERT_MISSING, "the forwarded client certificate is not a PEM certificate") \
            from None
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def check_report_data(quote: TdxQuote, nonce: str, *, client_cert: str | None = None,
                      require_cert: bool = False) -> None:
    """Raise NONCE_MISMATCH / CLIENT_CERT_* unless the quote is bound to this nonce (and certificate)."""
    expected = bytes.fromhex(nonce)
    carried = quote.report_data[:32]
    if carried != expected:
        raise AttestationFailure(
            NONCE_MISMATCH,
            f"Nonce mismatch: the quote's report_data[0:32] is {carried.hex()}, expected the nonce {nonce}; request "
            f"a fresh nonce and generate the quote with report_data = nonce || binding",
            expected_nonce=nonce, report_data=carried.hex())
    if not require_cert:
        return
    if not client_cert:
        raise AttestationFailure(CLIENT_CERT_MISSING, "a client certificate is required (mTLS) and none was forwarded")
    want = cert_key_hash(client_cert)
    if quote.report_data[32:64] != want:
        raise AttestationFailure(
            CLIENT_CERT_MISMATCH,
            f"report_data[32:64] is {quote.report_data[32:64].hex()}, expected sha256 of the client certificate's "
            f"public key {want.hex()}; quote with the key of the certificate this connection uses",
            expected_cert_hash=want.hex())
