"""Test-only miner side of runtime integrity: what a chute's runtime sends when it claims a launch config.

A `Runtime` holds the keys a runtime would: the commitment signing key (secp256k1 for v3, Ed25519 for v4), a
separate session key (secp256k1 for v3, X25519 for v4) and its library fingerprint or proof. It builds the
commitment for a launch nonce, a self-signed TLS certificate (optionally carrying the nonce extension), the
`tls_cert_sig` over it, and derives the session key from the validator's ephemeral public key. Written from the
validator doc (§5.7.1) and the encodings stated in gantry_server/domain/launch/runtime_integrity.py, not from
that module's code: a disagreement between the two is a test failure, not a shared bug.

    >>> runtime = Runtime.create(4)
    >>> len(runtime.commitment("ab" * 16)) == 292
    True
"""
from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

NONCE_OID = "1.3.6.1.4.1.59888.1"


def utf8string(text: str) -> bytes:
    """DER UTF8String (tag 0x0C) of `text`."""
    body = text.encode()
    if len(body) < 0x80:
        length = bytes([len(body)])
    else:
        raw = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return b"\x0c" + length + body


def secp256k1_xy(key: ec.EllipticCurvePublicKey) -> bytes:
    """64-byte X || Y (the uncompressed point without its 04 prefix)."""
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]


def self_signed_cert(*, nonce: str | None = None, extension_value: bytes | None = None,
                     common_name: str = "chute-runtime") -> str:
    """A self-signed P-256 certificate as PEM. `nonce` adds the nonce extension as a UTF8String;
    `extension_value` puts arbitrary DER there instead (to test malformed values)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1)))
    if nonce is not None or extension_value is not None:
        value = extension_value if extension_value is not None else utf8string(nonce)
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(NONCE_OID), value), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Runtime:
    """One chute runtime's keys. `version` is the commitment format (3 or 4) and the session scheme."""

    version: int
    signing_key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey
    session_private: ec.EllipticCurvePrivateKey | X25519PrivateKey
    lib: bytes  # lib_fp (16 bytes) for v3, lib_proof (32 bytes) for v4

    @classmethod
    def create(cls, version: int) -> Runtime:
        if version == 3:
            return cls(3, ec.generate_private_key(ec.SECP256K1()), ec.generate_private_key(ec.SECP256K1()),
                       os.urandom(16))
        if version == 4:
            return cls(4, Ed25519PrivateKey.generate(), X25519PrivateKey.generate(), os.urandom(32))
        raise ValueError(f"version must be 3 or 4, got {version}")

    @property
    def commitment_pubkey(self) -> bytes:
        if self.version == 3:
            return secp256k1_xy(self.signing_key.public_key())
        return self.signing_key.public_key().public_bytes_raw()

    def commitment(self, launch_nonce: str, *, nonce16: bytes | None = None) -> str:
        """The commitment hex. v3 derives nonce16 from the launch nonce; v4 leaves it free (random unless given)."""
        ver = bytes([self.version, self.version])
        pub = self.commitment_pubkey
        if nonce16 is None:
            if self.version == 3:
                nonce16 = hashlib.sha256(b"rint-nonce-v3" + self.lib + launch_nonce.encode()).digest()[:16]
            else:
                nonce16 = os.urandom(16)
        body = ver + pub + nonce16 + self.lib
        if self.version == 3:
            r, s = decode_dss_signature(self.signing_key.sign(body, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            signature = self.signing_key.sign(body)
        return (body + signature).hex()

    def tls_cert_sig(self, cert_pem: str, launch_nonce: str, *, encoding: str = "hex") -> str:
        """Ed25519 over cert_pem || launch nonce (v4 only), as "hex", "base64" or "base64url"."""
        signature = self.signing_key.sign(cert_pem.encode() + launch_nonce.encode())
        if encoding == "hex":
            return signature.hex()
        if encoding == "base64":
            return base64.b64encode(signature).decode()
        if encoding == "base64url":
            return base64.urlsafe_b64encode(signature).decode().rstrip("=")
        raise ValueError(f"unknown encoding {encoding!r}")

    def session_pubkey(self, *, prefixed: bool = False) -> str:
        """`rint_pubkey`: raw X25519 (v4), or secp256k1 X || Y, with the 04 prefix when `prefixed` (v3)."""
        if self.version == 4:
            return self.session_private.public_key().public_bytes_raw().hex()
        xy = secp256k1_xy(self.session_private.public_key())
        return ((b"\x04" if prefixed else b"") + xy).hex()

    def session_key(self, validator_pubkey_hex: str, launch_nonce: str) -> bytes:
        """The session key the runtime derives from the validator's ephemeral public key."""
        validator_pub = bytes.fromhex(validator_pubkey_hex)
        nonce = launch_nonce.encode()
        if self.version == 4:
            mine = self.session_private.public_key().public_bytes_raw()
            shared = self.session_private.exchange(X25519PublicKey.from_public_bytes(validator_pub))
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=mine + validator_pub + nonce,
                        info=b"runint-session-v4").derive(shared)
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), b"\x04" + validator_pub)
        shared = self.session_private.exchange(ec.ECDH(), peer)
        mine = secp256k1_xy(self.session_private.public_key())
        return hashlib.sha256(b"runint-session-v1" + shared + mine + validator_pub + nonce).digest()
