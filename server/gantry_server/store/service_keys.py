"""service_keys: the service's own signing keys, one row per purpose, shared by replicas, stored encrypted."""
from __future__ import annotations

from typing import Callable

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from .models import service_keys as t


def context(name: str) -> bytes:
    """AES-GCM associated data: a blob cannot be moved to another key's row."""
    return f"service-key:{name}".encode()


async def load_or_create(engine: AsyncEngine, keyring, name: str, generate: Callable[[], bytes]) -> bytes:
    """The key `name` (plaintext bytes); the first caller's generated key wins a race, every caller reads it."""
    async with engine.begin() as conn:
        await conn.execute(insert(t).values(name=name, key_enc=keyring.encrypt(generate(), context=context(name)))
                           .on_conflict_do_nothing())
        blob = (await conn.execute(select(t.c.key_enc).where(t.c.name == name))).scalar_one()
    return keyring.decrypt(blob, context=context(name))
