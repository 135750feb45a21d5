"""`Signer`: one hotkey, and the strings Gantry asks it to sign (docs/auth.md, "Hotkey signatures").

    v1 purpose  "{hotkey}:{nonce}:{purpose}"                                   nonce: unix seconds
    v1 body     "{hotkey}:{nonce}:{sha256_hex(body)}"
    v2 (REST)   "v2:{hotkey}:{METHOD}:{path[?query]}:{nonce}:{sha256_hex(body) or ''}"    nonce: "{ts}.{random}"
    grpc-v1     "grpc-v1:{hotkey}:{/package.Service/Method}:{nonce}:{sha256_hex(deterministic request)}"

>>> signer = Signer.from_ed25519_seed("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
>>> signer.hotkey
'5Gw54ghuAHodDGAS91DUxqvKa6PeT9bhDdns3ztBupY8pSyn'
>>> signer.v1_purpose_message("miner", "1767225600")
'5Gw54ghuAHodDGAS91DUxqvKa6PeT9bhDdns3ztBupY8pSyn:1767225600:miner'
>>> headers = signer.v1_purpose_headers("miner")  # x-chutes-hotkey, -nonce, -signature for a REST call

sr25519 (the network's key type) uses py-sr25519-bindings and ed25519 uses `cryptography`, the libraries the
server verifies with. sr25519 signatures are randomised; ed25519 ones are deterministic.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from typing import Callable

from ._ss58 import encode_ss58

HOTKEY = "x-chutes-hotkey"
SIGNATURE = "x-chutes-signature"
NONCE = "x-chutes-nonce"
SIG_VERSION = "x-chutes-sig-version"


def _bytes32(value: bytes | str, what: str) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError(f"{what} must be 32 bytes (64 hex characters), got {len(raw)} bytes")
    return raw


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _request_bytes(request) -> bytes:
    """What grpc-v1 hashes: the deterministic serialisation of a message (or bytes already serialised so)."""
    if isinstance(request, (bytes, bytearray, memoryview)):
        return bytes(request)
    return request.SerializeToString(deterministic=True)


class Signer:
    """Signs Gantry requests as one hotkey. Build one with a `from_*` constructor.

    `clock` returns unix seconds; it makes the nonces (v1: "{ts}", v2 and grpc-v1: "{ts}.{random}").
    """

    def __init__(self, public_key: bytes, sign: Callable[[bytes], bytes], key_type: str, *, ss58_format: int = 42,
                 clock: Callable[[], float] = time.time) -> None:
        self.public_key = bytes(public_key)
        self.key_type = key_type
        self.hotkey = encode_ss58(self.public_key, ss58_format)
        self._sign = sign
        self._clock = clock

    def __repr__(self) -> str:  # never the secret
        return f"Signer({self.key_type}, {self.hotkey})"

    # -- constructors ------------------------------------------------------------------------------------------
    @classmethod
    def from_sr25519_keypair(cls, keypair: tuple[bytes, bytes], **kw) -> "Signer":
        """From a (32-byte public key, 64-byte secret key) pair, as `sr25519.pair_from_seed` returns it."""
        import sr25519

        public, secret = bytes(keypair[0]), bytes(keypair[1])
        if len(public) != 32 or len(secret) != 64:
            raise ValueError("an sr25519 keypair is (32-byte public key, 64-byte secret key)")
        return cls(public, lambda message: bytes(sr25519.sign((public, secret), message)), "sr25519", **kw)

    @classmethod
    def from_sr25519_seed(cls, seed: bytes | str, **kw) -> "Signer":
        """From a 32-byte sr25519 mini secret (the "secret seed" `subkey inspect` or a wallet shows), hex or bytes."""
        import sr25519

        return cls.from_sr25519_keypair(sr25519.pair_from_seed(_bytes32(seed, "an sr25519 seed")), **kw)

    @classmethod
    def from_ed25519_seed(cls, seed: bytes | str, **kw) -> "Signer":
        """From a 32-byte ed25519 seed (RFC 8032 private key), hex or bytes."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        private = Ed25519PrivateKey.from_private_bytes(_bytes32(seed, "an ed25519 seed"))
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(public, private.sign, "ed25519", **kw)

    # -- nonces and raw signatures -------------------------------------------------------------------------
    def v1_nonce(self) -> str:
        return str(int(self._clock()))

    def v2_nonce(self) -> str:
        """'{unix_ts}.{random}': random is 16 of [A-Za-z0-9_-]; the server accepts each one once."""
        return f"{int(self._clock())}.{secrets.token_urlsafe(12)}"

    def sign(self, message: str | bytes) -> str:
        """The signature over `message` as 128 hex characters (no 0x), as x-chutes-signature carries it."""
        return self._sign(message.encode() if isinstance(message, str) else bytes(message)).hex()

    # -- the signed strings ----------------------------------------------------------------------------------
    def v1_purpose_message(self, purpose: str, nonce: str) -> str:
        return f"{self.hotkey}:{nonce}:{purpose}"

    def v1_body_message(self, body: bytes, nonce: str) -> str:
        return f"{self.hotkey}:{nonce}:{_sha256_hex(body)}"

    def v2_message(self, method: str, path: str, body: bytes | None, nonce: str) -> str:
        """`path` as sent, with "?query" when there is one. As the reference (and Gantry's gateway) does, only
        POST/PUT/PATCH bodies are hashed, the empty one included; other methods sign an empty hash ('')."""
        body_hash = _sha256_hex(body or b"") if method.upper() in {"POST", "PUT", "PATCH"} else ""
        return f"v2:{self.hotkey}:{method.upper()}:{path}:{nonce}:{body_hash}"

    def grpc_message(self, rpc: str, request, nonce: str) -> str:
        """`rpc` is the full method name "/package.Service/Method"; `request` a message (or its deterministic
        serialisation)."""
        return f"grpc-v1:{self.hotkey}:{rpc}:{nonce}:{_sha256_hex(_request_bytes(request))}"

    # -- headers / metadata ----------------------------------------------------------------------------------
    def _headers(self, message: str, nonce: str, version: str | None) -> dict[str, str]:
        headers = {HOTKEY: self.hotkey, NONCE: nonce, SIGNATURE: self.sign(message)}
        if version:
            headers[SIG_VERSION] = version
        return headers

    def v1_purpose_headers(self, purpose: str, *, nonce: str | None = None) -> dict[str, str]:
        nonce = nonce or self.v1_nonce()
        return self._headers(self.v1_purpose_message(purpose, nonce), nonce, None)

    def v1_body_headers(self, body: bytes, *, nonce: str | None = None) -> dict[str, str]:
        nonce = nonce or self.v1_nonce()
        return {**self._headers(self.v1_body_message(body, nonce), nonce, None), **_json_body(body)}

    def v2_headers(self, method: str, path: str, body: bytes | None = None, *, nonce: str | None = None
                   ) -> dict[str, str]:
        """Headers of a REST call signed v2 (single-use nonce: sign every request anew)."""
        nonce = nonce or self.v2_nonce()
        return {**self._headers(self.v2_message(method, path, body, nonce), nonce, "2"), **_json_body(body)}

    def grpc_metadata(self, rpc: str, request, *, nonce: str | None = None) -> tuple[tuple[str, str], ...]:
        """Metadata of a native gRPC call signed grpc-v1 (x-chutes-sig-version: 2, single-use nonce)."""
        nonce = nonce or self.v2_nonce()
        return tuple(self._headers(self.grpc_message(rpc, request, nonce), nonce, "2").items())


def _json_body(body: bytes | None) -> dict[str, str]:
    """A signed body is JSON, and Gantry's REST gateway refuses a body not declared so (415)."""
    return {"Content-Type": "application/json"} if body else {}
