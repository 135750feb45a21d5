"""Run the gateway with uvicorn inside an existing event loop (beside grpc.aio), or alone in front of a remote.

    http = HttpServer(gateway, "127.0.0.1:8080", limits=HttpLimits.for_settings(settings))
    await http.start()     # bound (OSError if the address is taken); http.port is the real port
    ...
    await http.stop()      # stop accepting, finish in-flight responses

With an `ssl_context` (gantry_server/tls.py) the port serves HTTPS, and, when the context requires client
certificates, the verified one reaches handlers through `GatewayContext.auth_context()` as on gRPC.

We bind the socket ourselves so a taken address is an OSError for the CLI's one-line message (uvicorn would
call sys.exit), and we leave signal handling to the caller (`gantry serve` owns SIGTERM/SIGINT).

In-process, the same port also serves the miners' Socket.IO feed at /socket.io/ (websocket transport only;
gantry_server.domain.events.socketio_adapter): one path-prefix test sends /socket.io/ to python-socketio and
every other request straight to the gateway. Websockets use websockets' sans-I/O protocol ("websockets-sansio"; the
"websockets" one is its deprecated legacy API); HTTP parsing stays httptools.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass

import socketio
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gantry_server import tracing
from gantry_server.domain.events.socketio_adapter import MinerSockets
from gantry_server.interceptors.auth import AuthInterceptor
from gantry_server.services.registry import SERVICES

from .app import Gateway
from .browser import BrowserGuard
from .context import tls_client_cert
from .dispatch import InProcessDispatcher, RemoteDispatcher


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the host process handles signals
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return None


@dataclass(frozen=True)
class HttpLimits:
    """What one REST client may hold (Settings: GANTRY_HTTP_HEADER_TIMEOUT_SECONDS, GANTRY_HTTP_IDLE_TIMEOUT_SECONDS,
    GANTRY_HTTP_MAX_CONNECTIONS).

    - header_timeout: a request's line and headers must arrive within this time of its first byte (or of the
      connection's opening), and its body within the same time again after the headers; otherwise the
      connection is closed (slowloris, or a client that connects and says nothing).
    - idle_timeout: a keep-alive connection with no request in progress is closed after this long.
    - max_connections: connections of this process beyond this (websockets included) get `503` and are closed.
    """

    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 4096

    @classmethod
    def for_settings(cls, settings) -> "HttpLimits":
        return cls(settings.http_header_timeout_seconds, settings.http_idle_timeout_seconds,
                   settings.http_max_connections)


_OVERLOADED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
               b"content-length: 20\r\nconnection: close\r\n\r\ntoo many connections")


class _OneWrite:
    """The transport as a request's response cycle sees it: the response head is held back and written together
    with the first body bytes, so a small response is one send() instead of two (a syscall is the largest
    single cost of a small response: ~20 % of GET /health). Everything else goes straight through."""

    __slots__ = ("_transport", "_head", "_held")

    def __init__(self, transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._held = False

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif not self._held and data[:9] == b"HTTP/1.1 " and data[9:13] != b"100 ":  # the head, once
            self._held = True
            self._head = data
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)


class _GuardedHttpProtocol(HttpToolsProtocol):
    """httptools with a deadline on reading each request (head, then body) and a cap on open connections.

    uvicorn closes a keep-alive connection only between requests (its `timeout_keep_alive`, our idle timeout),
    and stops that timer at the first byte of the next request: a client that then sends nothing more, or
    that connects and never writes, held the connection forever."""

    limits = HttpLimits()
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.write(_OVERLOADED)
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        cycle = self.cycle
        super().on_headers_complete()
        if self.parser is not None and not self.parser.should_upgrade():
            self._arm()  # the body's turn; on_message_complete (at once for a GET) ends it
            if self.cycle is not cycle and self.scope["method"] != "HEAD":  # HEAD: no body write carries it
                self.cycle.transport = _OneWrite(self.transport)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.limits.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


class _TlsHttpProtocol(_GuardedHttpProtocol):
    """httptools plus the ASGI TLS extension: the client certificate the handshake verified, per request."""

    _tls: dict | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self._tls = {"server_cert": None, "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
                     "client_cert_name": None, "client_cert_error": None, "tls_version": None, "cipher_suite": None}

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}


def _with_client_cert(app):
    """Hand the TLS client certificate to the dispatch below (GatewayContext.auth_context), as gRPC does."""
    async def asgi(scope, receive, send) -> None:
        chain = (scope.get("extensions") or {}).get("tls", {}).get("client_cert_chain") or []
        token = tls_client_cert.set(chain[0] if chain else None)
        try:
            await app(scope, receive, send)
        finally:
            tls_client_cert.reset(token)
    return asgi


def _bind(addr: str, *, reuse_port: bool = False) -> socket.socket:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # `gantry serve --workers N`: the kernel spreads connections over the workers' sockets
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on GANTRY_HTTP_ADDR={addr}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpServer:
    reuse_port = False  # set by a `gantry serve` worker before start (gantry_server/workers.py)

    def __init__(self, app, addr: str, *, ssl_context: ssl.SSLContext | None = None,
                 limits: HttpLimits | None = None) -> None:
        self.app = app
        self.addr = addr
        self.ssl_context = ssl_context  # HTTPS (and mTLS when it requires client certificates) when given
        self.limits = limits or HttpLimits()
        self.port: int | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        sock = _bind(self.addr, reuse_port=self.reuse_port)
        self.port = sock.getsockname()[1]
        # proxy_headers=False: uvicorn must not rewrite the client address from X-Forwarded-For on its own; the
        # gateway's trusted-proxy rule (GANTRY_TRUSTED_PROXIES) decides.
        tls = self.ssl_context is not None
        protocol = type("HttpProtocol", (_TlsHttpProtocol if tls else _GuardedHttpProtocol,), {"limits": self.limits})
        app = tracing.asgi(_with_client_cert(self.app) if tls else self.app)  # a span per request, when on
        config = uvicorn.Config(app, loop="none", lifespan="off",
                                log_config=None, access_log=False, proxy_headers=False,
                                http=protocol, ws="websockets-sansio",
                                timeout_keep_alive=self.limits.idle_timeout, h11_max_incomplete_event_size=1 << 20,
                                server_header=False)
        config.load()
        config.ssl = self.ssl_context
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raise the start-up failure
                raise OSError(f"HTTP server on {self.addr} stopped during start-up")
            await asyncio.sleep(0.005)

    @property
    def bound_addr(self) -> str:
        host = self.addr.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        close = getattr(self.app, "close", None)  # Socket.IO sessions: drop them so miners reconnect elsewhere
        if close is not None:
            await close()
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
        except asyncio.TimeoutError:
            self._server.force_exit = True
            await self._task
        self._server = None
        self._task = None


def in_process_gateway(gantry_app, **kw):
    """The gateway `gantry serve` runs: in-process dispatch through the app's interceptor chain, and the miners'
    Socket.IO feed at /socket.io/ when the app has an event hub (rt.events)."""
    kw.setdefault("browser", BrowserGuard.for_settings(gantry_app.settings))  # Origin/Host/Content-Type rules
    gateway = Gateway.for_services([s.descriptor for s in SERVICES],
                                   InProcessDispatcher(gantry_app.servicers, gantry_app.interceptors), **kw)
    rt = gantry_app.rt
    if rt is None or getattr(rt, "events", None) is None:
        return gateway
    return MinerSocketApp(gateway, gantry_app)


_SOCKETIO_PREFIX = "/socket.io"


class MinerSocketApp(socketio.ASGIApp):
    """The gateway plus Socket.IO at /socket.io/ for stock miner agents. `sockets` is the protocol adapter (its
    `auth_timeout` may be changed while running)."""

    def __init__(self, gateway: Gateway, gantry_app) -> None:
        self.sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"], cors_allowed_origins=[],
                                        logger=False, engineio_logger=False)
        auth = next(i for i in gantry_app.interceptors if isinstance(i, AuthInterceptor))
        self.sockets = MinerSockets.for_runtime(
            self.sio, lambda: gantry_app.rt, auth.check_registered,
            auth_timeout=gantry_app.settings.miner.socketio_auth_timeout_seconds)
        self.gateway = gateway
        super().__init__(self.sio, other_asgi_app=gateway, socketio_path="socket.io")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(_SOCKETIO_PREFIX):
            # REST pays one prefix test and one await (~0.4 us measured; engineio's own routing ~0.7 us)
            await self.gateway(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def close(self) -> None:
        await self.sockets.close()


def remote_gateway(upstream: str, *, credentials=None, **kw) -> Gateway:
    """`gantry gateway --upstream host:port`: the same routes, each call over a gRPC channel (TLS when
    `credentials`, grpc.ChannelCredentials, are given)."""
    return Gateway.for_services([s.descriptor for s in SERVICES], RemoteDispatcher(upstream, credentials), **kw)
