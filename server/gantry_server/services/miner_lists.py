"""MinerService RPCs: the lists a miner agent reads (composed into services/miner.py), GetChute, ReleaseJob, and
the unauthenticated chute state (rolling updates, utilization, supported GPUs).

Thin: rows come from store/repositories/miner.py and are shaped by domain/miner/rows.py; this file only turns
row dicts into messages. Streamed lists are read in keyset pages of `page_rows` rows (one short read per page on
its own pooled connection) and sent one row per message; the REST gateway frames them as SSE.
"""
from __future__ import annotations

import asyncio
import functools
import re

from gantry.miner.v1 import miner_pb2
from google.protobuf import json_format, struct_pb2

from ..domain import events
from ..domain.auth.caller import current_caller
from ..domain.launch import scaling
from ..domain.miner import rows
from ..domain.miner.jobs import job_created_event
from ..domain.validation import Violations
from ..errors import NotFound
from ..runtime import Runtime
from ..store.db import unit_of_work
from ..store.repositories.instance_records import PAGE_ROWS, keyset_pages
from ..store.repositories.miner import MinerRepository, chute_key

# Ids are at most 36 characters and versions 64 (models.py); anything else cannot name a row.
_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,36}$")
_VERSION = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


@functools.cache
def _value_fields(descriptor) -> frozenset[str]:
    return frozenset(f.name for f in descriptor.fields
                     if f.message_type is not None and f.message_type.full_name == "google.protobuf.Value")


def _message(cls, row: dict):
    """A message from a row dict: None leaves a field unset, datetimes become Timestamps, dicts Structs or nested
    messages, and JSON of a google.protobuf.Value field (a list, say) becomes that Value."""
    values = {k: v for k, v in row.items() if v is not None}
    for name in _value_fields(cls.DESCRIPTOR) & values.keys():
        values[name] = json_format.ParseDict(values[name], struct_pb2.Value())
    return cls(**values)


def _chute(found) -> miner_pb2.Chute:
    return _message(miner_pb2.Chute, rows.chute_row(found.chute, **found.image))


