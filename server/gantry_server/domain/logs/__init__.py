"""Pod logs of a chute instance (StreamLogs, reference Part 2 §5.15): who may read them, where they come from, and
the relay from the instance's log endpoint to the caller.

Access: the `chutes_support` role and the `subnet_admin` role read any instance's logs; anyone else only those of
a private chute they own. Gantry has no chute-shares table, so "or has a share on it" has nothing to look up;
everyone else gets the reference's 403 words (FORBIDDEN).

Source: `http://{instance.host}:{external port mapped from internal 8001}/logs/stream?backfill=N`, signed as the
reference's validator signs outbound calls (§1.7, purpose `chutes`) when a key is configured
(`GANTRY_VALIDATOR_KEY_URI`); Gantry has no validator keypair of its own, so without one the call goes unsigned.

Relay: the body is read one socket read (at most 64 KiB) at a time, and only as fast as the caller takes messages
(the generator pulls the next read after the previous messages were sent); it is split into SSE events (a blank
line ends one) and yielded one event per message with its bytes unchanged (`raw`) and the parsed `log`, timestamp
and cursor. At most MAX_EVENT_BYTES of an unfinished event are held; a longer one is passed on in pieces. Closing
the generator (the caller went away) closes the upstream connection at once: connections are never pooled. A
connect timeout, an idle timeout (no byte for that long), an HTTP error status or a body cut short all raise
LogsUnavailable with the reason.

Startup logs (StreamStartupLogs, the miner CLI's `GET /miner/instance_logs`, reference §6.14): the same relay
with backfill 10000, each line re-framed by `startup_frame` as `data: {...,"cursor":"YYYY-MM-DDTHH:MM:SS"}`;
`StartupFilter` skips what a resumed stream already showed and ends after the activation sentinel.
"""
from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx

MAX_BACKFILL = 10_000
DEFAULT_BACKFILL = 100
LOG_PORT = 8001  # the chute's internal port serving /logs/stream
SUPPORT_ROLE = "chutes_support"
ADMIN_ROLE = "subnet_admin"
FORBIDDEN = "You may only view logs for your own (private) chutes."
SIGNATURE_PURPOSE = "chutes"
MAX_EVENT_BYTES = 64 << 10  # an unfinished event held at most; longer ones are passed on in pieces

_SEPARATOR = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?")


class LogsUnavailable(Exception):
    """The log endpoint could not be reached, refused, went silent or broke off; the message says which."""


def may_view(*, user_id: str | None, roles: Iterable[str], chute_owner: str, chute_public: bool) -> bool:
    roles = set(roles or ())
    if SUPPORT_ROLE in roles or ADMIN_ROLE in roles:
        return True
    return not chute_public and user_id is not None and user_id == chute_owner


def log_port(port_mappings: Iterable[Mapping[str, Any]]) -> int | None:
    """The external port of the instance's internal 8001 (tcp), or None when it maps none."""
    for m in port_mappings or ():
        if m.get("internal_port") == LOG_PORT and str(m.get("proto", "tcp")).lower() == "tcp":
            return int(m["external_port"])
    return None


def log_url(host: str, port: int, backfill: int) -> str:
    from ..attestation.evidence import _url_host  # the one rule for a host in a URL (IPv6 in brackets)

    return f"http://{_url_host(host)}:{port}/logs/stream?backfill={backfill}"


class ValidatorSigner:
    """Outbound headers of reference §1.7: `"{miner_ss58}:{validator_ss58}:{nonce}:{purpose}"` signed by the
    validator key, nonce = unix seconds."""

    def __init__(self, key_uri: str | None) -> None:
        self.keypair = None
        if key_uri:
            from bittensor_wallet import Keypair  # noqa: PLC0415 - only when a key is configured

            self.keypair = (Keypair.create_from_seed(key_uri) if key_uri.startswith("0x")
                            else Keypair.create_from_uri(key_uri))

    def headers(self, *, miner_hotkey: str, now: datetime, purpose: str = SIGNATURE_PURPOSE) -> dict[str, str]:
        if self.keypair is None:
            return {}
        nonce = str(int(now.timestamp()))
        validator = self.keypair.ss58_address
        signature = self.keypair.sign(f"{miner_hotkey}:{validator}:{nonce}:{purpose}".encode()).hex()
        return {"X-Chutes-Validator": validator, "X-Chutes-Miner": miner_hotkey, "X-Chutes-Nonce": nonce,
                "X-Chutes-Signature": signature}


@dataclass(frozen=True)
class LogEvent:
    raw: bytes
    log: str = ""
    timestamp: datetime | None = None
    cursor: str | None = None
    data: str | None = None  # the event's `data:` lines joined; None for an event without data


