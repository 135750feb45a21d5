"""InstanceService.StreamLogs: an instance's pod logs, relayed from its log endpoint (domain/logs).

A mixin of InstanceService (services/instances.py), which sets `self.rt`. The interceptor has authenticated the
user (purpose "logs"); this checks the request, the instance and the caller's right to it, then relays one
message per upstream SSE event. The REST gateway writes each message's `raw` bytes unchanged (SSE_RAW framing).
"""
from __future__ import annotations

from gantry.instances.v1 import instances_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from ..domain import logs
from ..domain.auth.caller import current_caller
from ..errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from ..runtime import Runtime
from ..store.db import unit_of_work
from ..store.repositories.chutes import ChuteRepository
from ..store.repositories.instances import InstanceRepository
from ..store.repositories.users import UserRepository


class InstanceLogRpcs:
    rt: Runtime
    _logs_client = None
    _logs_signer = None

    def _logs_parts(self):
        if self._logs_client is None:
            cfg = self.rt.settings.launch
            self._logs_client = logs.new_client(connect_timeout=cfg.logs_connect_timeout_seconds,
                                                idle_timeout=cfg.logs_idle_timeout_seconds)
            self._logs_signer = logs.ValidatorSigner(cfg.validator_key_uri)
        return self._logs_client, self._logs_signer

    async def StreamLogs(self, request, context):
        backfill = request.backfill if request.HasField("backfill") else logs.DEFAULT_BACKFILL
        if not 0 <= backfill <= logs.MAX_BACKFILL:
            # The reference's 400 with a plain detail (a field violation would render as FastAPI's 422).
            raise InvalidArgument(f"backfill must be between 0 and {logs.MAX_BACKFILL} (lines of history)",
                                  reason="INVALID_BACKFILL", metadata={"field": "backfill"})
        caller = current_caller.get()
        async with unit_of_work(self.rt.engine) as conn:
            instance = (await InstanceRepository(conn).get(request.instance_id)
                        if 0 < len(request.instance_id) <= 36 else None)
            if instance is None:
                raise NotFound(f"Instance {request.instance_id} not found", reason="INSTANCE_NOT_FOUND")
            chute = await ChuteRepository(conn).get_chute(instance["chute_id"])
            user = await UserRepository(conn).get(caller.user_id) if caller.user_id else None
        if chute is None:  # the row cascades with its chute; a race with a delete
            raise NotFound(f"Instance {request.instance_id} not found", reason="INSTANCE_NOT_FOUND")
        if not logs.may_view(user_id=caller.user_id, roles=user["roles"] if user else (),
                             chute_owner=chute["user_id"], chute_public=chute["public"]):
            raise PermissionDenied(logs.FORBIDDEN, reason="LOGS_FORBIDDEN")
        port = logs.log_port(instance["port_mappings"])
        if port is None:
            raise Unavailable(f"Instance {request.instance_id} maps no port to its log port {logs.LOG_PORT}",
                              reason="LOGS_UNAVAILABLE")
        client, signer = self._logs_parts()
        headers = signer.headers(miner_hotkey=instance["miner_hotkey"], now=self.rt.clock.now())
        stream = logs.relay(client, logs.log_url(instance["host"], port, backfill), headers)
        try:
            async for event in stream:
                out = instances_pb2.StreamLogsResponse(log=event.log, raw=event.raw)
                if event.timestamp is not None:
                    ts = Timestamp()
                    ts.FromDatetime(event.timestamp)
                    out.timestamp.CopyFrom(ts)
                if event.cursor is not None:
                    out.cursor = event.cursor
                yield out
        except logs.LogsUnavailable as exc:
            raise Unavailable(f"Instance logs unavailable: {exc}", reason="LOGS_UNAVAILABLE") from None
        finally:
            await stream.aclose()
