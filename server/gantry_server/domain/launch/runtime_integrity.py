"""Runtime-integrity ("rint") checks of a launch-config claim (validator doc §5.7.1 rows g, j, o, p).

A chute's runtime commits to its key and its native library in `rint_commitment`; from chutes 0.5.5 it also
signs its TLS certificate together with the launch nonce (the freshness the v4 commitment itself lacks), and it
sends a session public key from which both sides derive `rint_session_key`. Pure functions, no I/O: every
refusal is a `RintRejected` whose message says what was expected; the caller records it as the launch config's
failure and picks the status (403 for rows g and j, 400 for o and p).

    commitment = parse_commitment(args.rint_commitment)                  # g (chutes >= 0.5.0)
    verify_commitment(commitment, launch_nonce)
    if version_at_least(chute.chutes_version, V4_SINCE):                  # j
        instance.cacert = verify_tls_binding(commitment, args.tls_cert, args.tls_cert_sig, launch_nonce)
    key, validator_pubkey = derive_session_key(                           # p
        session_scheme(chute.chutes_version), args.rint_pubkey, launch_nonce)

Byte encodings the doc leaves open, chosen here and shared by the miner side in tests/rint_builder.py:

- The launch nonce (the 32-hex string issued with the launch config) enters every hash and signed message as
  the ASCII bytes of that string, never hex-decoded: the v3 nonce derivation, the TLS binding and the session
  salt. That is the same string the certificate extension carries as a UTF8String.
- "ver" in a signed message is the two-byte version header, so the signed message is the commitment without its
  trailing 64-byte signature.
- The v3 signature is r || s (32 bytes each, big-endian) of ECDSA over secp256k1 whose digest is
  sha256(ver || pub || nonce16 || lib_fp), hashed once; high-s signatures are accepted.
- `tls_cert_sig` is the 64-byte Ed25519 signature as hex (128 characters) or base64 (standard or URL-safe
  alphabet, padding optional); the decoded length tells the two apart. It signs the UTF-8 bytes of `tls_cert`
  exactly as sent, followed by the nonce; the PEM must hold exactly one certificate.
- `rint_pubkey`: for v4 the raw 32-byte X25519 key (64 hex); for v3 a secp256k1 point as 64 bytes X || Y
  (128 hex) or 65 bytes 04 || X || Y (130 hex). In the v3 session hash both public keys enter as 64-byte
  X || Y, `shared` is the 32-byte X coordinate of the ECDH point, and the returned validator key is 64-byte X || Y
  hex. For v4 the returned validator key is its raw 32 bytes as hex.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# chutes SDK versions from which each check applies (§5.7.1).
RINT_NONCE_SINCE = "0.4.9"  # g: launch nonce and args.rint_nonce present
COMMITMENT_SINCE = "0.5.0"  # g: rint_commitment present and valid
RINT_PUBKEY_SINCE = "0.5.1"  # o: rint_pubkey and rint_nonce present
V4_SINCE = "0.5.5"  # j: v4 commitment with TLS binding; p: X25519 session key

NONCE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.59888.1")
V3_NONCE_LABEL = b"rint-nonce-v3"
V4_SESSION_INFO = b"runint-session-v4"
V1_SESSION_LABEL = b"runint-session-v1"

SIGNATURE_LEN = 64
NONCE16_LEN = 16
# version -> (public key bytes, library field bytes); every commitment is ver ver || pub || nonce16 || lib || sig.
LAYOUT = {3: (64, 16), 4: (32, 32)}
LIB_FIELD = {3: "lib_fp", 4: "lib_proof"}
PUBKEY_KIND = {3: "secp256k1 X||Y", 4: "Ed25519"}

_HEX = re.compile(r"[0-9a-fA-F]*")
_LAUNCH_NONCE = re.compile(r"[0-9a-fA-F]{32}")
_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)*")


class RintRejected(Exception):
    """A runtime-integrity check failed; the message says which and what was expected."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Commitment:
    """A structurally valid commitment; `lib` is lib_fp (16 bytes) in v3 and lib_proof (32 bytes) in v4."""

    version: int
    pubkey: bytes
    nonce: bytes
    lib: bytes
    signature: bytes

    @property
    def signed(self) -> bytes:
        """The bytes the signature covers: ver ver || pub || nonce16 || lib."""
        return bytes([self.version, self.version]) + self.pubkey + self.nonce + self.lib

    @property
    def hex(self) -> str:
        return (self.signed + self.signature).hex()


