"""`MinerEvents`: a miner's event feed (MinerService.WatchEvents) that survives reconnects.

>>> async with MinerEvents("127.0.0.1:50051", Signer.from_sr25519_seed(seed)) as feed:
...     async for event in feed:                    # gantry.miner.v1.WatchEventsResponse, never a heartbeat
...         handle(event.reason, MessageToDict(event.data))
...         save(feed.cursor)                       # start the next run with MinerEvents(..., cursor=saved)

Each (re)connection is a new call signed grpc-v1 (a fresh single-use nonce). When the stream drops (server
restart, UNAVAILABLE, a subscriber dropped for lagging), it reconnects with exponential backoff and resumes after
the last event it yielded: no event is lost or repeated. Before the first event there is no cursor to resume
from, so a reconnect then starts again at the live end (pass cursor="0" to replay everything retained instead).

Failures it does not retry:
    CursorExpired        OUT_OF_RANGE: the server no longer keeps the events after the cursor. Re-sync by
                         listing (ListAvailableJobs, ListInstances, ...), then start without a cursor.
    grpc.aio.AioRpcError anything else (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, ...)
"""
from __future__ import annotations

import asyncio
import random
from typing import Awaitable, Callable, Iterable

import grpc
from grpc import aio

from gantry.miner.v1 import miner_pb2, miner_pb2_grpc

from ._channel import connect
from ._signer import Signer

WATCH_EVENTS = "/gantry.miner.v1.MinerService/WatchEvents"
# Codes after which the same request may succeed: the server went away, is stopping, or dropped a slow stream.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED,
                       grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED})


class CursorExpired(Exception):
    """The server no longer holds the events after `cursor` (OUT_OF_RANGE): re-sync by listing, then watch
    again without a cursor."""

    def __init__(self, cursor: str | None, details: str) -> None:
        super().__init__(f"cursor {cursor} expired: {details}")
        self.cursor = cursor
        self.details = details


class MinerEvents:
    """Async iterator of WatchEventsResponse for `signer`'s hotkey, resuming by cursor across reconnects.

    `target` is "host:port" (a plaintext channel this object owns; pass `credentials` for TLS) or a channel you
    own. `reasons` filters server-side (empty: every reason). Backoff doubles from `initial_backoff` up to
    `max_backoff` seconds, with jitter, and starts over once a stream delivers something. `sleep` waits the
    backoff (tests pass a recorder); `on_retry(error, delay)` is told about each reconnect.
    """

    def __init__(self, target: str | aio.Channel, signer: Signer, *, cursor: str | None = None,
                 reasons: Iterable[str] = (), credentials: grpc.ChannelCredentials | None = None,
                 initial_backoff: float = 0.5, max_backoff: float = 30.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 on_retry: Callable[[BaseException | None, float], None] | None = None) -> None:
        if isinstance(target, str):
            self._channel, self._owned = connect(target, credentials=credentials), True
        else:
            self._channel, self._owned = target, False
        self._stub = miner_pb2_grpc.MinerServiceStub(self._channel)
        self.signer = signer
        self.cursor = cursor  # of the last event yielded: where a reconnect resumes
        self.reasons = tuple(reasons)
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._on_retry = on_retry
        self.reconnects = 0
        self._events = None

    async def __aenter__(self) -> "MinerEvents":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: ends the current call, and the channel if this object opened it."""
        events, self._events = self._events, None
        if events is not None:
            try:
                await events.aclose()
            except RuntimeError:  # another task is inside __anext__: closing the channel ends its call
                pass
        if self._owned:
            await self._channel.close()

    def __aiter__(self) -> "MinerEvents":
        return self

    async def __anext__(self) -> miner_pb2.WatchEventsResponse:
        if self._events is None:
            self._events = self._run()
        return await self._events.__anext__()

    def _request(self) -> miner_pb2.WatchEventsRequest:
        request = miner_pb2.WatchEventsRequest(reasons=self.reasons)
        if self.cursor is not None:
            request.cursor = self.cursor
        return request

    def _delay(self, failures: int) -> float:
        ceiling = min(self.max_backoff, self.initial_backoff * (2 ** failures))
        return random.uniform(ceiling / 2, ceiling)

    async def _run(self):
        failures = 0
        while True:
            request = self._request()
            call = self._stub.WatchEvents(request, metadata=self.signer.grpc_metadata(WATCH_EVENTS, request))
            error: BaseException | None = None
            try:
                async for response in call:
                    failures = 0
                    if response.heartbeat:
                        continue
                    self.cursor = response.cursor
                    yield response
            except aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    raise CursorExpired(request.cursor if request.HasField("cursor") else None,
                                        exc.details() or "") from exc
                if exc.code() not in RETRYABLE:
                    raise
                error = exc
            finally:
                call.cancel()
            delay = self._delay(failures)
            failures += 1
            self.reconnects += 1
            if self._on_retry is not None:
                self._on_retry(error, delay)
            await self._sleep(delay)
