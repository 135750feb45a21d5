"""MinerService RPCs: events (composed into services/miner.py). WatchEvents reads the process's EventHub.

The stream opens with a heartbeat once the subscription is in place (a client knows from then on that nothing
published is missed, and the REST face sends its headers), then carries events, with a heartbeat after
`events_heartbeat_seconds` of silence.
"""
from __future__ import annotations

from collections import OrderedDict

from gantry.miner.v1 import miner_pb2
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from ..domain import events
from ..domain.auth.caller import current_caller
from ..domain.events.hub import CursorTooOld, HubClosed, StreamEvent, SubscriberTooSlow
from ..domain.events.stream import parse_cursor
from ..errors import InvalidArgument, OutOfRange, ResourceExhausted, Unavailable

_HEARTBEAT = miner_pb2.WatchEventsResponse(heartbeat=True)
_CACHE_SIZE = 1024


class _Messages:
    """Event -> response, built once per event however many streams send it (10,000 streams, one Struct)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, miner_pb2.WatchEventsResponse] = OrderedDict()

    def of(self, event: StreamEvent) -> miner_pb2.WatchEventsResponse:
        msg = self._cache.get(event.cursor)
        if msg is None:
            data = Struct()
            data.update(event.data)
            created = Timestamp()
            created.FromDatetime(event.created_at)
            msg = miner_pb2.WatchEventsResponse(cursor=event.cursor, reason=event.reason, message=event.message,
                                                data=data, created_at=created)
            self._cache[event.cursor] = msg
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return msg


_messages = _Messages()


def _filters(request) -> tuple[str | None, frozenset[str]]:
    cursor = None
    if request.HasField("cursor"):
        try:
            cursor = parse_cursor(request.cursor)
        except ValueError as exc:
            raise InvalidArgument.field("cursor", str(exc)) from None
    unknown = sorted(set(request.reasons) - events.REASONS)
    if unknown:
        raise InvalidArgument.field("reasons", f"unknown reason(s) {', '.join(unknown)}; known: "
                                               f"{', '.join(sorted(events.REASONS))}")
    return cursor, frozenset(request.reasons)


class MinerEventsMixin:
    rt: object  # Runtime, set by MinerService

    async def WatchEvents(self, request, context):
        """Events for the calling miner (public ones and those addressed to it), resumable by cursor."""
        cursor, reasons = _filters(request)
        hotkey = current_caller.get().hotkey
        idle = self.rt.settings.miner.events_heartbeat_seconds
        try:
            async with self.rt.events.subscribe(hotkey, cursor=cursor, reasons=reasons) as sub:
                yield _HEARTBEAT
                while True:
                    event = await sub.next(idle)
                    yield _HEARTBEAT if event is None else _messages.of(event)
        except CursorTooOld as exc:
            raise OutOfRange(f"cursor: {exc}; start again without a cursor (or with 0 for all retained)",
                             metadata={"cursor": cursor or ""}) from None
        except SubscriberTooSlow as exc:
            raise ResourceExhausted(f"event stream dropped: {exc}", reason="SUBSCRIBER_TOO_SLOW") from None
        except HubClosed:
            raise Unavailable("the server is stopping; reconnect with the last cursor", reason="SHUTTING_DOWN") \
                from None
