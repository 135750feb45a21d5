"""Secrets at rest: AES-256-GCM envelope encryption under a key-encryption key (KEK) from configuration.

Each secret gets its own random data key (DEK). The DEK encrypts the secret; the KEK wraps the DEK. The blob
says which KEK wrapped it, so rotation is: configure the new KEK as `GANTRY_KEK`, keep the old one in
`GANTRY_KEK_PREVIOUS`, and `rewrap` each blob (only the 32-byte DEK is re-encrypted).

Blob layout (bytes; store as bytea or base64):

    b"GSE1" | kid_len (1) | kid (ascii) | wrap_nonce (12) | wrapped DEK (32 + 16 tag) | nonce (12) | ciphertext+tag

The header up to the wrapped DEK is authenticated data of both encryptions, and callers may bind a blob to its
row with `context` (e.g. b"luks:vm-1"), so a blob copied to another row does not decrypt.
Key ids are the first 8 hex of SHA-256(KEK). Nothing here logs, and errors never include key or plaintext bytes.

    >>> ring = Keyring.from_keys([b"k" * 32])
    >>> ring.decrypt(ring.encrypt(b"hunter2", context=b"row-1"), context=b"row-1")
    b'hunter2'
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"GSE1"


class SecretsError(ValueError):
    """A blob could not be decrypted (unknown key id, tampered, wrong context) or a key is malformed."""


def key_id(kek: bytes) -> str:
    return hashlib.sha256(kek).hexdigest()[:8]


def parse_kek(name: str, value: str) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretsError(f"{name} must be base64 of 32 bytes (e.g. `openssl rand -base64 32`)") from None
    if len(raw) != 32:
        raise SecretsError(f"{name} must be base64 of 32 bytes, got {len(raw)} bytes")
    return raw


class Keyring:
    """The active KEK (encrypts) plus previous ones (decrypt only), by key id."""

    def __init__(self, active: bytes, previous: list[bytes] | tuple = ()) -> None:
        self.active_id = key_id(active)
        self._keys = {key_id(k): AESGCM(k) for k in (*previous, active)}
        self._active = self._keys[self.active_id]
        self._raw = {key_id(k): k for k in (*previous, active)}  # only for derive(); never shown

    def __repr__(self) -> str:  # never the key bytes
        return f"Keyring(active={self.active_id!r}, known={sorted(self._keys)!r})"

    @classmethod
    def from_keys(cls, keys: list[bytes]) -> "Keyring":
        return cls(keys[0], keys[1:])

    def encrypt(self, plaintext: bytes, *, context: bytes = b"") -> bytes:
        dek = AESGCM.generate_key(bit_length=256)
        kid = self.active_id.encode()
        header = MAGIC + bytes([len(kid)]) + kid
        wrap_nonce = os.urandom(12)
        wrapped = self._active.encrypt(wrap_nonce, dek, header + context)
        prefix = header + wrap_nonce + wrapped
        nonce = os.urandom(12)
        return prefix + nonce + AESGCM(dek).encrypt(nonce, plaintext, prefix + context)

    def _open(self, blob: bytes, context: bytes) -> tuple[bytes, bytes, str, int]:
        if len(blob) < 5 or blob[:4] != MAGIC:
            raise SecretsError("not a Gantry secret blob (GSE1)")
        n = blob[4]
        kid = blob[5:5 + n].decode("ascii", "replace")
        head_end = 5 + n
        wrap_end = head_end + 12 + 48
        if len(blob) < wrap_end + 12 + 16:
            raise SecretsError("secret blob is truncated")
        aead = self._keys.get(kid)
        if aead is None:
            raise SecretsError(f"secret was encrypted under key id {kid!r}, which is not configured "
                               "(GANTRY_KEK / GANTRY_KEK_PREVIOUS)")
        try:
            dek = aead.decrypt(blob[head_end:head_end + 12], blob[head_end + 12:wrap_end], blob[:head_end] + context)
        except InvalidTag:
            raise SecretsError("secret blob failed authentication (tampered, or another context)") from None
        return dek, blob[:wrap_end], kid, wrap_end

    def decrypt(self, blob: bytes, *, context: bytes = b"") -> bytes:
        dek, prefix, _, wrap_end = self._open(blob, context)
        try:
            return AESGCM(dek).decrypt(blob[wrap_end:wrap_end + 12], blob[wrap_end + 12:], prefix + context)
        except InvalidTag:
            raise SecretsError("secret blob failed authentication (tampered, or another context)") from None

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every configured key id, the active one first."""
        return (self.active_id, *sorted(k for k in self._keys if k != self.active_id))

    def derive(self, purpose: bytes, kid: str | None = None) -> bytes:
        """A 32-byte subkey of one KEK (default: the active one) for `purpose` (HKDF-SHA256).

        Lets another mechanism (user-token signing) live and rotate with the KEK without a key of its own, while
        never using the KEK itself for two jobs. Raises SecretsError for a key id that is not configured.
        """
        raw = self._raw.get(kid or self.active_id)
        if raw is None:
            raise SecretsError(f"key id {kid!r} is not configured (GANTRY_KEK / GANTRY_KEK_PREVIOUS)")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"gantry:" + purpose).derive(raw)

    def key_id_of(self, blob: bytes) -> str:
        if len(blob) < 5 or blob[:4] != MAGIC:
            raise SecretsError("not a Gantry secret blob (GSE1)")
        return blob[5:5 + blob[4]].decode("ascii", "replace")

    def rewrap(self, blob: bytes, *, context: bytes = b"") -> bytes:
        """The same secret under the active KEK (a no-op copy when it already is)."""
        if self.key_id_of(blob) == self.active_id:
            return blob
        return self.encrypt(self.decrypt(blob, context=context), context=context)


def write_secret_file(path: Path, text: str) -> bool:
    """Create `path` holding `text`, readable by its owner only from the first byte (mode 0600 at creation, not a
    chmod afterwards, so there is no moment another local user can open it). Leaves an existing file alone and
    returns False; True when this call created it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def load_keyring(kek: str | None, previous: tuple[str, ...], data_dir: Path, *, embedded: bool) -> Keyring:
    """The configured KEK; the embedded default generates one in `data_dir/kek` (0600) and keeps it.

    Raises SecretsError (one line for the operator) when a non-embedded run has no GANTRY_KEK.
    """
    olds = [parse_kek("GANTRY_KEK_PREVIOUS", p) for p in previous if p.strip()]
    if kek:
        return Keyring(parse_kek("GANTRY_KEK", kek), olds)
    if not embedded:
        raise SecretsError("GANTRY_KEK is required when GANTRY_DATABASE_URL and GANTRY_REDIS_URL are set "
                           "(base64 of 32 bytes, e.g. `openssl rand -base64 32`)")
    path = Path(data_dir) / "kek"
    write_secret_file(path, base64.b64encode(secrets.token_bytes(32)).decode())
    return Keyring(parse_kek(str(path), path.read_text()), olds)
