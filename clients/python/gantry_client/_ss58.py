"""SS58 encoding of a public key (the client's own copy: the client package must not import the server).

>>> encode_ss58(bytes.fromhex("d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"))
'5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY'
"""
from __future__ import annotations

import hashlib

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_ALPHABET[rem])
    leading = len(data) - len(data.lstrip(b"\x00"))
    return "1" * leading + "".join(reversed(out))


def encode_ss58(public_key: bytes, prefix: int = 42) -> str:
    """SS58 address of a 32-byte public key (prefix 42: the generic Substrate/Bittensor format)."""
    if len(public_key) != 32 or not 0 <= prefix < 64:
        raise ValueError("need a 32-byte public key and a simple SS58 prefix (0..63)")
    payload = bytes([prefix]) + public_key
    checksum = hashlib.blake2b(b"SS58PRE" + payload, digest_size=64).digest()[:2]
    return _b58encode(payload + checksum)
