"""launch_configs: issued, claimed once (retrieved_at), then verified or failed; and the job race."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, and_, func, insert, not_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import boot_attestations, jobs, launch_configs, servers

MAX_JOB_RACERS = 15


class LaunchConfigRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def get(self, config_id: str, *, for_update: bool = False) -> RowMapping | None:
        stmt = select(launch_configs).where(launch_configs.c.config_id == config_id)
        if for_update:
            stmt = stmt.with_for_update()
        return (await self.conn.execute(stmt)).mappings().first()

    async def create(self, row: dict[str, Any]) -> None:
        await self.conn.execute(insert(launch_configs).values(**row))

    async def retrieve_once(self, config_id: str, now: datetime) -> RowMapping | None:
        """The one-time claim: set retrieved_at if it is still NULL. None when another caller got there first
        (or the config does not exist); exactly one of any number of concurrent callers gets the row."""
        stmt = (update(launch_configs)
                .where(launch_configs.c.config_id == config_id, launch_configs.c.retrieved_at.is_(None))
                .values(retrieved_at=now).returning(*launch_configs.c))
        return (await self.conn.execute(stmt)).mappings().first()

    async def restart_window(self, config_id: str, now: datetime, seed: int) -> None:
        """The Graval timing window starts once the challenge exists, not when the claim arrived."""
        await self.conn.execute(update(launch_configs).where(launch_configs.c.config_id == config_id)
                                .values(retrieved_at=now, seed=seed))

    async def mark_failed(self, config_id: str, now: datetime, reason: str) -> None:
        await self.conn.execute(
            update(launch_configs)
            .where(launch_configs.c.config_id == config_id, launch_configs.c.failed_at.is_(None),
                   launch_configs.c.verified_at.is_(None))
            .values(failed_at=now, verification_error=reason[:4000]))

    async def mark_verified(self, config_id: str, now: datetime) -> bool:
        stmt = (update(launch_configs)
                .where(launch_configs.c.config_id == config_id, launch_configs.c.verified_at.is_(None),
                       launch_configs.c.failed_at.is_(None))
                .values(verified_at=now).returning(launch_configs.c.config_id))
        return (await self.conn.execute(stmt)).first() is not None

    # -- jobs ----------------------------------------------------------------------------------------------
    async def join_job_race(self, job_id: str, chute_id: str, hotkey: str) -> str:
        """Append the hotkey to the job's racers: "ok", "missing", "repeat" (tried before) or "locked" (full)."""
        stmt = (update(jobs)
                .where(jobs.c.job_id == job_id, jobs.c.chute_id == chute_id,
                       not_(jobs.c.miner_history.op("?", return_type=Boolean)(hotkey)),
                       func.jsonb_array_length(jobs.c.miner_history) < MAX_JOB_RACERS)
                .values(miner_history=jobs.c.miner_history.op("||")(func.jsonb_build_array(hotkey)))
                .returning(jobs.c.job_id))
        if (await self.conn.execute(stmt)).first() is not None:
            return "ok"
        row = (await self.conn.execute(select(jobs.c.miner_history).where(
            jobs.c.job_id == job_id, jobs.c.chute_id == chute_id))).first()
        if row is None:
            return "missing"
        return "repeat" if hotkey in (row.miner_history or []) else "locked"

    async def claim_job(self, job_id: str, *, uid: int, hotkey: str, coldkey: str) -> bool:
        stmt = (update(jobs).where(jobs.c.job_id == job_id, jobs.c.miner_hotkey.is_(None))
                .values(miner_uid=uid, miner_hotkey=hotkey, miner_coldkey=coldkey).returning(jobs.c.job_id))
        return (await self.conn.execute(stmt)).first() is not None

    async def attach_job(self, job_id: str, instance_id: str, port_mappings: list[dict]) -> bool:
        stmt = (update(jobs).where(jobs.c.job_id == job_id)
                .values(instance_id=instance_id, port_mappings=port_mappings).returning(jobs.c.job_id))
        return (await self.conn.execute(stmt)).first() is not None

    async def start_job(self, job_id: str, now: datetime) -> None:
        await self.conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(started_at=now, status="running"))

    # -- TEE servers ---------------------------------------------------------------------------------------
    async def boot_versions(self, hotkey: str) -> list[tuple[str, str | None]]:
        """(server name, measurement version of its latest verified boot) for the miner's TEE servers."""
        latest = (select(boot_attestations.c.measurement_version)
                  .where(boot_attestations.c.server_ip == servers.c.ip, boot_attestations.c.verified.is_(True))
                  .order_by(boot_attestations.c.created_at.desc()).limit(1).scalar_subquery())
        rows = await self.conn.execute(select(servers.c.name, latest.label("version"))
                                       .where(and_(servers.c.miner_hotkey == hotkey, servers.c.is_tee.is_(True)))
                                       .order_by(servers.c.name))
        return [(r.name, r.version) for r in rows]


__all__ = ["LaunchConfigRepository", "MAX_JOB_RACERS"]
