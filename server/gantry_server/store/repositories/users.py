"""users and api_keys: created by operators through AdminService, read by the auth interceptor."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import api_keys, users


class UserRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def create_user(self, *, username: str, hotkey: str | None, coldkey: str | None, roles: list[str],
                          now: datetime) -> str:
        user_id = str(uuid.uuid4())
        await self.conn.execute(users.insert().values(
            user_id=user_id, username=username, hotkey=hotkey, coldkey=coldkey, roles=roles, created_at=now))
        return user_id

    async def get(self, user_id: str) -> RowMapping | None:
        return (await self.conn.execute(select(users).where(users.c.user_id == user_id))).mappings().first()

    async def by_hotkey(self, hotkey: str) -> RowMapping | None:
        return (await self.conn.execute(select(users).where(users.c.hotkey == hotkey))).mappings().first()

    async def create_api_key(self, *, user_id: str, name: str, key_prefix: str, key_hash: str,
                             now: datetime) -> str:
        api_key_id = str(uuid.uuid4())
        await self.conn.execute(api_keys.insert().values(
            api_key_id=api_key_id, user_id=user_id, name=name, key_prefix=key_prefix, key_hash=key_hash,
            created_at=now))
        return api_key_id

    async def revoke_api_key(self, api_key_id: str, now: datetime) -> bool:
        """True when a live key was revoked now; False when unknown or already revoked."""
        result = await self.conn.execute(update(api_keys).where(
            api_keys.c.api_key_id == api_key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now))
        return result.rowcount == 1

    async def user_for_key_hash(self, key_hash: str) -> RowMapping | None:
        """The user of a live (not revoked) API key."""
        stmt = (select(users.c.user_id, users.c.username, users.c.hotkey, users.c.roles)
                .select_from(api_keys.join(users, api_keys.c.user_id == users.c.user_id))
                .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)))
        return (await self.conn.execute(stmt)).mappings().first()
