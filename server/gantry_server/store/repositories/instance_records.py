"""The auditor's exports and a miner's disable/delete: the SQL they need beside InstanceRepository.

The exports are read in keyset pages, one short read each, rather than through a server-side cursor: a cursor
holds a pooled connection and an open transaction for as long as the slowest client takes to download, while a
page holds them for one query. Memory stays at one page either way. A row that changes between two pages is seen
as it was when its page was read, which is what an auditor polling a live table gets anyway.

    fetch = lambda repo, after, limit: repo.reconciliation_page(since, after=after, limit=limit)
    async for page in keyset_pages(engine, fetch, key=lambda row: row.instance_id):
        ...

Miner writes go through one connection in the caller's unit of work:

    async with unit_of_work(engine) as conn:
        records = InstanceRecordRepository(conn)
        instance = await records.owned("chute-1", "inst-1", hotkey, for_update=True)
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, tuple_, update
from sqlalchemy.engine import Row, RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..models import instance_audit, instance_compute_history, instances, jobs

PAGE_ROWS = 1000

# Keyset of each export: the sort order, ending in a unique column so a page boundary never splits or repeats.
ReconciliationKey = str  # instance_id
HistoryKey = tuple[str, datetime, int]  # (instance_id, started_at, id)


class InstanceRecordRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    # -- auditor exports -----------------------------------------------------------------------------------------
    async def reconciliation_page(self, deleted_since: datetime, *, after: ReconciliationKey | None,
                                  limit: int = PAGE_ROWS) -> Sequence[Row]:
        """(instance_id, deleted_at) of audit rows that were activated and are live or deleted at or after
        `deleted_since`, in instance_id order after `after`."""
        a = instance_audit.c
        stmt = (select(a.instance_id, a.deleted_at)
                .where(a.activated_at.is_not(None), or_(a.deleted_at.is_(None), a.deleted_at >= deleted_since))
                .order_by(a.instance_id).limit(limit))
        if after is not None:
            stmt = stmt.where(a.instance_id > after)
        return (await self.conn.execute(stmt)).all()

    async def compute_history_page(self, ended_since: datetime, *, after: HistoryKey | None,
                                   limit: int = PAGE_ROWS) -> Sequence[Row]:
        """(instance_id, compute_multiplier, started_at, ended_at, id) of history rows still open or ended at or
        after `ended_since`, ordered by instance_id, started_at (id breaks ties) after `after`."""
        h = instance_compute_history.c
        stmt = (select(h.instance_id, h.compute_multiplier, h.started_at, h.ended_at, h.id)
                .where(or_(h.ended_at.is_(None), h.ended_at >= ended_since))
                .order_by(h.instance_id, h.started_at, h.id).limit(limit))
        if after is not None:
            stmt = stmt.where(tuple_(h.instance_id, h.started_at, h.id) > tuple_(*after))
        return (await self.conn.execute(stmt)).all()

    # -- a miner's own instance ----------------------------------------------------------------------------------
    async def owned(self, chute_id: str, instance_id: str, hotkey: str, *,
                    for_update: bool = False) -> RowMapping | None:
        """The instance if it is of this chute and this miner's; None otherwise (callers answer 404 either way,
        so another miner's instance is indistinguishable from a missing one)."""
        c = instances.c
        stmt = select(instances).where(c.instance_id == instance_id, c.chute_id == chute_id,
                                       c.miner_hotkey == hotkey)
        return (await self.conn.execute(stmt.with_for_update() if for_update else stmt)).mappings().first()

    async def disable(self, chute_id: str, instance_id: str, hotkey: str) -> bool:
        """active = false on the miner's own instance, in one conditional UPDATE (verified is left as it is).
        False when no instance matched. Nothing audited changes: the audit mirrors activation, not disabling."""
        c = instances.c
        stmt = (update(instances).where(c.instance_id == instance_id, c.chute_id == chute_id,
                                        c.miner_hotkey == hotkey)
                .values(active=False).returning(c.instance_id))
        return (await self.conn.execute(stmt)).first() is not None

    async def other_active_exists(self, chute_id: str, instance_id: str) -> bool:
        c = instances.c
        stmt = select(c.instance_id).where(c.chute_id == chute_id, c.active.is_(True),
                                           c.instance_id != instance_id).limit(1)
        return (await self.conn.execute(stmt)).first() is not None

    async def penalise(self, instance_id: str, factor: float, *, clear_bounty: bool) -> None:
        """Scale the open compute-history row and the audit multiplier by `factor` (and drop the audit's bounty).
        Run before the delete closes the history row, so the closed row carries the penalised rate."""
        h = instance_compute_history.c
        await self.conn.execute(update(instance_compute_history)
                                .where(h.instance_id == instance_id, h.ended_at.is_(None))
                                .values(compute_multiplier=h.compute_multiplier * factor))
        values: dict[str, Any] = {"compute_multiplier": instance_audit.c.compute_multiplier * factor}
        if clear_bounty:
            values["bounty"] = False
        await self.conn.execute(update(instance_audit).where(instance_audit.c.instance_id == instance_id)
                                .values(**values))

    async def fail_unfinished_jobs(self, instance_id: str, now: datetime, detail: str) -> list[str]:
        """The job the instance runs, if not finished yet, ends in error as terminated by its miner. Answers the
        job ids it ended (none, or the one job: a claim links one job to one instance)."""
        j = jobs.c
        stmt = (update(jobs).where(j.instance_id == instance_id, j.finished_at.is_(None))
                .values(status="error", error_detail=detail, miner_terminated=True, finished_at=now)
                .returning(j.job_id))
        return list((await self.conn.execute(stmt)).scalars())


async def keyset_pages(engine: AsyncEngine,
                       fetch: Callable[[Any, Any, int], Awaitable[Sequence[Row]]], *,
                       key: Callable[[Row], Any], limit: int = PAGE_ROWS,
                       repository: Callable[[AsyncConnection], Any] = InstanceRecordRepository,
                       ) -> AsyncIterator[Sequence[Row]]:
    """Pages of `fetch(repo, after, limit)` (at most `limit` rows in key order, after the key `after`), each read
    on its own pooled connection, until a short page. `key(row)` is a row's keyset value, the next `after`;
    `repository(conn)` builds the `repo` handed to `fetch` (any repository, e.g. MinerRepository)."""
    if limit < 1:
        raise ValueError("limit must be positive")
    after = None
    while True:
        async with engine.connect() as conn:
            page = await fetch(repository(conn), after, limit)
        if page:
            yield page
        if len(page) < limit:
            return
        after = key(page[-1])
