"""instances and their GPUs, with the audit row and compute history written in the same transaction.

The reference keeps instance_audit and instance_compute_history with database triggers stamped NOW(); here the
repository writes them beside each instance change, stamped with the injected clock, so expiry and scoring
windows are testable. Every write to `instances` goes through this class, which is what keeps the audit whole.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, not_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import instance_audit, instance_compute_history, instance_nodes, instances, nodes

EXPIRED_PENDING = "not activated within 3.5 h of its claim"  # deletion reason of expire_pending
_AUDIT_FIELDS = ("instance_id", "chute_id", "version", "miner_uid", "miner_hotkey", "region", "created_at",
                 "billed_to", "stop_billing_at", "compute_multiplier", "hourly_rate", "bounty")


@dataclass(frozen=True)
class ChuteCounts:
    """Instance counts of one chute for the scaling gates (reference §4.8)."""
    total: int
    active: int  # active and verified
    live: int  # not disabled after activation: pending plus active
    hotkey: int  # the asking miner's


def chute_count_columns() -> tuple:
    """The total, active and live aggregates of ChuteCounts over `instances` rows (labelled so), for one chute's
    rows or per chute in a GROUP BY (GET /chutes/utilization)."""
    c = instances.c
    return (func.count().label("total"), func.count().filter(and_(c.active, c.verified)).label("active"),
            func.count().filter(not_(and_(c.active.is_(False), c.activated_at.is_not(None)))).label("live"))


class InstanceRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def get(self, instance_id: str, *, for_update: bool = False) -> RowMapping | None:
        stmt = select(instances).where(instances.c.instance_id == instance_id)
        return (await self.conn.execute(stmt.with_for_update() if for_update else stmt)).mappings().first()

    async def by_config(self, config_id: str, *, for_update: bool = False) -> RowMapping | None:
        stmt = select(instances).where(instances.c.config_id == config_id)
        return (await self.conn.execute(stmt.with_for_update() if for_update else stmt)).mappings().first()

    async def node_ids(self, instance_id: str) -> list[str]:
        rows = await self.conn.execute(select(instance_nodes.c.node_id).where(instance_nodes.c.instance_id == instance_id)
                                       .order_by(instance_nodes.c.node_id))
        return [r.node_id for r in rows]

    async def nodes_of(self, instance_id: str) -> list[RowMapping]:
        stmt = (select(nodes).join(instance_nodes, instance_nodes.c.node_id == nodes.c.uuid)
                .where(instance_nodes.c.instance_id == instance_id).order_by(nodes.c.uuid))
        return list((await self.conn.execute(stmt)).mappings())

    async def counts(self, chute_id: str, hotkey: str) -> ChuteCounts:
        c = instances.c
        row = (await self.conn.execute(select(
            *chute_count_columns(), func.count().filter(c.miner_hotkey == hotkey),
        ).where(c.chute_id == chute_id))).one()
        return ChuteCounts(*row)

    async def host_used_by_other_miner(self, host: str, hotkey: str) -> bool:
        stmt = select(func.count()).select_from(instances).where(instances.c.host == host,
                                                                 instances.c.miner_hotkey != hotkey)
        return bool(await self.conn.scalar(stmt))

    async def candidate_nodes(self, uuids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """uuid -> node row plus `assigned` (already serving an instance), for the uuids that exist."""
        wanted = list(uuids)
        if not wanted:
            return {}
        assigned = select(instance_nodes.c.node_id).where(instance_nodes.c.node_id == nodes.c.uuid).exists()
        rows = await self.conn.execute(select(nodes, case((assigned, True), else_=False).label("assigned"))
                                       .where(nodes.c.uuid.in_(wanted)))
        return {r["uuid"]: dict(r) for r in rows.mappings()}

    async def of_version(self, chute_id: str, version: str) -> list[RowMapping]:
        """(instance_id, miner_hotkey) of the chute's instances that run `version`, in instance_id order."""
        c = instances.c
        stmt = (select(c.instance_id, c.miner_hotkey).where(c.chute_id == chute_id, c.version == version)
                .order_by(c.instance_id))
        return list((await self.conn.execute(stmt)).mappings())

    async def expire_pending(self, node_ids: Iterable[str], created_before: datetime,
                             now: datetime) -> list[RowMapping]:
        """Delete the never-activated instances holding these GPUs that were created before the cutoff: their
        launch tokens have expired, so they can no longer activate, and their GPUs go back to the miner.
        Answers what `delete` answers for each one deleted."""
        holders = (select(instance_nodes.c.instance_id).where(instance_nodes.c.node_id.in_(list(node_ids))))
        stale = (await self.conn.execute(select(instances.c.instance_id).where(
            instances.c.instance_id.in_(holders), instances.c.activated_at.is_(None),
            instances.c.created_at < created_before).with_for_update(skip_locked=True))).scalars().all()
        gone = [await self.delete(instance_id, now, EXPIRED_PENDING) for instance_id in stale]
        return [row for row in gone if row is not None]

    async def create(self, row: dict[str, Any], node_ids: list[str]) -> None:
        await self.conn.execute(insert(instances).values(**row))
        await self.conn.execute(insert(instance_nodes), [{"instance_id": row["instance_id"], "node_id": n}
                                                         for n in node_ids])
        await self.conn.execute(insert(instance_audit).values(**{k: row[k] for k in _AUDIT_FIELDS}))

    async def set_fields(self, instance_id: str, **values: Any) -> None:
        """Non-lifecycle fields (deployment_id, extra, ...); lifecycle changes use the methods below."""
        await self.conn.execute(update(instances).where(instances.c.instance_id == instance_id).values(**values))

    async def mark_verified(self, instance_id: str, now: datetime) -> None:
        await self.conn.execute(update(instances).where(instances.c.instance_id == instance_id)
                                .values(verified=True, verification_error=None, last_verified_at=now))
        await self.conn.execute(update(instance_audit).where(instance_audit.c.instance_id == instance_id)
                                .values(verified_at=now))

    async def activate(self, instance_id: str, now: datetime, *, stop_billing_at: datetime | None,
                       warmup_multiplier: float | None, created_at: datetime, compute_multiplier: float) -> None:
        """active=true; the audit learns the activation; compute history gets the closed warmup row (creation ->
        now) and opens the row the instance earns from now on."""
        values: dict[str, Any] = {"active": True, "activated_at": now}
        if stop_billing_at is not None:
            values["stop_billing_at"] = stop_billing_at
        await self.conn.execute(update(instances).where(instances.c.instance_id == instance_id).values(**values))
        await self.conn.execute(update(instance_audit).where(
            instance_audit.c.instance_id == instance_id).values(
            activated_at=func.coalesce(instance_audit.c.activated_at, now),
            **({"stop_billing_at": stop_billing_at} if stop_billing_at is not None else {})))
        await self._close_history(instance_id, now)
        if warmup_multiplier is not None:
            await self.conn.execute(insert(instance_compute_history).values(
                instance_id=instance_id, compute_multiplier=warmup_multiplier, started_at=created_at, ended_at=now))
        await self.conn.execute(insert(instance_compute_history).values(
            instance_id=instance_id, compute_multiplier=compute_multiplier, started_at=now))

    async def delete(self, instance_id: str, now: datetime, reason: str, *,
                     valid_termination: bool | None = None) -> RowMapping | None:
        """Remove the instance (its GPUs are freed), stamp the audit row and close the open history row. Answers
        (instance_id, chute_id, miner_hotkey, config_id) of the deleted row, what its instance_deleted event
        names; None when there was no such instance."""
        c = instances.c
        gone = (await self.conn.execute(delete(instances).where(c.instance_id == instance_id)
                                        .returning(c.instance_id, c.chute_id, c.miner_hotkey, c.config_id)
                                        )).mappings().first()
        if gone is None:
            return None
        await self.conn.execute(update(instance_audit).where(instance_audit.c.instance_id == instance_id).values(
            deleted_at=now, deletion_reason=reason[:4000], valid_termination=valid_termination))
        await self._close_history(instance_id, now)
        return gone

    async def _close_history(self, instance_id: str, now: datetime) -> None:
        await self.conn.execute(update(instance_compute_history).where(
            instance_compute_history.c.instance_id == instance_id, instance_compute_history.c.ended_at.is_(None))
            .values(ended_at=now))
