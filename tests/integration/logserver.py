"""An instance's log endpoint on loopback, for StreamLogs tests and bench/logs.py: a real HTTP/1.1 server.

`GET /logs/stream?backfill=N` answers a chunked `text/event-stream`: N history lines at once, then one line every
`interval` seconds, forever. Each event is written in two chunks (split inside the JSON), so a relay that assumed
one event per read would show it. Every connection is recorded: the request's path and headers, the exact bytes
sent, and the moment the peer closed it (observed by reading the socket to EOF, not inferred from a failed write).
Modes: `die_after=K` drops the connection after K live lines without ending the chunked body; `silent=True` sends
the headers and then nothing; `lines=f` makes live line i `f(i)`; `history=H` sends H history lines whatever the
backfill asked.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field


def event(text: str) -> bytes:
    return b"data: " + json.dumps({"log": text}).encode() + b"\n\n"


def live_line(i: int) -> str:
    return f"2026-03-02T12:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z live line {i}"


@dataclass
class Connection:
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    sent: bytearray = field(default_factory=bytearray)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    closed_at: float | None = None


class LogServer:
    def __init__(self, *, interval: float = 0.05, die_after: int | None = None, silent: bool = False,
                 lines=live_line, history: int | None = None) -> None:
        self.interval, self.die_after, self.silent = interval, die_after, silent
        self.lines, self.history = lines, history
        self.connections: list[Connection] = []
        self.connected = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> LogServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        conn = Connection()
        loop = asyncio.get_running_loop()
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            conn.path = head[0].split(" ")[1]
            conn.headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            self.connections.append(conn)
            self.connected.set()

            async def watch_eof():
                try:
                    while await reader.read(1024):
                        pass
                except ConnectionError:
                    pass
                conn.closed_at = loop.time()
                conn.closed.set()

            watcher = asyncio.ensure_future(watch_eof())
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            backfill = int(conn.path.partition("backfill=")[2] or 0) if self.history is None else self.history

            async def send(data: bytes) -> None:
                for piece in (data[:9], data[9:]):
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    conn.sent += piece
                await writer.drain()

            if not self.silent:
                for i in range(backfill):
                    await send(event(f"2026-03-02T11:00:00.{i:06d} history line {i}"))
                i = 0
                while not conn.closed.is_set():
                    await send(event(self.lines(i)))
                    i += 1
                    if self.die_after is not None and i >= self.die_after:
                        writer.transport.abort()
                        break
                    await asyncio.sleep(self.interval)
            await watcher
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # the server shutting down; end quietly (asyncio logs a cancelled handler)
            pass
        finally:
            if conn.closed_at is None:
                conn.closed_at = loop.time()
                conn.closed.set()
            writer.close()
            self._tasks.discard(asyncio.current_task())
