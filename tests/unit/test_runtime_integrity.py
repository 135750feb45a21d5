"""Runtime-integrity checks of a launch claim (§5.7.1 g, j, o, p): commitments, TLS binding, session keys.

The miner side is tests/rint_builder.py; every refusal must name what failed.
"""
from __future__ import annotations

import base64
import doctest

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from gantry_server.domain.launch import runtime_integrity as rint
from gantry_server.domain.launch.runtime_integrity import (Commitment, RintRejected, derive_session_key,
                                                           parse_commitment, session_scheme, verify_commitment,
                                                           verify_tls_binding, version_at_least)

from .. import rint_builder
from ..rint_builder import Runtime, self_signed_cert, utf8string

NONCE = "0123456789abcdef0123456789abcdef"
OTHER_NONCE = "fedcba9876543210fedcba9876543210"

V3 = Runtime.create(3)
V4 = Runtime.create(4)
V4_COMMITMENT = V4.commitment(NONCE)


def flip(hex_str: str, index: int, mask: int = 0x01) -> str:
    raw = bytearray.fromhex(hex_str)
    raw[index] ^= mask
    return raw.hex()


def rejected(match: str):
    return pytest.raises(RintRejected, match=match)


@pytest.mark.parametrize("module", [rint, rint_builder])
def test_module_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted and not result.failed


# -- commitments: round trips ----------------------------------------------------------------------------------
def test_v3_commitment_round_trip():
    commitment = parse_commitment(V3.commitment(NONCE))
    assert (commitment.version, commitment.pubkey, commitment.lib) == (3, V3.commitment_pubkey, V3.lib)
    assert len(commitment.nonce) == 16 and len(commitment.signature) == 64
    verify_commitment(commitment, NONCE)


def test_v4_commitment_round_trip():
    commitment = parse_commitment(V4_COMMITMENT)
    assert (commitment.version, commitment.pubkey, commitment.lib) == (4, V4.commitment_pubkey, V4.lib)
    assert commitment.hex == V4_COMMITMENT
    verify_commitment(commitment, NONCE)


def test_uppercase_hex_is_the_same_commitment():
    assert parse_commitment(V4_COMMITMENT.upper()) == parse_commitment(V4_COMMITMENT)


def test_v4_does_not_compare_its_nonce_with_the_launch_nonce():
    # Freshness for v4 comes from the TLS-cert signature, per the doc.
    verify_commitment(parse_commitment(V4.commitment(NONCE, nonce16=bytes(16))), OTHER_NONCE)


# -- commitments: structure ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, match", [
    ("zz" + V4_COMMITMENT[2:], r"rint_commitment must be hex"),
    (V4_COMMITMENT[:100] + " " + V4_COMMITMENT[101:], r"rint_commitment must be hex"),  # fromhex would allow it
    ("0x" + V4_COMMITMENT[2:], r"rint_commitment must be hex"),
    (V4_COMMITMENT[:-1], r"even number of hex characters, got 291"),
    ("", r"two-byte version \(0303 or 0404\), got 0 bytes"),
    ("04", r"two-byte version \(0303 or 0404\), got 1 bytes"),
    ("0505" + V4_COMMITMENT[4:], r"version must be 03 or 04, got 05"),
    ("0304" + V4_COMMITMENT[4:], r"version bytes must match \(0303\), got 0304"),
    ("0403" + V4_COMMITMENT[4:], r"version bytes must match \(0404\), got 0403"),
    ("0404" + "00" * 98, r"must be 146 bytes \(292 hex\) for v4, got 100 bytes \(200 hex\)"),
    (V4_COMMITMENT + "00", r"must be 146 bytes \(292 hex\) for v4, got 147 bytes"),
    ("0303" + V4_COMMITMENT[4:], r"must be 162 bytes \(324 hex\) for v3, got 146 bytes"),
])
def test_malformed_commitments_are_refused(text, match):
    with rejected(match):
        parse_commitment(text)


