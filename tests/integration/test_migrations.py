"""The migration chain is linear and reversible: empty -> head, one step down and back up."""
from __future__ import annotations

import uuid

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from gantry_server.store import db, migrate
from gantry_server.store.migrate import alembic_config
from gantry_server.store.models import metadata
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory


async def _fresh_database(engine, database_url):
    name = f"mig_{uuid.uuid4().hex[:12]}"
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    return name, db.create_engine(make_url(db.async_url(database_url)).set(database=name).render_as_string(False))


async def _drop(engine, name):
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_chain_is_linear():
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "migration chain has branches"
    assert len(script.get_bases()) == 1


async def test_upgrade_from_empty_then_down_one_and_up(engine, database_url):
    name, fresh = await _fresh_database(engine, database_url)
    try:
        assert await migrate.current(fresh) is None
        await migrate.upgrade(fresh)
        assert await migrate.current(fresh) == migrate.head_revision()

        async with fresh.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert {t.name for t in metadata.sorted_tables} <= tables, "models and migrations disagree"
        async with fresh.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(
                MigrationContext.configure(c, opts={"compare_type": True}), metadata))
        drift = [d for d in diff if not (isinstance(d, tuple) and d[0] == "remove_table"
                                         and d[1].name == "alembic_version")]
        assert drift == [], f"models.py and the migrations disagree (columns, types, indexes, keys): {drift}"

        head = migrate.head_revision()
        down_to = ScriptDirectory.from_config(alembic_config()).get_revision(head).down_revision
        await migrate.downgrade(fresh, "-1")
        assert await migrate.current(fresh) == down_to
        await migrate.upgrade(fresh)
        assert await migrate.current(fresh) == head
    finally:
        await fresh.dispose()
        await _drop(engine, name)
