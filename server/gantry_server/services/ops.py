"""OpsService: /health, /ready, /metrics of the broker face, read from the same state as grpc.health."""
from __future__ import annotations

from datetime import timezone

from gantry.ops.v1 import ops_pb2, ops_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ..runtime import Runtime


def state_inventory(rt: Runtime) -> str:
    return rt.inventory.health() if rt.inventory is not None else "starting"


class OpsService(ops_pb2_grpc.OpsServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def _timestamp(self) -> str:
        return self.rt.clock.now().astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def GetHealth(self, request, context):
        state = self.rt.state
        ok = state.ready and state.lifecycle_running and state.database_ok
        return ops_pb2.GetHealthResponse(
            status="ok" if ok else "unavailable",
            timestamp=self._timestamp(),
            services=ops_pb2.HealthServices(
                lifecycle="running" if state.lifecycle_running else "stopped",
                inventory=state_inventory(self.rt),
                ready="true" if state.ready else "false",
            ),
        )

    async def GetReady(self, request, context):
        state = self.rt.state
        return ops_pb2.GetReadyResponse(ready=state.ready and state.database_ok, timestamp=self._timestamp())

    async def GetMetrics(self, request, context):
        return ops_pb2.GetMetricsResponse(content_type=CONTENT_TYPE_LATEST, body=generate_latest(REGISTRY))