def test_a_commitment_must_be_a_string():
    with rejected("rint_commitment must be a hex string, got bytes"):
        parse_commitment(bytes.fromhex(V4_COMMITMENT))


# -- commitments: signatures and nonces ------------------------------------------------------------------------
def test_v3_with_another_launch_nonce_is_refused():
    with rejected(r"v3 nonce16 must be sha256\('rint-nonce-v3' \|\| lib_fp \|\| launch nonce\)\[:16\]"):
        verify_commitment(parse_commitment(V3.commitment(NONCE)), OTHER_NONCE)


def test_v3_flipped_signature_byte_is_refused():
    with rejected(r"v3 signature must be a secp256k1 ECDSA signature .* does not verify"):
        verify_commitment(parse_commitment(flip(V3.commitment(NONCE), 161)), NONCE)


def test_v3_flipped_lib_fp_fails_the_nonce_derivation():
    with rejected("v3 nonce16"):
        verify_commitment(parse_commitment(flip(V3.commitment(NONCE), 2 + 64 + 16)), NONCE)


def test_v3_signed_by_another_key_is_refused():
    other = Runtime.create(3)
    theirs = parse_commitment(other.commitment(NONCE))
    forged = Commitment(3, V3.commitment_pubkey, theirs.nonce, theirs.lib, theirs.signature)
    with rejected("v3 signature .* does not verify"):
        verify_commitment(forged, NONCE)


def test_v3_public_key_off_the_curve_is_refused():
    good = parse_commitment(V3.commitment(NONCE))
    off = Commitment(3, bytes(63) + b"\x07", good.nonce, good.lib, good.signature)
    with rejected(r"v3 public key must be a point on secp256k1"):
        verify_commitment(off, NONCE)


def test_v4_flipped_signature_byte_is_refused():
    with rejected(r"v4 signature must be an Ed25519 signature .* does not verify"):
        verify_commitment(parse_commitment(flip(V4_COMMITMENT, 145)), NONCE)


def test_v4_signed_by_another_key_is_refused():
    theirs = parse_commitment(Runtime.create(4).commitment(NONCE))
    forged = Commitment(4, V4.commitment_pubkey, theirs.nonce, theirs.lib, theirs.signature)
    with rejected("v4 signature .* does not verify"):
        verify_commitment(forged, NONCE)


@pytest.mark.parametrize("nonce", ["", "ab" * 15, "zz" * 16, "ab" * 16 + " ", None])
def test_launch_nonce_must_be_32_hex(nonce):
    with rejected("launch nonce must be 32 hex characters"):
        verify_commitment(parse_commitment(V4_COMMITMENT), nonce)


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, 145), mask=st.integers(1, 255))
def test_any_single_byte_flip_of_a_v4_commitment_is_refused(index, mask):
    with pytest.raises(RintRejected):
        verify_commitment(parse_commitment(flip(V4_COMMITMENT, index, mask)), NONCE)


# -- TLS binding (row j) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["hex", "base64", "base64url"])
@pytest.mark.parametrize("with_extension", [False, True])
def test_tls_binding_round_trip(encoding, with_extension):
    cert = self_signed_cert(nonce=NONCE if with_extension else None)
    pinned = verify_tls_binding(parse_commitment(V4_COMMITMENT), cert, V4.tls_cert_sig(cert, NONCE,
                                                                                         encoding=encoding), NONCE)
    assert x509.load_pem_x509_certificate(pinned.encode()) == x509.load_pem_x509_certificate(cert.encode())


def test_pinned_pem_is_normalised():
    cert = "\n" + self_signed_cert().replace("\n", "\r\n") + "trailing words\n"
    pinned = verify_tls_binding(parse_commitment(V4_COMMITMENT), cert, V4.tls_cert_sig(cert, NONCE), NONCE)
    assert pinned.startswith("-----BEGIN CERTIFICATE-----\n") and pinned.endswith("-----END CERTIFICATE-----\n")
    assert "\r" not in pinned and "trailing" not in pinned


