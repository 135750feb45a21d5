"""`gantry serve | migrate | admin | gpu | miner ...`: the one entry point.

Configuration errors and unreachable dependencies end the process with one clear line on stderr and exit
code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from . import logs, tls
from .config import ConfigError, Settings

EXIT_CONFIG = 2


def _fail(message: str) -> int:
    print(f"gantry: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _run(coro) -> None:
    try:
        import uvloop  # optional speed-up (~15% on unary RPCs)
    except ImportError:  # pragma: no cover
        uvloop = None
    if uvloop is not None and Settings.from_env().use_uvloop:
        uvloop.run(coro)
    else:
        asyncio.run(coro)


async def _serve(settings: Settings, seat=None) -> None:
    """One server process: alone, or the worker `seat` (workers.WorkerSeat) of `gantry serve --workers N`."""
    import os

    from .app import GantryApp, tune_gc
    from .looplag import LoopLagMonitor
    from .workers import WORKER_INFO, Peers

    app = GantryApp(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    WORKER_INFO.info({"index": str(seat.index if seat else 0), "pid": str(os.getpid())})
    if seat is not None:
        app.reuse_port = True
        app.peers = Peers(seat, on_orphaned=stop.set)
    await app.start()
    tune_gc()
    lag = LoopLagMonitor()
    lag.start()
    if seat is None:  # a group's supervisor announces the group once every worker serves
        print(f"gantry: serving gRPC on {app.grpc_addr}", file=sys.stderr, flush=True)
        if app.http_addr:
            print(f"gantry: serving REST on {app.http_addr}", file=sys.stderr, flush=True)
    await stop.wait()
    await lag.stop()
    await app.stop()


async def _gateway(settings: Settings, upstream: str, ca_file: str | None = None, cert_file: str | None = None,
                   key_file: str | None = None) -> None:
    """The REST gateway alone, in front of a remote gRPC server: TLS to it when `ca_file` is given, presenting
    `cert_file`/`key_file` to an upstream that requires client certificates (mTLS)."""
    from gantry_client import tls_credentials
    from gantry_gateway import HttpLimits, HttpServer, remote_gateway

    from . import tracing

    tls.refuse_public_plaintext(settings, {"GANTRY_HTTP_ADDR": settings.http_addr})
    tracing.configure()  # OTEL_* variables, as `gantry serve`
    # As `gantry serve`: with the simulated provider (a shell on the upstream's machine) only on loopback.
    from .broker.wiring import check_simulated_is_local
    from gantry_gateway.browser import BrowserGuard

    check_simulated_is_local(settings)
    credentials = None
    if ca_file or cert_file or key_file:
        if not ca_file:
            raise ConfigError("--cert-file/--key-file need --ca-file (TLS to the upstream)")
        try:
            credentials = tls_credentials(ca_file, cert_file, key_file)
        except ValueError as exc:
            raise ConfigError(f"--cert-file/--key-file: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename!r}: {exc.strerror}") from None
    gateway = remote_gateway(upstream, credentials=credentials, max_body_bytes=settings.http_max_body_bytes,
                             browser=BrowserGuard.for_settings(settings))
    http = HttpServer(gateway, settings.http_addr, ssl_context=tls.ssl_context(settings),
                      limits=HttpLimits.for_settings(settings))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await http.start()
    print(f"gantry: serving REST on {http.bound_addr} -> gRPC {upstream}", file=sys.stderr, flush=True)
    await stop.wait()
    await http.stop(settings.shutdown_grace_seconds)
    await gateway.dispatcher.close()


async def _migrate(settings: Settings, revision: str) -> None:
    from .app import embedded
    from .store import db, migrate

    services = None
    url = settings.database_url
    if url is None:
        services = await asyncio.to_thread(embedded.start, settings.data_dir, need_postgres=True, need_redis=False)
        url = services.database_url
    engine = db.create_engine(url)
    try:
        await db.check_reachable(engine)
        if revision.startswith("-"):
            await migrate.downgrade(engine, revision)
        else:
            await migrate.upgrade(engine, revision)
        print(f"gantry: database at revision {await migrate.current(engine)}", file=sys.stderr)
    finally:
        await engine.dispose()
        if services:
            services.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gantry", description="Gantry control plane")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("admin", help="operator commands against a running server over gRPC (gantry admin --help)")
    sub.add_parser("gpu", help="rent a GPU, ssh to it, end it, see its cost (gantry gpu --help)")
    sub.add_parser("miner", help="a miner hotkey's events, chutes, jobs, stats, scores, servers (gantry miner --help)")
    rest = sys.argv[1:] if argv is None else list(argv)
    if rest[:1] == ["admin"]:  # its own parser and exit codes, and no server settings needed
        from . import admin_cli

        return admin_cli.main(rest[1:])
    if rest[:1] in (["gpu"], ["miner"]):  # the same, for consumers and miner operators
        from .cli_tools import gpu, miner

        return (gpu if rest[0] == "gpu" else miner).main(rest[1:])
    srv = sub.add_parser("serve", help="run the gRPC server (embedded PostgreSQL/Redis when no URL is configured)")
    srv.add_argument("--workers", type=int, metavar="N",
                     help="server processes sharing the ports (default GANTRY_WORKERS, else one per core; "
                          "one with the simulated provider)")
    gw = sub.add_parser("gateway", help="run only the REST gateway in front of a remote gRPC server")
    gw.add_argument("--upstream", required=True, help="host:port of the gRPC server")
    gw.add_argument("--ca-file", help="TLS to the upstream, verified by this CA certificate (plaintext without)")
    gw.add_argument("--cert-file", help="client certificate for an upstream that requires one (mTLS)")
    gw.add_argument("--key-file", help="the client certificate's key")
    mig = sub.add_parser("migrate", help="apply database migrations")
    mig.add_argument("revision", nargs="?", default="head", help="target revision (default head; -1 steps down)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        return _fail(str(exc))
    # The server's modules, not imported by the client commands above; before logging is configured, as
    # libraries log while they are imported.
    from .app import RedisUnreachable
    from .store.db import DatabaseUnreachable

    logs.configure(settings.log_level, settings.log_format)
    try:
        if args.command == "serve":
            from .workers import WorkerSeat, supervise, worker_count

            if args.workers is not None:
                if args.workers < 1:
                    raise ConfigError(f"--workers must be a positive integer, got {args.workers}")
                settings = settings.with_(workers=args.workers)
            seat = WorkerSeat.from_env()
            count = 1 if seat is not None else worker_count(settings)
            if count > 1:
                return supervise(settings, count)
            _run(_serve(settings, seat))
        elif args.command == "gateway":
            _run(_gateway(settings, args.upstream, args.ca_file, args.cert_file, args.key_file))
        elif args.command == "migrate":
            _run(_migrate(settings, args.revision))
    except (DatabaseUnreachable, RedisUnreachable, ConfigError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}")
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
