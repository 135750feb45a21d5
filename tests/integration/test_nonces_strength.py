"""Attestation nonces and boot tokens at the edges mutation testing found untested (issue 17): the exact refusal
and reason a VM sees for each way a nonce or token is wrong, a malformed token never looked up, and the loser of a
race for one boot token told it was already used."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from gantry_server.clock import ManualClock
from gantry_server.domain.auth.nonces import AttestationNonces, BootTokens, NonceRejected
from gantry_server.store import redis_keys

ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


async def rejection(coro) -> tuple[str, str]:
    with pytest.raises(NonceRejected) as err:
        await coro
    return err.value.reason, str(err.value)


@pytest.mark.parametrize("nonce", ["", None, "A" * 64, "a" * 63, "a" * 65, "g" * 64, " " + "a" * 63])
async def test_a_malformed_attestation_nonce_is_refused_as_malformed(redis, nonce):
    nonces = AttestationNonces(redis, ManualClock(START))
    assert await rejection(nonces.consume(nonce, "boot", "203.0.113.9")) == (
        "NONCE_MALFORMED", "Invalid nonce supplied: an attestation nonce is 64 lowercase hex characters")


async def test_a_nonce_used_from_elsewhere_or_for_something_else_says_which(redis):
    nonces = AttestationNonces(redis, ManualClock(START))
    issued = await nonces.issue("boot", "203.0.113.9")
    assert await rejection(nonces.consume(issued.nonce, "boot", "198.51.100.1")) == (
        "NONCE_WRONG_IP", "Invalid nonce supplied: it was issued to another IP address")
    issued = await nonces.issue("boot", "203.0.113.9")
    assert await rejection(nonces.consume(issued.nonce, "runtime", "203.0.113.9")) == (
        "NONCE_WRONG_PURPOSE", "Invalid nonce supplied: it was not issued for purpose 'runtime'")
    assert await rejection(nonces.consume("a" * 64, "boot", "203.0.113.9")) == (
        "NONCE_UNKNOWN", "Invalid nonce supplied: unknown, expired (after 600 s) or already consumed")


async def test_boot_tokens_are_64_hex_and_refusals_say_why(redis):
    tokens = BootTokens(redis)
    token = await tokens.issue(ALICE, "vm-1")
    assert len(token) == 64 and int(token, 16) >= 0
    assert await rejection(tokens.validate(token, ALICE, "vm-2")) == (
        "BOOT_TOKEN_MISMATCH", "Hotkey/VM name does not match boot token")
    assert await rejection(tokens.validate("b" * 64, ALICE, "vm-1")) == (
        "BOOT_TOKEN_UNKNOWN", "Boot token not found or expired (tokens last 600 s and are used once)")


@pytest.mark.parametrize("token", ["zz", "", "../" * 30, "B" * 64])
async def test_a_malformed_boot_token_is_never_looked_up(redis, token):
    """Even a record stored under that name (nothing Gantry writes) does not make it valid."""
    await redis.set(redis_keys.boot_token(token), f"{ALICE}:vm-1")
    tokens = BootTokens(redis)
    for attempt in (tokens.validate(token, ALICE, "vm-1"), tokens.consume(token, ALICE, "vm-1")):
        assert await rejection(attempt) == (
            "BOOT_TOKEN_UNKNOWN", "Boot token not found or expired (tokens last 600 s and are used once)")
    assert await redis.get(redis_keys.boot_token(token)) is not None  # and not consumed either


async def test_of_two_consumers_racing_for_a_token_the_loser_is_told_it_was_used(redis):
    tokens = BootTokens(redis)
    token = await tokens.issue(ALICE, "vm-1")
    await asyncio.gather(redis.ping(), redis.ping())  # two pooled connections, so neither consumer waits to connect
    # Both send their GET before either sends its DEL (each awaits its GET reply first): one DEL wins.
    results = await asyncio.gather(tokens.consume(token, ALICE, "vm-1"), tokens.consume(token, ALICE, "vm-1"),
                                   return_exceptions=True)
    assert results.count(None) == 1
    [lost] = [r for r in results if r is not None]
    assert isinstance(lost, NonceRejected)
    assert (lost.reason, str(lost)) == ("BOOT_TOKEN_UNKNOWN", "Boot token not found or expired (already used)")


@pytest.mark.parametrize(("seconds", "ttl"), [(1, 1), (0, 1), (-5, 1), (2.9, 2), (1259, 1259)])
async def test_a_signature_nonce_record_lives_the_seconds_asked_and_at_least_one(redis, seconds, ttl):
    from gantry_server.domain.auth.signature_nonces import SignatureNonces

    nonce = f"1767225600.ttl{ttl}x{abs(int(seconds))}"
    assert await SignatureNonces(redis).claim(ALICE, nonce, seconds) is True
    # At most `ttl` seconds (the upper bound only: time passing can only lower what is left), and expiring.
    left = await redis.pttl(redis_keys.signature_nonce(ALICE, nonce))
    assert left == -2 or 0 < left <= ttl * 1000
    assert left != -1
