"""images, chutes and jobs: registered by operators through AdminService, read by launch configs and miners.

    async with unit_of_work(engine) as conn:
        repo = ChuteRepository(conn)
        created = await repo.upsert_chute({"chute_id": "c-1", "user_id": ..., "image_id": ..., ...}, now=now)
        chute = await repo.get_chute("c-1")
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import chutes, images, instances, jobs, rolling_updates

# Foreign keys a write here can trip -> the referencing column a caller named (constraint names from the
# naming convention in models.py; migration 0007 creates them under the same names).
FOREIGN_KEYS: dict[str, str] = {
    "fk_images_user_id_users": "user_id",
    "fk_chutes_user_id_users": "user_id",
    "fk_chutes_image_id_images": "image_id",
    "fk_jobs_chute_id_chutes": "chute_id",
    "fk_jobs_user_id_users": "user_id",
}
_FOREIGN_KEY_VIOLATION = "23503"


class MissingReference(Exception):
    """A write named a user, image or chute that does not exist (or was deleted meanwhile); `field` is the
    referencing column. Callers check existence first for a clear error; this covers the race in between."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} refers to a row that does not exist")
        self.field = field


def _missing_reference(exc: IntegrityError) -> str | None:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) != _FOREIGN_KEY_VIOLATION:
        return None
    constraint = getattr(orig, "constraint_name", None) or getattr(orig.__cause__, "constraint_name", None)
    return FOREIGN_KEYS.get(constraint or "")


class ChuteRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    # -- reads ---------------------------------------------------------------------------------------------------
    async def get_image(self, image_id: str) -> RowMapping | None:
        return (await self.conn.execute(select(images).where(images.c.image_id == image_id))).mappings().first()

    async def lock_image(self, image_id: str) -> RowMapping | None:
        """The image, row-locked until the transaction ends: a chute insert naming it (its foreign key takes a
        key-share lock on the image) waits, so chute_ids_of_image stays true until a delete commits."""
        stmt = select(images).where(images.c.image_id == image_id).with_for_update()
        return (await self.conn.execute(stmt)).mappings().first()

    async def chute_ids_of_image(self, image_id: str) -> list[str]:
        stmt = select(chutes.c.chute_id).where(chutes.c.image_id == image_id).order_by(chutes.c.chute_id)
        return list((await self.conn.execute(stmt)).scalars())

    async def get_chute(self, chute_id: str) -> RowMapping | None:
        return (await self.conn.execute(select(chutes).where(chutes.c.chute_id == chute_id))).mappings().first()

    async def get_job(self, job_id: str) -> RowMapping | None:
        return (await self.conn.execute(select(jobs).where(jobs.c.job_id == job_id))).mappings().first()

    async def lock_chute(self, chute_id: str) -> RowMapping | None:
        """The chute, row-locked until the transaction ends: an instance insert (its foreign key takes a share
        lock on the chute) waits, so a count taken after this stays true until a delete commits."""
        stmt = select(chutes).where(chutes.c.chute_id == chute_id).with_for_update()
        return (await self.conn.execute(stmt)).mappings().first()

    async def count_instances(self, chute_id: str) -> int:
        return int(await self.conn.scalar(
            select(func.count()).select_from(instances).where(instances.c.chute_id == chute_id)))

    # -- writes --------------------------------------------------------------------------------------------------
    async def upsert_image(self, row: dict[str, Any], *, now: datetime) -> bool:
        """Create or replace by image_id; True when created. A replace keeps created_at.
        Raises MissingReference("user_id") when the owner does not exist."""
        return await self._upsert(images, images.c.image_id, row, now)

    async def upsert_chute(self, row: dict[str, Any], *, now: datetime) -> bool:
        """Create or replace by chute_id; True when created. A replace keeps created_at and rewrites every other
        column of `row` (an absent optional is NULL again); the bounty (set_bounty) is not the row's and stays.
        Raises MissingReference("user_id" | "image_id")."""
        return await self._upsert(chutes, chutes.c.chute_id, row, now)

    async def delete_image(self, image_id: str) -> bool:
        """Delete the image; False when there was none. Check chute_ids_of_image first under lock_image (the
        chutes' foreign key refuses the delete of an image in use)."""
        result = await self.conn.execute(delete(images).where(images.c.image_id == image_id))
        return result.rowcount == 1

    async def set_bounty(self, chute_id: str, bounty: int | None, *, now: datetime) -> bool:
        """Offer `bounty` on the chute, or withdraw it (None clears bounty and bounty_set_at). Raising or
        lowering a standing bounty keeps its bounty_set_at: the boost an instance gets grows with the offer's
        age, which a change of amount does not reset. False when there is no such chute."""
        values: dict[str, Any] = {"bounty": None, "bounty_set_at": None}
        if bounty is not None:
            values = {"bounty": bounty, "bounty_set_at": func.coalesce(chutes.c.bounty_set_at, now)}
        result = await self.conn.execute(update(chutes).where(chutes.c.chute_id == chute_id).values(**values))
        return result.rowcount == 1

    async def start_rolling_update(self, chute_id: str, old_version: str, new_version: str, *,
                                   now: datetime) -> None:
        """Record that the chute's instances move from `old_version` to `new_version` (one row per chute: a
        newer update replaces the one in progress)."""
        values = dict(chute_id=chute_id, old_version=old_version, new_version=new_version, started_at=now)
        stmt = insert(rolling_updates).values(**values)
        await self.conn.execute(stmt.on_conflict_do_update(
            index_elements=[rolling_updates.c.chute_id],
            set_={k: stmt.excluded[k] for k in ("old_version", "new_version", "started_at")}))

    async def delete_chute(self, chute_id: str) -> bool:
        """Delete the chute; its launch configs and jobs (and instances, so check count_instances first under
        lock_chute) cascade. False when there was none."""
        result = await self.conn.execute(delete(chutes).where(chutes.c.chute_id == chute_id))
        return result.rowcount == 1

    async def create_job(self, row: dict[str, Any], *, now: datetime) -> bool:
        """Insert an unclaimed job (status "pending", no miner history); False when job_id is taken.
        Raises MissingReference("chute_id" | "user_id")."""
        stmt = (insert(jobs).values(**row, status="pending", miner_history=[], created_at=now)
                .on_conflict_do_nothing(index_elements=[jobs.c.job_id]).returning(jobs.c.job_id))
        return await self._execute(stmt) is not None

    async def _upsert(self, table, key, row: dict[str, Any], now: datetime) -> bool:
        values = {**row, "created_at": now, "updated_at": now}
        stmt = insert(table).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[key],
            set_={name: stmt.excluded[name] for name in values if name not in (key.name, "created_at")},
        ).returning(literal_column("(xmax = 0)"))  # PostgreSQL: xmax is 0 on an inserted row
        return bool(await self._execute(stmt))

    async def _execute(self, stmt):
        try:
            return (await self.conn.execute(stmt)).scalar()
        except IntegrityError as exc:
            field = _missing_reference(exc)
            if field is None:
                raise
            raise MissingReference(field) from None
