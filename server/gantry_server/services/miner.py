"""MinerService (seed 003): what miner agents read, and the event feed. A thin translation, proto <-> domain.

The RPCs are grouped by concern, one file each, and composed here:
    miner_lists.py   the streamed lists, servers, inventory, get chute, release job, rolling updates,
                     utilization, supported nodes
    miner_stats.py   stats, scores, unique chute history, thrash cooldowns, metrics
    miner_events.py  WatchEvents
"""
from __future__ import annotations

from gantry.miner.v1 import miner_pb2, miner_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ..runtime import Runtime
from ..store.db import unit_of_work
from ..store.repositories.metagraph import MetagraphRepository
from .miner_events import MinerEventsMixin
from .miner_lists import MinerListsMixin
from .miner_stats import MinerStatsMixin

_SCALARS = ("hotkey", "checksum", "coldkey", "node_id", "incentive", "netuid", "stake", "tao_stake", "alpha_stake",
            "trust", "vtrust", "last_updated", "ip", "ip_type", "port", "protocol")
_OPTIONAL = ("real_host", "real_port", "blacklist_reason")


def metagraph_node(row) -> miner_pb2.MetagraphNode:
    node = miner_pb2.MetagraphNode(**{k: row[k] for k in _SCALARS},
                                   **{k: row[k] for k in _OPTIONAL if row[k] is not None})
    synced = Timestamp()
    synced.FromDatetime(row["synced_at"])
    node.synced_at.CopyFrom(synced)
    return node


class MinerService(MinerListsMixin, MinerStatsMixin, MinerEventsMixin, miner_pb2_grpc.MinerServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def GetMetagraph(self, request, context):
        """Unauthenticated (as in the reference): the registered nodes of the configured subnet."""
        async with unit_of_work(self.rt.engine) as conn:
            rows = await MetagraphRepository(conn).list_registered(self.rt.settings.netuid)
        return miner_pb2.GetMetagraphResponse(items=[metagraph_node(r) for r in rows])
