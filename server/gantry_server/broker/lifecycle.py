"""The safety loops: every unit of work is one session (or one provider instance) claimed with a lease.

`tick()` moves every due session one step: verify provisioning ones, end expired / hard-max / idle ones,
finish destroys that did not verify, recover creates whose process died, drop preserved disks past their
retention. `reconcile()` compares each provider's labelled instances with the database: an orphan (ours,
no live session) is destroyed only after `reconcile_misses` listings and a direct status check; a ghost (a
live session whose instance is missing) is ended only after as many misses and a direct check saying GONE,
so a listing gap or a provider error never kills a working session. Both are safe to run on any number of
replicas at once, and both are driven by the injected clock (tests call them directly).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects.postgresql import insert

from ..errors import dependency_down
from ..providers.base import InstanceState, ProviderError, parse_label
from ..store.models import ACTIVE_SESSION_STATUSES, broker_orphan_candidates as oc, broker_sessions as t
from ..store.repositories import sessions as repo
from . import metrics
from .sessions import CREATE_LEASE, STEP_LEASE, SessionManager

log = logging.getLogger(__name__)

PENDING_SETTLE = timedelta(seconds=30)  # a dead process's create is recovered this long after its last change
PARALLEL_UNITS = 16  # sessions one replica works on at once in a tick (provider rate limits still apply)


class Lifecycle:
    def __init__(self, manager: SessionManager) -> None:
        self.m = manager
        self.b = manager.b
        self._task: asyncio.Task | None = None
        self._parallel = asyncio.Semaphore(PARALLEL_UNITS)

    # ---- one pass ------------------------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One pass over every session that needs attention now."""
        now = self.b.clock.now()
        hard_max_at = now - timedelta(hours=self.b.settings.hard_max_hours)
        async with self.b.engine.connect() as conn:
            hard_max = await repo.due(conn, and_(t.c.status.in_(ACTIVE_SESSION_STATUSES), t.c.created_at <= hard_max_at), now)
            expired = await repo.due(conn, and_(t.c.status.in_(("provisioning", "running")), t.c.expires_at <= now,
                                                t.c.created_at > hard_max_at), now)
            provisioning = await repo.due(conn, and_(t.c.status == "provisioning",
                                                     or_(t.c.next_check_at.is_(None), t.c.next_check_at <= now)), now)
            idle = await repo.due(conn, and_(t.c.status == "running", t.c.idle_threshold_minutes > 0,
                                             t.c.next_check_at <= now), now)
            stopping = await repo.due(conn, and_(t.c.status == "stopping",
                                                 or_(t.c.next_check_at.is_(None), t.c.next_check_at <= now)), now)
            # A create whose process died: at once when its process is gone (after a settle, for a provider call
            # that was in flight), else once the create lease has run out (a hung process).
            stale_pending = await repo.due(conn, and_(t.c.status == "pending", or_(
                t.c.created_at <= now - CREATE_LEASE,
                and_(t.c.updated_at <= now - PENDING_SETTLE, repo.lease_owner_gone()))), now)
            preserved = await repo.due(conn, and_(t.c.status == "stopped", t.c.preserved_until <= now), now)
        # Ending comes first (a session past its hard max is not verified again); within a phase the units run
        # side by side, so one slow provider call does not hold up the others (defect 22).
        await self._each(hard_max, lambda sid: self.m.terminate(sid, "hard_max"))
        await self._each(expired, lambda sid: self.m.terminate(sid, "expired", from_statuses=("provisioning", "running")))
        await self._each(provisioning, self.m.verify_step)
        await self._each(idle, self.probe_idle)
        await self._each(stopping, self.m.finish_stopping)
        await self._each(stale_pending, self.recover_pending)
        await self._each(preserved, self.m.release_preserved)
        await self.m.refresh_active_gauge()

    async def _each(self, ids: list[str], step) -> None:
        async def one(sid: str) -> None:
            async with self._parallel:
                await self._guard(step(sid))

        await asyncio.gather(*(one(sid) for sid in ids))

    async def _guard(self, step) -> None:
        """One session's failure (a provider bug, a network error) must not stop the pass for the others."""
        try:
            await step
        except Exception as exc:
            if (which := dependency_down(exc)) is not None:  # an outage: one line, not a traceback per unit
                log.warning("lifecycle step skipped: %s unavailable", which)
                return
            log.exception("lifecycle step failed")

    async def probe_idle(self, session_id: str) -> None:
        """Idle shutdown: GPU utilisation and interactive logins seen over SSH with the session's key."""
        from .ssh import SshCheckError, probe_activity  # noqa: PLC0415

        now = self.b.clock.now()
        async with self.b.engine.begin() as conn:
            row = await repo.claim(conn, session_id, self.b.lease_token(), now, now + STEP_LEASE, ("running",))
        if row is None:
            return
        next_probe = now + timedelta(seconds=self.b.settings.idle_probe_interval_seconds)
        try:
            activity = await probe_activity(row.ssh_host, row.ssh_port, row.ssh_user, self.m.private_key(row))
        except SshCheckError as exc:  # unreachable is not evidence of idleness; try again later
            log.info("idle probe failed", extra={"session_id": row.id, "error": str(exc)})
            await self.m._release(row, next_check_at=next_probe)
            return
        if activity.disk_free_gb is not None:
            metrics.DISK_AVAILABLE.labels(row.provider).set(activity.disk_free_gb)
        if not activity.is_idle():
            await self.m._release(row, next_check_at=next_probe, last_active_at=now, instance_seen_at=now)
            return
        idle_since = row.last_active_at or row.running_at or row.created_at
        if now - idle_since >= timedelta(minutes=row.idle_threshold_minutes):
            await self.m._release(row, instance_seen_at=now)
            await self.m.terminate(row.id, "idle", from_statuses=("running",))
            return
        await self.m._release(row, next_check_at=next_probe, instance_seen_at=now)

    async def recover_pending(self, session_id: str) -> None:
        """A create whose process died: adopt the instance if the provider made it, else fail (no cost)."""
        now = self.b.clock.now()
        async with self.b.engine.begin() as conn:
            row = await repo.claim(conn, session_id, self.b.lease_token(), now, now + STEP_LEASE, ("pending",))
        if row is None:
            return
        from ..providers.base import instance_label  # noqa: PLC0415

        provider = self.b.provider(row.provider)
        try:
            instances = await provider.list_instances()
        except ProviderError:
            await self.m._release(row)
            return  # cannot tell; try again next pass
        label = instance_label(self.b.deployment_id, row.id)
        found = next((i for i in instances if i.label == label), None)
        async with self.b.engine.begin() as conn:
            if found is not None:
                updated = await repo.transition(
                    conn, row.id, ("pending",), now, status="provisioning", provider_instance_id=found.instance_id,
                    billing_started_at=found.started_at or row.created_at, next_check_at=now,
                    lease_owner=None, lease_until=None)
                if updated is not None:
                    metrics.SESSIONS_CREATED.labels(row.provider).inc()
            else:
                updated = await repo.transition(
                    conn, row.id, ("pending",), now, status="failed", stop_reason="provision_failed",
                    error="create interrupted before the provider created an instance", stopped_at=now,
                    lease_owner=None, lease_until=None)
                if updated is not None:
                    metrics.SESSIONS_DESTROYED.labels(row.provider, "provision_failed").inc()
        if updated is not None:
            await repo.publish_change(self.b.redis, updated.id, updated.version)

    # ---- reconciliation ------------------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        for name, provider in self.b.providers.items():
            try:
                instances = await provider.list_instances()
            except ProviderError as exc:  # a failed listing proves nothing: skip this provider this round
                log.warning("reconcile: listing failed", extra={"provider": name, "error": str(exc)})
                continue
            await self._reconcile_provider(name, provider, instances)
        await self._forget_ended_creations()

    async def _forget_ended_creations(self) -> None:
        """Keep `created_here` (what a SIGTERM "destroy" ends) to the sessions still live, so a long-running
        process does not collect the id of every session it ever created."""
        snapshot = set(self.m.created_here)
        if not snapshot:
            return
        async with self.b.engine.connect() as conn:
            live = {r.id for r in (await conn.execute(select(t.c.id).where(
                t.c.id.in_(sorted(snapshot)), t.c.status.in_(ACTIVE_SESSION_STATUSES)))).all()}
        self.m.created_here -= snapshot - live  # ids added meanwhile stay

    async def _reconcile_provider(self, name, provider, instances) -> None:
        now = self.b.clock.now()
        ours = {i.instance_id: i for i in instances if parse_label(i.label, self.b.deployment_id) is not None}
        async with self.b.engine.connect() as conn:
            owned = await repo.with_instances(conn, name)
        live_instance_ids = {r.provider_instance_id for r in owned
                             if r.status in (*ACTIVE_SESSION_STATUSES, "stopping") or r.preserved_until is not None}
        # Sessions still being created own their label even before the instance id is stored.
        async with self.b.engine.connect() as conn:
            pending = {r.id for r in (await conn.execute(select(t.c.id).where(
                t.c.provider == name, t.c.status == "pending"))).all()}

        # Orphans: ours, and no session that owns them.
        for instance_id, inst in ours.items():
            session_id = parse_label(inst.label, self.b.deployment_id)
            if instance_id in live_instance_ids or session_id in pending:
                continue
            await self._orphan_miss(name, provider, inst, now)
        async with self.b.engine.begin() as conn:  # candidates that are owned again or gone are forgotten
            await conn.execute(delete(oc).where(oc.c.provider == name, or_(
                oc.c.instance_id.not_in(list(ours) or [""]), oc.c.instance_id.in_(list(live_instance_ids) or [""]))))

        # Ghosts: live sessions past the grace whose instance is missing from the listing. Those listed were
        # seen now (what a vanished one is billed up to).
        grace = now - timedelta(minutes=self.b.settings.ghost_grace_minutes)
        listed = {i.instance_id for i in instances}
        seen = [r.id for r in owned if r.status in ("provisioning", "running") and r.provider_instance_id in listed]
        if seen:
            async with self.b.engine.begin() as conn:
                await conn.execute(t.update().where(t.c.id.in_(seen)).values(instance_seen_at=now, ghost_misses=0))
        for r in owned:
            if r.status not in ("provisioning", "running") or r.provider_instance_id in listed:
                continue
            if r.created_at > grace:
                continue
            await self._ghost_miss(r, provider, now)

    async def _orphan_miss(self, name, provider, inst, now) -> None:
        async with self.b.engine.begin() as conn:
            row = (await conn.execute(
                insert(oc).values(provider=name, instance_id=inst.instance_id, label=inst.label, misses=1,
                                  first_seen=now, last_seen=now)
                .on_conflict_do_update(index_elements=[oc.c.provider, oc.c.instance_id],
                                       set_={"misses": oc.c.misses + 1, "last_seen": now})
                .returning(oc.c.misses))).first()
        if row.misses < self.b.settings.reconcile_misses:
            return
        # Last check before destroying: the session may have just been created or adopted by another replica.
        session_id = parse_label(inst.label, self.b.deployment_id)
        async with self.b.engine.connect() as conn:
            session = await repo.get(conn, session_id) if session_id else None
        if session is not None and (session.status in (*ACTIVE_SESSION_STATUSES, "stopping")
                                    or session.preserved_until is not None):
            return
        try:
            current = await provider.get_instance(inst.instance_id)
            if current.state is InstanceState.GONE:
                return
            await provider.destroy_instance(inst.instance_id)
        except ProviderError as exc:
            log.warning("orphan destroy failed", extra={"instance_id": inst.instance_id, "error": str(exc)})
            metrics.DESTROY_FAILURES.inc()
            return
        metrics.ORPHANS_DETECTED.inc()
        metrics.RECONCILIATION_MISMATCHES.inc()
        log.warning("orphan destroyed", extra={"provider": name, "instance_id": inst.instance_id,
                                               "session_id": session_id})
        async with self.b.engine.begin() as conn:
            await conn.execute(delete(oc).where(oc.c.provider == name, oc.c.instance_id == inst.instance_id))

    async def _ghost_miss(self, r, provider, now) -> None:
        """Missing from the listing: confirmed at once with the provider, as a provisioning session's vanished
        instance is (a listing gap or a provider error never ends a working session; only GONE does)."""
        async with self.b.engine.begin() as conn:
            misses = (await conn.execute(t.update().where(t.c.id == r.id, t.c.status.in_(("provisioning", "running")))
                                         .values(ghost_misses=t.c.ghost_misses + 1).returning(t.c.ghost_misses))).scalar()
        if misses is None:
            return
        try:
            current = await provider.get_instance(r.provider_instance_id)
        except ProviderError:
            return  # an error is not "gone"
        if current.state is not InstanceState.GONE:
            async with self.b.engine.begin() as conn:  # listing lag: the instance is there
                await conn.execute(t.update().where(t.c.id == r.id).values(ghost_misses=0, instance_seen_at=now))
            return
        metrics.GHOSTS_DETECTED.inc()
        metrics.RECONCILIATION_MISMATCHES.inc()
        log.warning("ghost session ended", extra={"session_id": r.id, "instance_id": r.provider_instance_id})
        await self.m.terminate(r.id, "ghost", error="instance not found on provider during reconciliation",
                               from_statuses=("provisioning", "running"))

    # ---- process life --------------------------------------------------------------------------------------------

    async def startup_sweep(self, timeout: float = 120.0) -> None:
        """Before the server reports ready: settle what a previous process left half done."""
        try:
            async with asyncio.timeout(timeout):
                await self.reconcile()
                await self.tick()
        except TimeoutError:
            log.warning("startup sweep did not finish in time; the loops continue it")

    async def run(self) -> None:
        interval = self.b.settings.lifecycle_interval_seconds
        reconcile_every = self.b.settings.reconcile_interval_seconds
        since_reconcile = reconcile_every
        while True:
            await asyncio.sleep(interval)
            await self._guard(self.tick())
            since_reconcile += interval
            if since_reconcile >= reconcile_every:
                since_reconcile = 0
                await self._guard(self.reconcile())

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def shutdown(self, policy: str, timeout: float = 60.0) -> None:
        """SIGTERM: "keep" leaves instances running for the next process; "destroy" ends the live sessions this
        process owns, that is those whose provider create it ran (SessionManager.created_here), never another
        replica's: stopping one replica of a fleet (a rolling deploy, a scale-down) must not end sessions that
        other replicas serve. Sessions created by a process that is gone are left to the lifecycle loops of the
        others (expiry, hard max, idle), as with "keep".

        Either way the database says what happened: kept sessions stay active with their leases released,
        destroyed ones are stopped (or still stopping, for the next process to finish).
        """
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.m.aclose()
        if policy == "destroy" and self.m.created_here:
            async with self.b.engine.connect() as conn:
                ids = [r.id for r in (await conn.execute(
                    select(t.c.id).where(t.c.status.in_(ACTIVE_SESSION_STATUSES),
                                         t.c.id.in_(sorted(self.m.created_here))))).all()]
            limit = asyncio.Semaphore(5)

            async def end(sid: str) -> None:
                async with limit:
                    await self._guard(self.m.terminate(sid, "shutdown"))

            try:
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*(end(s) for s in ids))
            except TimeoutError:
                log.warning("shutdown: some destroys did not finish; the next process finishes them")
        for _ in range(2):  # a pooled connection that a PostgreSQL restart closed fails once; then a new one
            try:
                async with self.b.engine.begin() as conn:
                    await conn.execute(t.update().where(t.c.lease_owner.startswith(f"{self.b.owner}:"))
                                       .values(lease_owner=None, lease_until=None))
                return
            except Exception as exc:
                if dependency_down(exc) is None:
                    raise
        # Not fatal to the shutdown: a lease whose process has no connection left is free at once for the others.
        log.warning("shutdown: leases not released, PostgreSQL unavailable; other replicas take them once this "
                    "process's connections are gone")
