"""The per-process fan-out: ONE Redis reader (XREAD BLOCK) feeding every subscriber of this process from memory.

WatchEvents and the Socket.IO adapter read events through a `Subscription`; no subscriber ever holds a Redis
connection of its own (10,000 streams cost 10,000 small in-memory queues and one socket).

    async with rt.events.subscribe(hotkey, cursor=last_cursor, reasons=frozenset({"job_created"})) as sub:
        while True:
            event = await sub.next(timeout=15.0)      # None: idle for 15 s, send a heartbeat
            if event is not None:
                send(event.cursor, event.reason, event.data)

Resuming: with a cursor, the subscription first replays what the stream retains after that cursor (XRANGE, paged),
then switches to the live feed; live events that arrive meanwhile are held and those at or before the last
replayed one skipped, so nothing is lost or repeated. "0" replays everything retained; no cursor starts at the
live feed. Failure model:

    CursorTooOld        the stream no longer holds what follows the cursor (trimmed by length or age)
    SubscriberTooSlow   more than `events_subscriber_buffer` events waited for this subscriber: it is dropped
    HubClosed           the process is stopping (`next`); `async for` simply ends
"""
from __future__ import annotations

import asyncio
import collections
import logging

from . import stream as rstream
from .stream import StreamEvent

__all__ = ["CursorTooOld", "EventHub", "HubClosed", "StreamEvent", "SubscriberTooSlow", "Subscription"]

log = logging.getLogger(__name__)

_REPLAY_PAGE = 500


class CursorTooOld(Exception):
    """The cursor is older than what the stream keeps: events after it were trimmed and cannot be replayed."""


class SubscriberTooSlow(Exception):
    """The subscriber fell `events_subscriber_buffer` events behind and was dropped; reconnect with its cursor."""


class HubClosed(Exception):
    """The hub stopped (the process is shutting down)."""


