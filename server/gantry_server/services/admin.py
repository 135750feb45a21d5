"""AdminService: what operators create (metagraph nodes and blacklist so far; the rest lands with its issue).

Every call needs `authorization: Bearer <admin token>` (GANTRY_ADMIN_TOKEN; the embedded default keeps a
generated one in GANTRY_DATA_DIR/admin_token). Without a configured token the admin API is off.
"""
from __future__ import annotations

import hmac

from gantry.admin.v1 import admin_pb2, admin_pb2_grpc

from ..domain.validation import Violations, is_ss58
from ..errors import PermissionDenied, Unauthenticated
from ..runtime import Runtime
from ..store.db import unit_of_work
from ..store.repositories.metagraph import MetagraphRepository


def require_admin(rt: Runtime, context) -> None:
    if not rt.admin_token:
        raise PermissionDenied("the admin API is disabled: set GANTRY_ADMIN_TOKEN", reason="ADMIN_DISABLED")
    supplied = dict(context.invocation_metadata()).get("authorization", "")
    scheme, _, token = supplied.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("admin RPCs need 'authorization: Bearer <admin token>'", reason="ADMIN_TOKEN_MISSING")
    if not hmac.compare_digest(token.encode(), rt.admin_token.encode()):
        raise Unauthenticated("admin token is not valid", reason="ADMIN_TOKEN_INVALID")


def _node_row(node: admin_pb2.MetagraphNode) -> dict:
    row = {f: getattr(node, f) for f in (
        "hotkey", "coldkey", "netuid", "node_id", "incentive", "stake", "tao_stake", "alpha_stake", "trust",
        "vtrust", "last_updated", "ip", "ip_type", "port", "protocol")}
    row["real_host"] = node.real_host if node.HasField("real_host") else None
    row["real_port"] = node.real_port if node.HasField("real_port") else None
    return row


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def UpsertMetagraphNodes(self, request, context):
        require_admin(self.rt, context)
        v = Violations()
        v.require(len(request.nodes) > 0, "nodes", "at least one node is required")
        seen: set[str] = set()
        for i, node in enumerate(request.nodes):
            v.require(is_ss58(node.hotkey), f"nodes[{i}].hotkey", "must be an SS58 address")
            v.require(not node.coldkey or is_ss58(node.coldkey), f"nodes[{i}].coldkey", "must be an SS58 address")
            v.require(node.hotkey not in seen, f"nodes[{i}].hotkey", "appears twice in this request")
            v.require(node.netuid >= 0, f"nodes[{i}].netuid", "must be >= 0")
            v.require(0 <= node.port <= 65535, f"nodes[{i}].port", "must be 0..65535")
            v.require(node.ip_type in (0, 4, 6), f"nodes[{i}].ip_type", "must be 4 or 6")
            seen.add(node.hotkey)
        v.raise_if_any()
        async with unit_of_work(self.rt.engine) as conn:
            now = self.rt.clock.now()
            count = await MetagraphRepository(conn).upsert({**_node_row(n), "synced_at": now} for n in request.nodes)
        return admin_pb2.UpsertMetagraphNodesResponse(upserted=count)
