"""Assemble the grpc.aio server: services, interceptor, health, reflection; start and stop in order.

Start: (embedded PostgreSQL/Redis) -> engine + Redis reachable -> listen with health NOT_SERVING ->
migrations -> SERVING. Stop: NOT_SERVING -> drain in-flight RPCs within the grace period -> close pools ->
stop embedded servers.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis

from . import embedded, tls, tracing
from .clock import Clock, SystemClock
from .config import ConfigError, Settings, check_admin_token
from .dependencies import DependencyWatcher
from .errors import dependency_down
from .domain.auth.launch_tokens import LaunchTokenKeys
from .domain.events.hub import EventHub
from .domain.events.relay import OutboxRelay
from .domain.secrets_at_rest import Keyring, SecretsError, load_keyring, write_secret_file
from .broker.wiring import start_broker, stop_broker
from .interceptors import ObservabilityInterceptor
from .interceptors.auth import AuthInterceptor
from .interceptors.chain import instrument, safe_registration
from .runtime import Runtime
from .services.registry import SERVICES
from .store import db, migrate

log = logging.getLogger(__name__)


# Cyclic GC for a server process holding many long-lived streams (`gantry serve` applies it once started): objects that wait across an event (a WatchEvents
# stream's future, its generator frames) survive young collections, and with CPython's default (700, 10, 10)
# they trigger full collections that walk every stream's objects every few events (about a fifth of the CPU of a
# fan-out to 10,000 streams, and its latency tail: docs/performance.md, miner events). Start-up objects are frozen
# out of collection; young collections run every 50,000 allocations instead of 700.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Process-wide: for the `gantry serve` process, not for a test process that starts many apps."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class RedisUnreachable(RuntimeError):
    """Redis could not be reached at start-up; the message is one line for the operator."""


def _admin_token(settings: Settings) -> str | None:
    """The configured admin token; the embedded default keeps a generated one in its data directory (created
    0600, and refused like a configured one if someone replaced it with a weak token)."""
    if settings.admin_token:
        return settings.admin_token
    if not settings.embedded:
        return None
    path = Path(settings.data_dir) / "admin_token"
    write_secret_file(path, secrets.token_urlsafe(32))
    return check_admin_token(str(path), path.read_text())


def _keyring(settings: Settings) -> Keyring:
    """The KEK for secrets at rest; a non-embedded run without GANTRY_KEK stops here with one line."""
    try:
        return load_keyring(settings.kek, settings.kek_previous, Path(settings.data_dir), embedded=settings.embedded)
    except SecretsError as exc:
        raise ConfigError(str(exc)) from None


async def _check_redis(client: Redis, url: str) -> None:
    try:
        async with asyncio.timeout(10):
            await client.ping()
    except Exception as exc:
        shown = url.split("@")[-1]
        raise RedisUnreachable(f"cannot reach Redis at {shown}: {str(exc) or type(exc).__name__}") from None


class GantryApp:
    def __init__(self, settings: Settings, *, clock: Clock | None = None, providers: dict | None = None) -> None:
        self.settings = settings
        self._providers = providers  # tests: GPU providers to use instead of the configured ones (not closed here)
        self.clock = clock or SystemClock()
        self.embedded: embedded.EmbeddedServices | None = None
        self.server: aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.rt: Runtime | None = None
        self.grpc_port: int | None = None
        # The one interceptor chain (outermost first), shared with the REST gateway, which dispatches
        # in-process through the same chain so both faces behave identically.
        self.interceptors: list = [ObservabilityInterceptor(), AuthInterceptor(lambda: self.rt)]
        self.servicers: dict[str, object] = {}  # service full name -> servicer instance
        self.http = None  # the REST gateway (gantry_gateway.HttpServer), same event loop and servicers
        # `gantry serve --workers N` (workers.py): listeners shared with sibling processes (SO_REUSEPORT), and
        # the group's readiness, without which this process does not say SERVING.
        self.reuse_port = False
        self.peers = None  # workers.Peers
        self.dependencies: DependencyWatcher | None = None  # PostgreSQL/Redis probes while serving

    async def start(self) -> None:
        """Start everything; on any failure undo what was started and re-raise. PostgreSQL or Redis lost part-way
        (a restart during migrations or the start-up sweep) is the same one-line error as unreachable at the start."""
        try:
            await self._start()
        except BaseException as exc:
            await self.stop(0)
            lost = dependency_down(exc) if isinstance(exc, Exception) else None
            if lost and not isinstance(exc, (db.DatabaseUnreachable, RedisUnreachable)):
                unreachable = db.DatabaseUnreachable if lost == "PostgreSQL" else RedisUnreachable
                detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise unreachable(f"{lost} became unreachable while starting: {detail}") from None
            raise

    async def _start(self) -> None:
        s = self.settings
        tls.refuse_public_plaintext(s, {"GANTRY_GRPC_ADDR": s.grpc_addr, "GANTRY_HTTP_ADDR": s.http_addr})
        if not self.reuse_port:  # a taken port: one line before anything starts (a worker's port is held for it)
            from .workers import check_free

            check_free("GANTRY_GRPC_ADDR", s.grpc_addr)
            if s.http_addr:
                check_free("GANTRY_HTTP_ADDR", s.http_addr)
        tracing.configure()  # on only when the OTEL_* variables ask for it (docs/observability.md)
        if s.embedded:
            self.embedded = await asyncio.to_thread(
                embedded.start, Path(s.data_dir),
                need_postgres=s.database_url is None, need_redis=s.redis_url is None)
        database_url = s.database_url or self.embedded.database_url
        redis_url = s.redis_url or self.embedded.redis_url
        process_id = f"gantry-{os.getpid()}-{secrets.token_hex(4)}"  # pid: an operator can tell whose lease
        engine = db.create_engine(database_url, pool_size=s.db_pool_size, application_name=process_id)
        redis = Redis.from_url(redis_url)
        tracing.instrument_stores(engine, redis)
        self.rt = Runtime(settings=s, engine=engine, redis=redis, clock=self.clock, admin_token=_admin_token(s),
                          process_id=process_id,
                          keyring=_keyring(s))
        self.rt.events = EventHub(redis, buffer=s.miner.events_subscriber_buffer)
        self.rt.events_relay = OutboxRelay(engine, redis, self.clock, s.miner)
        await db.check_reachable(engine)
        await _check_redis(redis, redis_url)

        self.server = aio.server(
            options=[
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
                # Calls that arrived but wait for the Python side: C-core cancels them past 1,000 (soft) /
                # 3,000 (hard) by default, so thousands of miners reconnecting their WatchEvents at once after a
                # restart would be refused (docs/performance.md, miner events). Queued, they cost memory only.
                ("grpc.server.max_pending_requests", 20_000),
                ("grpc.server.max_pending_requests_hard_limit", 50_000),
            ],
        )
        names = [reflection.SERVICE_NAME, health.SERVICE_NAME]
        for spec in SERVICES:
            servicer = instrument(spec.servicer_class()(self.rt), spec.descriptor, self.interceptors)
            self.servicers[spec.full_name] = servicer
            spec.add_to_server(servicer, safe_registration(self.server))
            names.append(spec.full_name)
            await self.health.set(spec.full_name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(
            instrument(self.health, health_pb2.DESCRIPTOR.services_by_name["Health"], self.interceptors),
            safe_registration(self.server))
        reflection.enable_server_reflection(names, self.server)
        credentials = tls.grpc_credentials(s)
        try:
            self.grpc_port = (self.server.add_secure_port(s.grpc_addr, credentials) if credentials is not None
                              else self.server.add_insecure_port(s.grpc_addr))
        except RuntimeError:  # grpcio >= 1.58 raises where it returned 0 ("Failed to bind to address")
            self.grpc_port = 0
        if self.grpc_port == 0:
            raise OSError(f"cannot listen on GANTRY_GRPC_ADDR={s.grpc_addr}: address in use or not available")
        await self.server.start()
        log.info("grpc listening", extra={"addr": self.grpc_addr})
        if s.http_addr:  # before migrations, so /health answers 503 (not "connection refused") while starting
            from gantry_gateway import HttpLimits, HttpServer, in_process_gateway

            self.http = HttpServer(in_process_gateway(self, max_body_bytes=s.http_max_body_bytes), s.http_addr,
                                   ssl_context=tls.ssl_context(s), limits=HttpLimits.for_settings(s))
            self.http.reuse_port = self.reuse_port
            await self.http.start()
            log.info("http listening", extra={"addr": self.http_addr})

        if s.migrate_on_start:
            await migrate.upgrade(engine)
        self.rt.launch_keys = await LaunchTokenKeys.shared(engine, self.rt.keyring)
        await start_broker(self.rt, self._providers)
        await self.rt.events.start()
        if s.miner.background_loops:
            await self.rt.events_relay.start()
        await self.rt.lifecycle.startup_sweep()  # /health answers 503 until this is done
        if s.broker.background_loops:
            self.rt.lifecycle.start()
        self.rt.state.lifecycle_running = True
        if self.peers is not None:
            await self.peers.start(self)
        self.rt.state.ready = True
        await self.publish_health()
        self.dependencies = DependencyWatcher(engine, redis, self._database_changed)
        self.dependencies.start()
        log.info("serving", extra={"addr": self.grpc_addr, "embedded": s.embedded})

    async def _database_changed(self, ok: bool) -> None:
        """PostgreSQL down: NOT_SERVING (gRPC health, /health, /ready) until it answers again."""
        if self.rt is None or not self.rt.state.self_ready:
            return
        self.rt.state.database_ok = ok
        await self.publish_health()

    async def publish_health(self) -> None:
        """gRPC health from the state /health and /ready read: SERVING when this process (and every sibling
        worker) is ready and PostgreSQL answers."""
        state = self.rt.state if self.rt is not None else None
        ok = state is not None and state.ready and state.database_ok
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        for spec in SERVICES:
            await self.health.set(spec.full_name, status)
        await self.health.set("", status)

    @property
    def grpc_addr(self) -> str:
        host = self.settings.grpc_addr.rpartition(":")[0]
        return f"{host}:{self.grpc_port}"

    @property
    def http_addr(self) -> str | None:
        return self.http.bound_addr if self.http is not None else None

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        if self.peers is not None:  # first: siblings stop saying SERVING while this one drains
            await self.peers.stop()
        if self.dependencies is not None:
            await self.dependencies.stop()
            self.dependencies = None
        if self.rt is not None:
            self.rt.state.ready = False
            self.rt.state.lifecycle_running = False
            self.rt.state.stopping.set()  # WatchSession streams end now, with a final message
        await self.health.enter_graceful_shutdown()
        if self.rt is not None and self.rt.events is not None:
            await self.rt.events.stop()  # ends every event stream, so draining does not wait on them
        if self.http is not None:  # REST first: no new calls reach servicers while gRPC drains
            await self.http.stop(grace)
            self.http = None
        was_serving = self.server is not None
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        if self.rt is not None:
            if self.rt.lifecycle is not None:
                await stop_broker(self.rt, close_providers=self._providers is None)
            if self.rt.events_relay is not None:
                await self.rt.events_relay.stop()
            await self.rt.engine.dispose()
            await self.rt.redis.aclose()
            self.rt = None
        self._stop_embedded()
        if was_serving:
            log.info("stopped")

    def _stop_embedded(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
