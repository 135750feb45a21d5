"""InstanceService.StreamLogs: an instance's pod logs, relayed from its log endpoint (domain/logs); and
StreamStartupLogs: the same relay for the miner CLI (GET /miner/instance_logs), authenticated by the launch JWT.

A mixin of InstanceService (services/instances.py), which sets `self.rt`. The interceptor has authenticated the
user (purpose "logs"); this checks the request, the instance and the caller's right to it, then relays one
message per upstream SSE event. The REST gateway writes each message's `raw` bytes unchanged (SSE_RAW framing).
"""
from __future__ import annotations

import asyncio

from gantry.instances.v1 import instances_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from ..domain import logs
from ..domain.auth.caller import current_caller
from ..errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from ..runtime import Runtime
from ..store.db import unit_of_work
from ..store.repositories.chutes import ChuteRepository
from ..store.repositories.instances import InstanceRepository
from ..store.repositories.launch_configs import LaunchConfigRepository
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

    # -- GET /miner/instance_logs ---------------------------------------------------------------------------------
    async def _startup_rows(self, config_id: str):
        """(launch config, its instance) in a short transaction of its own: the stream polls for minutes."""
        async with self.rt.engine.connect() as conn:
            config = await LaunchConfigRepository(conn).get(config_id)
            instance = await InstanceRepository(conn).by_config(config_id) if config is not None else None
        return config, instance

    async def StreamStartupLogs(self, request, context):
        cursor = request.cursor if request.HasField("cursor") else None
        if cursor is not None and not logs.valid_cursor(cursor):
            raise InvalidArgument(logs.BAD_CURSOR, reason="INVALID_CURSOR", metadata={"field": "cursor"})
        # The interceptor verified the token; its `sub` is the config (never retrieved here: reading logs must not
        # spend the one-time claim).
        config_id = current_caller.get().claims["sub"]
        config, instance = await self._startup_rows(config_id)
        if config is None:
            raise NotFound("Launch config not found.", reason="LAUNCH_CONFIG_NOT_FOUND")
        async with self.rt.engine.connect() as conn:
            chute = await ChuteRepository(conn).get_chute(config["chute_id"])
        if chute is None or not chute["public"]:
            raise PermissionDenied(logs.PUBLIC_ONLY, reason="LOGS_PUBLIC_ONLY")
        if instance is not None and instance["activated_at"] is not None:
            raise PermissionDenied(logs.ALREADY_ACTIVATED, reason="INSTANCE_ACTIVATED")
        if config["failed_at"] is not None and instance is None:
            raise FailedPrecondition(f"Instance launch failed: {config['verification_error'] or 'unknown reason'}",
                                     reason="LAUNCH_FAILED", http_status=422)

        def status(text: str):
            return instances_pb2.StreamStartupLogsResponse(log=text, raw=logs.status_frame(text))

        cfg = self.rt.settings.launch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.startup_logs_max_seconds
        # Wait (polling, bounded by the cap) for the instance and its log port.
        port = logs.log_port(instance["port_mappings"]) if instance is not None else None
        told_port = False
        while port is None:
            if instance is None:
                yield status(logs.WAITING)
            elif not told_port:
                told_port = True
                yield status("Log port not available yet, waiting...")
            if loop.time() + cfg.startup_logs_poll_seconds >= deadline:
                return
            await asyncio.sleep(cfg.startup_logs_poll_seconds)
            config, instance = await self._startup_rows(config_id)
            if config is None:
                yield status("Launch config disappeared.")
                return
            if instance is None and config["failed_at"] is not None:
                yield status(f"Instance launch failed: {config['verification_error'] or 'Instance failed to launch'}")
                return
            if instance is not None and instance["activated_at"] is not None:
                yield status(logs.ALREADY_ACTIVATED)
                return
            port = logs.log_port(instance["port_mappings"]) if instance is not None else None

        client, signer = self._logs_parts()
        headers = signer.headers(miner_hotkey=instance["miner_hotkey"], now=self.rt.clock.now())
        stream = logs.relay(client, logs.log_url(instance["host"], port, logs.STARTUP_BACKFILL), headers)
        lines = logs.StartupFilter(cursor)
        try:
            while not lines.done:
                try:
                    # The cap bounds each read only: a timeout around a `yield` would cancel the caller's send.
                    async with asyncio.timeout_at(deadline):
                        event = await anext(stream)
                except (StopAsyncIteration, TimeoutError):  # the cap ends the stream normally; the CLI resumes
                    return
                if lines.admit(event):
                    out = instances_pb2.StreamStartupLogsResponse(log=event.log, raw=logs.startup_frame(event))
                    if event.cursor is not None:
                        out.cursor = event.cursor
                    yield out
        except logs.LogsUnavailable as exc:
            raise Unavailable(f"Instance logs unavailable: {exc}", reason="LOGS_UNAVAILABLE") from None
        finally:
            await stream.aclose()