def test_tls_binding_requires_a_v4_commitment():
    cert = self_signed_cert()
    with rejected(r"rint_commitment must be v4 \(prefix 04\) for chutes >= 0.5.5, got v3"):
        verify_tls_binding(parse_commitment(V3.commitment(NONCE)), cert, V4.tls_cert_sig(cert, NONCE), NONCE)


def test_cert_extension_with_another_nonce_is_refused():
    cert = self_signed_cert(nonce=OTHER_NONCE)
    with rejected(rf"extension 1.3.6.1.4.1.59888.1 must carry the launch nonce {NONCE}, got '{OTHER_NONCE}'"):
        verify_tls_binding(parse_commitment(V4_COMMITMENT), cert, V4.tls_cert_sig(cert, NONCE), NONCE)


@pytest.mark.parametrize("value", [
    NONCE.encode(),  # the bare string, no DER wrapper
    b"\x13" + bytes([len(NONCE)]) + NONCE.encode(),  # PrintableString, not UTF8String
    utf8string(NONCE) + b"\x00",  # trailing bytes
    b"\x0c\x81\x20" + NONCE.encode(),  # long-form length where DER demands the short form
    b"\x0c\x02\xff\xfe",  # not UTF-8
])
def test_cert_extension_must_be_a_der_utf8string(value):
    cert = self_signed_cert(extension_value=value)
    with rejected("extension 1.3.6.1.4.1.59888.1 must be a DER UTF8String"):
        verify_tls_binding(parse_commitment(V4_COMMITMENT), cert, V4.tls_cert_sig(cert, NONCE), NONCE)


def test_signature_over_another_cert_is_refused():
    cert, other = self_signed_cert(), self_signed_cert()
    with rejected(r"tls_cert_sig must be an Ed25519 signature by the commitment's key over tls_cert \|\| launch "
                  r"nonce; it does not verify"):
        verify_tls_binding(parse_commitment(V4_COMMITMENT), cert, V4.tls_cert_sig(other, NONCE), NONCE)


def test_signature_for_another_launch_is_refused():
    cert = self_signed_cert()
    with rejected("tls_cert_sig must be an Ed25519 signature .* does not verify"):
        verify_tls_binding(parse_commitment(V4_COMMITMENT), cert, V4.tls_cert_sig(cert, OTHER_NONCE), NONCE)


def test_signature_by_another_key_is_refused():
    cert = self_signed_cert()
    with rejected("tls_cert_sig must be an Ed25519 signature .* does not verify"):
        verify_tls_binding(parse_commitment(V4_COMMITMENT), cert, Runtime.create(4).tls_cert_sig(cert, NONCE), NONCE)


def test_signature_covers_the_pem_as_sent():
    cert = self_signed_cert()
    sig = V4.tls_cert_sig(cert, NONCE)
    with rejected("tls_cert_sig .* does not verify"):
        verify_tls_binding(parse_commitment(V4_COMMITMENT), cert + "\n", sig, NONCE)


@pytest.mark.parametrize("sig, match", [
    ("", "tls_cert_sig must be a 64-byte Ed25519 signature .* got nothing"),
    ("ab" * 63, "tls_cert_sig must be a 64-byte Ed25519 signature as 128 hex or 86-88 base64 .* got 126"),
    ("ab" * 65, "got 130 characters"),
    (base64.b64encode(bytes(63)).decode(), "got 84 characters"),
    ("!" * 88, "got 88 characters"),
])
def test_malformed_signature_encodings_are_refused(sig, match):
    with rejected(match):
        verify_tls_binding(parse_commitment(V4_COMMITMENT), self_signed_cert(), sig, NONCE)


@pytest.mark.parametrize("pem, match", [
    ("", "tls_cert must be a PEM certificate, got nothing"),
    ("not a certificate", "tls_cert must be a PEM X.509 certificate; it does not parse"),
    (None, "tls_cert must be a PEM certificate, got nothing"),
])
def test_malformed_certs_are_refused(pem, match):
    with rejected(match):
        verify_tls_binding(parse_commitment(V4_COMMITMENT), pem, "ab" * 64, NONCE)