class Subscription:
    """One subscriber: an async context manager and an async iterator of `StreamEvent`.

    Heartbeats are the caller's job: `await sub.next(timeout)` returns None after `timeout` seconds without an
    event. Events are filtered by visibility (`hotkey`) and `reasons` (empty: all) before they take buffer room.
    """

    def __init__(self, hub: "EventHub", hotkey: str, cursor: str | None, reasons: frozenset[str],
                 buffer: int) -> None:
        self._hub = hub
        self.hotkey = hotkey
        self.reasons = reasons
        self._cursor = cursor
        self._buffer = buffer
        self._live: collections.deque[StreamEvent] = collections.deque()
        self._replay: collections.deque[StreamEvent] = collections.deque()
        self._catching_up = cursor is not None
        self._last: tuple[int, int] | None = rstream.position(cursor) if cursor is not None else None
        self._waiter: asyncio.Future | None = None
        self._failure: BaseException | None = None
        self._registered = False

    # -- context manager -------------------------------------------------------------------------------------------
    async def __aenter__(self) -> "Subscription":
        """Register with the hub (from here on, live events are kept for us), then judge the cursor."""
        self._hub._add(self)
        self._registered = True
        try:
            if self._cursor is not None and self._cursor != "0":
                if await rstream.is_trimmed(self._hub.redis, self._cursor):
                    raise CursorTooOld(f"cursor {self._cursor} is older than the events still retained")
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        if self._registered:
            self._registered = False
            self._hub._remove(self)
        self._live.clear()
        self._replay.clear()

    # -- iteration ---------------------------------------------------------------------------------------------------
    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> StreamEvent:
        try:
            event = await self.next(None)
        except HubClosed:
            raise StopAsyncIteration from None
        assert event is not None
        return event

    async def next(self, timeout: float | None) -> StreamEvent | None:
        """The next event, or None after `timeout` seconds without one (None: wait as long as it takes). Raises
        CursorTooOld, SubscriberTooSlow, HubClosed."""
        deadline = None
        while True:
            if self._failure is not None:
                raise self._failure
            if self._catching_up:
                event = await self._next_replayed()
                if event is not None:
                    return event
                continue  # caught up: now from the live buffer
            while self._live:
                event = self._live.popleft()
                if self._last is not None:  # just caught up: skip what the replay delivered already
                    if rstream.position(event.cursor) <= self._last:
                        continue
                    self._last = None  # from here on live events come in stream order, each once
                return event
            loop = asyncio.get_running_loop()
            if timeout is not None:
                deadline = loop.time() + timeout if deadline is None else deadline
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
            else:
                remaining = None
            self._waiter = waiter = loop.create_future()
            timer = None if remaining is None else loop.call_later(remaining, _resolve, waiter)
            try:
                await waiter  # woken by _offer/_fail, or by the timer (then the loop above returns None)
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    # -- internals -----------------------------------------------------------------------------------------------------
    async def _next_replayed(self) -> StreamEvent | None:
        """From the replay page (fetching the next one when empty); None once the stream holds nothing newer."""
        while not self._replay:
            after = rstream.cursor_of(self._last)
            entries, trimmed = await rstream.read_after(self._hub.redis, after, _REPLAY_PAGE)
            if after != "0-0" and trimmed is not None and rstream.position(trimmed) > self._last:
                raise CursorTooOld(f"events after cursor {after} were trimmed while replaying")
            if not entries:
                # Everything newer than _last that the hub has not dispatched yet will reach the live buffer.
                self._catching_up = False
                return None
            for event in entries:
                self._last = rstream.position(event.cursor)
                if self._wants(event):
                    self._replay.append(event)
        return self._replay.popleft()

    def _wants(self, event: StreamEvent) -> bool:
        return (not self.reasons or event.reason in self.reasons) and event.visible_to(self.hotkey)

    def _offer(self, event: StreamEvent) -> None:
        """Called by the hub for every event visible to this hotkey, in stream order."""
        if self.reasons and event.reason not in self.reasons:
            return
        if len(self._live) >= self._buffer:
            if self._catching_up:
                # Everything the hub dispatched is already in Redis: the replay will read it from there.
                self._live.clear()
            else:
                self._fail(SubscriberTooSlow(
                    f"more than {self._buffer} events waited for this subscriber; reconnect with the last cursor"))
                return
        self._live.append(event)
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._live.clear()
        self._replay.clear()
        if self._registered:
            self._registered = False
            self._hub._remove(self)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class EventHub:
    """One per process: `start()` with the app, `subscribe()` per stream, `stop()` ends every subscription."""

    def __init__(self, redis, *, buffer: int = 1000, block_ms: int = 2000) -> None:
        self.redis = redis  # XRANGE (replays), GET (trim mark)
        self._reader = rstream.dedicated(redis)  # XREAD BLOCK only
        self.buffer = buffer
        self.block_ms = block_ms
        self._all: set[Subscription] = set()
        self._by_hotkey: dict[str, set[Subscription]] = {}
        self._task: asyncio.Task | None = None
        self._closed = False
        self.last_read: str | None = None  # stream id of the last entry dispatched
        # One read never hands an idle subscriber more than half its buffer, so a burst alone drops no one.
        self._read_count = max(1, min(1000, buffer // 2))

    @property
    def subscriber_count(self) -> int:
        return len(self._all)

    def subscribe(self, hotkey: str, *, cursor: str | None = None,
                  reasons: frozenset[str] = frozenset()) -> Subscription:
        """A subscription for `hotkey` (not yet registered: use it with `async with`). `cursor` must be a stream
        id (`stream.parse_cursor` checks one) or "0"."""
        if cursor is not None:
            cursor = rstream.parse_cursor(cursor)
        return Subscription(self, hotkey, cursor, reasons, self.buffer)

    async def start(self) -> None:
        """Start reading at the current end of the stream ("$" resolved now, so nothing later is missed)."""
        self._closed = False
        self.last_read = await rstream.last_id(self.redis)
        self._task = asyncio.create_task(self._read_loop(), name="event-hub-reader")

    async def stop(self, *, timeout: float = 5.0) -> None:
        """End every subscription (HubClosed), then the reader. Bounded: a Redis call that does not give way to
        cancellation in `timeout` seconds is left behind with a warning, so a stopping server never hangs here."""
        self._closed = True
        for sub in list(self._all):
            sub._fail(HubClosed("the event hub stopped"))
        if self._task is not None:
            self._task.cancel()
            _, pending = await asyncio.wait({self._task}, timeout=timeout)
            if pending:
                log.warning("event hub: the stream reader did not stop within %.0f s", timeout)
            self._task = None
        try:
            await asyncio.wait_for(self._reader.aclose(), timeout)
        except Exception:  # noqa: BLE001 - closing is best effort; the process is stopping
            log.warning("event hub: closing the reader connection failed", exc_info=True)

    # -- subscribers --------------------------------------------------------------------------------------------------
    def _add(self, sub: Subscription) -> None:
        if self._closed:
            raise HubClosed("the event hub stopped")
        self._all.add(sub)
        self._by_hotkey.setdefault(sub.hotkey, set()).add(sub)

    def _remove(self, sub: Subscription) -> None:
        self._all.discard(sub)
        subs = self._by_hotkey.get(sub.hotkey)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_hotkey[sub.hotkey]

    def dispatch(self, event: StreamEvent) -> None:
        """Hand one event to every subscriber it is visible to (public: all; targeted: only the recipients')."""
        if event.recipients is None:
            targets = list(self._all)
        else:
            targets = [s for hk in set(event.recipients) for s in self._by_hotkey.get(hk, ())]
        for sub in targets:
            sub._offer(event)

    async def _check_lost(self, entries: list[StreamEvent]) -> None:
        """Entries trimmed before this reader saw them (more than events_max_len appended while it was away or
        blocked behind): live subscribers missed them, so they are told to re-sync (CursorTooOld). Subscribers
        still replaying notice the same from their own reads."""
        try:
            trimmed = await rstream.trimmed_id(self.redis)
        except Exception:  # noqa: BLE001 - judged again after the next read
            return
        if trimmed is None:
            return
        lost = rstream.position(trimmed)
        if lost <= rstream.position(self.last_read) or (entries and lost >= rstream.position(entries[0].cursor)):
            return
        for sub in [s for s in self._all if not s._catching_up]:
            sub._fail(CursorTooOld(f"events up to {trimmed} were trimmed before this server read them; "
                                   "list again, then watch from now"))
        if not entries:
            self.last_read = trimmed

    # -- the one reader ------------------------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        while True:
            try:
                entries = await rstream.read_blocking(self._reader, self.last_read, self.block_ms, self._read_count)
                if not entries and await rstream.was_reset(self.redis, self.last_read):
                    log.warning("event hub: the events stream was reset; reading it from its start")
                    self.last_read = "0-0"
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis restarting or unreachable: retry from where we were
                log.warning("event hub: reading the stream failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            await self._check_lost(entries)
            for event in entries:
                self.last_read = event.cursor
                self.dispatch(event)
            await asyncio.sleep(0)  # let subscribers drain before the next read
