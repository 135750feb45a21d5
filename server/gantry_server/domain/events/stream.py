"""The Redis Stream of events: appending (relay), reading (hub), cursors. All Redis I/O of the event feed is here.

Entry fields: reason, message (absent when None), data (JSON), recipients (JSON list, or "" for every miner),
created_at (epoch ms), outbox_id. Entry ids come from Gantry's clock (`ms-seq`, never going back), so trimming by
age (MINID) follows the same clock as everything else.

Exactly once: the append script first sets `events_relayed(outbox_id)` NX and skips a row whose marker exists,
so a relay that died between XADD and deleting the outbox rows (its transaction rolled back) re-runs harmlessly.
The same script trims by length and age and remembers the newest trimmed id (`events_trimmed()`): a cursor
older than that id has lost events, which is how `CursorTooOld` is judged exactly.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import ResponseError

from ...store import redis_keys

_CURSOR = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")


@dataclass(frozen=True)
class StreamEvent:
    """One event as read from the stream. `cursor` is its stream id: pass it back to resume after it."""

    cursor: str
    reason: str
    message: str | None
    data: dict[str, Any]
    recipients: tuple[str, ...] | None  # None: every miner
    created_at: datetime

    def visible_to(self, hotkey: str) -> bool:
        """Public events are for everyone; targeted ones only for their recipients."""
        return self.recipients is None or hotkey in self.recipients


# -- cursors -----------------------------------------------------------------------------------------------------------
def parse_cursor(text: str) -> str:
    """A stream id ("1767225600000-3", or "1767225600000" meaning "-0"), or "0" for "everything retained";
    ValueError otherwise."""
    m = _CURSOR.match(text)
    if m is None:
        raise ValueError("must be a cursor returned by WatchEvents (a stream id such as 1767225600000-0) or 0")
    if text == "0":
        return "0"
    return f"{int(m.group(1))}-{int(m.group(2) or 0)}"


def position(cursor: str) -> tuple[int, int]:
    """Order key of a cursor; "0" sorts before every entry."""
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq or 0)


def cursor_of(pos: tuple[int, int] | None) -> str:
    return "0-0" if pos is None else f"{pos[0]}-{pos[1]}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def event_of(entry_id, fields: dict) -> StreamEvent:
    f = {_text(k): _text(v) for k, v in fields.items()}
    recipients = f.get("recipients") or ""
    return StreamEvent(
        cursor=_text(entry_id),
        reason=f["reason"],
        message=f.get("message"),
        data=json.loads(f["data"]),
        recipients=tuple(json.loads(recipients)) if recipients else None,
        created_at=datetime.fromtimestamp(int(f["created_at"]) / 1000, tz=timezone.utc),
    )


# -- reading -----------------------------------------------------------------------------------------------------------
def dedicated(redis: Redis) -> Redis:
    """A client with a connection of its own for XREAD BLOCK, so a blocked read never holds a shared one."""
    pool = redis.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": None}  # BLOCK bounds the wait; no read timeout
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, max_connections=2, **kwargs))


async def last_id(redis: Redis) -> str:
    """Where "$" is now: the newest entry's id, or the newest trimmed one when every entry was trimmed ("0-0"
    when there was never any)."""
    newest = await redis.xrevrange(redis_keys.events_stream(), count=1)
    trimmed = await trimmed_id(redis)
    ids = ([_text(newest[0][0])] if newest else []) + ([trimmed] if trimmed else [])
    return max(ids, key=position, default="0-0")


async def was_reset(redis: Redis, after: str) -> bool:
    """True when the stream no longer knows `after`: deleted, or recreated with ids below it (Redis flushed or
    restarted without its data). A reader waiting after `after` would then miss every new entry."""
    if after == "0-0":
        return False
    try:
        info = await redis.xinfo_stream(redis_keys.events_stream())
    except ResponseError:  # no such key
        return True
    return position(_text(info["last-generated-id"])) < position(after)


async def trimmed_id(redis: Redis) -> str | None:
    """The newest trimmed id (None: nothing trimmed yet)."""
    trimmed = await redis.get(redis_keys.events_trimmed())
    return _text(trimmed) if trimmed is not None else None


async def read_blocking(reader: Redis, after: str, block_ms: int, count: int = 1000) -> list[StreamEvent]:
    """Entries after `after`, waiting up to `block_ms` for the first one."""
    reply = await reader.xread({redis_keys.events_stream(): after}, count=count, block=block_ms)
    if not reply:
        return []
    return [event_of(entry_id, fields) for entry_id, fields in reply[0][1]]


async def read_after(redis: Redis, after: str, count: int) -> tuple[list[StreamEvent], str | None]:
    """Up to `count` entries after `after` (exclusive), and the newest trimmed id (None: nothing trimmed yet)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xrange(redis_keys.events_stream(), min=f"({after}", max="+", count=count)
        pipe.get(redis_keys.events_trimmed())
        entries, trimmed = await pipe.execute()
    return [event_of(i, f) for i, f in entries], (_text(trimmed) if trimmed is not None else None)