def expected_length(version: int) -> int:
    pub_len, lib_len = LAYOUT[version]
    return 2 + pub_len + NONCE16_LEN + lib_len + SIGNATURE_LEN


def parse_commitment(hex_str: str) -> Commitment:
    """Split a v3 or v4 commitment into its fields; no signature is checked here.

    >>> parse_commitment("0404" + "00" * 144).version
    4
    >>> try:
    ...     parse_commitment("0404" + "00" * 49)
    ... except RintRejected as refused:
    ...     print(refused)
    rint_commitment must be 146 bytes (292 hex) for v4, got 51 bytes (102 hex)
    """
    raw = _hex_bytes(hex_str, "rint_commitment")
    if len(raw) < 2:
        raise RintRejected(f"rint_commitment must start with a two-byte version (0303 or 0404), got {len(raw)} bytes")
    version, repeat = raw[0], raw[1]
    if version not in LAYOUT:
        raise RintRejected(f"rint_commitment version must be 03 or 04, got {version:02x}")
    if repeat != version:
        raise RintRejected(f"rint_commitment version bytes must match ({version:02x}{version:02x}), "
                           f"got {version:02x}{repeat:02x}")
    want = expected_length(version)
    if len(raw) != want:
        raise RintRejected(f"rint_commitment must be {want} bytes ({2 * want} hex) for v{version}, "
                           f"got {len(raw)} bytes ({len(hex_str)} hex)")
    pub_len, lib_len = LAYOUT[version]
    at = 2
    fields = []
    for size in (pub_len, NONCE16_LEN, lib_len, SIGNATURE_LEN):
        fields.append(raw[at:at + size])
        at += size
    return Commitment(version, *fields)


