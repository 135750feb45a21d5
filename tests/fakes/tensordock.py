"""A TensorDock v2 API server for tests, speaking the real wire format (domain-broker Part 2 §2.3, §9.5).

    fake = FakeTensorDock(api_token="td-token", auth_id="td-auth")
    await fake.start()                      # base_url ends in /api/v2 like the real one
    loc = fake.add_location(city="Manassas", gpus=[td_gpu("geforcertx4090-pcie-24gb", price_per_hr=0.35)])
    provider = TensorDockProvider(api_token="td-token", auth_id="td-auth", base_url=fake.base_url)

Reproduced quirks: `/locations` authenticated by `api_key`/`api_token` *query parameters*, `/instances*` by a
Bearer token (401 otherwise); a JSON:API create body validated field by field (errors as `[{code, message,
path}]`); sold-out capacity answered as HTTP 200 `{"status": 400, "error": "No available nodes found"}` (or any
status: `sold_out_reply`); `ssh_key` required but installing nothing: only keys written by cloud-init runcmd
reach `authorized_keys` (BUG-002); the hourly rate of what was actually rented (GPU + vCPU + RAM + disk);
`GET /instances/{id}` unwrapped with `portForwards` (SSH = the external port forwarded to 22; a dedicated IP
forwards nothing and serves 22 directly); requested port forwards silently dropped at some locations (BUG-008);
`GET /instances` as `{data: [...]}` or `{data: {instances: [...]}}` (`list_shape`); 404 on DELETE of a gone
instance; listing lag, vanishing instances and `fail_next` from the base.
"""
from __future__ import annotations

import re
import uuid
from typing import Any

from .asgi import Request, Response
from .base import FakeInstance, FakeProvider

_KEY = re.compile(r"(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) [A-Za-z0-9+/]+={0,3}")
SOLD_OUT = (200, {"status": 400, "error": "No available nodes found for the requested resources"})
NO_PUBLIC_IPS = (400, {"status": 400, "error": "No available public IPs on hostnode"})


def td_gpu(v0_name: str = "geforcertx4090-pcie-24gb", display_name: str = "NVIDIA GeForce RTX 4090 PCIe 24GB",
           price_per_hr: float = 0.35, max_count: int = 4, *, per_vcpu_hr: float = 0.003, per_gb_ram_hr: float = 0.002,
           per_gb_storage_hr: float = 0.00005, max_vcpus: int = 32, max_ram_gb: int = 128, max_storage_gb: int = 2000,
           dedicated_ip_available: bool = True) -> dict[str, Any]:
    """One GPU entry of a location, as /locations returns it."""
    return {"v0Name": v0_name, "displayName": display_name, "max_count": max_count, "price_per_hr": price_per_hr,
            "resources": {"max_vcpus": max_vcpus, "max_ram_gb": max_ram_gb, "max_storage_gb": max_storage_gb},
            "network_features": {"dedicated_ip_available": dedicated_ip_available,
                                 "port_forwarding_available": True, "network_storage_available": False},
            "pricing": {"per_vcpu_hr": per_vcpu_hr, "per_gb_ram_hr": per_gb_ram_hr,
                        "per_gb_storage_hr": per_gb_storage_hr}}


def installed_keys(runcmd: Any) -> dict[str, list[str]]:
    """What cloud-init would leave in authorized_keys: public keys in runcmd entries that write an
    authorized_keys file, per account whose .ssh directory the entry names."""
    out: dict[str, list[str]] = {"root": [], "user": []}
    for entry in runcmd if isinstance(runcmd, list) else []:
        parts = [str(p) for p in entry] if isinstance(entry, list) else [str(entry)]
        text = " ".join(parts)
        if "authorized_keys" not in text:
            continue
        keys = []
        for line in (line.strip() for part in parts for line in part.splitlines()):
            found = _KEY.search(line)
            if found:  # a line that is a key keeps its comment; a key inside a command is just the key
                keys.append(line if found.start() == 0 else found.group(0))
        for user, home in (("root", "/root/.ssh"), ("user", "/home/user/.ssh")):
            if home in text:
                out[user] += [k for k in keys if k not in out[user]]
    return out


def _violation(message: str, *path: str, code: str = "invalid_type") -> dict[str, Any]:
    return {"code": code, "message": message, "path": ["data", "attributes", *path]}