def parse_event(raw: bytes) -> LogEvent:
    """One SSE event: its `data:` lines joined; `log` from JSON `{"log": ...}` else the data itself."""
    data_lines = []
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.startswith("data:"):
            data_lines.append(line[6:] if line.startswith("data: ") else line[5:])
    if not data_lines:
        return LogEvent(raw=raw)
    data = "\n".join(data_lines)
    log = data
    try:
        value = json.loads(data)
        if isinstance(value, dict) and isinstance(value.get("log"), str):
            log = value["log"]
    except ValueError:
        pass
    timestamp = cursor = None
    if m := _TIMESTAMP.match(log):
        cursor = m.group(1)
        frac = (m.group(2) or "")[:7]  # Python parses at most microseconds
        zone = m.group(3) or "+00:00"
        try:
            timestamp = datetime.fromisoformat(cursor.replace(" ", "T") + frac + ("+00:00" if zone == "Z" else zone))
            timestamp = timestamp.astimezone(timezone.utc)
        except ValueError:
            timestamp = cursor = None
    return LogEvent(raw=raw, log=log, timestamp=timestamp, cursor=cursor, data=data)


class EventSplitter:
    """Bytes in, whole SSE events out (separator included); holds at most MAX_EVENT_BYTES of an unfinished one."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.buffer = b""
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[LogEvent]:
        self.buffer += chunk
        out = []
        while m := _SEPARATOR.search(self.buffer):
            raw, self.buffer = self.buffer[:m.end()], self.buffer[m.end():]
            out.append(parse_event(raw))
        if len(self.buffer) > self.max_event_bytes:  # no separator in sight: pass it on as it is
            out.append(LogEvent(raw=self.buffer))
            self.buffer = b""
        return out

    def rest(self) -> list[LogEvent]:
        raw, self.buffer = self.buffer, b""
        return [parse_event(raw)] if raw else []


def new_client(*, connect_timeout: float, idle_timeout: float) -> httpx.AsyncClient:
    """One client for every stream of a process: no pool limit, no kept-alive connections (a stream's connection
    is closed with it)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=connect_timeout, read=idle_timeout, write=connect_timeout, pool=connect_timeout),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0), follow_redirects=False,
        trust_env=False)


async def relay(client: httpx.AsyncClient, url: str, headers: Mapping[str, str]) -> AsyncIterator[LogEvent]:
    """The log endpoint's events as they come; LogsUnavailable when it cannot be read to its end."""
    try:
        async with client.stream("GET", url, headers={**headers, "Accept": "text/event-stream",
                                                      "Accept-Encoding": "identity"}) as response:
            if response.status_code != 200:
                raise LogsUnavailable(f"log endpoint answered HTTP {response.status_code}")
            splitter = EventSplitter()
            # Whatever one socket read returned (httpcore reads at most 64 KiB): a chunk size here would hold
            # bytes back until that many arrived.
            async for chunk in response.aiter_raw():
                for event in splitter.feed(chunk):
                    yield event
            for event in splitter.rest():
                yield event
    except httpx.ConnectTimeout:
        raise LogsUnavailable("log endpoint connect timed out") from None
    except httpx.ReadTimeout:
        raise LogsUnavailable("log endpoint sent nothing within the idle timeout") from None
    except httpx.ConnectError as exc:
        raise LogsUnavailable(f"log endpoint unreachable: {exc or type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise LogsUnavailable(f"log stream broke off: {exc or type(exc).__name__}") from None


# -- startup logs (GET /miner/instance_logs) ----------------------------------------------------------------------
ACTIVATION_SENTINEL = "Instance activated:"
STARTUP_BACKFILL = 10_000
PUBLIC_ONLY = "Logs are only available for public chutes."
ALREADY_ACTIVATED = "Instance has already been activated; logs are no longer available."
WAITING = "Waiting for instance to be created..."
BAD_CURSOR = "cursor must be an ISO timestamp like 2026-04-01T17:53:05"
_CURSOR = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")


def valid_cursor(cursor: str) -> bool:
    return bool(_CURSOR.match(cursor))


def status_frame(text: str) -> bytes:
    """A plain `data:` line the CLI prints as it is (waiting, failed, already activated)."""
    return b"data: " + text.encode() + b"\n\n"


def startup_frame(event: LogEvent) -> bytes:
    """The line as the CLI reads it: its JSON data with `cursor` added (compact, as the reference's orjson writes
    it); data that is not a JSON object, or a line without a timestamp, passes as `data: <data>`."""
    data = event.data or ""
    if event.cursor is not None:
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        if isinstance(value, dict):
            value["cursor"] = event.cursor
            data = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + data.encode() + b"\n\n"


class StartupFilter:
    """Which relayed events a startup stream sends, and when it is done. Resuming from `cursor`, lines are skipped
    until the first one whose cursor is later than it (lines without a timestamp before that are skipped too: they
    cannot be placed); after that every line goes. `done` once a sent line contained the activation sentinel."""

    def __init__(self, cursor: str | None) -> None:
        self.cursor = cursor
        self.found = cursor is None
        self.done = False

    def admit(self, event: LogEvent) -> bool:
        if self.done or event.data is None or not event.data.strip() or event.data.strip() == ".":
            return False
        if not self.found:
            if event.cursor is None or event.cursor <= self.cursor:
                return False
            self.found = True
        if ACTIVATION_SENTINEL in event.data:
            self.done = True
        return True