async def is_trimmed(redis: Redis, cursor: str) -> bool:
    """True when events after `cursor` may have been trimmed: the cursor is older than the newest trimmed id."""
    trimmed = await trimmed_id(redis)
    return trimmed is not None and position(cursor) < position(trimmed)


# -- appending (the relay) -------------------------------------------------------------------------------------------
# KEYS: stream, trim mark, then one relayed marker per row.
# ARGV: now_ms, max_len, min_ms (entries older are trimmed; 0: none), marker ttl (s), then 7 values per row:
#       reason, has_message ("1"/"0"), message, data, recipients, created_at, outbox_id.
# Returns one value per row: the new entry id, or "" when that row had been relayed already.
_APPEND = """
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function newer(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am > bm or (am == bm and as > bs)
end
local stream, mark = KEYS[1], KEYS[2]
local now_ms, max_len, min_ms, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local last_ms, last_seq = 0, 0
if redis.call('EXISTS', stream) == 1 then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last_ms, last_seq = parse(info[i + 1]) end
  end
end
local ids = {}
local rows = (#ARGV - 4) / 7
for r = 0, rows - 1 do
  local a = 4 + r * 7
  if redis.call('SET', KEYS[3 + r], '1', 'NX', 'EX', ttl) then
    if now_ms > last_ms then last_ms, last_seq = now_ms, 0 else last_seq = last_seq + 1 end
    local id = string.format('%.0f-%.0f', last_ms, last_seq)
    if ARGV[a + 2] == '1' then
      redis.call('XADD', stream, id, 'reason', ARGV[a + 1], 'message', ARGV[a + 3], 'data', ARGV[a + 4],
                 'recipients', ARGV[a + 5], 'created_at', ARGV[a + 6], 'outbox_id', ARGV[a + 7])
    else
      redis.call('XADD', stream, id, 'reason', ARGV[a + 1], 'data', ARGV[a + 4],
                 'recipients', ARGV[a + 5], 'created_at', ARGV[a + 6], 'outbox_id', ARGV[a + 7])
    end
    ids[r + 1] = id
  else
    ids[r + 1] = ''
  end
end
local trimmed = nil
local n = redis.call('XLEN', stream)
if n > max_len then
  local gone = redis.call('XRANGE', stream, '-', '+', 'COUNT', n - max_len)
  trimmed = gone[#gone][1]
  redis.call('XTRIM', stream, 'MAXLEN', max_len)
end
if min_ms > 0 then
  local min_id = string.format('%.0f-0', min_ms)
  local older = redis.call('XREVRANGE', stream, '(' .. min_id, '-', 'COUNT', 1)
  if #older > 0 then
    if trimmed == nil or newer(older[1][1], trimmed) then trimmed = older[1][1] end
    redis.call('XTRIM', stream, 'MINID', min_id)
  end
end
if trimmed ~= nil then
  local prev = redis.call('GET', mark)
  if not prev or newer(trimmed, prev) then redis.call('SET', mark, trimmed) end
end
return ids
"""


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


async def append(redis: Redis, rows: Sequence, *, now: datetime, max_len: int, max_age_seconds: float) -> list[str]:
    """XADD each outbox row (in order) not yet relayed, then trim; one atomic script. `rows` carry id, reason,
    message, data, recipients, created_at. Returns per row its new entry id, or "" if it was relayed before.
    Called with no rows it only trims by age."""
    keys = [redis_keys.events_stream(), redis_keys.events_trimmed()]
    argv: list = [_ms(now), max_len, max(0, _ms(now) - int(max_age_seconds * 1000)), max(1, int(max_age_seconds))]
    for row in rows:
        keys.append(redis_keys.events_relayed(row.id))
        argv += [row.reason, "1" if row.message is not None else "0", row.message or "",
                 json.dumps(row.data, separators=(",", ":")),
                 json.dumps(list(row.recipients), separators=(",", ":")) if row.recipients is not None else "",
                 _ms(row.created_at), row.id]
    script = redis.register_script(_APPEND)
    return [_text(i) for i in await script(keys=keys, args=argv)]
