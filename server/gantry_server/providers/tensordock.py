"""TensorDock over its real v2 REST API (domain-broker Part 2 §2.3), through the shared resilient client.

Quirks this adapter exists to absorb:
  - `/locations` authenticates with query parameters (`api_key` = auth id, `api_token`); `/instances*` with a
    Bearer token. Both credentials are secrets and are masked wherever a URL or a body could show them;
  - an offer is priced as exactly what create rents: 1 GPU + 8 vCPU + 32 GB RAM + the default disk at the
    location's per-unit prices (the reference priced the GPU alone and advertised max_count GPUs: defect 16);
  - errors arrive as a validation array `[{code, message, path}]`, or as HTTP 200 carrying `{status >= 400, error}`;
    sold-out phrases mean stale inventory whatever the HTTP status (defect 23);
  - `ssh_key` is required by the API but does not install the key (BUG-002): cloud-init runcmd writes it for
    root and `user`, passing the key as an argument (never through a shell parser);
  - `GET /instances/{id}` is unwrapped, and SSH is the external port forwarded to 22; `GET /instances` has two
    shapes, and any failure there is an error, never an empty list (that would make live sessions ghosts);
  - 90 s after create before the first SSH attempt: the VM boots and runs cloud-init.

>>> td = TensorDockProvider(api_token=token, auth_id=auth_id)   # doctest: +SKIP
>>> offers = await td.list_offers(OfferQuery())                  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..clock import Clock, SystemClock
from .base import (LABEL_PREFIX, CreateSpec, ErrorKind, InstanceState, OfferQuery, ProviderInstance, ProviderOffer,
                   ProviderTemplate)
from .http import BadReply, HttpPolicy, Operation, ProviderHttp, Reply, Sleep, check_instance_id
from .status import instance_state

log = logging.getLogger(__name__)

NAME = "tensordock"
DEFAULT_BASE_URL = "https://dashboard.tensordock.com/api/v2"
DEFAULT_IMAGE = "ubuntu2204"
# 2 requests/s, burst 3 (the reference's limits). Unlike the reference (no retries at all), idempotent calls are
# retried twice (1 s, 2 s): a 429 or a 502 on /locations would otherwise become an inventory error for a whole
# cache period. Create (POST) is repeated only when TensorDock provably did not act on it (429, no connection).
POLICY = HttpPolicy(rate_per_second=2.0, burst=3, backoff=(1.0, 2.0))

LIST_OFFERS = Operation("ListOffers", 30.0)
CREATE = Operation("CreateInstance", 60.0, idempotent=False)
GET = Operation("GetInstanceStatus", 30.0)
LIST = Operation("ListAllInstances", 30.0)
DESTROY = Operation("DestroyInstance", 30.0)
STOP = Operation("StopInstance", 30.0)

# Lower-case phrases of TensorDock errors meaning "this location/GPU cannot be rented right now".
STALE_PHRASES = (
    "no available nodes", "no nodes available", "no available node", "no available public ip", "no public ip",
    "sold out", "out of stock", "no capacity", "insufficient capacity", "not enough capacity", "no gpus available",
    "no available gpus", "gpus are not available", "gpu not available", "not enough gpus", "insufficient gpus",
    "no hostnode", "hostnode is full", "no suitable", "not enough resources", "insufficient resources",
    "resources are not available", "no longer available", "currently unavailable", "maximum", "exceeds the available",
    "location is full", "node is full", "unable to allocate", "could not allocate", "failed to allocate",
    "no available ip", "no ips available", "out of capacity",
)

_SSH_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com"
                      r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\x00-\x1f\x7f]*)?\Z")
KEY_DIRS = ("/root/.ssh", "/home/user/.ssh")
# The keys arrive as "$1" (one per line): an argument, never parsed by the shell, so no key text can run.
_INSTALL_KEYS = ("umask 077; for d in " + " ".join(KEY_DIRS) + "; do mkdir -p \"$d\" && "
                 "printf '%s\\n' \"$1\" >> \"$d/authorized_keys\"; done; chown -R user:user /home/user/.ssh || true")
# TensorDock images ship without a working driver or with DKMS unbuilt, while unattended-upgrades holds the dpkg
# lock for minutes (BUG-009/013/014). Constant text: nothing of the request goes into it.
_NVIDIA_FIX = ("nvidia-smi >/dev/null 2>&1 && exit 0; systemctl stop unattended-upgrades 2>/dev/null; "
               "pkill -f unattended-upgrade 2>/dev/null; for i in $(seq 60); do "
               "fuser /var/lib/dpkg/lock-frontend >/dev/null 2>&1 || break; sleep 2; done; dpkg --configure -a; "
               "if dpkg -l | grep -q nvidia-dkms; then dkms autoinstall && modprobe nvidia; else "
               "apt-get -o DPkg::Lock::Timeout=120 install -y nvidia-driver-550 && modprobe nvidia; fi || true")


def normalise_gpu_name(display: str) -> str:
    """Drop vendor prefixes and the trailing " [PCIe] NNGB".

    >>> normalise_gpu_name("NVIDIA GeForce RTX 4090 PCIe 24GB"), normalise_gpu_name("NVIDIA H100 SXM5 80GB")
    ('RTX 4090', 'H100 SXM5')
    """
    name = " ".join(display.split())
    for prefix in ("NVIDIA ", "GeForce ", "Tesla "):
        if name.startswith(prefix):
            name = name[len(prefix):]
    name = re.sub(r"\s+\d+\s*GB$", "", name, flags=re.IGNORECASE)
    return re.sub(r"\s+PCIe$", "", name, flags=re.IGNORECASE)


def vram_gb(display: str, v0_name: str = "") -> int:
    match = re.search(r"(\d+)\s*GB", display, re.IGNORECASE) or re.search(r"(\d+)gb", v0_name, re.IGNORECASE)
    return int(match.group(1)) if match else 0


def runcmd(keys: tuple[str, ...], on_start_cmd: str | None) -> list[list[str]]:
    """cloud-init runcmd as argv lists (exec'd without a shell): key install, driver fix, then on_start_cmd.

    on_start_cmd is the user's shell command; it runs as its own entry, after the keys are in place, so whatever it
    contains cannot change how the keys are installed."""
    cmds = [["sh", "-c", _INSTALL_KEYS, "gantry-install-keys", "\n".join(keys)], ["sh", "-c", _NVIDIA_FIX]]
    if on_start_cmd:
        cmds.append(["sh", "-c", on_start_cmd])
    return cmds


def _message(data: Any) -> str:
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"]
    if isinstance(data, list):
        return "; ".join(str(i.get("message", "")) for i in data if isinstance(i, dict))
    return ""


def _is_validation_array(data: Any) -> bool:
    return isinstance(data, list) and bool(data) and all(isinstance(i, dict) and "message" in i for i in data)


def _effective_status(reply: Reply) -> int:
    """HTTP status, or for a 2xx carrying `{status >= 400, error}` the status inside the body."""
    data = reply.data
    if 200 <= reply.status < 300 and isinstance(data, dict) and isinstance(data.get("status"), int) \
            and data["status"] >= 400 and ("error" in data or "message" in data):
        return data["status"]
    return reply.status


def classify(reply: Reply, *, stale: bool = False, gone_ok: bool = False, listing: bool = False) -> ErrorKind | None:
    """TensorDock's error rules; None lets the generic status rule decide (or accepts a 2xx)."""
    status = _effective_status(reply)
    if 200 <= status < 300:
        return ErrorKind.TRANSIENT if listing and status != 200 else None
    if status in (401, 403):
        return ErrorKind.AUTH
    if status == 429:
        return ErrorKind.TRANSIENT
    if gone_ok and status == 404:
        return None  # the caller's parse reads it as "gone"
    if stale and any(p in _message(reply.data).lower() for p in STALE_PHRASES):
        return ErrorKind.STALE_INVENTORY
    if listing:
        return ErrorKind.TRANSIENT
    if _is_validation_array(reply.data):
        return ErrorKind.INVALID
    if status != reply.status:  # an error inside a 200: classify by the status it carries
        return {401: ErrorKind.AUTH, 403: ErrorKind.AUTH, 404: ErrorKind.GONE, 410: ErrorKind.GONE}.get(
            status, ErrorKind.TRANSIENT if status >= 500 or status in (408, 425) else ErrorKind.INVALID)
    return None


@dataclass
class _Stats:
    attempts: int = 0
    successes: int = 0
    last_failed: bool = False
    last_at: datetime | None = None


class LocationStats:
    """Per-location create outcomes -> base availability confidence (in memory; Part 2 §2.6).

    No attempts: 0.3. Otherwise successes/attempts, halved when the last attempt failed, within [0.05, 1].
    A location untouched for 30 min starts over."""

    DEFAULT, FLOOR, IDLE_RESET = 0.3, 0.05, timedelta(minutes=30)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._stats: dict[str, _Stats] = {}

    def _get(self, location_id: str) -> _Stats | None:
        s = self._stats.get(location_id)
        if s is not None and s.last_at is not None and self._clock.now() - s.last_at >= self.IDLE_RESET:
            del self._stats[location_id]
            return None
        return s

    def record(self, location_id: str, success: bool) -> None:
        s = self._get(location_id) or self._stats.setdefault(location_id, _Stats())
        s.attempts += 1
        s.successes += int(success)
        s.last_failed = not success
        s.last_at = self._clock.now()

    def confidence(self, location_id: str) -> float:
        s = self._get(location_id)
        if s is None or s.attempts == 0:
            return self.DEFAULT
        value = s.successes / s.attempts
        if s.last_failed:
            value /= 2
        return min(1.0, max(self.FLOOR, value))


def _num(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


class TensorDockProvider:
    """GpuProvider for TensorDock. Every method raises ProviderError (classified), nothing else."""

    name = NAME
    supports_templates = False
    default_ssh_user = "user"
    default_disk_gb = 100
    offer_ttl_seconds = 30.0

    def __init__(self, api_token: str | None, auth_id: str | None, base_url: str = DEFAULT_BASE_URL, *,
                 clock: Clock | None = None, sleep: Sleep | None = None, policy: HttpPolicy = POLICY,
                 ssh_pre_delay_seconds: float = 90.0, vcpu_count: int = 8, ram_gb: int = 32) -> None:
        if not api_token or not auth_id:
            raise ValueError("TensorDockProvider needs an API token and an auth id "
                             "(GANTRY_TENSORDOCK_API_TOKEN, GANTRY_TENSORDOCK_AUTH_ID)")
        self._clock = clock or SystemClock()
        self._token, self._auth_id = api_token, auth_id
        self._http = ProviderHttp(NAME, base_url, policy=policy, secrets=[api_token, auth_id], clock=self._clock,
                                  sleep=sleep, classify=classify)
        self._bearer = {"Authorization": f"Bearer {api_token}"}
        self.ssh_pre_delay_seconds = ssh_pre_delay_seconds
        self.vcpu_count, self.ram_gb = vcpu_count, ram_gb
        self.location_stats = LocationStats(self._clock)

    def __repr__(self) -> str:
        return f"TensorDockProvider(base_url={self._http.base_url!r})"

    @property
    def http(self) -> ProviderHttp:
        return self._http

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- offers -----------------------------------------------------------------------------------------------

    async def list_offers(self, query: OfferQuery) -> list[ProviderOffer]:
        """Every (location, GPU) pair; TensorDock filters nothing server-side, inventory applies `query`."""
        def parse(reply: Reply) -> list[dict]:
            data = reply.data.get("data") if isinstance(reply.data, dict) else None
            locations = data.get("locations") if isinstance(data, dict) else None
            if not isinstance(locations, list):
                raise BadReply(ErrorKind.TRANSIENT, "no data.locations list in the response")
            return locations

        locations = await self._http.call(LIST_OFFERS, "GET", "/locations", parse=parse,
                                          params={"api_key": self._auth_id, "api_token": self._token},
                                          classify=lambda r: classify(r, listing=True))
        offers = []
        for loc in locations:
            for gpu in (loc.get("gpus") or []) if isinstance(loc, dict) else []:
                try:
                    offers.append(self._offer(loc, gpu))
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("skipping malformed TensorDock GPU entry", extra={"error": repr(exc)})
        return offers

    def resources(self, gpu: dict[str, Any], disk_gb: int) -> dict[str, int]:
        """What one rental of this GPU entry consists of, within the location's maxima."""
        limits = gpu.get("resources") or {}
        def cap(wanted: int, key: str) -> int:
            limit = limits.get(key)
            return min(wanted, int(limit)) if isinstance(limit, (int, float)) and limit > 0 else wanted
        return {"vcpu_count": cap(self.vcpu_count, "max_vcpus"), "ram_gb": cap(self.ram_gb, "max_ram_gb"),
                "storage_gb": disk_gb}

    @staticmethod
    def price(pricing: dict[str, float], resources: dict[str, int]) -> float:
        """Hourly price of 1 GPU plus the given vCPU, RAM and disk."""
        return round(pricing["gpu"] + resources["vcpu_count"] * pricing["per_vcpu_hr"]
                     + resources["ram_gb"] * pricing["per_gb_ram_hr"]
                     + resources["storage_gb"] * pricing["per_gb_storage_hr"], 6)

    def _offer(self, loc: dict[str, Any], gpu: dict[str, Any]) -> ProviderOffer:
        location_id, v0 = str(loc["id"]), str(gpu["v0Name"])
        display = str(gpu.get("displayName") or v0)
        unit = gpu.get("pricing") or {}
        pricing = {"gpu": _num(gpu.get("price_per_hr")), "per_vcpu_hr": _num(unit.get("per_vcpu_hr")),
                   "per_gb_ram_hr": _num(unit.get("per_gb_ram_hr")),
                   "per_gb_storage_hr": _num(unit.get("per_gb_storage_hr"))}
        max_storage = (gpu.get("resources") or {}).get("max_storage_gb")
        disk = self.default_disk_gb
        if isinstance(max_storage, (int, float)) and max_storage > 0:
            disk = min(disk, int(max_storage))
        resources = self.resources(gpu, disk)
        place = ", ".join(str(p) for p in (loc.get("city"), loc.get("stateprovince"), loc.get("country")) if p)
        network = gpu.get("network_features") or {}
        return ProviderOffer(
            provider=NAME,
            provider_id=f"{location_id}-{v0}",
            gpu_type=normalise_gpu_name(display),
            gpu_count=1,  # create rents exactly one GPU, so that is what is offered and priced
            vram_gb=vram_gb(display, v0),
            price_per_hour=self.price(pricing, resources),
            location=place,
            reliability=min(1.0, _num(loc.get("tier")) / 3),
            available=True,
            base_confidence=self.location_stats.confidence(location_id),
            cuda_version=None,
            interruptible=False,
            host_properties={"location_id": location_id, "gpu_v0_name": v0, "pricing": pricing,
                             "resources": resources, "max_count": gpu.get("max_count"),
                             "dedicated_ip_available": network.get("dedicated_ip_available")},
        )

    # -- instances --------------------------------------------------------------------------------------------

    def create_body(self, spec: CreateSpec) -> dict[str, Any]:
        """The JSON:API body of POST /instances; ProviderError(INVALID) for keys that are not one-line keys."""
        props = spec.offer.host_properties
        location_id = props.get("location_id") or spec.offer.provider_id[:36]
        v0 = props.get("gpu_v0_name") or spec.offer.provider_id[37:]
        keys = tuple(k.strip() for k in spec.ssh_public_keys)
        if not keys:
            raise self._http.error(ErrorKind.INVALID, CREATE.name, "an SSH public key is required")
        for key in keys:
            if not _SSH_KEY.match(key):
                raise self._http.error(ErrorKind.INVALID, CREATE.name, "ssh public key is not a single-line "
                                       "OpenSSH public key")
        resources = dict(props.get("resources") or self.resources({}, spec.disk_gb))
        if spec.disk_gb != self.default_disk_gb:  # the default is what was priced (capped by the node's maximum)
            resources["storage_gb"] = spec.disk_gb
        # A Docker image name (org/image:tag) is not a VM image; TensorDock rents VMs.
        image = spec.image if spec.image and "/" not in spec.image and ":" not in spec.image else DEFAULT_IMAGE
        return {"data": {"type": "virtualmachine", "attributes": {
            "name": spec.label, "type": "virtualmachine", "image": image, "location_id": location_id,
            "resources": {**resources, "gpus": {v0: {"count": 1}}},
            "useDedicatedIp": True,  # port forwards are silently ignored at some locations (BUG-008)
            "ssh_key": keys[0],  # required by the API, installs nothing (BUG-002)
            "cloud_init": {"runcmd": runcmd(keys, spec.on_start_cmd)},
        }}}

    async def create_instance(self, spec: CreateSpec) -> ProviderInstance:
        body = self.create_body(spec)
        location_id = body["data"]["attributes"]["location_id"]
        rented = body["data"]["attributes"]["resources"]

        def parse(reply: Reply) -> dict:
            data = reply.data.get("data") if isinstance(reply.data, dict) else None
            if not isinstance(data, dict) or not data.get("id"):
                raise BadReply(ErrorKind.TRANSIENT, f"no instance id in the create response: {reply.text[:300]}")
            return data

        try:
            data = await self._http.call(CREATE, "POST", "/instances", json_body=body, headers=self._bearer,
                                         classify=lambda r: classify(r, stale=True), parse=parse)
        except Exception as exc:
            kind = getattr(exc, "kind", None)
            if kind in (ErrorKind.STALE_INVENTORY, ErrorKind.TRANSIENT):  # the location's fault, not ours
                self.location_stats.record(location_id, success=False)
            raise
        self.location_stats.record(location_id, success=True)
        pricing = spec.offer.host_properties.get("pricing")
        price = self.price(pricing, rented) if pricing else spec.offer.price_per_hour
        return ProviderInstance(provider=NAME, instance_id=str(data["id"]), label=data.get("name") or spec.label,
                                state=instance_state(data.get("status")), raw_status=str(data.get("status") or ""),
                                ssh_user=self.default_ssh_user, price_per_hour=price)

    async def get_instance(self, instance_id: str) -> ProviderInstance:
        check_instance_id(self._http, GET.name, instance_id)

        def parse(reply: Reply) -> dict | None:
            if _effective_status(reply) == 404:
                return None
            if not isinstance(reply.data, dict) or "status" not in reply.data:
                raise BadReply(ErrorKind.TRANSIENT, "no status in the instance response")
            return reply.data

        raw = await self._http.call(GET, "GET", f"/instances/{instance_id}", headers=self._bearer, ok=(404,),
                                    classify=lambda r: classify(r, gone_ok=True), parse=parse)
        if raw is None:
            return ProviderInstance(provider=NAME, instance_id=instance_id, label=None, state=InstanceState.GONE,
                                    raw_status="gone")
        return self._instance(raw, instance_id)

    def _instance(self, raw: dict[str, Any], instance_id: str | None = None) -> ProviderInstance:
        ports: dict[int, int] = {}
        for fwd in raw.get("portForwards") or []:
            try:
                ports[int(fwd["internal_port"])] = int(fwd["external_port"])
            except (KeyError, TypeError, ValueError):
                continue
        status = raw.get("status")
        ip = (raw.get("ipAddress") or "").strip() or None
        rate = raw.get("rateHourly")
        return ProviderInstance(
            provider=NAME, instance_id=str(raw.get("id") or instance_id), label=raw.get("name"),
            state=instance_state(status), raw_status=str(status or ""), ssh_host=ip,
            ssh_port=ports.get(22, 22) if ip else None, ssh_user=self.default_ssh_user, public_ip=ip, ports=ports,
            price_per_hour=_num(rate) if rate is not None else None)

    async def list_instances(self) -> list[ProviderInstance]:
        def parse(reply: Reply) -> list:
            data = reply.data.get("data", ...) if isinstance(reply.data, dict) else ...
            if isinstance(data, dict):
                data = data.get("instances", ...)
            if not isinstance(data, list):
                raise BadReply(ErrorKind.TRANSIENT, "unrecognised instance list body")
            return data

        items = await self._http.call(LIST, "GET", "/instances", headers=self._bearer, parse=parse,
                                      classify=lambda r: classify(r, listing=True))
        out = []
        for item in items:
            if not isinstance(item, dict):
                continue
            if str(item.get("name") or "").startswith(LABEL_PREFIX):
                out.append(self._instance(item))
            else:
                log.debug("ignoring a TensorDock instance without a Gantry name", extra={"instance_id": item.get("id")})
        return out

    async def destroy_instance(self, instance_id: str) -> None:
        check_instance_id(self._http, DESTROY.name, instance_id)
        await self._http.call(DESTROY, "DELETE", f"/instances/{instance_id}", headers=self._bearer, ok=(404,),
                              classify=lambda r: classify(r, gone_ok=True))  # 404: already gone

    async def stop_instance(self, instance_id: str) -> None:
        check_instance_id(self._http, STOP.name, instance_id)
        await self._http.call(STOP, "POST", f"/instances/{instance_id}/stop", headers=self._bearer)

    async def list_templates(self) -> list[ProviderTemplate]:
        return []
