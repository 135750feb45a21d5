"""What services depend on, built once per process and handed to each servicer."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from .clock import Clock, SystemClock
from .config import Settings


@dataclass
class ServiceState:
    """Process-wide flags that /health, /ready and grpc.health read."""

    self_ready: bool = False  # this process started and not stopping (set through `ready`)
    lifecycle_running: bool = False
    peers_ready: bool = True  # every sibling worker serving too (gantry serve --workers N: workers.py)
    database_ok: bool = True  # dependencies.DependencyWatcher: PostgreSQL answered its last probe
    # Set when the process starts stopping (SIGTERM): long-lived streams end at once with a final message.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.self_ready and self.peers_ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.self_ready = value


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    redis: Redis
    # This process's name on its PostgreSQL connections (application_name) and the owner of its broker leases.
    process_id: str = field(default_factory=lambda: f"gantry-{uuid.uuid4().hex[:12]}")
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
