"""Provider templates (Vast.ai): the catalogue, `extra_filters` matching, and what a template implies elsewhere.

A template's `extra_filters` is a JSON object in a string, Vast's search syntax:
`{"cuda_max_good": {"gte": 12.9}, "cpu_arch": {"in": ["amd64"]}, "num_gpus": {"gte": 2}}`.

    conditions = parse_extra_filters(template.extra_filters)
    matches(conditions, host_properties(offer))          # every key counts (the reference used two)

Choices, where the reference was silent or wrong:
- Numbers compare as numbers whatever their JSON type, so `num_gpus` (a string in the reference's host
  properties, defect 18) and numeric strings work; a value that is not a number never satisfies gt/gte/lt/lte.
- A key the host does not report is **skipped** (permissive, as the reference). The keys that decide whether a
  template can run at all (CUDA, VRAM, GPU count and name, price, reliability, location) are always present,
  because `host_properties` fills them from the offer's own fields; only exotic keys an adapter does not map
  can be missing, and hiding every offer for those would be worse than ignoring them.
- String equality ignores case; an unknown operator is ignored (and logged); malformed JSON gives no usable
  filters (logged), so the template matches everything rather than nothing.
"""
from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from ..clock import Clock
from ..errors import FailedPrecondition, NotFound, Unavailable
from ..providers.base import GpuProvider, ProviderOffer, ProviderTemplate

log = logging.getLogger(__name__)

OPERATORS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})
TEMPLATE_PROVIDER_HINT = "vastai"  # named in messages: the one real provider with templates


@dataclass(frozen=True)
class Condition:
    """One `key op value` of an extra_filters object."""

    key: str
    op: str
    value: Any

    def satisfied_by(self, props: Mapping[str, Any]) -> bool:
        actual = props.get(self.key)
        if actual is None:
            return True  # the host does not report it: permissive (see the module docstring)
        op, want = self.op, self.value
        if op in ("gt", "gte", "lt", "lte"):
            a, b = _number(actual), _number(want)
            if a is None or b is None:
                return False
            return a > b if op == "gt" else a >= b if op == "gte" else a < b if op == "lt" else a <= b
        if op == "eq":
            return _equal(actual, want)
        if op == "neq":
            return not _equal(actual, want)
        choices = want if isinstance(want, (list, tuple)) else [want]
        inside = any(_equal(actual, c) for c in choices)
        return inside if op == "in" else not inside


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _equal(actual: Any, want: Any) -> bool:
    if isinstance(actual, bool) or isinstance(want, bool):
        a, b = _boolean(actual), _boolean(want)
        return a is not None and a == b
    a, b = _number(actual), _number(want)
    if a is not None and b is not None:
        return a == b
    return str(actual).strip().lower() == str(want).strip().lower()


def parse_extra_filters(raw: str | Mapping | None, *, source: str = "") -> tuple[Condition, ...]:
    """The conditions of an extra_filters value; malformed input gives () and a warning naming `source`.

    >>> parse_extra_filters('{"num_gpus": {"gte": 2}, "verified": true}')
    (Condition(key='num_gpus', op='gte', value=2), Condition(key='verified', op='eq', value=True))
    """
    if raw is None or raw == "":
        return ()
    data = raw
    if isinstance(raw, (str, bytes)):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            log.warning("template extra_filters are not JSON; ignoring them",
                        extra={"template": source, "error": str(exc)})
            return ()
    if not isinstance(data, Mapping):
        log.warning("template extra_filters are not a JSON object; ignoring them", extra={"template": source})
        return ()
    out: list[Condition] = []
    for key, spec in data.items():
        if not isinstance(spec, Mapping):  # {"verified": true} is shorthand for eq
            out.append(Condition(str(key), "eq", spec))
            continue
        for op, value in spec.items():
            if op not in OPERATORS:
                log.warning("template extra_filters use an unknown operator; ignoring it",
                            extra={"template": source, "key": key, "operator": op})
                continue
            out.append(Condition(str(key), op, value))
    return tuple(out)


def matches(conditions: Iterable[Condition], props: Mapping[str, Any]) -> bool:
    """True when the host satisfies every condition (no conditions: compatible with everything)."""
    return all(c.satisfied_by(props) for c in conditions)


def host_properties(offer: ProviderOffer) -> dict[str, Any]:
    """Vast-style host properties of an offer: the adapter's own (`offer.host_properties`) over the fields every
    offer has, so that the keys deciding compatibility are never missing whatever the provider."""
    props: dict[str, Any] = {
        "gpu_name": offer.gpu_type,
        "num_gpus": offer.gpu_count,
        "gpu_ram": offer.vram_gb * 1024,  # MB per GPU, Vast's unit
        "gpu_total_ram": offer.vram_gb * 1024 * offer.gpu_count,
        "dph_total": offer.price_per_hour,
        "reliability2": offer.reliability,
        "reliability": offer.reliability,
        "geolocation": offer.location,
        "rentable": offer.available,
    }
    if offer.cuda_version is not None:
        props["cuda_max_good"] = offer.cuda_version
    props.update({k: v for k, v in offer.host_properties.items() if v is not None})
    return props


@dataclass(frozen=True)
class DerivedFilters:
    """Inventory filters implied by a template (the reference's only two)."""

    min_cuda: float | None = None
    min_vram: int | None = None  # GB per GPU


