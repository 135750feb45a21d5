"""Vast.ai over its real REST API (domain-broker Part 2 §2.2), through the shared resilient client.

Quirks this adapter exists to absorb:
  - offers are searched with a JSON query in `?q=`; Gantry pushes every filter it can (inventory re-applies all);
  - create (`PUT /asks/{id}/`) may answer `success:false` *with* a contract id: that is a success; a 400 with
    `no_such_ask` means the offer was rented or withdrawn (stale inventory);
  - the create-time SSH key does not reliably register, so keys are attached again (`POST /instances/{id}/ssh/`);
  - `GET /instances/{id}/` is wrapped in `{"instances": ...}` and answers `{"instances": null}` with HTTP 200
    for an instance that no longer exists;
  - 429 ("endpoint threshold=4.5*1.0") under bursts: 1 request/s with a burst of 2, and 1 s, 2 s, 4 s retries.

>>> vast = VastAiProvider(api_key=key, base_url=settings.broker.vastai_base_url)   # doctest: +SKIP
>>> offers = await vast.list_offers(OfferQuery(gpu_type="RTX 4090", max_price=0.5))  # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta, timezone
from typing import Any

from ..clock import Clock, SystemClock
from .base import (LABEL_PREFIX, CreateSpec, ErrorKind, InstanceState, OfferQuery, ProviderInstance, ProviderOffer,
                   ProviderTemplate)
from .http import BadReply, HttpPolicy, Operation, ProviderHttp, Reply, Sleep, check_instance_id
from .status import instance_state

log = logging.getLogger(__name__)

NAME = "vastai"
DEFAULT_BASE_URL = "https://console.vast.ai/api/v0"
DEFAULT_IMAGE = "nvidia/cuda:12.6.3-runtime-ubuntu22.04"
DEFAULT_MIN_RELIABILITY = 0.95
POLICY = HttpPolicy(rate_per_second=1.0, burst=2, backoff=(1.0, 2.0, 4.0))

# Retries (Part 2 §2.2) cover ListOffers, Create, AttachSSHKey and Destroy; status reads and listings are
# idempotent too, so they get them as well. Create is not idempotent: the client repeats it only when Vast
# provably did not act (429, connection never made).
LIST_OFFERS = Operation("ListOffers", 30.0)
CREATE = Operation("CreateInstance", 30.0, idempotent=False)
ATTACH_KEY = Operation("AttachSSHKey", 30.0)
GET = Operation("GetInstanceStatus", 30.0)
LIST = Operation("ListAllInstances", 30.0)
DESTROY = Operation("DestroyInstance", 30.0)
STOP = Operation("StopInstance", 30.0)
TEMPLATES = Operation("ListTemplates", 30.0)
BALANCE = Operation("GetBalance", 30.0)

# Bundle fields a template's extra_filters may test (broker/templates.py); kept with their wire types, so
# numeric filters on num_gpus work (reference defect 18 turned it into a string).
HOST_PROPERTY_KEYS = ("cuda_max_good", "compute_cap", "gpu_total_ram", "gpu_ram", "cpu_arch", "num_gpus", "gpu_name",
                      "disk_space", "reliability2", "verified", "rentable", "static_ip", "driver_version",
                      "inet_down", "inet_up", "dph_total", "geolocation", "cpu_cores_effective")


def normalise_gpu_name(name: str) -> str:
    """Drop "NVIDIA "/"Tesla " and "GeForce ", so names match across providers.

    >>> normalise_gpu_name("NVIDIA GeForce RTX 4090"), normalise_gpu_name("Tesla V100")
    ('RTX 4090', 'V100')
    """
    name = " ".join(name.split())
    for prefix in ("NVIDIA ", "Tesla "):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace("GeForce RTX ", "RTX ").replace("GeForce ", "")


def _classify(reply: Reply) -> ErrorKind | None:
    if reply.status in (400, 404) and "no_such_ask" in reply.text:
        return ErrorKind.STALE_INVENTORY
    return None


def _classify_create(reply: Reply) -> ErrorKind | None:
    """A create against a bundle that does not exist (404) is stale inventory too."""
    if reply.status == 404:
        return ErrorKind.STALE_INVENTORY
    return _classify(reply)


def _num(value: Any, default: float = 0.0) -> float:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _unix(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


class VastAiProvider:
    """GpuProvider for Vast.ai. Every method raises ProviderError (classified), nothing else."""

    name = NAME
    supports_templates = True
    default_ssh_user = "root"
    default_disk_gb = 50
    ssh_pre_delay_seconds = 0.0
    offer_ttl_seconds = 60.0

    def __init__(self, api_key: str | None, base_url: str = DEFAULT_BASE_URL, *, clock: Clock | None = None,
                 sleep: Sleep | None = None, policy: HttpPolicy = POLICY, template_ttl_seconds: float = 3600.0,
                 low_balance_usd: float | None = 5.0, balance_check_interval_seconds: float = 600.0) -> None:
        if not api_key:
            raise ValueError("VastAiProvider needs an API key (GANTRY_VASTAI_API_KEY)")
        self._clock = clock or SystemClock()
        self._http = ProviderHttp(NAME, base_url, policy=policy, headers={"Authorization": f"Bearer {api_key}"},
                                  secrets=[api_key], classify=_classify, clock=self._clock, sleep=sleep)
        self._template_ttl = timedelta(seconds=template_ttl_seconds)
        self._templates: list[ProviderTemplate] | None = None
        self._templates_at: datetime | None = None
        self._low_balance = low_balance_usd
        self._balance_interval = timedelta(seconds=balance_check_interval_seconds)
        self._balance_checked_at: datetime | None = None

    def __repr__(self) -> str:
        return f"VastAiProvider(base_url={self._http.base_url!r})"

    @property
    def http(self) -> ProviderHttp:
        """The client (breaker, bucket) for tests and health reporting."""
        return self._http

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- offers -----------------------------------------------------------------------------------------------

    @staticmethod
    def search_query(query: OfferQuery) -> dict[str, Any]:
        """The `q` JSON of GET /bundles/: every filter Vast can apply server-side."""
        q: dict[str, Any] = {
            "rentable": {"eq": True},
            "type": "on-demand",
            "reliability2": {"gte": query.min_reliability if query.min_reliability is not None
                             else DEFAULT_MIN_RELIABILITY},
        }
        if query.gpu_type:
            q["gpu_name"] = {"eq": query.gpu_type}
        if query.min_vram is not None:
            q["gpu_ram"] = {"gte": query.min_vram * 1024}
        if query.max_price is not None:
            q["dph_total"] = {"lte": query.max_price}
        if query.min_cuda is not None:
            q["cuda_max_good"] = {"gte": query.min_cuda}
        if query.location:
            q["geolocation"] = {"in": [query.location]}
        return q

    async def list_offers(self, query: OfferQuery) -> list[ProviderOffer]:
        def parse(reply: Reply) -> list[dict]:
            offers = reply.data.get("offers") if isinstance(reply.data, dict) else None
            if not isinstance(offers, list):
                raise BadReply(ErrorKind.TRANSIENT, "no offers list in the bundles response")
            return offers

        bundles = await self._http.call(LIST_OFFERS, "GET", "/bundles/",
                                        params={"q": json.dumps(self.search_query(query), separators=(",", ":"))},
                                        parse=parse)
        offers = []
        for bundle in bundles:
            try:
                offers.append(self.offer_from_bundle(bundle))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("skipping malformed Vast.ai bundle", extra={"error": repr(exc)})
        return offers

    @staticmethod
    def offer_from_bundle(b: dict[str, Any]) -> ProviderOffer:
        price = _num(b.get("dph_total"))
        min_bid = _num(b.get("min_bid"))
        reliability = _num(b.get("reliability2", b.get("reliability")))
        bid_safety = 1.0 if min_bid <= 0 else min(1.0, min_bid / price) if price > 0 else 1.0
        cuda = b.get("cuda_max_good")
        machine = b.get("machine_id")
        return ProviderOffer(
            provider=NAME,
            provider_id=str(int(b["id"])),
            gpu_type=normalise_gpu_name(str(b.get("gpu_name") or "")),
            gpu_count=int(b.get("num_gpus") or 1),
            vram_gb=math.floor(_num(b.get("gpu_ram")) / 1024),
            price_per_hour=price,
            location=str(b.get("geolocation") or ""),
            reliability=reliability,
            available=bool(b.get("rentable")) and not bool(b.get("rented")),
            base_confidence=0.6 * reliability + 0.4 * bid_safety,
            cuda_version=float(cuda) if cuda is not None else None,
            machine_id=f"vastai-machine-{machine}" if machine is not None else None,
            interruptible=min_bid > 0,
            min_bid=min_bid,
            host_properties={k: b[k] for k in HOST_PROPERTY_KEYS if b.get(k) is not None},
        )

    # -- instances --------------------------------------------------------------------------------------------

    def create_body(self, spec: CreateSpec) -> dict[str, Any]:
        """The PUT /asks/{id}/ body. Entrypoint mode without a template keeps the image's entrypoint
        (runtype "args") and publishes the exposed ports; everything else runs behind Vast's SSH proxy."""
        env = dict(spec.env)
        body: dict[str, Any] = {"client_id": "me", "disk": spec.disk_gb, "label": spec.label,
                                "runtype": "ssh_proxy", "onstart": spec.on_start_cmd or ""}
        if spec.ssh_public_keys:
            body["ssh_key"] = spec.ssh_public_keys[0].strip()
        if spec.template_hash_id:
            body["template_hash_id"] = spec.template_hash_id
        else:
            body["image"] = spec.image or DEFAULT_IMAGE
            if spec.launch_mode == "entrypoint":
                body["runtype"] = "args"
        for port in spec.exposed_ports:
            env[f"-p {int(port)}:{int(port)}"] = "1"
        body["env"] = env
        return body

    async def create_instance(self, spec: CreateSpec) -> ProviderInstance:
        bundle_id = spec.offer.provider_id
        if not bundle_id.isdigit():
            raise self._http.error(ErrorKind.INVALID, CREATE.name, f"invalid Vast.ai offer id {bundle_id!r}")
        await self._warn_if_low_balance()

        def parse(reply: Reply) -> str:
            data = reply.data if isinstance(reply.data, dict) else {}
            contract = data.get("new_contract")
            if isinstance(contract, (int, float, str)) and str(contract).isdigit() and int(contract) > 0:
                return str(int(contract))  # success:false with a contract id still rented the machine
            raise BadReply(ErrorKind.INVALID, f"no contract created: {reply.text[:300]}")

        instance_id = await self._http.call(CREATE, "PUT", f"/asks/{bundle_id}/", json_body=self.create_body(spec),
                                            classify=_classify_create, parse=parse)
        for key in spec.ssh_public_keys:
            try:
                await self._http.call(ATTACH_KEY, "POST", f"/instances/{instance_id}/ssh/",
                                      json_body={"ssh_key": key.strip()})
            except Exception as exc:  # noqa: BLE001 - the create-time key may still work; verification decides
                log.warning("attaching the SSH key to a new Vast.ai instance failed",
                            extra={"instance_id": instance_id, "error": str(exc)})
        return ProviderInstance(provider=NAME, instance_id=instance_id, label=spec.label,
                                state=InstanceState.STARTING, raw_status="created", ssh_user=self.default_ssh_user,
                                price_per_hour=spec.offer.price_per_hour)

    async def get_instance(self, instance_id: str) -> ProviderInstance:
        instance_id = self._check_id(GET.name, instance_id)

        def parse(reply: Reply) -> dict | None:
            if reply.status == 404:
                return None
            if not isinstance(reply.data, dict) or "instances" not in reply.data:
                raise BadReply(ErrorKind.TRANSIENT, "no 'instances' key in the instance response")
            inner = reply.data["instances"]
            if inner is not None and not isinstance(inner, dict):
                raise BadReply(ErrorKind.TRANSIENT, "'instances' is not an object")
            return inner

        raw = await self._http.call(GET, "GET", f"/instances/{instance_id}/", ok=(404,), parse=parse)
        if raw is None:  # HTTP 404, or {"instances": null} with HTTP 200: Vast no longer knows it
            return ProviderInstance(provider=NAME, instance_id=instance_id, label=None, state=InstanceState.GONE,
                                    raw_status="gone")
        return self._instance(raw, instance_id)

    def _instance(self, raw: dict[str, Any], instance_id: str | None = None) -> ProviderInstance:
        status = raw.get("actual_status")
        ports: dict[int, int] = {}
        for key, bindings in (raw.get("ports") or {}).items():
            try:
                ports[int(str(key).split("/")[0])] = int(bindings[0]["HostPort"])
            except (ValueError, TypeError, KeyError, IndexError):
                continue
        ssh_port = raw.get("ssh_port")
        return ProviderInstance(
            provider=NAME,
            instance_id=str(raw.get("id", instance_id)),
            label=raw.get("label"),
            state=instance_state(status),
            raw_status=str(status or ""),
            ssh_host=raw.get("ssh_host") or None,
            ssh_port=int(ssh_port) if ssh_port not in (None, "") else None,
            ssh_user=self.default_ssh_user,
            public_ip=(raw.get("public_ipaddr") or "").strip() or None,
            ports=ports,
            price_per_hour=_num(raw["dph_total"]) if raw.get("dph_total") is not None else None,
            started_at=_unix(raw.get("start_date")),
            message=raw.get("status_msg") or None,
        )

    async def list_instances(self) -> list[ProviderInstance]:
        def parse(reply: Reply) -> list[dict]:
            items = reply.data.get("instances") if isinstance(reply.data, dict) else None
            if not isinstance(items, list):
                raise BadReply(ErrorKind.TRANSIENT, "no instances list in the response")
            return items

        items = await self._http.call(LIST, "GET", "/instances/", parse=parse)
        return [self._instance(i) for i in items
                if isinstance(i, dict) and str(i.get("label") or "").startswith(LABEL_PREFIX)]

    async def destroy_instance(self, instance_id: str) -> None:
        instance_id = self._check_id(DESTROY.name, instance_id)
        await self._http.call(DESTROY, "DELETE", f"/instances/{instance_id}/", ok=(404,))  # 404: already gone

    async def stop_instance(self, instance_id: str) -> None:
        instance_id = self._check_id(STOP.name, instance_id)
        await self._http.call(STOP, "PUT", f"/instances/{instance_id}/", json_body={"state": "stopped"})

    def _check_id(self, operation: str, instance_id: str) -> str:
        check_instance_id(self._http, operation, instance_id)
        if not instance_id.isdigit():
            raise self._http.error(ErrorKind.INVALID, operation, f"invalid Vast.ai instance id {instance_id!r}")
        return instance_id

    # -- templates and account --------------------------------------------------------------------------------

    async def list_templates(self) -> list[ProviderTemplate]:
        """Recommended templates (the only ones this service uses), cached for an hour."""
        now = self._clock.now()
        if self._templates is not None and now - self._templates_at < self._template_ttl:
            return list(self._templates)

        def parse(reply: Reply) -> list[dict]:
            items = reply.data.get("templates") if isinstance(reply.data, dict) else None
            if not isinstance(items, list):
                raise BadReply(ErrorKind.TRANSIENT, "no templates list in the response")
            return items

        items = await self._http.call(TEMPLATES, "GET", "/template/", parse=parse, params={
            "select_filters": json.dumps({"recommended": {"eq": True}}, separators=(",", ":"))})
        self._templates = [t for t in (self._template(i) for i in items if isinstance(i, dict)) if t is not None]
        self._templates_at = now
        return list(self._templates)

    async def get_template(self, hash_id: str) -> ProviderTemplate | None:
        return next((t for t in await self.list_templates() if t.hash_id == hash_id), None)

    @staticmethod
    def _template(t: dict[str, Any]) -> ProviderTemplate | None:
        if not t.get("hash_id"):
            return None
        extra = t.get("extra_filters")
        if extra is not None and not isinstance(extra, str):
            extra = json.dumps(extra)
        return ProviderTemplate(
            id=int(_num(t.get("id"))), hash_id=str(t["hash_id"]), name=str(t.get("name") or ""),
            image=str(t.get("image") or ""), tag=str(t.get("tag") or ""), env=str(t.get("env") or ""),
            onstart=str(t.get("onstart") or ""), runtype=str(t.get("runtype") or ""),
            use_ssh=bool(t.get("use_ssh")), ssh_direct=bool(t.get("ssh_direct")),
            recommended=bool(t.get("recommended")),
            recommended_disk_space=int(_num(t.get("recommended_disk_space"))),
            extra_filters=extra or "", creator_id=int(_num(t.get("creator_id"))),
            created_at=_unix(t.get("created_at")), count_created=int(_num(t.get("count_created"))))

    async def balance(self) -> float:
        """Account credit in USD."""
        def parse(reply: Reply) -> float:
            return float(reply.data["credit"])

        return await self._http.call(BALANCE, "GET", "/users/current/", parse=parse)

    async def _warn_if_low_balance(self) -> None:
        """Warn (never block) when credit runs low; checked at most every few minutes, failures ignored."""
        now = self._clock.now()
        if self._low_balance is None or (self._balance_checked_at is not None
                                         and now - self._balance_checked_at < self._balance_interval):
            return
        self._balance_checked_at = now
        try:
            credit = await self.balance()
        except Exception as exc:  # noqa: BLE001 - informational only
            log.info("Vast.ai balance check failed", extra={"error": str(exc)})
            return
        if credit < self._low_balance:
            log.warning("Vast.ai account balance is low", extra={"credit_usd": credit,
                                                                 "threshold_usd": self._low_balance})
