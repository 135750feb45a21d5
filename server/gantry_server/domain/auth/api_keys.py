"""User API keys: "cpk_" + 64 hex, shown once, stored as SHA-256 (the key has 256 random bits, so a fast hash
is enough: nothing to brute-force) with a short display prefix.
"""
from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "cpk_"
_KEY = re.compile(r"^cpk_[0-9a-f]{64}$")


def new_api_key() -> str:
    return PREFIX + secrets.token_hex(32)


def key_hash(secret_key: str) -> str:
    return hashlib.sha256(secret_key.encode()).hexdigest()


def display_prefix(secret_key: str) -> str:
    return secret_key[:12]


def looks_like_api_key(token: str) -> bool:
    return bool(_KEY.match(token))
