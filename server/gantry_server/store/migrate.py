"""Run alembic programmatically (no alembic.ini): `gantry migrate`, start-up migrations and tests."""
from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "gantry_server.store:migrations")
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


async def _run(engine: AsyncEngine, fn, *args) -> None:
    cfg = alembic_config()

    def go(sync_conn) -> None:
        cfg.attributes["connection"] = sync_conn
        fn(cfg, *args)

    async with engine.begin() as conn:
        # One migrator at a time across replicas: a transaction-scoped advisory lock.
        await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
        await conn.run_sync(go)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, command.upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    await _run(engine, command.downgrade, revision)


async def current(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        def read(sync_conn):
            from alembic.runtime.migration import MigrationContext
            return MigrationContext.configure(sync_conn).get_current_revision()
        return await conn.run_sync(read)
