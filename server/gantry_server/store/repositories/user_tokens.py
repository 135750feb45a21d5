"""user_tokens: one row per issued user token (never the token), read by the auth interceptor on each use."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import user_tokens, users


class UserTokenRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def create(self, *, token_id: str, user_id: str, name: str, issued_at: datetime,
                     expires_at: datetime) -> None:
        await self.conn.execute(user_tokens.insert().values(
            token_id=token_id, user_id=user_id, name=name, issued_at=issued_at, expires_at=expires_at))

    async def prune_expired(self, user_id: str, now: datetime) -> None:
        """Expired rows say nothing the token's own `exp` does not; drop them as the user gets new ones."""
        await self.conn.execute(delete(user_tokens).where(user_tokens.c.user_id == user_id,
                                                          user_tokens.c.expires_at < now))

    async def revoke(self, token_id: str, now: datetime) -> bool:
        """True when a live token was revoked now; False when unknown or already revoked."""
        result = await self.conn.execute(update(user_tokens).where(
            user_tokens.c.token_id == token_id, user_tokens.c.revoked_at.is_(None)).values(revoked_at=now))
        return result.rowcount == 1

    async def lookup(self, user_id: str, token_id: str) -> RowMapping | None:
        """The user (None when unknown) with the token's row joined (token_id None when this user never got
        that token); one round trip per authenticated call."""
        token = user_tokens.alias("t")
        stmt = (select(users.c.user_id, users.c.hotkey, token.c.token_id, token.c.revoked_at)
                .select_from(users.outerjoin(token, and_(token.c.user_id == users.c.user_id,
                                                         token.c.token_id == token_id)))
                .where(users.c.user_id == user_id))
        return (await self.conn.execute(stmt)).mappings().first()
