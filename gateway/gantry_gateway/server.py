"""Run the gateway with uvicorn inside an existing event loop (beside grpc.aio), or alone in front of a remote.

    http = HttpServer(gateway, "127.0.0.1:8080")
    await http.start()     # bound (OSError if the address is taken); http.port is the real port
    ...
    await http.stop()      # stop accepting, finish in-flight responses

We bind the socket ourselves so a taken address is an OSError for the CLI's one-line message (uvicorn would
call sys.exit), and we leave signal handling to the caller (`gantry serve` owns SIGTERM/SIGINT).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn

from gantry_server.services.registry import SERVICES

from .app import Gateway
from .dispatch import InProcessDispatcher, RemoteDispatcher


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the host process handles signals
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return None


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
    def __init__(self, app, addr: str) -> None:
        self.app = app
        self.addr = addr
        self.port: int | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        sock = _bind(self.addr)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, loop="none", lifespan="off", log_config=None, access_log=False,
                                http="httptools", ws="none", timeout_keep_alive=120,
                                h11_max_incomplete_event_size=1 << 20)
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
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
        except asyncio.TimeoutError:
            self._server.force_exit = True
            await self._task
        self._server = None
        self._task = None


def in_process_gateway(gantry_app, **kw) -> Gateway:
    """The gateway `gantry serve` runs: in-process dispatch through the app's interceptor chain."""
    return Gateway.for_services([s.descriptor for s in SERVICES],
                                InProcessDispatcher(gantry_app.servicers, gantry_app.interceptors), **kw)


def remote_gateway(upstream: str, **kw) -> Gateway:
    """`gantry gateway --upstream host:port`: the same routes, each call over a gRPC channel."""
    return Gateway.for_services([s.descriptor for s in SERVICES], RemoteDispatcher(upstream), **kw)
