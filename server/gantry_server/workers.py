"""`gantry serve --workers N` (GANTRY_WORKERS): N server processes on the same gRPC and REST ports.

One process alone (N = 1) is the server itself, exactly as before. With N > 1 the `gantry serve` process is a
supervisor that serves nothing:

- it reserves both ports (SO_REUSEPORT, bound but not listening, so port 0 is resolved once and the port stays
  ours between worker restarts; an address already taken ends the start with one line, exit 2);
- it starts the embedded PostgreSQL and Redis once (when no URL is configured) and creates the data dir's
  generated secrets (admin token, KEK), then starts the workers as fresh interpreters (`python -m
  gantry_server.cli serve`, never a fork of a process that imported gRPC) with the servers' URLs in
  `embedded.SHARED_ENV`: the first alone (it applies the migrations, and a bad setting or a dependency that is
  down is reported once, by it), the others once it serves; the kernel spreads connections over the workers'
  listening sockets;
- every worker runs the whole app: migrations (one at a time: advisory lock), background loops (each is
  one per deployment already, by advisory locks and leases, as for two replicas), and its own event-loop lag
  monitor;
- readiness: a shared table, one byte per worker (an unlinked file each worker maps), which each worker sets
  when it serves and clears when it stops, and the supervisor clears when a worker dies. Each worker's health
  (gRPC health, /health, /ready) is SERVING only while every byte is set;
- a worker that dies after the group came up is reported and started again (after 1 s, doubling up to 30 s
  while it keeps failing); a worker that exits before the group first came up (a bad setting, a dependency
  down) stops the group with that worker's exit code. Five exits in a row without reaching SERVING stop it too;
- SIGTERM/SIGINT: every worker gets SIGTERM and drains within GANTRY_SHUTDOWN_GRACE_SECONDS; stragglers are
  killed 10 s after that; then the embedded servers stop. Workers also stop on their own if the supervisor
  disappears (SIGKILL), so none is left serving without it.

The default count is the number of cores this process may run on, except with the simulated provider, whose
machines live in the memory of the process that created them: it runs one worker, and refuses more.
"""
from __future__ import annotations

import asyncio
import json
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from prometheus_client import Info

from . import embedded
from .config import ConfigError, Settings

log = logging.getLogger(__name__)

WORKER_ENV = "GANTRY_WORKER"  # JSON {"index", "count", "fd", "parent"}: set by the supervisor for each worker
WORKER_INFO = Info("gantry_worker", "This serve process: its index among the workers and its PID")

STARTING, SERVING, STOPPING = 0, 1, 2  # a worker's byte in the table
POLL_SECONDS = 0.1
KILL_AFTER_GRACE_SECONDS = 10.0
MAX_FAILED_STARTS = 5


def worker_count(settings: Settings) -> int:
    simulated = "simulated" in settings.broker.providers
    if settings.workers is None:
        return 1 if simulated else cores()
    if settings.workers > 1 and simulated:
        raise ConfigError("GANTRY_WORKERS/--workers above 1 cannot run the simulated provider (its machines live in "
                          "one process): use one worker, or list real providers in GANTRY_BROKER_PROVIDERS")
    return settings.workers


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- in each worker --------------------------------------------------------------------------------------------


@dataclass
class WorkerSeat:
    """This worker's place in the group (from WORKER_ENV)."""

    index: int
    count: int
    fd: int
    parent: int

    @classmethod
    def from_env(cls) -> "WorkerSeat | None":
        raw = os.environ.get(WORKER_ENV)
        return cls(**json.loads(raw)) if raw else None


class Peers:
    """The group's readiness table seen from one worker: `app.peers` (GantryApp) calls `start` once the app is
    ready and `stop` first thing when it stops; between them health follows every worker's byte."""

    def __init__(self, seat: WorkerSeat, on_orphaned) -> None:
        self.seat = seat
        self._map = mmap.mmap(seat.fd, seat.count)
        self._on_orphaned = on_orphaned  # called once when the supervisor is gone
        self._task: asyncio.Task | None = None

    def all_serving(self) -> bool:
        return self._map[:] == bytes([SERVING]) * self.seat.count

    def _mark(self, state: int) -> None:
        self._map[self.seat.index] = state

    async def start(self, app) -> None:
        self._mark(SERVING)
        app.rt.state.peers_ready = self.all_serving()
        self._task = asyncio.create_task(self._follow(app), name="gantry-peers")

    async def _follow(self, app) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if os.getppid() != self.seat.parent:
                self._on_orphaned()
                return
            ok = self.all_serving()
            if app.rt is not None and ok != app.rt.state.peers_ready:
                app.rt.state.peers_ready = ok
                log.info("workers serving" if ok else "a worker is not serving", extra={"worker": self.seat.index})
                await app.publish_health()

    async def stop(self) -> None:
        self._mark(STOPPING)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


# -- the supervisor --------------------------------------------------------------------------------------------


def _split(addr: str) -> tuple[str, str, int, int]:
    host, _, port = addr.rpartition(":")
    bare = host.strip("[]")
    if bare == "localhost":
        bare = "127.0.0.1"
    return host, bare, int(port), socket.AF_INET6 if ":" in bare else socket.AF_INET


