"""Hotkey signatures: the strings callers sign, and the check of one signature.

Three signed strings (docs/auth.md has the test vectors):

    v1 purpose      "{hotkey}:{nonce}:{purpose}"                         nonce = unix seconds, reusable 600 s
    v1 body         "{hotkey}:{nonce}:{sha256_hex(body)}"
    v2 (REST)       "v2:{hotkey}:{METHOD}:{path[?query]}:{nonce}:{sha256_hex(body) or ''}"
    grpc-v1         "grpc-v1:{hotkey}:{/package.Service/Method}:{nonce}:{sha256_hex(deterministic request)}"

v2 and grpc-v1 nonces are "{unix_ts}.{random}" and single-use (the caller of `verify_request` consumes them,
keeping the record `single_use_seconds` long: until the nonce's own timestamp leaves the window, plus skew, so a
client clock ahead of the server's cannot outlive its record and replay). A signature is 64 bytes as 128 hex
characters; sr25519 (the network's key type) is tried first, then ed25519. Like Substrate's `Keypair.verify`,
an sr25519 signature over "<Bytes>{message}</Bytes>" also counts.

Pure functions: no I/O, no clock of their own (callers pass `now`).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .ss58 import InvalidAddress, decode_ss58

WINDOW_SECONDS = 600
# Clock difference allowed between replicas (each checks the window with its own clock; Redis keeps one record).
REPLICA_SKEW_SECONDS = 60
_V1_NONCE = re.compile(r"^[0-9]{1,12}$")
_V2_NONCE = re.compile(r"^([0-9]{1,12})\.([A-Za-z0-9_-]{1,128})$")
_HEX_SIG = re.compile(r"^[0-9a-fA-F]{128}$")


class SignatureError(ValueError):
    """Why a signed request was refused; the message says what was expected."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def v1_message(hotkey: str, nonce: str, purpose_or_body_hash: str) -> str:
    return f"{hotkey}:{nonce}:{purpose_or_body_hash}"


def v2_message(hotkey: str, method: str, path: str, nonce: str, body_sha256: str | None) -> str:
    return f"v2:{hotkey}:{method.upper()}:{path}:{nonce}:{body_sha256 or ''}"


def grpc_message(hotkey: str, rpc: str, nonce: str, request_sha256: str) -> str:
    """The canonical string of a gRPC-native call (`rpc` is the full name, "/package.Service/Method")."""
    return f"grpc-v1:{hotkey}:{rpc}:{nonce}:{request_sha256}"


def request_sha256(request) -> str:
    """SHA-256 of the deterministic serialisation of a request message (what grpc-v1 signs)."""
    return sha256_hex(request.SerializeToString(deterministic=True))


def check_v1_nonce(nonce: str, now: float) -> int:
    """The v1 nonce as an int, if it is decimal unix seconds within the window; else SignatureError."""
    if not _V1_NONCE.match(nonce):
        raise SignatureError(f"v1 nonce must be decimal unix seconds, got {nonce[:40]!r}")
    _check_window(int(nonce), now)
    return int(nonce)


def check_v2_nonce(nonce: str, now: float) -> int:
    m = _V2_NONCE.match(nonce)
    if not m:
        raise SignatureError("v2 nonce must be '{ts}.{random}' (random: 1-128 of [A-Za-z0-9_-])")
    ts = int(m.group(1))
    _check_window(ts, now)
    return ts


def single_use_seconds(nonce: str, now: float) -> int:
    """How long the single-use record of an accepted v2/grpc-v1 nonce must live: until no replica (clocks within
    REPLICA_SKEW_SECONDS) would still accept its timestamp, i.e. nonce time + window + skew - now.

    >>> single_use_seconds("1000.abc", now=401.0)   # client clock 599 s ahead: 1259 s, not 600
    1259
    >>> single_use_seconds("1000.abc", now=1599.0)  # 599 s behind: 61 s
    61
    """
    m = _V2_NONCE.match(nonce)
    ts = int(m.group(1)) if m else int(now)
    return max(1, int(ts + WINDOW_SECONDS + REPLICA_SKEW_SECONDS - now + 0.999))


def _check_window(ts: int, now: float) -> None:
    skew = ts - now
    if abs(skew) >= WINDOW_SECONDS:
        where = "in the future" if skew > 0 else "old"
        raise SignatureError(f"nonce timestamp is {abs(int(skew))} s {where}; it must be within "
                             f"{WINDOW_SECONDS} s of the server time ({int(now)})")


