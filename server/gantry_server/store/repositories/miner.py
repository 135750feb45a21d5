"""What miner agents list and read (MinerService, seed 003): the SQL behind the lists, in keyset pages.

Every streamed list is read one page at a time, in a fixed key order ending in a unique column, so neither side
holds the whole table (see keyset_pages in instance_records.py):

    fetch = lambda repo, after, limit: repo.chutes_page(after, limit)
    async for page in keyset_pages(engine, fetch, key=chute_key, repository=MinerRepository):
        ...

Miner writes (ReleaseJob) go through one connection in the caller's unit of work.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, func, literal, select, tuple_, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import (chutes, images, instance_compute_history, instance_nodes, instances, jobs, launch_configs,
                      nodes, rolling_updates, servers, users)
from .instance_records import PAGE_ROWS
from .instances import ChuteCounts, chute_count_columns

JOB_RELEASED = "job released by its miner"

# Keysets: the sort order of each list, ending in a unique column.
JobKey = tuple[datetime, str]  # (created_at, job_id): open jobs oldest first


# A chute page row: the chute and what its image reference is made of (the image owner's username).
_IMAGE_PARTS = (images.c.name.label("image_name"), images.c.tag.label("image_tag"),
                images.c.patch_version.label("image_patch_version"), users.c.username.label("image_owner"))
_CHUTE_PREFIX = "chute__"


class ChuteWithImage(NamedTuple):
    """A chutes row with the parts of its image reference: `rows.chute_row(chute, **image)`."""
    chute: dict[str, Any]
    image: dict[str, Any]  # image_owner, image_name, image_tag, image_patch_version


class OpenJob(NamedTuple):
    """An open job (no instance, not finished) and its chute: `job_created_event(open_job.job, open_job.chute)`.
    `key` is the keyset value to pass back as `after_job_key` for the next page."""
    job: dict[str, Any]  # the whole jobs row
    chute: dict[str, Any]  # the chutes row, without `code`

    @property
    def key(self) -> JobKey:
        return self.job["created_at"], self.job["job_id"]


def chute_key(row: ChuteWithImage) -> str:
    return row.chute["chute_id"]


def _prefixed(table, prefix: str, *, skip: tuple[str, ...] = ()) -> list:
    return [c.label(prefix + c.name) for c in table.c if c.name not in skip]


def _split(mapping: RowMapping, prefix: str) -> tuple[dict, dict]:
    inner, rest = {}, {}
    for name, value in mapping.items():
        if name.startswith(prefix):
            inner[name[len(prefix):]] = value
        else:
            rest[name] = value
    return inner, rest


class MinerRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    # -- chutes and images ---------------------------------------------------------------------------------------
    def _chutes(self):
        return (select(*_prefixed(chutes, _CHUTE_PREFIX), *_IMAGE_PARTS)
                .join(images, images.c.image_id == chutes.c.image_id)
                .join(users, users.c.user_id == images.c.user_id))

    async def _chute_rows(self, stmt) -> list[ChuteWithImage]:
        return [ChuteWithImage(*_split(m, _CHUTE_PREFIX)) for m in (await self.conn.execute(stmt)).mappings()]

    async def chutes_page(self, after: str | None, limit: int = PAGE_ROWS) -> list[ChuteWithImage]:
        """Chutes (code and filename included) in chute_id order after `after`; key: `row.chute["chute_id"]`."""
        stmt = self._chutes().order_by(chutes.c.chute_id).limit(limit)
        if after is not None:
            stmt = stmt.where(chutes.c.chute_id > after)
        return await self._chute_rows(stmt)

    async def chute(self, chute_id: str, version: str) -> ChuteWithImage | None:
        """The chute if both its id and its current version match; None otherwise."""
        rows = await self._chute_rows(self._chutes().where(chutes.c.chute_id == chute_id,
                                                           chutes.c.version == version))
        return rows[0] if rows else None

    async def images_page(self, after: str | None, limit: int = PAGE_ROWS) -> Sequence[RowMapping]:
        """Images with their owner's username (`owner_username`), in image_id order after `after`."""
        stmt = (select(images, users.c.username.label("owner_username"))
                .join(users, users.c.user_id == images.c.user_id).order_by(images.c.image_id).limit(limit))
        if after is not None:
            stmt = stmt.where(images.c.image_id > after)
        return list((await self.conn.execute(stmt)).mappings())

    # -- the caller's GPUs, servers and instances ----------------------------------------------------------------
    async def nodes_page(self, hotkey: str, after: str | None, limit: int = PAGE_ROWS) -> Sequence[RowMapping]:
        """The miner's GPUs in uuid order after `after`."""
        stmt = select(nodes).where(nodes.c.miner_hotkey == hotkey).order_by(nodes.c.uuid).limit(limit)
        if after is not None:
            stmt = stmt.where(nodes.c.uuid > after)
        return list((await self.conn.execute(stmt)).mappings())

    async def instances_page(self, hotkey: str, columns: Sequence[str], after: str | None,
                             limit: int = PAGE_ROWS) -> Sequence[RowMapping]:
        """`columns` of the miner's instances in instance_id order after `after` (only the columns asked for are
        read, so secrets never leave the database)."""
        c = instances.c
        stmt = select(*(c[name] for name in columns)).where(c.miner_hotkey == hotkey).order_by(c.instance_id)
        if after is not None:
            stmt = stmt.where(c.instance_id > after)
        return list((await self.conn.execute(stmt.limit(limit))).mappings())

    async def servers_with_gpus(self, hotkey: str) -> list[tuple[RowMapping, list[RowMapping]]]:
        """The miner's servers, newest first, each with its GPUs in device order (an empty list for none)."""
        server_rows = list((await self.conn.execute(
            select(servers).where(servers.c.miner_hotkey == hotkey)
            .order_by(servers.c.created_at.desc(), servers.c.server_id))).mappings())
        gpus: dict[str, list[RowMapping]] = {s["server_id"]: [] for s in server_rows}
        if gpus:
            stmt = (select(nodes).where(nodes.c.server_id.in_(list(gpus)))
                    .order_by(nodes.c.server_id, nodes.c.device_index, nodes.c.uuid))
            for gpu in (await self.conn.execute(stmt)).mappings():
                gpus[gpu["server_id"]].append(gpu)
        return [(s, gpus[s["server_id"]]) for s in server_rows]

    async def inventory(self, hotkey: str) -> list[RowMapping]:
        """The miner's GPUs attached to one of its instances: gpu_id, last_verified_at, verification_error,
        active, chute_id, chute_name."""
        i = instances.c
        stmt = (select(nodes.c.uuid.label("gpu_id"), i.last_verified_at, i.verification_error, i.active,
                       i.chute_id, chutes.c.name.label("chute_name"))
                .select_from(nodes)
                .join(instance_nodes, instance_nodes.c.node_id == nodes.c.uuid)
                .join(instances, i.instance_id == instance_nodes.c.instance_id)
                .join(chutes, chutes.c.chute_id == i.chute_id)
                .where(nodes.c.miner_hotkey == hotkey, i.miner_hotkey == hotkey)
                .order_by(nodes.c.uuid))
        return list((await self.conn.execute(stmt)).mappings())

    async def active_instances(self) -> list[RowMapping]:
        """Every active and verified instance: instance_id, miner_hotkey, chute_id, activated_at and
        compute_multiplier (the open compute-history row's, else the instance's, else 1.0)."""
        i, h = instances.c, instance_compute_history.c
        stmt = (select(i.instance_id, i.miner_hotkey, i.chute_id, i.activated_at,
                       func.coalesce(h.compute_multiplier, i.compute_multiplier, literal(1.0))
                       .label("compute_multiplier"))
                .select_from(instances)
                .outerjoin(instance_compute_history, and_(h.instance_id == i.instance_id, h.ended_at.is_(None)))
                .where(i.active.is_(True), i.verified.is_(True))
                .order_by(i.instance_id))
        return list((await self.conn.execute(stmt)).mappings())

    # -- jobs ------------------------------------------------------------------------------------------------------
    async def available_jobs_page(self, after_job_key: JobKey | None, limit: int = PAGE_ROWS) -> list[OpenJob]:
        """Open jobs (instance_id NULL, finished_at NULL), oldest first, after `after_job_key` (None: from the
        start). Each item is an OpenJob(job, chute) of plain dicts: the whole jobs row and its chutes row
        (without `code`), exactly what `domain.miner.jobs.job_created_event(job, chute)` and
        `domain.miner.rows.job_row(job, chute)` take. A page shorter than `limit` is the last.

            after = None
            while True:
                page = await MinerRepository(conn).available_jobs_page(after, 500)
                events = [job_created_event(job, chute) for job, chute in page]
                if len(page) < 500:
                    break
                after = page[-1].key
        """
        j = jobs.c
        stmt = (select(*_prefixed(chutes, _CHUTE_PREFIX, skip=("code",)), jobs)
                .join(chutes, chutes.c.chute_id == j.chute_id)
                .where(j.instance_id.is_(None), j.finished_at.is_(None))
                .order_by(j.created_at, j.job_id).limit(limit))
        if after_job_key is not None:
            stmt = stmt.where(tuple_(j.created_at, j.job_id) > tuple_(*after_job_key))
        page = []
        for mapping in (await self.conn.execute(stmt)).mappings():
            chute, job = _split(mapping, _CHUTE_PREFIX)
            page.append(OpenJob(job, chute))
        return page

    async def release_job(self, job_id: str, hotkey: str, now: datetime) -> OpenJob | None:
        """Give back a job the miner claimed and has not finished: clear its miner and instance (miner_history
        stays, so the miner is not offered it again) and end the miner's live launch config for it, so that
        another miner can race for the job. None when the job is not this miner's or is finished."""
        j = jobs.c
        job = (await self.conn.execute(
            update(jobs).where(j.job_id == job_id, j.miner_hotkey == hotkey, j.finished_at.is_(None))
            .values(miner_uid=None, miner_hotkey=None, miner_coldkey=None, instance_id=None)
            .returning(jobs))).mappings().first()
        if job is None:
            return None
        lc = launch_configs.c
        await self.conn.execute(
            update(launch_configs)
            .where(lc.job_id == job_id, lc.miner_hotkey == hotkey, lc.failed_at.is_(None), lc.completed_at.is_(None))
            .values(failed_at=now, verification_error=JOB_RELEASED))
        chute = (await self.conn.execute(
            select(*(c for c in chutes.c if c.name != "code")).where(chutes.c.chute_id == job["chute_id"])
        )).mappings().one()
        return OpenJob(dict(job), dict(chute))

    # -- unauthenticated chute state -----------------------------------------------------------------------------
    async def rolling_updates(self) -> list[RowMapping]:
        """Rolling updates still in progress: chute_id, chute_name, old_version, new_version (the chute's current
        version), started_at, instances_remaining (> 0: instances on another version)."""
        ru, c, i = rolling_updates.c, chutes.c, instances.c
        remaining = (select(func.count()).select_from(instances)
                     .where(i.chute_id == ru.chute_id, i.version != c.version).scalar_subquery())
        inner = (select(ru.chute_id, c.name.label("chute_name"), ru.old_version, c.version.label("new_version"),
                        ru.started_at, remaining.label("instances_remaining"))
                 .join(chutes, c.chute_id == ru.chute_id).subquery())
        stmt = select(inner).where(inner.c.instances_remaining > 0).order_by(inner.c.started_at, inner.c.chute_id)
        return list((await self.conn.execute(stmt)).mappings())

    async def chutes_with_counts(self) -> list[tuple[RowMapping, ChuteCounts]]:
        """Every chute (without code) with its instance counts for the scaling gates (ChuteCounts, `hotkey` 0)."""
        i = instances.c
        counts = select(i.chute_id, *chute_count_columns()).group_by(i.chute_id).subquery()
        stmt = (select(*(c for c in chutes.c if c.name != "code"), counts.c.total, counts.c.active, counts.c.live)
                .outerjoin(counts, counts.c.chute_id == chutes.c.chute_id).order_by(chutes.c.chute_id))
        return [(m, ChuteCounts(total=m["total"] or 0, active=m["active"] or 0, live=m["live"] or 0, hotkey=0))
                for m in (await self.conn.execute(stmt)).mappings()]