def check_free(name: str, addr: str) -> int:
    """The port `addr` would get (its own, or a free one for port 0); OSError with one line if it is taken.

    gRPC's own bind failure comes with a C-core error line on stderr; this check comes first."""
    _, bare, port, family = _split(addr)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((bare, port))
            return probe.getsockname()[1]
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {name}={addr}: {exc.strerror}") from None


def _reserve(name: str, addr: str) -> tuple[socket.socket, str]:
    """Bind `addr` (not listening) with SO_REUSEPORT; returns the socket and host:port with the real port.

    First a plain bind: SO_REUSEPORT alone would join a group already listening there (another gantry)."""
    real = check_free(name, addr)
    host, bare, _, family = _split(addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bare, real))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {name}={addr}: {exc.strerror}") from None
    return sock, f"{host}:{real}"


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.failed_starts = 0
        self.restart_at: float | None = None
        self.served = False


def supervise(settings: Settings, count: int) -> int:
    """Run `count` workers until SIGTERM/SIGINT; the exit code of `gantry serve`."""
    from . import tls
    from .app import _admin_token, _keyring
    from .broker.wiring import check_simulated_is_local

    tls.refuse_public_plaintext(settings, {"GANTRY_GRPC_ADDR": settings.grpc_addr,
                                           "GANTRY_HTTP_ADDR": settings.http_addr})
    check_simulated_is_local(settings)
    reserved: list[socket.socket] = []
    services: embedded.EmbeddedServices | None = None
    table = tempfile.TemporaryFile(prefix="gantry-workers-")
    stop_signal: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stop_signal.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    workers = [_Worker(i) for i in range(count)]
    try:
        sock, grpc_addr = _reserve("GANTRY_GRPC_ADDR", settings.grpc_addr)
        reserved.append(sock)
        http_addr = None
        if settings.http_addr:
            sock, http_addr = _reserve("GANTRY_HTTP_ADDR", settings.http_addr)
            reserved.append(sock)
        if settings.embedded:
            services = embedded.start(settings.data_dir, need_postgres=settings.database_url is None,
                                      need_redis=settings.redis_url is None)
        # Created once here, so that workers starting together do not race to create (and read) them.
        _admin_token(settings)
        _keyring(settings)
        table.truncate(count)
        env = dict(os.environ, GANTRY_GRPC_ADDR=grpc_addr, GANTRY_WORKERS=str(count))
        if http_addr:
            env["GANTRY_HTTP_ADDR"] = http_addr
        if services is not None:
            env[embedded.SHARED_ENV] = json.dumps({"database_url": services.database_url,
                                                   "redis_url": services.redis_url})
        view = mmap.mmap(table.fileno(), count)

        def spawn(w: _Worker) -> None:
            view[w.index] = STARTING
            seat = {"index": w.index, "count": count, "fd": table.fileno(), "parent": os.getpid()}
            w.proc = subprocess.Popen([sys.executable, "-m", "gantry_server.cli", "serve"],
                                      env=dict(env, **{WORKER_ENV: json.dumps(seat)}), pass_fds=(table.fileno(),))
            w.restart_at = None

        spawn(workers[0])  # alone first: migrations, and a bad setting or a dependency down reported once
        announced = False
        while not stop_signal:
            time.sleep(POLL_SECONDS)
            now = time.monotonic()
            for w in workers:
                if stop_signal:
                    break
                if view[w.index] == SERVING and not w.served:
                    w.served, w.failed_starts = True, 0
                if w.proc is not None and (code := w.proc.poll()) is not None:
                    view[w.index] = STARTING
                    w.proc = None
                    if not announced:  # the group never came up: a setting or a dependency, not a crash
                        return code if code > 0 else 1
                    w.failed_starts = 0 if w.served else w.failed_starts + 1
                    if w.failed_starts >= MAX_FAILED_STARTS:
                        log.error("worker keeps failing to start: stopping", extra={"worker": w.index})
                        print(f"gantry: worker {w.index} failed to start {MAX_FAILED_STARTS} times in a row; "
                              "stopping", file=sys.stderr, flush=True)
                        return 1
                    delay = min(30.0, 2.0 ** w.failed_starts)
                    log.error("worker died: restarting", extra={"worker": w.index, "exit_code": code,
                                                                "restart_in_seconds": delay})
                    w.served = False
                    w.restart_at = now + delay
                if w.proc is None and w.restart_at is not None and now >= w.restart_at:
                    spawn(w)
            if workers[0].served and not announced:
                for w in workers[1:]:
                    if w.proc is None and w.restart_at is None and not w.served:
                        spawn(w)
            if not announced and all(w.served for w in workers):
                announced = True
                print(f"gantry: serving gRPC on {grpc_addr}", file=sys.stderr, flush=True)
                if http_addr:
                    print(f"gantry: serving REST on {http_addr}", file=sys.stderr, flush=True)
                print(f"gantry: {count} workers (pids {', '.join(str(w.proc.pid) for w in workers if w.proc)})",
                      file=sys.stderr, flush=True)
        return 0
    finally:
        _stop_all(workers, settings.shutdown_grace_seconds + KILL_AFTER_GRACE_SECONDS)
        if services is not None:
            services.stop()
        for sock in reserved:
            sock.close()
        table.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_all(workers: list[_Worker], patience: float) -> None:
    running = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + patience
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker did not stop in time: killed", extra={"pid": proc.pid})
            proc.kill()
            proc.wait()
