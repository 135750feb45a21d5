"""Build the broker for one process: providers, inventory, sessions, lifecycle; start and stop them in order."""
from __future__ import annotations

import logging
import secrets
from dataclasses import replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from ..config import ConfigError, Settings, is_loopback
from ..runtime import Runtime
from ..store.models import broker_meta

log = logging.getLogger(__name__)


async def deployment_id(engine: AsyncEngine, configured: str | None) -> str:
    """The id that labels our provider instances: configured, else generated once per database.

    Every replica on one database reads the same generated id, so they agree on which instances are theirs
    without configuration, and two deployments sharing a provider account never touch each other's instances.
    """
    if configured:
        return configured
    async with engine.begin() as conn:
        await conn.execute(insert(broker_meta).values(key="deployment_id", value=f"d{secrets.token_hex(5)}")
                           .on_conflict_do_nothing())
        return (await conn.execute(select(broker_meta.c.value).where(broker_meta.c.key == "deployment_id"))).scalar_one()


def check_simulated_is_local(settings: Settings) -> None:
    """A simulated instance is a shell on this machine for whoever creates a session (broker RPCs take no
    credentials, as in the reference): allowed only while Gantry listens on loopback."""
    if "simulated" in settings.broker.providers and not (
            is_loopback(settings.grpc_addr) and is_loopback(settings.http_addr)):
        raise ConfigError("the simulated GPU provider gives whoever creates a session a shell on this machine; "
                          "it is only allowed when GANTRY_GRPC_ADDR and GANTRY_HTTP_ADDR are loopback addresses "
                          "(set GANTRY_BROKER_PROVIDERS to real providers, or to nothing, to listen elsewhere)")


def build_providers(settings: Settings, clock) -> dict:
    """The configured providers (settings.broker.providers), each with its credentials."""
    check_simulated_is_local(settings)
    b = settings.broker
    providers: dict = {}
    for name in b.providers:
        if name == "vastai":
            from ..providers import vastai  # noqa: PLC0415

            providers[name] = vastai.VastAiProvider(
                api_key=b.vastai_api_key, base_url=b.vastai_base_url, clock=clock,
                policy=_policy(vastai.POLICY, b.vastai_rate_per_second, b.vastai_burst))
        elif name == "tensordock":
            from ..providers import tensordock  # noqa: PLC0415

            providers[name] = tensordock.TensorDockProvider(
                api_token=b.tensordock_api_token, auth_id=b.tensordock_auth_id, base_url=b.tensordock_base_url,
                clock=clock, policy=_policy(tensordock.POLICY, b.tensordock_rate_per_second, b.tensordock_burst))
        elif name == "simulated":
            from ..providers.simulated import SimulatedProvider  # noqa: PLC0415

            providers[name] = SimulatedProvider(clock=clock, offer_count=b.simulated_offer_count,
                                                boot_seconds=b.simulated_boot_seconds,
                                                hidden_dirs=(Path(settings.data_dir),))
    return providers


def share_rate_limits(providers: dict, redis) -> None:
    """Every real provider's token bucket moves to Redis: the limit is the account's, whatever the replica count."""
    for provider in providers.values():
        http = getattr(provider, "http", None)
        if http is not None:
            http.share_rate_limit(redis)


def _policy(default, rate: float | None, burst: int | None):
    changes = {k: v for k, v in (("rate_per_second", rate), ("burst", burst)) if v is not None}
    return replace(default, **changes) if changes else default


async def start_broker(rt: Runtime, providers: dict | None = None) -> None:
    """Attach the broker to the runtime. `providers` overrides the configured ones (tests)."""
    from .inventory import Inventory  # noqa: PLC0415
    from .lifecycle import Lifecycle  # noqa: PLC0415
    from .sessions import Broker, SessionManager  # noqa: PLC0415

    settings = rt.settings
    rt.providers = providers if providers is not None else build_providers(settings, rt.clock)
    if providers is None:
        share_rate_limits(rt.providers, rt.redis)
    rt.inventory = Inventory(rt.providers, rt.engine, rt.clock, ttl_seconds=settings.broker.inventory_ttl_seconds)
    broker = Broker(settings=settings.broker, engine=rt.engine, redis=rt.redis, clock=rt.clock, keyring=rt.keyring,
                    providers=rt.providers, inventory=rt.inventory, owner=rt.process_id,
                    deployment_id=await deployment_id(rt.engine, settings.broker.deployment_id))
    rt.sessions = SessionManager(broker)
    rt.lifecycle = Lifecycle(rt.sessions)
    log.info("broker ready", extra={"providers": sorted(rt.providers), "deployment_id": broker.deployment_id})


async def stop_broker(rt: Runtime, *, close_providers: bool = True) -> None:
    if rt.lifecycle is not None:
        await rt.lifecycle.shutdown(rt.settings.broker.shutdown_policy)
    if rt.inventory is not None:
        await rt.inventory.aclose()  # its background refreshes must not outlive the engine
    if close_providers:
        for provider in rt.providers.values():
            try:
                await provider.aclose()
            except Exception:  # closing must not stop the rest of the shutdown
                log.exception("provider close failed")