@lru_cache(maxsize=4096)
def _public_key(hotkey: str) -> bytes:
    return decode_ss58(hotkey)


def _sr25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        return _sr25519().verify(signature, message, public_key)
    except ValueError:  # not a schnorrkel signature, or the key is not a Ristretto point (e.g. an ed25519 key)
        return False


@lru_cache(maxsize=1)
def _sr25519():
    import sr25519  # py-sr25519-bindings (a dependency of bittensor-wallet)

    return sr25519


@lru_cache(maxsize=4096)
def _ed25519(public_key: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_key)


def parse_signature(signature_hex: str) -> bytes:
    if not _HEX_SIG.match(signature_hex):
        raise SignatureError(f"signature must be 128 hex characters (64 bytes, no 0x), got {len(signature_hex)} "
                             "characters" if not signature_hex.startswith("0x") else
                             "signature must be plain hex without a 0x prefix (128 characters)")
    return bytes.fromhex(signature_hex)


def verify(hotkey: str, message: str, signature_hex: str) -> str:
    """Check a signature by `hotkey` over `message`; returns the key type ("sr25519" or "ed25519").

    Raises SignatureError saying what was expected.
    """
    try:
        public_key = _public_key(hotkey)
    except InvalidAddress as exc:
        raise SignatureError(f"hotkey {hotkey[:60]!r} is not an SS58 address: {exc}") from None
    signature = parse_signature(signature_hex)
    data = message.encode()
    if _sr25519_verify(public_key, data, signature):
        return "sr25519"
    try:
        _ed25519(public_key).verify(signature, data)
        return "ed25519"
    except (InvalidSignature, ValueError):
        pass
    if _sr25519_verify(public_key, b"<Bytes>" + data + b"</Bytes>", signature):
        return "sr25519"
    raise SignatureError(f"signature does not verify: expected an sr25519 or ed25519 signature by {hotkey} "
                         f"over {message!r}")


@dataclass(frozen=True)
class SignedRequest:
    """The hotkey headers of one call plus what the server knows about the call."""

    hotkey: str
    signature: str
    nonce: str
    version: str  # "1" or "2"
    rpc: str  # "/package.Service/Method"
    request_sha256: str  # of the deterministic serialisation (gRPC-native callers)
    http_method: str | None = None  # set by the REST gateway
    http_path: str | None = None
    body_sha256: str | None = None


@dataclass(frozen=True)
class Verified:
    hotkey: str
    key_type: str
    version: str  # "1", "2" or "grpc-v1"
    nonce: str
    single_use: bool  # the nonce must now be consumed (v2, grpc-v1)


def expected_message(req: SignedRequest, purpose: str | None, now: float) -> tuple[str, str]:
    """(signed string, scheme) for a request, after the nonce checks of its version."""
    if req.version in ("", "1"):
        check_v1_nonce(req.nonce, now)
        if purpose:
            return v1_message(req.hotkey, req.nonce, purpose), "1"
        if req.http_method is not None:
            if req.http_method.upper() not in ("POST", "PUT", "PATCH"):
                raise SignatureError("v1 without a purpose signs the body hash, and this request has no body; "
                                     "sign with v2 (x-chutes-sig-version: 2)")
            return v1_message(req.hotkey, req.nonce, req.body_sha256 or sha256_hex(b"")), "1"
        return v1_message(req.hotkey, req.nonce, req.request_sha256), "1"
    if req.version == "2":
        check_v2_nonce(req.nonce, now)
        if req.http_method is not None and req.http_path is not None:
            return v2_message(req.hotkey, req.http_method, req.http_path, req.nonce, req.body_sha256), "2"
        return grpc_message(req.hotkey, req.rpc, req.nonce, req.request_sha256), "grpc-v1"
    raise SignatureError(f"x-chutes-sig-version must be 1 or 2, got {req.version[:10]!r}")


def verify_request(req: SignedRequest, purpose: str | None, now: float) -> Verified:
    """Nonce window, then the signed string, then the signature (the v2 nonce is consumed by the caller)."""
    message, scheme = expected_message(req, purpose, now)
    try:
        key_type = verify(req.hotkey, message, req.signature)
    except SignatureError as exc:
        what = f"purpose {purpose!r}" if purpose and scheme == "1" else {"1": "the body hash", "2": "method, path, "
               "nonce and body hash", "grpc-v1": "the gRPC canonical string"}[scheme]
        raise SignatureError(f"{exc} (scheme {scheme}, signing {what})") from None
    return Verified(req.hotkey, key_type, scheme, req.nonce, single_use=scheme != "1")