def verify_commitment(commitment: Commitment, launch_nonce: str) -> None:
    """Check the commitment's signature and, for v3, that nonce16 derives from this launch.

    v3: nonce16 == sha256(b"rint-nonce-v3" || lib_fp || launch nonce ASCII)[:16], and an ECDSA secp256k1
    signature (r || s) with digest sha256(ver || pub || nonce16 || lib_fp). v4: an Ed25519 signature over
    ver || pub || nonce16 || lib_proof; nonce16 is deliberately not compared (freshness is `verify_tls_binding`'s).
    """
    nonce = _nonce_bytes(launch_nonce)
    if commitment.version == 3:
        expected = hashlib.sha256(V3_NONCE_LABEL + commitment.lib + nonce).digest()[:NONCE16_LEN]
        if not hmac.compare_digest(expected, commitment.nonce):
            raise RintRejected(f"rint_commitment v3 nonce16 must be sha256('rint-nonce-v3' || lib_fp || launch nonce)"
                               f"[:16] = {expected.hex()} for launch nonce {launch_nonce}, "
                               f"got {commitment.nonce.hex()}")
        key = _secp256k1_key(commitment.pubkey, "rint_commitment v3 public key")
        r = int.from_bytes(commitment.signature[:32], "big")
        s = int.from_bytes(commitment.signature[32:], "big")
        try:
            key.verify(encode_dss_signature(r, s), commitment.signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise RintRejected("rint_commitment v3 signature must be a secp256k1 ECDSA signature (r||s) by the "
                               "commitment's key over sha256(ver || pub || nonce16 || lib_fp); it does not verify") \
                from None
    elif commitment.version == 4:
        if not _ed25519_verifies(commitment.pubkey, commitment.signature, commitment.signed):
            raise RintRejected("rint_commitment v4 signature must be an Ed25519 signature by the commitment's key "
                               "over ver || pub || nonce16 || lib_proof; it does not verify")
    else:
        raise RintRejected(f"rint_commitment version must be 3 or 4, got {commitment.version}")


def verify_tls_binding(commitment: Commitment, tls_cert_pem: str, tls_cert_sig: str, launch_nonce: str) -> str:
    """Check that the v4 runtime signed this TLS certificate for this launch; return the PEM to pin as cacert.

    The signature (hex or base64) is Ed25519 by the commitment's key over the certificate's PEM text as sent,
    then the launch nonce. A certificate carrying extension 1.3.6.1.4.1.59888.1 must hold the nonce in it as a
    DER UTF8String. The returned PEM is the certificate re-encoded, so stray whitespace or text is not pinned.
    """
    if commitment.version != 4:
        raise RintRejected(f"rint_commitment must be v4 (prefix 04) for chutes >= {V4_SINCE}, "
                           f"got v{commitment.version}")
    nonce = _nonce_bytes(launch_nonce)
    if not isinstance(tls_cert_pem, str) or not tls_cert_pem.strip():
        raise RintRejected("tls_cert must be a PEM certificate, got nothing")
    if not isinstance(tls_cert_sig, str) or not tls_cert_sig.strip():
        raise RintRejected("tls_cert_sig must be a 64-byte Ed25519 signature (hex or base64), got nothing")
    signature = _signature_bytes(tls_cert_sig)
    try:
        certs = x509.load_pem_x509_certificates(tls_cert_pem.encode())
    except ValueError:
        raise RintRejected("tls_cert must be a PEM X.509 certificate; it does not parse") from None
    if len(certs) != 1:
        raise RintRejected(f"tls_cert must hold exactly one certificate, got {len(certs)}")
    if not _ed25519_verifies(commitment.pubkey, signature, tls_cert_pem.encode() + nonce):
        raise RintRejected("tls_cert_sig must be an Ed25519 signature by the commitment's key over "
                           "tls_cert || launch nonce; it does not verify")
    cert = certs[0]
    carried = _extension_nonce(cert)
    if carried is not None and carried != launch_nonce:
        raise RintRejected(f"tls_cert extension {NONCE_OID.dotted_string} must carry the launch nonce "
                           f"{launch_nonce}, got {carried!r}")
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def derive_session_key(commitment_version: int, miner_pubkey_hex: str, launch_nonce: str) -> tuple[bytes, str]:
    """Derive `rint_session_key` with a fresh validator key; return (key, validator public key hex).

    Version 4 (chutes >= 0.5.5): X25519, then HKDF-SHA256(ikm = shared, salt = miner_pub || validator_pub ||
    nonce, info = b"runint-session-v4"), 32 bytes. Versions 1-3 (older chutes): secp256k1 ECDH, then
    SHA256(b"runint-session-v1" || shared || miner_pub || validator_pub || nonce). The doc gates the scheme by SDK
    version, so pass `session_scheme(chutes_version)` rather than the version of whatever commitment arrived.
    """
    nonce = _nonce_bytes(launch_nonce)
    if commitment_version == 4:
        raw = _hex_bytes(miner_pubkey_hex, "rint_pubkey")
        if len(raw) != 32:
            raise RintRejected(f"rint_pubkey must be a raw 32-byte X25519 key (64 hex) for v4, "
                               f"got {len(raw)} bytes")
        validator = X25519PrivateKey.generate()
        validator_pub = validator.public_key().public_bytes_raw()
        try:
            shared = validator.exchange(X25519PublicKey.from_public_bytes(raw))
        except ValueError:
            raise RintRejected("rint_pubkey must be an X25519 key of full order; the shared secret is zero") from None
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=raw + validator_pub + nonce,
                   info=V4_SESSION_INFO).derive(shared)
        return key, validator_pub.hex()
    if commitment_version in (1, 2, 3):
        raw = _hex_bytes(miner_pubkey_hex, "rint_pubkey")
        if len(raw) == 65:
            if raw[0] != 0x04:
                raise RintRejected(f"rint_pubkey of 65 bytes must start with 04 (uncompressed), got {raw[0]:02x}")
            raw = raw[1:]
        elif len(raw) != 64:
            raise RintRejected(f"rint_pubkey must be a secp256k1 point as 64 bytes X||Y (128 hex) or 65 bytes "
                               f"04||X||Y (130 hex) for v{commitment_version}, got {len(raw)} bytes")
        miner = _secp256k1_key(raw, "rint_pubkey")
        validator = ec.generate_private_key(ec.SECP256K1())
        validator_pub = validator.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
        shared = validator.exchange(ec.ECDH(), miner)
        key = hashlib.sha256(V1_SESSION_LABEL + shared + raw + validator_pub + nonce).digest()
        return key, validator_pub.hex()
    raise RintRejected(f"session key scheme must be 4 (X25519) or 1-3 (secp256k1), got {commitment_version!r}")


