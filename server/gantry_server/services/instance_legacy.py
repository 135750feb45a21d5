"""InstanceService RPCs of seed 002's legacy launch: CreateInstance (POST /instances/{chute_id}/, REST 202) and
ActivateInstance (PATCH /instances/{chute_id}/{instance_id}). The flow and what Gantry verifies of these instances
(nothing: activation answers verified=false) is `domain.launch.legacy`.

A mixin of InstanceService (services/instances.py), which sets `self.rt` and `self.launcher`:

    class InstanceService(InstanceRecordRpcs, LegacyInstanceRpcs, instances_pb2_grpc.InstanceServiceServicer): ...

Both are body-signed (auth_policy.py: hotkey, no purpose, registered): the interceptor has checked the signature
over the sha256 of the raw body, as the stock miner signs it.
"""
from __future__ import annotations

import re

from google.protobuf.timestamp_pb2 import Timestamp

from gantry.instances.v1 import instances_pb2

from ..domain.auth.caller import current_caller
from ..domain.launch.legacy import LegacyInstances
from ..domain.validation import Violations

# Chute, instance and GPU ids: printable, at most 36 characters for chutes and instances (models.py), 255 for GPUs.
_ID36 = re.compile(r"^[^\x00-\x1f\x7f/]{1,36}$")
_GPU = re.compile(r"^[A-Za-z0-9._:-]{1,255}$")
_HOST = re.compile(r"^[^\x00-\x1f\x7f\s/]{1,253}$")
_SCALARS = ("instance_id", "chute_id", "version", "host", "port", "miner_uid", "miner_hotkey", "miner_coldkey",
            "region", "active", "verified", "consecutive_failures", "bounty")
_OPTIONAL = ("chutes_version", "config_id", "deployment_id", "server_id", "verification_error", "billed_to",
             "hourly_rate", "compute_multiplier")
_TIMES = ("created_at", "activated_at", "last_verified_at", "stop_billing_at")


def instance_message(row, node_ids: list[str]) -> instances_pb2.Instance:
    """An instances row as the Instance message (the serialized row the reference answers, minus secrets)."""
    out = instances_pb2.Instance(**{k: row[k] for k in _SCALARS if row[k] is not None},
                                 **{k: row[k] for k in _OPTIONAL if row[k] is not None}, node_ids=node_ids)
    for name in _TIMES:
        if row[name] is not None:
            stamp = Timestamp()
            stamp.FromDatetime(row[name])
            getattr(out, name).CopyFrom(stamp)
    for m in row["port_mappings"] or []:
        mapping = instances_pb2.PortMapping(proto=m["proto"], internal_port=m["internal_port"],
                                            external_port=m["external_port"])
        if m.get("default") is not None:
            mapping.default = m["default"]
        out.port_mappings.append(mapping)
    return out


class LegacyInstanceRpcs:
    def _legacy(self) -> LegacyInstances:
        return LegacyInstances(self.launcher)

    async def CreateInstance(self, request, context):
        v = Violations()
        v.require(bool(_ID36.match(request.chute_id)), "chute_id", "required: the chute to run")
        if v.require(len(request.node_ids) > 0, "node_ids", "required: the uuids of the GPUs the instance runs on"):
            for i, uid in enumerate(request.node_ids):
                v.require(bool(_GPU.match(uid)), f"node_ids[{i}]",
                          "a GPU uuid (1-255 of letters, digits and . _ : -)")
        v.require(bool(_HOST.match(request.host)), "host",
                  "required: the public IP address or DNS name the instance serves on")
        v.require(1 <= request.port <= 65535, "port", "required: the instance's API port on the host, 1-65535")
        v.raise_if_any()
        row, node_ids = await self._legacy().create(
            hotkey=current_caller.get().hotkey, chute_id=request.chute_id, node_ids=list(request.node_ids),
            host=request.host, port=request.port)
        return instances_pb2.CreateInstanceResponse(instance=instance_message(row, node_ids))

    async def ActivateInstance(self, request, context):
        v = Violations()
        v.require(bool(_ID36.match(request.chute_id)), "chute_id", "required: the instance's chute")
        v.require(bool(_ID36.match(request.instance_id)), "instance_id", "required: the instance to activate")
        v.require(request.active, "active", "must be true: an instance is only ever activated here")
        v.raise_if_any()
        row, node_ids = await self._legacy().activate(
            hotkey=current_caller.get().hotkey, chute_id=request.chute_id, instance_id=request.instance_id)
        return instances_pb2.ActivateInstanceResponse(instance=instance_message(row, node_ids))
