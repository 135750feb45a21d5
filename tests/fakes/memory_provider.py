"""An in-memory GpuProvider: offers and templates a test sets directly, failures it switches on and off.

    vast = MemoryProvider("vastai", [offer("vastai", "101", gpu_type="RTX 4090", cuda_version=12.4)])
    vast.fail_with = ProviderError(ErrorKind.TRANSIENT, "vastai", "list_offers", "HTTP 502")   # next listings fail
    vast.gate = asyncio.Event()      # listings wait until the test sets it (to hold a fetch in flight)

A fake at the provider edge, never a mock of HTTP or the database: everything above the GpuProvider
interface (inventory, failure tracker, services, gateway) runs for real.
"""
from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import replace
from typing import Any

from gantry_server.providers.base import (
    CreateSpec, ErrorKind, InstanceState, OfferQuery, ProviderError, ProviderInstance, ProviderOffer,
    ProviderTemplate,
)

GPU_MIX = (("RTX 4090", 24), ("RTX 3090", 24), ("A100", 80), ("H100", 80), ("L40S", 48), ("RTX A6000", 48),
           ("A10", 24), ("RTX 5090", 32), ("L4", 24), ("V100", 32))
LOCATIONS = ("Texas, US", "Oregon, US", "Quebec, CA", "Bavaria, DE", "Ontario, CA", "Tokyo, JP")


def offer(provider: str, provider_id: str, **fields: Any) -> ProviderOffer:
    """An available offer with plausible defaults; any field may be given."""
    base = dict(gpu_type="RTX 4090", gpu_count=1, vram_gb=24, price_per_hour=0.5, location="Texas, US",
                reliability=0.98, available=True, base_confidence=0.9)
    base.update(fields)
    return ProviderOffer(provider=provider, provider_id=provider_id, **base)


def many_offers(provider: str, count: int, *, seed: int = 7) -> list[ProviderOffer]:
    """`count` varied offers (GPU types, prices 0.1-4 $/h, locations, CUDA versions), deterministic per seed."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        gpu, vram = GPU_MIX[i % len(GPU_MIX)]
        out.append(offer(provider, str(100000 + i), gpu_type=gpu, vram_gb=vram, gpu_count=rng.choice((1, 1, 2, 4, 8)),
                         price_per_hour=round(rng.uniform(0.1, 4.0), 3), location=rng.choice(LOCATIONS),
                         reliability=round(rng.uniform(0.9, 1.0), 4), base_confidence=round(rng.uniform(0.5, 1.0), 3),
                         cuda_version=rng.choice((11.8, 12.2, 12.4, 12.8, 12.9, 13.0)),
                         machine_id=f"{provider}-machine-{i // 4}",
                         host_properties={"cpu_arch": rng.choice(("amd64", "arm64"))}))
    return out


class MemoryProvider:
    """GpuProvider over Python lists. `list_calls` counts offer listings (what a cache test watches)."""

    default_ssh_user = "root"
    default_disk_gb = 50
    ssh_pre_delay_seconds = 0.0

    def __init__(self, name: str = "memory", offers: list[ProviderOffer] | None = None, *,
                 templates: list[ProviderTemplate] | None = None, offer_ttl_seconds: float = 60.0,
                 supports_templates: bool | None = None) -> None:
        self.name = name
        self.offers: list[ProviderOffer] = list(offers or [])
        self.templates: list[ProviderTemplate] = list(templates or [])
        self.offer_ttl_seconds = offer_ttl_seconds
        self.supports_templates = supports_templates if supports_templates is not None else bool(templates)
        self.fail_with: Exception | None = None  # list_offers raises it while set
        self.fail_templates_with: Exception | None = None
        self.fail_create_with: Exception | None = None
        self.gate: asyncio.Event | None = None  # list_offers waits for it while set
        self.list_calls = 0
        self.queries: list[OfferQuery] = []
        self.instances: dict[str, ProviderInstance] = {}
        self._ids = itertools.count(1)

    def add(self, provider_id: str, **fields: Any) -> ProviderOffer:
        o = offer(self.name, provider_id, **fields)
        self.offers.append(o)
        return o

    def update(self, provider_id: str, **fields: Any) -> None:
        self.offers = [replace(o, **fields) if o.provider_id == provider_id else o for o in self.offers]

    async def list_offers(self, query: OfferQuery) -> list[ProviderOffer]:
        self.list_calls += 1
        self.queries.append(query)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return list(self.offers)

    async def list_templates(self) -> list[ProviderTemplate]:
        if self.fail_templates_with is not None:
            raise self.fail_templates_with
        return list(self.templates)

    async def create_instance(self, spec: CreateSpec) -> ProviderInstance:
        if self.fail_create_with is not None:
            raise self.fail_create_with
        if spec.offer.offer_id not in {o.offer_id for o in self.offers if o.available}:
            raise ProviderError(ErrorKind.STALE_INVENTORY, self.name, "create_instance", "no_such_ask", status=400)
        instance_id = str(next(self._ids))
        inst = ProviderInstance(self.name, instance_id, spec.label, InstanceState.RUNNING, raw_status="running",
                                ssh_host="127.0.0.1", ssh_port=22, ssh_user=self.default_ssh_user,
                                price_per_hour=spec.offer.price_per_hour)
        self.instances[instance_id] = inst
        return inst

    async def get_instance(self, instance_id: str) -> ProviderInstance:
        inst = self.instances.get(instance_id)
        if inst is None:
            return ProviderInstance(self.name, instance_id, None, InstanceState.GONE, raw_status="gone")
        return inst

    async def list_instances(self) -> list[ProviderInstance]:
        return list(self.instances.values())

    async def destroy_instance(self, instance_id: str) -> None:
        self.instances.pop(instance_id, None)

    async def stop_instance(self, instance_id: str) -> None:
        inst = self.instances.get(instance_id)
        if inst is not None:
            self.instances[instance_id] = replace(inst, state=InstanceState.STOPPED, raw_status="stopped")

    async def aclose(self) -> None:
        return None


def transient(provider: str, detail: str = "HTTP 502 bad gateway", operation: str = "list_offers") -> ProviderError:
    return ProviderError(ErrorKind.TRANSIENT, provider, operation, detail, status=502)


def template(hash_id: str, name: str = "Ollama", image: str = "vastai/ollama", **fields: Any) -> ProviderTemplate:
    return ProviderTemplate(id=fields.pop("id", abs(hash(hash_id)) % 10**6), hash_id=hash_id, name=name, image=image,
                            **fields)
