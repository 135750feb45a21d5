"""servers, their GPUs (nodes) and every attestation attempt (server_attestations, boot_attestations)."""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import boot_attestations, nodes, server_attestations, servers


class ServerRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def get(self, server_id: str) -> RowMapping | None:
        return (await self.conn.execute(select(servers).where(servers.c.server_id == server_id))).mappings().first()

    async def get_owned(self, server_id: str, hotkey: str) -> RowMapping | None:
        stmt = select(servers).where(servers.c.server_id == server_id, servers.c.miner_hotkey == hotkey)
        return (await self.conn.execute(stmt)).mappings().first()

    async def find_owned(self, hotkey: str, name_or_id: str) -> RowMapping | None:
        """The caller's server whose id (preferred) or name is `name_or_id`."""
        stmt = (select(servers).where(servers.c.miner_hotkey == hotkey,
                                      or_(servers.c.server_id == name_or_id, servers.c.name == name_or_id))
                .order_by((servers.c.server_id == name_or_id).desc()).limit(1))
        return (await self.conn.execute(stmt)).mappings().first()

    async def by_ip(self, ip: str) -> RowMapping | None:
        return (await self.conn.execute(select(servers).where(servers.c.ip == ip))).mappings().first()

    async def name_taken(self, hotkey: str, name: str, *, except_id: str | None = None) -> bool:
        stmt = select(func.count()).select_from(servers).where(servers.c.miner_hotkey == hotkey,
                                                                servers.c.name == name)
        if except_id is not None:
            stmt = stmt.where(servers.c.server_id != except_id)
        return bool(await self.conn.scalar(stmt))

    async def taken_gpus(self, uuids: Iterable[str]) -> list[str]:
        wanted = list(uuids)
        if not wanted:
            return []
        rows = await self.conn.execute(select(nodes.c.uuid).where(nodes.c.uuid.in_(wanted)).order_by(nodes.c.uuid))
        return [r.uuid for r in rows]

    async def create(self, server: dict[str, Any], gpus: list[dict[str, Any]]) -> None:
        await self.conn.execute(insert(servers).values(**server))
        if gpus:
            await self.conn.execute(insert(nodes), gpus)

    async def rename(self, server_id: str, name: str, now: datetime) -> RowMapping:
        stmt = (update(servers).where(servers.c.server_id == server_id).values(name=name, updated_at=now)
                .returning(*servers.c))
        return (await self.conn.execute(stmt)).mappings().one()

    async def set_version(self, server_id: str, version: str, now: datetime) -> None:
        await self.conn.execute(update(servers).where(servers.c.server_id == server_id)
                                .values(version=version, updated_at=now))

    async def delete(self, server_id: str) -> None:
        """The server, its GPUs (FK cascade) and its attestation history."""
        await self.conn.execute(delete(server_attestations).where(server_attestations.c.server_id == server_id))
        await self.conn.execute(delete(servers).where(servers.c.server_id == server_id))

    async def gpus(self, server_id: str) -> list[RowMapping]:
        stmt = select(nodes).where(nodes.c.server_id == server_id).order_by(nodes.c.device_index, nodes.c.uuid)
        return list((await self.conn.execute(stmt)).mappings())

    async def record_attestation(self, **fields: Any) -> str:
        attestation_id = str(uuid.uuid4())
        await self.conn.execute(insert(server_attestations).values(attestation_id=attestation_id, **fields))
        return attestation_id

    async def latest_attestation(self, server_id: str) -> RowMapping | None:
        stmt = (select(server_attestations).where(server_attestations.c.server_id == server_id)
                .order_by(server_attestations.c.created_at.desc(), server_attestations.c.seq.desc())
                .limit(1))
        return (await self.conn.execute(stmt)).mappings().first()

    async def attestations(self, server_id: str) -> list[RowMapping]:
        stmt = (select(server_attestations).where(server_attestations.c.server_id == server_id)
                .order_by(server_attestations.c.created_at, server_attestations.c.seq))
        return list((await self.conn.execute(stmt)).mappings())

    async def record_boot(self, **fields: Any) -> str:
        attestation_id = str(uuid.uuid4())
        await self.conn.execute(insert(boot_attestations).values(attestation_id=attestation_id, **fields))
        return attestation_id
