"""The reads behind miner stats, scores, unique-chute history, thrash cooldowns and metrics (all SQL is here;
the formulas are in domain/miner/scoring.py, which these rows feed).

Rows are selected loosely (every audit row that might count in the window) and judged in Python, so that one
tested function decides what counts.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ...domain.miner.scoring import Audited, Node, Span
from ..models import chutes, instance_audit, instance_compute_history, metagraph_nodes

_a = instance_audit.c
_AUDIT_COLUMNS = (_a.instance_id, _a.miner_hotkey, _a.chute_id, _a.created_at, _a.activated_at, _a.deleted_at,
                  _a.stop_billing_at, _a.billed_to, _a.deletion_reason, _a.valid_termination, _a.compute_multiplier,
                  _a.bounty, _a.hourly_rate)


def _audited(row) -> Audited:
    return Audited(**dict(row))


class MinerStatsRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    def _activated_since(self, since: datetime, hotkey: str | None):
        """Audit rows activated and not deleted before `since` (optionally of one hotkey)."""
        where = [_a.activated_at.is_not(None), or_(_a.deleted_at.is_(None), _a.deleted_at >= since)]
        if hotkey is not None:
            where.append(_a.miner_hotkey == hotkey)
        return and_(*where)

    async def audited_since(self, since: datetime, *, hotkey: str | None = None) -> list[Audited]:
        rows = await self.conn.execute(select(*_AUDIT_COLUMNS).where(self._activated_since(since, hotkey))
                                       .order_by(_a.instance_id))
        return [_audited(r) for r in rows.mappings()]

    async def spans_since(self, since: datetime, *, hotkey: str | None = None) -> dict[str, list[Span]]:
        """instance_id -> its compute-history spans that end at or after `since` (open ones included), for the
        instances audited_since(since, hotkey) answers."""
        h = instance_compute_history.c
        ids = select(_a.instance_id).where(self._activated_since(since, hotkey))
        rows = await self.conn.execute(
            select(h.instance_id, h.compute_multiplier, h.started_at, h.ended_at)
            .where(h.instance_id.in_(ids), or_(h.ended_at.is_(None), h.ended_at > since))
            .order_by(h.instance_id, h.started_at, h.id))
        out: dict[str, list[Span]] = defaultdict(list)
        for r in rows:
            out[r.instance_id].append(Span(r.compute_multiplier, r.started_at, r.ended_at))
        return dict(out)

    async def registered(self, netuid: int) -> dict[str, Node]:
        """hotkey -> coldkey and blacklist flag, for the subnet's registered nodes (node_id >= 0)."""
        m = metagraph_nodes.c
        rows = await self.conn.execute(select(m.hotkey, m.coldkey, m.blacklist_reason)
                                       .where(m.netuid == netuid, m.node_id >= 0))
        return {r.hotkey: Node(r.coldkey, r.blacklist_reason is not None) for r in rows}

    async def is_registered(self, netuid: int, hotkey: str) -> bool:
        m = metagraph_nodes.c
        return bool(await self.conn.scalar(select(func.count()).select_from(metagraph_nodes).where(
            m.hotkey == hotkey, m.netuid == netuid, m.node_id >= 0)))

    async def node_selectors(self, chute_ids: set[str]) -> dict[str, dict]:
        """chute_id -> node_selector, for the chutes that still exist."""
        if not chute_ids:
            return {}
        rows = await self.conn.execute(select(chutes.c.chute_id, chutes.c.node_selector)
                                       .where(chutes.c.chute_id.in_(sorted(chute_ids))))
        return {r.chute_id: r.node_selector for r in rows}

    async def deleted_since(self, hotkey: str, since: datetime) -> list[Audited]:
        """The hotkey's activated instances deleted after `since` (thrash candidates)."""
        rows = await self.conn.execute(select(*_AUDIT_COLUMNS).where(
            _a.miner_hotkey == hotkey, _a.activated_at.is_not(None), _a.deleted_at > since))
        return [_audited(r) for r in rows.mappings()]

    async def chute_names(self, chute_ids: set[str]) -> dict[str, str]:
        if not chute_ids:
            return {}
        rows = await self.conn.execute(select(chutes.c.chute_id, chutes.c.name)
                                       .where(chutes.c.chute_id.in_(sorted(chute_ids))))
        return {r.chute_id: r.name for r in rows}