def derive_offer_filters(conditions: Iterable[Condition]) -> DerivedFilters:
    """`cuda_max_good` gte/gt -> min_cuda; `gpu_total_ram` gte/gt (MB) -> min_vram (GB).

    `gt` derives the same bound as `gte`: the strict comparison itself is enforced when the template's
    conditions are matched against each offer. min_vram reads Vast's total RAM as per-GPU VRAM, which is the
    reference's (conservative) reading; inventory uses min_cuda from here and matches gpu_total_ram exactly.

    >>> derive_offer_filters(parse_extra_filters('{"cuda_max_good": {"gte": 12.9}, "gpu_total_ram": {"gt": 24000}}'))
    DerivedFilters(min_cuda=12.9, min_vram=24)
    """
    min_cuda: float | None = None
    min_vram: int | None = None
    for c in conditions:
        bound = _number(c.value)
        if bound is None or c.op not in ("gte", "gt"):
            continue
        if c.key == "cuda_max_good":
            min_cuda = bound if min_cuda is None else max(min_cuda, bound)
        elif c.key == "gpu_total_ram":
            gb = math.ceil(bound / 1024) if c.op == "gte" else math.floor(bound / 1024) + 1
            min_vram = gb if min_vram is None else max(min_vram, gb)
    return DerivedFilters(min_cuda, min_vram)


# Image name substrings -> SSH (provisioning) timeout in minutes; heavy images pull for a long time (BUG-005).
HEAVY_IMAGE_TIMEOUTS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("vllm", "nemo", "megatron"), 15),
    (("tgi", "text-generation-inference", "tensorrt", "deepspeed", "triton", "ollama"), 12),
)
DEFAULT_SSH_TIMEOUT_MINUTES = 10


def ssh_timeout_minutes_for_image(image: str | None, default: int = DEFAULT_SSH_TIMEOUT_MINUTES) -> int:
    """Provisioning deadline for a template's image: heavy images get longer (the first matching group wins).

    >>> ssh_timeout_minutes_for_image("vllm/vllm-openai:latest"), ssh_timeout_minutes_for_image("vastai/ollama")
    (15, 12)
    """
    name = (image or "").lower()
    for needles, minutes in HEAVY_IMAGE_TIMEOUTS:
        if any(n in name for n in needles):
            return minutes
    return default


def supports_templates(provider: GpuProvider) -> bool:
    """Providers declare `supports_templates`; without it only Vast.ai has templates."""
    declared = getattr(provider, "supports_templates", None)
    return bool(declared) if declared is not None else provider.name == "vastai"


class TemplateCatalog:
    """The templates of every template provider, cached (1 h by default; errors only for a short backoff).

    Lookups by hash id serve inventory filters, compatible-templates and session creation.
    """

    def __init__(self, providers: Mapping[str, GpuProvider], clock: Clock, *, ttl_seconds: float = 3600.0,
                 error_backoff_seconds: float = 5.0) -> None:
        self._providers = [p for p in providers.values() if supports_templates(p)]
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_seconds)
        self._backoff = timedelta(seconds=error_backoff_seconds)
        self._templates: tuple[ProviderTemplate, ...] | None = None
        self._by_hash: dict[str, ProviderTemplate] = {}
        self._conditions: dict[str, tuple[Condition, ...]] = {}
        self._fetched_at: datetime | None = None
        self._error: Exception | None = None
        self._error_at: datetime | None = None
        self._task: asyncio.Task | None = None

    @property
    def provider_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self._providers)

    def require_provider(self) -> None:
        if not self._providers:
            raise FailedPrecondition(f"no template provider configured ({TEMPLATE_PROVIDER_HINT})",
                                     reason="NO_TEMPLATE_PROVIDER")

    async def list(self) -> Sequence[ProviderTemplate]:
        """Every template; FailedPrecondition without a template provider, Unavailable when it fails."""
        self.require_provider()
        now = self._clock.now()
        if self._templates is not None and now - self._fetched_at < self._ttl:
            return self._templates
        if self._error_at is not None and now - self._error_at < self._backoff:
            if self._templates is not None:
                return self._templates
            raise Unavailable(f"failed to list templates: {self._error}", reason="TEMPLATES_UNAVAILABLE")
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._fetch())
        await asyncio.shield(self._task)
        if self._templates is None:
            raise Unavailable(f"failed to list templates: {self._error}", reason="TEMPLATES_UNAVAILABLE")
        return self._templates  # possibly older than the TTL when the refresh failed: better than nothing

    async def get(self, hash_id: str) -> ProviderTemplate:
        """One template by hash id; NotFound("template not found: <id>")."""
        await self.list()
        template = self._by_hash.get(hash_id)
        if template is None:
            raise NotFound(f"template not found: {hash_id}", reason="TEMPLATE_NOT_FOUND")
        return template

    def conditions(self, template: ProviderTemplate) -> tuple[Condition, ...]:
        """Parsed extra_filters of a template, parsed (and any problem logged) once per catalogue load."""
        got = self._conditions.get(template.hash_id)
        if got is None:
            got = self._conditions[template.hash_id] = parse_extra_filters(template.extra_filters,
                                                                           source=template.hash_id)
        return got

    async def _fetch(self) -> None:
        try:
            merged: dict[str, ProviderTemplate] = {}
            for provider in self._providers:
                async with asyncio.timeout(30):
                    for t in await provider.list_templates():
                        merged.setdefault(t.hash_id, t)
        except Exception as exc:  # noqa: BLE001 - a provider failure of any kind is reported, not raised here
            self._error, self._error_at = exc, self._clock.now()
            log.warning("template listing failed", extra={"error": str(exc)})
            return
        self._templates = tuple(merged.values())
        self._by_hash = merged
        self._conditions = {}
        self._fetched_at = self._clock.now()
        self._error = self._error_at = None

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