def session_scheme(chutes_version: str | None) -> int:
    """The `derive_session_key` version for a chute: 4 from chutes 0.5.5 on, else 3."""
    return 4 if version_at_least(chutes_version, V4_SINCE) else 3


def version_at_least(chutes_version: str | None, minimum: str) -> bool:
    """Compare dotted numeric versions, missing parts counting as 0; None or unparsable is never at least.

    >>> version_at_least("0.5.10", "0.5.5"), version_at_least("0.5", "0.5.0"), version_at_least("0.5.5rc1", "0.5")
    (True, True, False)
    """
    want = _version_tuple(minimum)
    if want is None:
        raise ValueError(f"minimum version must be dotted numbers, got {minimum!r}")
    have = _version_tuple(chutes_version)
    if have is None:
        return False
    width = max(len(have), len(want))
    return have + (0,) * (width - len(have)) >= want + (0,) * (width - len(want))


def _version_tuple(value: str | None) -> tuple[int, ...] | None:
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        return None
    return tuple(int(part) for part in value.split("."))


def _hex_bytes(value: str, what: str) -> bytes:
    # bytes.fromhex would also accept spaces; a commitment or key with them is not one the miner signed.
    if not isinstance(value, str):
        raise RintRejected(f"{what} must be a hex string, got {type(value).__name__}")
    if not _HEX.fullmatch(value):
        raise RintRejected(f"{what} must be hex (0-9a-f only), got {value[:16]!r}...")
    if len(value) % 2:
        raise RintRejected(f"{what} must be an even number of hex characters, got {len(value)}")
    return bytes.fromhex(value)


def _nonce_bytes(launch_nonce: str) -> bytes:
    if not isinstance(launch_nonce, str) or not _LAUNCH_NONCE.fullmatch(launch_nonce):
        raise RintRejected(f"launch nonce must be 32 hex characters, got {launch_nonce!r}")
    return launch_nonce.encode("ascii")


def _signature_bytes(text: str) -> bytes:
    text = text.strip()
    if len(text) == 2 * SIGNATURE_LEN and _HEX.fullmatch(text):
        return bytes.fromhex(text)
    # A 128-hex string would decode as base64 too, but to 96 bytes: the two encodings cannot collide at 64.
    standard = text.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != SIGNATURE_LEN:
        raise RintRejected(f"tls_cert_sig must be a 64-byte Ed25519 signature as 128 hex or 86-88 base64 "
                           f"characters (standard or URL-safe), got {len(text)} characters")
    return raw


def _ed25519_verifies(pubkey: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pubkey).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _secp256k1_key(xy: bytes, what: str) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), b"\x04" + xy)
    except ValueError:
        raise RintRejected(f"{what} must be a point on secp256k1 (64 bytes X||Y); it is not") from None


def _extension_nonce(cert: x509.Certificate) -> str | None:
    """The UTF8String in the nonce extension, or None without one."""
    try:
        ext = cert.extensions.get_extension_for_oid(NONCE_OID)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or malformed extensions
        raise RintRejected(f"tls_cert extensions must parse: {exc}") from None
    der = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    text = _der_utf8string(der)
    if text is None:
        raise RintRejected(f"tls_cert extension {NONCE_OID.dotted_string} must be a DER UTF8String, "
                           f"got {der[:40].hex()}")
    return text


def _der_utf8string(der: bytes) -> str | None:
    if len(der) < 2 or der[0] != 0x0C:
        return None
    first = der[1]
    if first < 0x80:
        length, at = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(der) < 2 + count:
            return None
        length, at = int.from_bytes(der[2:2 + count], "big"), 2 + count
        if length < 0x80 or der[2] == 0:  # DER demands the shortest length form
            return None
    if len(der) != at + length:
        return None
    try:
        return der[at:].decode("utf-8")
    except UnicodeDecodeError:
        return None
