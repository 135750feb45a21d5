"""Attestation nonces, boot tokens, signature nonces and rate limits against a real Redis."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import pytest
from redis.asyncio import Redis

from gantry_server.clock import ManualClock
from gantry_server.domain.auth.nonces import AttestationNonces, BootTokens, NonceRejected
from gantry_server.domain.auth.rate_limit import Limit, RateLimited, RateLimiter
from gantry_server.domain.auth.signature_nonces import SignatureNonces
from gantry_server.store import redis_keys

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
START = datetime(2026, 1, 1, 0, 0, 30, tzinfo=timezone.utc)


async def test_attestation_nonce_is_64_hex_lasts_600s_and_is_used_once(redis):
    nonces = AttestationNonces(redis, ManualClock(START))
    issued = await nonces.issue("boot", "203.0.113.9")
    assert len(issued.nonce) == 64 and int(issued.nonce, 16) >= 0
    assert issued.expires_at == datetime(2026, 1, 1, 0, 10, 30, tzinfo=timezone.utc)
    assert 590 < await redis.ttl(redis_keys.attestation_nonce(issued.nonce)) <= 600
    await nonces.consume(issued.nonce, "boot", "203.0.113.9")
    with pytest.raises(NonceRejected, match="already consumed") as err:
        await nonces.consume(issued.nonce, "boot", "203.0.113.9")
    assert err.value.reason == "NONCE_UNKNOWN"


async def test_nonce_from_another_ip_or_for_another_purpose_is_refused(redis):
    nonces = AttestationNonces(redis, ManualClock(START))
    issued = await nonces.issue("runtime", "203.0.113.9")
    with pytest.raises(NonceRejected, match="another IP") as err:
        await nonces.consume(issued.nonce, "runtime", "198.51.100.1")
    assert err.value.reason == "NONCE_WRONG_IP"
    other = await nonces.issue("boot", "203.0.113.9")
    with pytest.raises(NonceRejected, match="purpose 'runtime'"):
        await nonces.consume(other.nonce, "runtime", "203.0.113.9")
    with pytest.raises(NonceRejected, match="64 lowercase hex"):
        await nonces.consume("abc", "runtime", "203.0.113.9")


async def test_expired_nonce_is_refused(redis):
    nonces = AttestationNonces(redis, ManualClock(START))
    issued = await nonces.issue("boot", "203.0.113.9")
    await redis.expire(redis_keys.attestation_nonce(issued.nonce), 0)  # Redis's own expiry, without waiting
    with pytest.raises(NonceRejected, match="expired"):
        await nonces.consume(issued.nonce, "boot", "203.0.113.9")


async def test_two_concurrent_consumers_of_one_nonce_exactly_one_wins(redis):
    nonces = AttestationNonces(redis, ManualClock(START))
    for _ in range(20):
        issued = await nonces.issue("instance_verification", "203.0.113.9")
        results = await asyncio.gather(
            *(nonces.consume(issued.nonce, "instance_verification", "203.0.113.9") for _ in range(8)),
            return_exceptions=True)
        assert sum(r is None for r in results) == 1
        assert all(isinstance(r, NonceRejected) for r in results if r is not None)


async def test_boot_token_is_bound_to_hotkey_and_vm_and_validates_without_consuming(redis):
    tokens = BootTokens(redis)
    token = await tokens.issue(ALICE, "vm-1")
    assert len(token) == 64 and 590 < await redis.ttl(redis_keys.boot_token(token)) <= 600
    await tokens.validate(token, ALICE, "vm-1")
    await tokens.validate(token, ALICE, "vm-1")  # the legacy GET does not consume it
    for hotkey, vm in ((BOB, "vm-1"), (ALICE, "vm-2")):
        with pytest.raises(NonceRejected, match="does not match") as err:
            await tokens.validate(token, hotkey, vm)
        assert err.value.reason == "BOOT_TOKEN_MISMATCH"


async def test_boot_token_is_consumed_once_and_reuse_or_expiry_is_refused(redis):
    tokens = BootTokens(redis)
    token = await tokens.issue(ALICE, "vm-1")
    results = await asyncio.gather(*(tokens.consume(token, ALICE, "vm-1") for _ in range(5)), return_exceptions=True)
    assert sum(r is None for r in results) == 1
    with pytest.raises(NonceRejected, match="not found or expired"):
        await tokens.consume(token, ALICE, "vm-1")
    expiring = await tokens.issue(ALICE, "vm-1")
    await redis.expire(redis_keys.boot_token(expiring), 0)
    with pytest.raises(NonceRejected, match="not found or expired"):
        await tokens.validate(expiring, ALICE, "vm-1")


def _v2_nonce() -> str:
    return f"1767225600.{uuid.uuid4().hex[:12]}"


async def _connections_named(redis, name: str) -> list[dict]:
    return [c for c in await redis.client_list() if c.get("name") == name]


async def test_signature_nonce_is_single_use_per_hotkey_under_its_key_for_600s(redis):
    nonces, nonce = SignatureNonces(redis), _v2_nonce()
    assert await nonces.claim(ALICE, nonce) is True
    key = redis_keys.signature_nonce(ALICE, nonce)
    assert await redis.get(key) == b"1" and 590 < await redis.ttl(key) <= 600
    assert await nonces.claim(ALICE, nonce) is False
    assert await nonces.claim(BOB, nonce) is True  # another hotkey's nonce


async def test_concurrent_claims_of_one_signature_nonce_on_two_replicas_exactly_one_wins(redis, redis_url):
    clients = [Redis.from_url(redis_url) for _ in range(2)]  # two replicas: their own clients and connections
    replicas = [SignatureNonces(client) for client in clients]
    try:
        for _ in range(20):
            nonce = _v2_nonce()
            results = await asyncio.gather(*(replicas[i % 2].claim(ALICE, nonce) for i in range(16)))
            assert results.count(True) == 1
    finally:
        for client in clients:
            await client.aclose()


async def test_signature_nonce_claims_go_on_after_redis_closes_their_connection(redis, redis_url):
    client = Redis.from_url(redis_url, client_name="test-signonce-killed")
    nonces = SignatureNonces(client)
    try:
        assert await nonces.claim(ALICE, _v2_nonce())
        leased = await _connections_named(redis, "test-signonce-killed")
        assert leased
        for conn in leased:
            await redis.client_kill_filter(_id=conn["id"])
        nonce = _v2_nonce()
        assert await nonces.claim(ALICE, nonce) is True
        assert await nonces.claim(ALICE, nonce) is False
    finally:
        await client.aclose()


async def test_signature_nonce_connections_close_with_the_redis_client(redis, redis_url):
    """They are leased from the client's pool, so closing rt.redis closes them (and the embedded Redis can stop)."""
    client = Redis.from_url(redis_url, client_name="test-signonce-closed")
    nonces = SignatureNonces(client)
    assert all(await asyncio.gather(*(nonces.claim(ALICE, _v2_nonce()) for _ in range(4))))
    assert await _connections_named(redis, "test-signonce-closed")
    await client.aclose()
    for _ in range(50):
        if not await _connections_named(redis, "test-signonce-closed"):
            break
        await asyncio.sleep(0.02)
    assert await _connections_named(redis, "test-signonce-closed") == []


async def test_rate_limit_per_user_and_bucket_resets_with_the_window(redis):
    clock = ManualClock(START)
    limiter = RateLimiter(redis, clock)
    limit = Limit(3, 60)
    for _ in range(3):
        await limiter.hit("user-1", "tee_evidence", limit)
    await limiter.hit("user-2", "tee_evidence", limit)  # other users have their own budget
    await limiter.hit("user-1", "other_bucket", limit)  # and so do other buckets
    with pytest.raises(RateLimited, match="at most 3 requests per 60 s") as err:
        await limiter.hit("user-1", "tee_evidence", limit)
    assert err.value.retry_after == 30  # the window started at :00, the clock is at :30
    clock.advance(seconds=30)
    assert await limiter.hit("user-1", "tee_evidence", limit) == 1
