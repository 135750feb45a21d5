"""The consumer's SSH key pair of a session: generated here, returned once, installed on the instance.

Ed25519 is the default because it is generated in microseconds; the reference spent most of its create time
generating RSA keys. RSA-4096 stays available (``ssh_key_type: "rsa"``) for clients that cannot use Ed25519, in
the PKCS#1 PEM form the reference returned (``-----BEGIN RSA PRIVATE KEY-----``). Ed25519 private keys use the
OpenSSH format (``-----BEGIN OPENSSH PRIVATE KEY-----``), the only one OpenSSH reads for that type.

>>> pair = generate_keypair()
>>> pair.public_openssh.startswith("ssh-ed25519 "), pair.private_pem.startswith("-----BEGIN OPENSSH")
(True, True)
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

KEY_TYPES: tuple[str, ...] = ("ed25519", "rsa")
RSA_BITS = 4096


@dataclass(frozen=True)
class KeyPair:
    private_pem: str = field(repr=False)  # the secret: never logged, never stored in plain text
    public_openssh: str  # one authorized_keys line: "<type> <base64> [comment]"
    key_type: str

    @property
    def fingerprint(self) -> str:
        """OpenSSH's SHA256 fingerprint (``ssh-keygen -lf``), safe to log in place of the key."""
        return public_key_fingerprint(self.public_openssh)


def public_key_fingerprint(public_openssh: str) -> str:
    blob = base64.b64decode(public_openssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def normalize_key_type(key_type: str) -> str:
    """The canonical key type, or ValueError naming the allowed values (the API turns it into a 400)."""
    name = (key_type or "").strip().lower()
    if name not in KEY_TYPES:
        raise ValueError(f"unsupported ssh key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")
    return name


def generate_keypair(key_type: str = "ed25519", *, comment: str | None = None) -> KeyPair:
    """A fresh key pair. RSA takes ~0.3-1 s of CPU: in async code use `generate_keypair_async`."""
    name = normalize_key_type(key_type)
    if name == "ed25519":
        key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey = ed25519.Ed25519PrivateKey.generate()
        private_format = serialization.PrivateFormat.OpenSSH
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        private_format = serialization.PrivateFormat.TraditionalOpenSSL  # PKCS#1 "BEGIN RSA PRIVATE KEY"
    private_pem = key.private_bytes(serialization.Encoding.PEM, private_format,
                                    serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    if comment:
        public = f"{public} {comment}"
    return KeyPair(private_pem=private_pem, public_openssh=public, key_type=name)


async def generate_keypair_async(key_type: str = "ed25519", *, comment: str | None = None) -> KeyPair:
    """`generate_keypair` that never blocks the event loop: RSA runs in a worker thread."""
    if normalize_key_type(key_type) == "ed25519":
        return generate_keypair(key_type, comment=comment)
    return await asyncio.to_thread(generate_keypair, key_type, comment=comment)
