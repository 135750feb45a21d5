"""InstanceService RPCs over instance records: the auditor's CSV exports and a miner's disable and delete.

A mixin of InstanceService (services/instances.py), which sets `self.rt`:

    class InstanceService(InstanceRecordRpcs, instances_pb2_grpc.InstanceServiceServicer): ...

The exports are unauthenticated (auth_policy.py) and streamed one page of rows per message, so neither side holds
the whole table. Disable and delete take hotkey auth with purpose "instances" (the interceptor has checked the
signature and registration); another miner's instance answers 404 exactly like a missing one.
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime, timedelta, timezone

from gantry.instances.v1 import instances_pb2

from ..domain import events
from ..domain.auth.caller import current_caller
from ..domain.launch.launcher import instance_deleted_event
from ..domain.miner.scoring import OLD_VERSION_MARKER
from ..domain.validation import Violations
from ..errors import NotFound
from ..runtime import Runtime
from ..store.db import unit_of_work
from ..store.repositories.chutes import ChuteRepository
from ..store.repositories.instance_records import InstanceRecordRepository, keyset_pages
from ..store.repositories.instances import InstanceRepository

# Windows of the exports (reference §5.1, §5.2): what an auditor polling them can still reconcile.
RECONCILIATION_WINDOW = timedelta(days=7, hours=1)
COMPUTE_HISTORY_WINDOW = timedelta(days=8)
RECONCILIATION_HEADER = ("instance_id", "deleted_at")
COMPUTE_HISTORY_HEADER = ("instance_id", "compute_multiplier", "started_at", "ended_at")

# Delete penalty when a miner removes the chute's last active instance (reference §4.9), by chutes.public:
# (factor on the open compute-history row and the audit multiplier, whether the audit loses its bounty).
DELETE_PENALTY: dict[bool, tuple[float, bool]] = {True: (0.1, True), False: (0.0, False)}
DELETION_REASON = "miner initialized"
# A miner replacing an instance left behind by a rolling update (its version is no longer the chute's): no delete
# penalty, and a reason that stats and scores count (domain/miner/scoring.OLD_VERSION_MARKER), as when the
# reference's validator removes old versions itself.
OLD_VERSION_REASON = "miner replaced it: version {old} of chute {chute_id} " + OLD_VERSION_MARKER + " (now {new})"
JOB_TERMINATED = "Instance was terminated by miner: {hotkey}"

# Chute and instance ids are at most 36 characters (models.py); anything else cannot name a row.
_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,36}$")


def _cell(value):
    """What Python's csv module writes for the reference's naive UTC timestamps: `YYYY-MM-DD HH:MM:SS[.ffffff]`;
    None stays None, which csv writes as an empty field."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def csv_chunk(rows: Iterable[Sequence], header: Sequence[str] | None = None) -> bytes:
    """Rows (and the header, for the first chunk) as CSV bytes, quoted by the csv module's default dialect.

    >>> csv_chunk([("i-1", datetime(2026, 1, 1, 12, tzinfo=timezone.utc)), ("i,2", None)], ("instance_id", "at"))
    b'instance_id,at\\r\\ni-1,2026-01-01 12:00:00\\r\\n"i,2",\\r\\n'
    """
    out = io.StringIO()
    writer = csv.writer(out)
    if header is not None:
        writer.writerow(header)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return out.getvalue().encode()


def _owned_instance(request) -> None:
    v = Violations()
    v.require(bool(_ID.match(request.chute_id)), "chute_id", "required: the chute's id (1-36 characters)")
    v.require(bool(_ID.match(request.instance_id)), "instance_id", "required: the instance's id (1-36 characters)")
    v.raise_if_any()


def _not_found(request) -> NotFound:
    return NotFound(f"Instance {request.instance_id} of chute {request.chute_id} not found",
                    reason="INSTANCE_NOT_FOUND")


class InstanceRecordRpcs:
    rt: Runtime

    # -- auditor exports -----------------------------------------------------------------------------------------
    async def GetInstanceReconciliationCsv(self, request, context):
        since = self.rt.clock.now() - RECONCILIATION_WINDOW
        pages = keyset_pages(self.rt.engine, lambda repo, after, limit: repo.reconciliation_page(
            since, after=after, limit=limit), key=lambda row: row.instance_id)
        async for chunk in _csv_stream(RECONCILIATION_HEADER, pages, width=2):
            yield instances_pb2.GetInstanceReconciliationCsvResponse(data=chunk)

    async def GetInstanceComputeHistoryCsv(self, request, context):
        since = self.rt.clock.now() - COMPUTE_HISTORY_WINDOW
        pages = keyset_pages(self.rt.engine, lambda repo, after, limit: repo.compute_history_page(
            since, after=after, limit=limit), key=lambda row: (row.instance_id, row.started_at, row.id))
        async for chunk in _csv_stream(COMPUTE_HISTORY_HEADER, pages, width=4):
            yield instances_pb2.GetInstanceComputeHistoryCsvResponse(data=chunk)

    # -- a miner's own instance ----------------------------------------------------------------------------------
    async def DisableInstance(self, request, context):
        _owned_instance(request)
        hotkey = current_caller.get().hotkey
        async with unit_of_work(self.rt.engine) as conn:
            if not await InstanceRecordRepository(conn).disable(request.chute_id, request.instance_id, hotkey):
                raise _not_found(request)
        return instances_pb2.DisableInstanceResponse(instance_id=request.instance_id, disabled=True)

    async def DeleteInstance(self, request, context):
        """Fail the instance's unfinished job, penalise the last active instance of its chute, delete it, and
        announce it (instance_deleted to the owner, job_deleted for the job it ended): one transaction. The chute
        row is locked first so that concurrent deletes of a chute's instances queue, and
        the last of them sees that it is the last (without the lock each would see the others still active)."""
        _owned_instance(request)
        hotkey = current_caller.get().hotkey
        now = self.rt.clock.now()
        async with unit_of_work(self.rt.engine) as conn:
            records = InstanceRecordRepository(conn)
            chute = await ChuteRepository(conn).lock_chute(request.chute_id)
            instance = None if chute is None else await records.owned(request.chute_id, request.instance_id,
                                                                      hotkey, for_update=True)
            if instance is None:
                raise _not_found(request)
            ended = await records.fail_unfinished_jobs(request.instance_id, now,
                                                       JOB_TERMINATED.format(hotkey=hotkey))
            reason = DELETION_REASON
            if instance["version"] != chute["version"]:
                reason = OLD_VERSION_REASON.format(old=instance["version"], chute_id=chute["chute_id"],
                                                   new=chute["version"])
            elif not await records.other_active_exists(request.chute_id, request.instance_id):
                factor, clear_bounty = DELETE_PENALTY[bool(chute["public"])]
                await records.penalise(request.instance_id, factor, clear_bounty=clear_bounty)
            gone = await InstanceRepository(conn).delete(request.instance_id, now, reason)
            await events.publish(conn, instance_deleted_event(gone, reason), now=now)
            for job_id in ended:
                await events.publish(conn, events.job_deleted(instance_id=request.instance_id, job_id=job_id),
                                     now=now)
        return instances_pb2.DeleteInstanceResponse(instance_id=request.instance_id, deleted=True)


async def _csv_stream(header: Sequence[str], pages: AsyncIterator[Sequence], *, width: int) -> AsyncIterator[bytes]:
    """One chunk per page, the header in the first; an empty export is the header alone. `width` drops the
    keyset-only columns a page carries after the exported ones."""
    first = True
    async for page in pages:
        yield csv_chunk((row[:width] for row in page), header if first else None)
        first = False
    if first:
        yield csv_chunk((), header)
