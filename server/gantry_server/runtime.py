"""What services depend on, built once per process and handed to each servicer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from .clock import Clock, SystemClock
from .config import Settings


@dataclass
class ServiceState:
    """Process-wide flags that /health, /ready and grpc.health read."""

    ready: bool = False
    lifecycle_running: bool = False


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    redis: Redis
    clock: Clock = field(default_factory=SystemClock)
    state: ServiceState = field(default_factory=ServiceState)
    admin_token: str | None = None
    keyring: Any = None  # domain.secrets_at_rest.Keyring: secrets at rest (never logged)
    launch_keys: Any = None  # domain.auth.launch_tokens.LaunchTokenKeys, shared by replicas (service_keys)
    # Broker face (seed 004); None until app.py builds it.
    providers: dict = field(default_factory=dict)  # name -> providers.base.GpuProvider
    inventory: Any = None  # broker.inventory.Inventory
    sessions: Any = None  # broker.sessions.SessionManager
    lifecycle: Any = None  # broker.lifecycle.Lifecycle
    # Miner event feed (seed 003); built by app.py.
    events: Any = None  # domain.events.hub.EventHub: subscribe() for WatchEvents and Socket.IO
    events_relay: Any = None  # domain.events.relay.OutboxRelay: event_outbox -> the Redis Stream