class MinerListsMixin:
    rt: Runtime
    page_rows: int = PAGE_ROWS  # rows per keyset page of the streamed lists

    def _pages(self, fetch, key):
        return keyset_pages(self.rt.engine, fetch, key=key, limit=self.page_rows, repository=MinerRepository)

    # -- streamed lists --------------------------------------------------------------------------------------------
    async def ListChutes(self, request, context):
        async for page in self._pages(lambda repo, after, limit: repo.chutes_page(after, limit), chute_key):
            for found in page:
                yield miner_pb2.ListChutesResponse(chute=_chute(found))

    async def ListImages(self, request, context):
        async for page in self._pages(lambda repo, after, limit: repo.images_page(after, limit),
                                      lambda row: row["image_id"]):
            for image in page:
                yield miner_pb2.ListImagesResponse(
                    image=_message(miner_pb2.Image, rows.image_row(image, image["owner_username"])))

    async def ListNodes(self, request, context):
        hotkey = current_caller.get().hotkey
        async for page in self._pages(lambda repo, after, limit: repo.nodes_page(hotkey, after, limit),
                                      lambda row: row["uuid"]):
            for node in page:
                yield miner_pb2.ListNodesResponse(node=_message(miner_pb2.Node, rows.node_row(node)))

    async def ListInstances(self, request, context):
        hotkey = current_caller.get().hotkey
        async for page in self._pages(lambda repo, after, limit: repo.instances_page(
                hotkey, rows.INSTANCE_COLUMNS, after, limit), lambda row: row["instance_id"]):
            for instance in page:
                yield miner_pb2.ListInstancesResponse(
                    instance=_message(miner_pb2.MinerInstance, rows.instance_row(instance)))

    async def ListAvailableJobs(self, request, context):
        async for page in self._pages(lambda repo, after, limit: repo.available_jobs_page(after, limit),
                                      lambda open_job: open_job.key):
            for job, chute in page:
                yield miner_pb2.ListAvailableJobsResponse(job=_message(miner_pb2.Job, rows.job_row(job, chute)))

    # -- the caller's servers, inventory; platform-wide active instances -------------------------------------------
    async def ListServers(self, request, context):
        async with unit_of_work(self.rt.engine) as conn:
            found = await MinerRepository(conn).servers_with_gpus(current_caller.get().hotkey)
        return miner_pb2.ListServersResponse(
            servers=[_message(miner_pb2.MinerServer, rows.server_row(s, gpus)) for s, gpus in found])

    async def GetFullInventory(self, request, context):
        async with unit_of_work(self.rt.engine) as conn:
            found = await MinerRepository(conn).inventory(current_caller.get().hotkey)
        return miner_pb2.GetFullInventoryResponse(items=[_message(miner_pb2.InventoryGpu, dict(r)) for r in found])

    async def ListActiveInstances(self, request, context):
        async with unit_of_work(self.rt.engine) as conn:
            found = await MinerRepository(conn).active_instances()
        return miner_pb2.ListActiveInstancesResponse(
            items=[_message(miner_pb2.ActiveInstance, dict(r)) for r in found])

    # -- one chute; giving a job back ------------------------------------------------------------------------------
    async def GetChute(self, request, context):
        v = Violations()
        v.require(bool(_ID.match(request.chute_id)), "chute_id", "required: the chute's id (1-36 characters)")
        v.require(bool(_VERSION.match(request.version)), "version", "required: the chute's version (1-64 characters)")
        v.raise_if_any()
        async with unit_of_work(self.rt.engine) as conn:
            found = await MinerRepository(conn).chute(request.chute_id, request.version)
        if found is None:
            raise NotFound(f"Chute {request.chute_id} version {request.version} not found", reason="CHUTE_NOT_FOUND")
        return miner_pb2.GetChuteResponse(chute=_chute(found))

    async def ReleaseJob(self, request, context):
        """Clear the caller's claim and announce the job again (job_created, excluding the miners that tried it)
        in the same transaction: the event exists exactly when the release does."""
        v = Violations()
        v.require(bool(_ID.match(request.job_id)), "job_id", "required: the job's id (1-36 characters)")
        v.raise_if_any()
        now = self.rt.clock.now()
        async with unit_of_work(self.rt.engine) as conn:
            released = await MinerRepository(conn).release_job(request.job_id, current_caller.get().hotkey, now)
            if released is None:
                raise NotFound(f"Job {request.job_id} not found", reason="JOB_NOT_FOUND")
            await events.publish(conn, job_created_event(released.job, released.chute), now=now)
        return miner_pb2.ReleaseJobResponse()

    # -- unauthenticated ---------------------------------------------------------------------------------------
    async def ListRollingUpdates(self, request, context):
        async with unit_of_work(self.rt.engine) as conn:
            found = await MinerRepository(conn).rolling_updates()
        return miner_pb2.ListRollingUpdatesResponse(items=[_message(miner_pb2.RollingUpdate, dict(r)) for r in found])

    async def ListChuteUtilization(self, request, context):
        async with unit_of_work(self.rt.engine) as conn:
            repo = MinerRepository(conn)
            found = await repo.chutes_with_counts()
            updating = {r["chute_id"] for r in await repo.rolling_updates()}
        targets = await asyncio.gather(*(scaling.target(self.rt.redis, chute) for chute, _ in found))
        return miner_pb2.ListChuteUtilizationResponse(items=[
            _message(miner_pb2.ChuteUtilization, rows.utilization_row(
                chute, counts, target, update_in_progress=chute["chute_id"] in updating))
            for (chute, counts), target in zip(found, targets)])

    async def GetSupportedNodes(self, request, context):
        return miner_pb2.GetSupportedNodesResponse(
            gpus={k: miner_pb2.SupportedGpu(**g) for k, g in rows.supported_gpus().items()})
