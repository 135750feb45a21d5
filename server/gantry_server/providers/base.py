"""The one interface every GPU provider adapter implements, and the errors the broker acts on.

Adapters translate a provider's wire format into these types; everything above them (inventory,
sessions, lifecycle loops) is provider-agnostic. Errors are classified once, here, because the broker's
behaviour depends on the class (stale inventory -> 503 + retry elsewhere; gone -> destroy is done;
transient -> retry later, never read as "gone").
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

# Every instance Gantry creates is named/labelled "<LABEL_PREFIX><deployment_id>-<session_id>", so the
# reconciler can tell its own instances (this deployment) from other deployments' and from foreign ones.
LABEL_PREFIX = "gantry-"


def instance_label(deployment_id: str, session_id: str) -> str:
    return f"{LABEL_PREFIX}{deployment_id}-{session_id}"


def parse_label(label: str | None, deployment_id: str) -> str | None:
    """The session id of an instance label of *this* deployment, else None (foreign or another deployment)."""
    prefix = f"{LABEL_PREFIX}{deployment_id}-"
    if not label or not label.startswith(prefix):
        return None
    session_id = label[len(prefix):]
    return session_id or None


class ErrorKind(str, enum.Enum):
    STALE_INVENTORY = "stale_inventory"  # the offer is gone/sold out: refresh inventory, pick another
    GONE = "gone"  # the instance does not exist (any more)
    TRANSIENT = "transient"  # 429/5xx/network/circuit open: retry later; never evidence of absence
    INVALID = "invalid"  # our request was rejected (4xx other than the above): do not retry as is
    AUTH = "auth"  # credentials rejected: operator action needed


class ProviderError(Exception):
    """A classified provider failure. `detail` may include the provider's body (never our credentials)."""

    def __init__(self, kind: ErrorKind, provider: str, operation: str, detail: str, *, status: int | None = None):
        super().__init__(f"{provider} {operation} failed: {detail}")
        self.kind = kind
        self.provider = provider
        self.operation = operation
        self.detail = detail
        self.status = status


class InstanceState(str, enum.Enum):
    STARTING = "starting"  # created/loading/booting: keep waiting
    RUNNING = "running"
    STOPPED = "stopped"  # exited/stopped/error: will not become reachable by itself
    GONE = "gone"  # the provider no longer knows it


@dataclass(frozen=True)
class ProviderOffer:
    provider: str
    provider_id: str  # the provider's own offer id (Vast bundle id, TensorDock "<location>-<v0Name>")
    gpu_type: str
    gpu_count: int
    vram_gb: int
    price_per_hour: float  # full hourly price of what create() rents (TensorDock: GPU + vCPU + RAM + disk)
    location: str
    reliability: float
    available: bool = True
    base_confidence: float = 1.0  # provider-side availability confidence before failure/staleness adjustments
    cuda_version: float | None = None
    machine_id: str | None = None
    interruptible: bool | None = None
    min_bid: float | None = None
    host_properties: dict = field(default_factory=dict)  # for template extra_filters matching (Vast bundle fields)

    @property
    def offer_id(self) -> str:
        return f"{self.provider}-{self.provider_id}"


@dataclass(frozen=True)
class OfferQuery:
    """Filters a provider may push to its API; inventory always re-applies every filter itself."""

    gpu_type: str | None = None
    location: str | None = None
    min_vram: int | None = None
    max_price: float | None = None
    min_reliability: float | None = None
    min_cuda: float | None = None


@dataclass(frozen=True)
class CreateSpec:
    offer: ProviderOffer
    label: str  # instance_label(deployment_id, session_id)
    ssh_public_keys: tuple[str, ...]  # authorized_keys lines: the consumer's key (and any broker key)
    disk_gb: int
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    on_start_cmd: str | None = None
    template_hash_id: str | None = None
    exposed_ports: tuple[int, ...] = ()
    launch_mode: str = "ssh"


@dataclass(frozen=True)
class ProviderInstance:
    provider: str
    instance_id: str
    label: str | None
    state: InstanceState
    raw_status: str = ""  # the provider's own status word, for messages ("loading", "exited", ...)
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str | None = None
    public_ip: str | None = None
    ports: dict[int, int] = field(default_factory=dict)  # container/internal port -> reachable port on ssh_host
    price_per_hour: float | None = None
    started_at: datetime | None = None
    message: str | None = None
    # False when the instance was lost through no fault of the offer (the simulated provider's instances die
    # with the process that simulated them): its GONE is not recorded against the offer's health.
    offer_at_fault: bool = True


@dataclass(frozen=True)
class ProviderTemplate:
    """A provider template (Vast.ai); fields mirror the seed's VastTemplate."""

    id: int
    hash_id: str
    name: str
    image: str
    tag: str = ""
    env: str = ""
    onstart: str = ""
    runtype: str = ""
    use_ssh: bool = False
    ssh_direct: bool = False
    recommended: bool = False
    recommended_disk_space: int = 0
    extra_filters: str = ""  # JSON object as a string (the provider's wire form)
    creator_id: int = 0
    created_at: datetime | None = None
    count_created: int = 0


@runtime_checkable
class GpuProvider(Protocol):
    """A GPU provider. Every method raises ProviderError (classified) on failure, nothing else."""

    name: str
    default_ssh_user: str
    default_disk_gb: int
    ssh_pre_delay_seconds: float  # wait this long after create before the first SSH attempt (TensorDock 90 s)
    offer_ttl_seconds: float  # how long a fetched offer list stays fresh

    async def list_offers(self, query: OfferQuery) -> list[ProviderOffer]: ...

    async def create_instance(self, spec: CreateSpec) -> ProviderInstance:
        """Rent the offer; returns at least instance_id. STALE_INVENTORY when the offer is gone."""
        ...

    async def get_instance(self, instance_id: str) -> ProviderInstance:
        """Current state; state GONE (not an exception) when the provider says it does not exist."""
        ...

    async def list_instances(self) -> list[ProviderInstance]:
        """Every instance of the account that carries a Gantry label (any deployment)."""
        ...

    async def destroy_instance(self, instance_id: str) -> None:
        """Idempotent: an instance that is already gone counts as destroyed."""
        ...

    async def stop_instance(self, instance_id: str) -> None:
        """Stop without deleting the disk (storage_policy "preserve"); billing for compute ends."""
        ...

    async def list_templates(self) -> list[ProviderTemplate]:
        """Templates; providers without templates return []."""
        ...

    async def aclose(self) -> None: ...