class FakeTensorDock(FakeProvider):
    provider = "tensordock"
    prefix = "/api/v2"
    starting_status = "starting"

    def __init__(self, api_token: str = "td-test-token", auth_id: str = "td-test-auth") -> None:
        super().__init__()
        self.api_token, self.auth_id = api_token, auth_id
        self.locations: list[dict[str, Any]] = []
        self.capacity: dict[tuple[str, str], int] = {}  # (location id, v0Name) -> GPUs left
        self.sold_out_reply: tuple[int, Any] = SOLD_OUT
        self.list_shape = "flat"  # "flat" -> {data: [...]}, "nested" -> {data: {instances: [...]}}
        self.gone_reply = "404"  # unknown instance on GET: "404", or "200" -> HTTP 200 {status: 404, error}
        self.ignores_port_forwards: set[str] = set()  # location ids that drop requested port forwards (BUG-008)
        self.shared_ip = "198.51.100.10"
        r = self.router
        r.add("GET", "/locations", self._locations)
        r.add("GET", "/instances", self._list)
        r.add("POST", "/instances", self._create)
        r.add("GET", "/instances/{id}", self._get)
        r.add("DELETE", "/instances/{id}", self._delete)
        r.add("POST", "/instances/{id}/stop", self._stop)
        r.add("POST", "/instances/{id}/start", self._start)

    # -- knobs ------------------------------------------------------------------------------------------------

    def add_location(self, city: str = "Manassas", stateprovince: str = "Virginia", country: str = "United States",
                     tier: int = 3, gpus: list[dict[str, Any]] | None = None, id: str | None = None) -> str:
        location_id = id or str(uuid.uuid4())
        gpus = gpus if gpus is not None else [td_gpu()]
        self.locations.append({"id": location_id, "city": city, "stateprovince": stateprovince, "country": country,
                               "tier": tier, "gpus": gpus})
        for gpu in gpus:
            self.capacity[(location_id, gpu["v0Name"])] = gpu["max_count"]
        return location_id

    def sell_out(self, location_id: str, v0_name: str) -> None:
        """The location keeps listing the GPU (that is what makes inventory stale) but cannot rent it."""
        self.capacity[(location_id, v0_name)] = 0

    def gpu(self, location_id: str, v0_name: str) -> dict[str, Any] | None:
        for loc in self.locations:
            if loc["id"] == location_id:
                return next((g for g in loc["gpus"] if g["v0Name"] == v0_name), None)
        return None

    def add_instance(self, name: str, status: str = "running") -> FakeInstance:
        """An instance created outside Gantry."""
        n = self.next_id()
        inst = FakeInstance(id=str(uuid.uuid4()), provider=self.provider, label=name, offer_id="", status=status,
                            ssh_user="user", ssh_host=f"203.0.113.{n % 250 + 1}", ssh_port=22,
                            public_ip=f"203.0.113.{n % 250 + 1}")
        self.instances[inst.id] = inst
        return inst

    @staticmethod
    def rate(gpu: dict[str, Any], resources: dict[str, Any]) -> float:
        """Hourly price of what a create rents: GPUs + vCPU + RAM + disk at the location's unit prices."""
        unit = gpu["pricing"]
        count = sum(int(g.get("count", 0)) for g in resources["gpus"].values())
        return round(count * gpu["price_per_hr"] + resources["vcpu_count"] * unit["per_vcpu_hr"]
                     + resources["ram_gb"] * unit["per_gb_ram_hr"]
                     + resources["storage_gb"] * unit["per_gb_storage_hr"], 6)

    # -- protocol ---------------------------------------------------------------------------------------------

    def authorized(self, request: Request) -> Response | None:
        if request.path == "/locations":
            if request.query.get("api_key") == self.auth_id and request.query.get("api_token") == self.api_token:
                return None
            return Response(401, {"status": 401, "error": f"Invalid credentials (api_key={request.query.get('api_key')}"
                                                          f", api_token={request.query.get('api_token')})"})
        if request.headers.get("authorization") == f"Bearer {self.api_token}":
            return None
        return Response(401, {"status": 401, "error": f"Unauthorized: {request.headers.get('authorization', '')}"})

    async def _locations(self, request: Request) -> Response:
        return Response(200, {"data": {"locations": [dict(loc) for loc in self.locations]}})

    def _validate(self, body: Any) -> list[dict[str, Any]]:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or data.get("type") != "virtualmachine":
            return [{"code": "invalid_literal", "message": "Expected 'virtualmachine'", "path": ["data", "type"]}]
        a = data.get("attributes")
        if not isinstance(a, dict):
            return [{"code": "invalid_type", "message": "Required", "path": ["data", "attributes"]}]
        problems = []
        for key in ("name", "image", "location_id", "ssh_key"):
            if not isinstance(a.get(key), str) or not a.get(key):
                problems.append(_violation("Required", key, code="invalid_type"))
        if a.get("type") != "virtualmachine":
            problems.append(_violation("Expected 'virtualmachine'", "type", code="invalid_literal"))
        res = a.get("resources")
        if not isinstance(res, dict):
            return problems + [_violation("Required", "resources")]
        for key in ("vcpu_count", "ram_gb", "storage_gb"):
            if not isinstance(res.get(key), int) or res[key] <= 0:
                problems.append(_violation("Expected a positive integer", "resources", key))
        gpus = res.get("gpus")
        if not isinstance(gpus, dict) or not gpus or not all(
                isinstance(v, dict) and isinstance(v.get("count"), int) and v["count"] > 0 for v in gpus.values()):
            problems.append(_violation("Expected {<gpu>: {count: n}}", "resources", "gpus"))
        return problems

    async def _create(self, request: Request) -> Response:
        body = request.json()
        problems = self._validate(body)
        if problems:
            return Response(400, problems)
        a = body["data"]["attributes"]
        res = a["resources"]
        v0, want = next(iter(res["gpus"].items()))
        gpu = self.gpu(a["location_id"], v0)
        left = self.capacity.get((a["location_id"], v0), 0)
        if gpu is None or left < want["count"]:
            return Response(*self.sold_out_reply)
        limits = gpu["resources"]
        if res["vcpu_count"] > limits["max_vcpus"] or res["ram_gb"] > limits["max_ram_gb"] \
                or res["storage_gb"] > limits["max_storage_gb"]:
            return Response(400, [_violation("Requested resources exceed the node's limits", "resources")])
        self.capacity[(a["location_id"], v0)] = left - want["count"]
        n = self.next_id()
        keys = installed_keys((a.get("cloud_init") or {}).get("runcmd"))
        dedicated = bool(a.get("useDedicatedIp")) and gpu["network_features"].get("dedicated_ip_available", False)
        if dedicated:
            ip, ports = f"203.0.113.{n % 250 + 1}", {}
        else:
            ip, ports = self.shared_ip, {22: 20000 + n}
            if a["location_id"] not in self.ignores_port_forwards:
                for fwd in a.get("port_forwards") or []:
                    ports[int(fwd["internal_port"])] = int(fwd["external_port"])
        inst = FakeInstance(id=str(uuid.uuid4()), provider=self.provider, label=a["name"],
                            offer_id=f"{a['location_id']}-{v0}", status=self.starting_status, ssh_user="user",
                            ssh_host=ip, ssh_port=ports.get(22, 22), authorized_keys=keys["user"],
                            keys_by_user=keys, price_per_hour=self.rate(gpu, res), body=body, ports=ports,
                            public_ip=ip, extra={"ssh_key_field": a["ssh_key"], "dedicated_ip": dedicated,
                                   "location_id": a["location_id"], "v0Name": v0, "gpus": want["count"]})
        await self._created(inst)
        if inst.extra.get("ssh_from_hook"):
            inst.public_ip = inst.ssh_host
            inst.ports[22] = inst.ssh_port
        return Response(200, {"data": {"type": "virtualmachine", "id": inst.id, "name": inst.label,
                                       "status": inst.status}})

    def render(self, inst: FakeInstance) -> dict[str, Any]:
        return {"type": "virtualmachine", "id": inst.id, "name": inst.label, "status": inst.status,
                "ipAddress": inst.public_ip,
                "portForwards": [{"internal_port": i, "external_port": e} for i, e in inst.ports.items()],
                "rateHourly": inst.price_per_hour}

    async def _list(self, request: Request) -> Response:
        items = [self.render(i) for i in self._listed()]
        return Response(200, {"data": items} if self.list_shape == "flat" else {"data": {"instances": items}})

    async def _get(self, request: Request) -> Response:
        inst = self.instances.get(request.params["id"])
        if inst is None:
            body = {"status": 404, "error": "Instance not found"}
            return Response(200, body) if self.gone_reply == "200" else Response(404, body)
        self._polled(inst)
        return Response(200, self.render(inst))

    async def _delete(self, request: Request) -> Response:
        inst = await self._deleted(request.params["id"])
        if inst is None:
            return Response(404, {"status": 404, "error": "Instance not found"})
        slot = (inst.extra.get("location_id"), inst.extra.get("v0Name"))
        if slot in self.capacity:
            self.capacity[slot] += inst.extra.get("gpus", 1)
        return Response(200, {"status": "success", "message": "Instance deleted"})

    async def _stop(self, request: Request) -> Response:
        inst = self.instances.get(request.params["id"])
        if inst is None:
            return Response(404, {"status": 404, "error": "Instance not found"})
        inst.status = "stopped"
        return Response(200, {"status": "success"})

    async def _start(self, request: Request) -> Response:
        inst = self.instances.get(request.params["id"])
        if inst is None:
            return Response(404, {"status": 404, "error": "Instance not found"})
        inst.status = "running"
        return Response(200, {"status": "success"})