def test_a_chain_is_not_one_cert():
    pem = self_signed_cert() + self_signed_cert()
    with rejected("tls_cert must hold exactly one certificate, got 2"):
        verify_tls_binding(parse_commitment(V4_COMMITMENT), pem, V4.tls_cert_sig(pem, NONCE), NONCE)


# -- session keys (rows o, p) ----------------------------------------------------------------------------------
@pytest.mark.parametrize("runtime, prefixed, validator_hex_len", [
    (V4, False, 64), (V3, False, 128), (V3, True, 128)])
def test_session_keys_agree(runtime, prefixed, validator_hex_len):
    key, validator_pub = derive_session_key(runtime.version, runtime.session_pubkey(prefixed=prefixed), NONCE)
    assert len(key) == 32 and len(validator_pub) == validator_hex_len
    assert runtime.session_key(validator_pub, NONCE) == key
    assert runtime.session_key(validator_pub, OTHER_NONCE) != key


def test_each_derivation_uses_a_fresh_validator_key():
    first = derive_session_key(4, V4.session_pubkey(), NONCE)
    second = derive_session_key(4, V4.session_pubkey(), NONCE)
    assert first[1] != second[1] and first[0] != second[0]


@pytest.mark.parametrize("version, pubkey, match", [
    (4, "ab" * 31, r"rint_pubkey must be a raw 32-byte X25519 key \(64 hex\) for v4, got 31 bytes"),
    (4, V3.session_pubkey(), "rint_pubkey must be a raw 32-byte X25519 key .* got 64 bytes"),
    (4, "00" * 32, "rint_pubkey must be an X25519 key of full order"),
    (4, "zz" * 32, "rint_pubkey must be hex"),
    (4, None, "rint_pubkey must be a hex string, got NoneType"),
    (3, V4.session_pubkey(), r"rint_pubkey must be a secp256k1 point as 64 bytes .* for v3, got 32 bytes"),
    (3, "02" + V3.session_pubkey()[:64], r"secp256k1 point as 64 bytes .* got 33 bytes"),
    (3, "02" + V3.session_pubkey(), "rint_pubkey of 65 bytes must start with 04 \\(uncompressed\\), got 02"),
    (3, "00" * 63 + "07", "rint_pubkey must be a point on secp256k1"),
    (3, V3.session_pubkey()[:-1], "rint_pubkey must be an even number of hex characters"),
    (5, V4.session_pubkey(), r"session key scheme must be 4 \(X25519\) or 1-3 \(secp256k1\), got 5"),
])
def test_malformed_miner_keys_are_refused(version, pubkey, match):
    with rejected(match):
        derive_session_key(version, pubkey, NONCE)


def test_session_scheme_follows_the_sdk_version():
    assert [session_scheme(v) for v in ("0.5.5", "0.6", "0.5.4", "0.5.1", None)] == [4, 4, 3, 3, 3]


# -- version gates ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("have, minimum, expected", [
    ("0.5.5", "0.5.5", True),
    ("0.5.10", "0.5.5", True),
    ("0.5.4", "0.5.5", False),
    ("1.0", "0.5.5", True),
    ("0.5", "0.5.0", True),
    ("0.5.0.1", "0.5", True),
    ("0.4.99", "0.5", False),
    (None, "0.4.9", False),
    ("", "0.4.9", False),
    ("0.5.5rc1", "0.4.9", False),
    ("v0.5.5", "0.4.9", False),
    ("0..5", "0.4.9", False),
    (" 0.5.5", "0.4.9", False),
    ("\u0660.5.5", "0.4.9", False),  # an Arabic-Indic zero is a digit to str.isdigit, not a version number
])
def test_version_at_least(have, minimum, expected):
    assert version_at_least(have, minimum) is expected


def test_an_unparsable_minimum_is_a_programming_error():
    with pytest.raises(ValueError, match="minimum version must be dotted numbers"):
        version_at_least("0.5.5", "0.5.x")
