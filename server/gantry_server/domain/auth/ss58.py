"""SS58 addresses (Substrate/Bittensor): base58 of prefix ‖ 32-byte public key ‖ blake2b-512 checksum[:2].

>>> decode_ss58("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY").hex()[:16]
'd43593c715fdd31c'
"""
from __future__ import annotations

import hashlib

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
_CONTEXT = b"SS58PRE"


class InvalidAddress(ValueError):
    """Not a valid SS58 address of a 32-byte public key."""


def _b58decode(text: str) -> bytes:
    number = 0
    for ch in text:
        digit = _INDEX.get(ch)
        if digit is None:
            raise InvalidAddress(f"{ch!r} is not a base58 character")
        number = number * 58 + digit
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    leading = len(text) - len(text.lstrip("1"))
    return b"\x00" * leading + body


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_ALPHABET[rem])
    leading = len(data) - len(data.lstrip(b"\x00"))
    return "1" * leading + "".join(reversed(out))


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(_CONTEXT + payload, digest_size=64).digest()[:2]


def decode_ss58(address: str) -> bytes:
    """The 32-byte public key of an SS58 address (any network prefix); raises InvalidAddress."""
    if not 40 <= len(address) <= 50:
        raise InvalidAddress("an SS58 address has 46 to 48 characters")
    raw = _b58decode(address)
    prefix_len = 1 if raw and raw[0] < 64 else 2
    if len(raw) != prefix_len + 32 + 2:
        raise InvalidAddress("an SS58 address must hold a 32-byte public key")
    payload, check = raw[:-2], raw[-2:]
    if _checksum(payload) != check:
        raise InvalidAddress("SS58 checksum mismatch")
    return payload[prefix_len:]


def encode_ss58(public_key: bytes, prefix: int = 42) -> str:
    """SS58 address of a 32-byte public key (prefix 42: the generic Substrate/Bittensor format)."""
    if len(public_key) != 32 or not 0 <= prefix < 64:
        raise ValueError("need a 32-byte public key and a simple prefix (0..63)")
    payload = bytes([prefix]) + public_key
    return _b58encode(payload + _checksum(payload))
