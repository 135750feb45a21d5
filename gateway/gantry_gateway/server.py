"""Run the gateway with uvicorn inside an existing event loop (beside grpc.aio), or alone in front of a remote.

    http = HttpServer(gateway, "127.0.0.1:8080")
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

import socketio
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


class _TlsHttpProtocol(HttpToolsProtocol):
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


def _bind(addr: str) -> socket.socket:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on GANTRY_HTTP_ADDR={addr}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpServer:
    def __init__(self, app, addr: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.addr = addr
        self.ssl_context = ssl_context  # HTTPS (and mTLS when it requires client certificates) when given
        self.port: int | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        sock = _bind(self.addr)
        self.port = sock.getsockname()[1]
        # proxy_headers=False: uvicorn must not rewrite the client address from X-Forwarded-For on its own; the
        # gateway's trusted-proxy rule (GANTRY_TRUSTED_PROXIES) decides.
        tls = self.ssl_context is not None
        config = uvicorn.Config(_with_client_cert(self.app) if tls else self.app, loop="none", lifespan="off",
                                log_config=None, access_log=False, proxy_headers=False,
                                http=_TlsHttpProtocol if tls else "httptools", ws="websockets-sansio",
                                timeout_keep_alive=120, h11_max_incomplete_event_size=1 << 20)
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
