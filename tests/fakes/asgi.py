"""A tiny ASGI toolkit for fake provider servers: request/response, a route table, and a runner.

`FakeHttpServer` serves an ASGI app on 127.0.0.1 at an ephemeral port with uvicorn, either as a task in the
running event loop (`await server.start()`, works with pytest-asyncio's session loop, and a Gantry *process*
started by the test can use it as long as the test awaits rather than blocks) or in a background thread with its
own loop (`server.start_thread()`, for synchronous callers). The socket is bound before serving starts, so the
URL is known, and connectable, as soon as `start` returns.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

import uvicorn


@dataclass
class Request:
    method: str
    path: str  # without the server's mount prefix
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # path parameters of the matched route

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-serialised unless bytes/str
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        if self.body is None and self.status == 204:
            return b"", "application/json"
        return json.dumps(self.body).encode(), "application/json"


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Routes like "/instances/{id}/"; the route *name* ("GET /instances/{id}/") is what fakes count and inject
    failures by."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern, str, Handler]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")
        self._routes.append((method, pattern, f"{method} {template}", handler))

    def match(self, method: str, path: str) -> tuple[str, Handler, dict[str, str]] | None:
        for m, pattern, name, handler in self._routes:
            found = pattern.match(path)
            if found and m == method:
                return name, handler, found.groupdict()
        return None


class AsgiApp:
    """ASGI entry point: reads the request, strips `prefix`, calls `dispatch`."""

    def __init__(self, dispatch: Callable[[Request], Awaitable[Response]], prefix: str = "") -> None:
        self._dispatch = dispatch
        self._prefix = prefix.rstrip("/")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if self._prefix and not (path == self._prefix or path.startswith(self._prefix + "/")):
            response = Response(404, "404 page not found")
        else:
            request = Request(method=scope["method"], path=path[len(self._prefix):] or "/",
                              query=dict(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)),
                              headers={k.decode().lower(): v.decode() for k, v in scope["headers"]}, body=body)
            response = await self._dispatch(request)
        payload, content_type = response.encode()
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(payload)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in response.headers.items()]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class _Server(uvicorn.Server):
    _wake: asyncio.Event | None = None

    @contextlib.contextmanager
    def capture_signals(self):  # the test process keeps its own signal handlers
        yield

    async def main_loop(self) -> None:
        """uvicorn polls `should_exit` every 0.1 s; waking on an event makes stopping a fake instant."""
        self._wake = asyncio.Event()
        while not await self.on_tick(0):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    async def shutdown(self, sockets=None) -> None:
        """uvicorn's own shutdown sleeps a fixed 0.1 s first; a fake's idle keep-alive connections close at once."""
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        for _ in range(400):  # in-flight requests get up to 2 s
            if not self.server_state.connections and not self.server_state.tasks:
                break
            await asyncio.sleep(0.005)

    def exit(self) -> None:
        self.should_exit = True
        if self._wake is not None:
            self._wake.set()


class FakeHttpServer:
    """Runs an ASGI app on 127.0.0.1:<ephemeral port>; see the module docstring for the two modes."""

    def __init__(self, app: Callable, prefix: str = "") -> None:
        self._app = app
        self._prefix = prefix.rstrip("/")
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop serving requests (and running hooks)

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("server not started")
        return self._sock.getsockname()[1]

    @property
    def base_url(self) -> str:
        """The URL to configure as the provider's base URL (includes the provider's path prefix)."""
        return f"http://127.0.0.1:{self.port}{self._prefix}"

    def _prepare(self) -> _Server:
        if self._server is not None:
            raise RuntimeError("server already started")
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it every
        # response (headers and body written separately) waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._sock = sock
        config = uvicorn.Config(self._app, log_config=None, access_log=False, lifespan="off", ws="none",
                                timeout_graceful_shutdown=2, log_level="warning", http="h11")
        self._server = _Server(config)
        return self._server

    async def start(self) -> str:
        """Serve from the running event loop; returns base_url."""
        server = self._prepare()
        self.loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(server.serve(sockets=[self._sock]))
        while not server.started:
            if self._task.done():
                self._task.result()  # raises the start-up error
            await asyncio.sleep(0.005)
        return self.base_url

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.exit()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._close()

    def start_thread(self) -> str:
        """Serve from a background thread with its own event loop; returns base_url."""
        server = self._prepare()
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                self.loop = asyncio.get_running_loop()
                ready.set()
                await server.serve(sockets=[self._sock])

            asyncio.run(main())

        self._thread = threading.Thread(target=run, name="fake-provider", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.base_url

    def stop_thread(self) -> None:
        if self._thread is None:
            return
        self.loop.call_soon_threadsafe(self._server.exit)
        self._thread.join(10)
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._server = self._task = self._thread = None
