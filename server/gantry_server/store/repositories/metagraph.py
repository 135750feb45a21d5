"""metagraph_nodes: filled by a MetagraphSource (admin RPC now; chain sync later), read by auth and miners."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import metagraph_nodes as t

_UPDATABLE = [c.name for c in t.columns if c.name != "hotkey"]


class MetagraphRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def upsert(self, nodes: Iterable[dict[str, Any]]) -> int:
        rows = list(nodes)
        if not rows:
            return 0
        stmt = insert(t).values(rows)
        present = set().union(*(r.keys() for r in rows))
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.hotkey],
            set_={name: stmt.excluded[name] for name in _UPDATABLE if name in present},
        )
        await self.conn.execute(stmt)
        return len(rows)

    async def list_registered(self, netuid: int) -> Sequence[RowMapping]:
        """Nodes of a subnet with a uid (node_id >= 0), ordered by uid."""
        result = await self.conn.execute(
            select(t).where(t.c.netuid == netuid, t.c.node_id >= 0).order_by(t.c.node_id))
        return result.mappings().all()

    async def get(self, hotkey: str) -> RowMapping | None:
        result = await self.conn.execute(select(t).where(t.c.hotkey == hotkey))
        return result.mappings().first()

    async def set_blacklist(self, hotkey: str, reason: str | None) -> bool:
        """Set (or clear, with None) a hotkey's blacklist reason; False when the hotkey is unknown."""
        result = await self.conn.execute(update(t).where(t.c.hotkey == hotkey).values(blacklist_reason=reason))
        return result.rowcount == 1
