"""A fault-injecting TCP proxy (loopback only) between Gantry and a fake provider, in the spirit of toxiproxy.

Modes, switched at any time (`proxy.mode = ...`), applied to each new connection:
- "pass": bytes flow both ways;
- "latency": every chunk upstream waits `latency` seconds first;
- "reset": the connection is accepted and closed at once (connection reset);
- "blackhole": accepted, read, never answered (the client's own timeout ends it);
- "lose_response": the request reaches the provider, which acts on it, but its answer is dropped and the
  connection closed (a create that succeeded at the provider whose answer is lost).
Connection-level faults (reset, blackhole, lost answers) are what a network does; 5xx bursts are the fake's own
`fail_next`.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

MODES = ("pass", "latency", "reset", "blackhole", "lose_response")


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.latency = 0.5
        self.port: int | None = None
        self.counts: Counter[str] = Counter()  # mode -> connections that met it
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def set_mode(self, mode: str) -> None:
        """Switch, and cut the connections open now, so pooled keep-alive connections meet the new mode too."""
        assert mode in MODES, mode
        self.mode = mode
        for task in list(self._tasks):
            task.cancel()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._handle(reader, writer, self.mode))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, reader, writer, mode: str) -> None:
        self.counts[mode] += 1
        try:
            if mode == "reset":
                sock = writer.get_extra_info("socket")
                if sock is not None:  # RST, not FIN
                    import socket, struct  # noqa: E401, PLC0415
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
                return
            if mode == "blackhole":
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            try:
                upstream = asyncio.create_task(self._pipe(reader, up_writer, self.latency if mode == "latency" else 0))
                if mode == "lose_response":
                    await up_reader.read(65536)  # the provider answered (it acted on the request): drop it
                    upstream.cancel()
                    return
                await self._pipe(up_reader, writer, 0)
                upstream.cancel()
            finally:
                up_writer.close()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(reader, writer, delay: float) -> None:
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
