"""Attestation nonces and boot tokens: one-time secrets in Redis, each bound to who may use it.

- Attestation nonce: 64 hex, {purpose, caller IP}, 600 s, consumed atomically once (a Lua script reads,
  compares and deletes in one step, so of two concurrent consumers exactly one wins; a nonce presented from the
  wrong IP or for the wrong purpose is consumed too, since it has been seen by someone else).
- Boot token: 64 hex, {hotkey, VM name}, 600 s; validated without consuming (legacy LUKS GET) or consumed
  (after a successful LUKS sync).

These are not the signature nonces of hotkey auth (see signatures.py).
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis.asyncio import Redis

from ...store import redis_keys

TTL_SECONDS = 600
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# GET, compare, DEL in one step. Returns: 1 ok, 0 unknown/consumed, -1 wrong IP, -2 wrong purpose.
_CONSUME = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
redis.call('DEL', KEYS[1])
local v = cjson.decode(raw)
if v['server_ip'] ~= ARGV[1] then return -1 end
if v['purpose'] and v['purpose'] ~= cjson.null and v['purpose'] ~= ARGV[2] then return -2 end
return 1
"""


class NonceRejected(Exception):
    """An attestation nonce or boot token was refused; `reason` is machine-readable."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class IssuedNonce:
    nonce: str
    expires_at: datetime


class AttestationNonces:
    def __init__(self, redis: Redis, clock) -> None:
        self.redis = redis
        self.clock = clock
        self._consume = redis.register_script(_CONSUME)

    async def issue(self, purpose: str, caller_ip: str) -> IssuedNonce:
        nonce = secrets.token_hex(32)
        value = json.dumps({"server_ip": caller_ip, "purpose": purpose})
        await self.redis.set(redis_keys.attestation_nonce(nonce), value, ex=TTL_SECONDS)
        now = self.clock.now().replace(microsecond=0)
        return IssuedNonce(nonce, now + timedelta(seconds=TTL_SECONDS))

    async def consume(self, nonce: str, purpose: str, caller_ip: str) -> None:
        """Use a nonce once; raises NonceRejected ("Invalid nonce supplied", with the precise reason)."""
        if not _HEX64.match(nonce or ""):
            raise NonceRejected("Invalid nonce supplied: an attestation nonce is 64 lowercase hex characters",
                                "NONCE_MALFORMED")
        result = await self._consume(keys=[redis_keys.attestation_nonce(nonce)], args=[caller_ip, purpose])
        if result == 1:
            return
        if result == -1:
            raise NonceRejected("Invalid nonce supplied: it was issued to another IP address", "NONCE_WRONG_IP")
        if result == -2:
            raise NonceRejected(f"Invalid nonce supplied: it was not issued for purpose {purpose!r}",
                                "NONCE_WRONG_PURPOSE")
        raise NonceRejected(f"Invalid nonce supplied: unknown, expired (after {TTL_SECONDS} s) or already consumed",
                            "NONCE_UNKNOWN")


class BootTokens:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def issue(self, hotkey: str, vm_name: str) -> str:
        token = secrets.token_hex(32)
        await self.redis.set(redis_keys.boot_token(token), f"{hotkey}:{vm_name}", ex=TTL_SECONDS)
        return token

    async def validate(self, token: str, hotkey: str, vm_name: str) -> None:
        """Exists and matches hotkey and VM name; not consumed (legacy LUKS GET)."""
        self._check(await self.redis.get(redis_keys.boot_token(token)) if _HEX64.match(token or "") else None,
                    hotkey, vm_name)

    async def consume(self, token: str, hotkey: str, vm_name: str) -> None:
        """Validate and delete (after a successful LUKS sync); only one caller can consume it."""
        key = redis_keys.boot_token(token)
        if not _HEX64.match(token or ""):
            self._check(None, hotkey, vm_name)
        value = await self.redis.get(key)
        self._check(value, hotkey, vm_name)
        if not await self.redis.delete(key):
            raise NonceRejected("Boot token not found or expired (already used)", "BOOT_TOKEN_UNKNOWN")

    @staticmethod
    def _check(value, hotkey: str, vm_name: str) -> None:
        if value is None:
            raise NonceRejected(f"Boot token not found or expired (tokens last {TTL_SECONDS} s and are used once)",
                                "BOOT_TOKEN_UNKNOWN")
        stored = value.decode() if isinstance(value, bytes) else value
        if stored != f"{hotkey}:{vm_name}":
            raise NonceRejected("Hotkey/VM name does not match boot token", "BOOT_TOKEN_MISMATCH")
