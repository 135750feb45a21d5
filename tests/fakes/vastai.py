"""A Vast.ai API server for tests, speaking the real wire format (domain-broker Part 2 §2.2, §9.5).

    fake = FakeVastAi(api_key="vast-test-key")
    await fake.start()                      # or fake.start_thread(); base_url ends in /api/v0 like the real one
    bundle = fake.add_offer(gpu_name="RTX 4090", dph_total=0.42)
    provider = VastAiProvider(api_key="vast-test-key", base_url=fake.base_url)
    ...
    await fake.stop()

Reproduced quirks: Bearer auth (401 otherwise); `GET /bundles/?q=<json>` applying eq/neq/gt/gte/lt/lte/in/notin;
`PUT /asks/{id}/` answering `{"success": true|false, "new_contract": id}` (`create_reply`) and 400 `no_such_ask`
for a rented or removed bundle; `GET /instances/{id}/` wrapped in `{"instances": ...}`, with `{"instances": null}`
and HTTP 200 for an unknown instance (or 404: `gone_reply`); instances `loading` until `boot_polls` status reads
have passed (or `set_status`); 404 on DELETE of a gone instance; listing lag; `rate_limit_next` (429 with the
"endpoint threshold=4.5*1.0" text) and `fail_next` for any status.
"""
from __future__ import annotations

import json
from typing import Any

from .asgi import Request, Response
from .base import FakeInstance, FakeProvider

RATE_LIMIT_BODY = {"success": False, "error": "too_many_requests",
                   "msg": "API requests too frequent endpoint threshold=4.5*1.0"}


def matches(record: dict[str, Any], conditions: dict[str, Any]) -> bool:
    """Vast's search operators over one bundle/template; a field the record lacks never matches."""
    for key, cond in conditions.items():
        if key in ("type", "order", "limit", "allocated_storage", "external"):
            continue
        if not isinstance(cond, dict):
            cond = {"eq": cond}
        if key not in record:
            return False
        value = record[key]
        for op, want in cond.items():
            try:
                ok = {"eq": lambda: value == want, "neq": lambda: value != want, "gt": lambda: value > want,
                      "gte": lambda: value >= want, "lt": lambda: value < want, "lte": lambda: value <= want,
                      "in": lambda: value in want, "notin": lambda: value not in want}[op]()
            except (KeyError, TypeError):
                return False
            if not ok:
                return False
    return True


class FakeVastAi(FakeProvider):
    provider = "vastai"
    prefix = "/api/v0"
    starting_status = "loading"

    def __init__(self, api_key: str = "vast-test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.offers: dict[int, dict[str, Any]] = {}
        self.templates: list[dict[str, Any]] = []
        self.credit = 100.0
        self.create_reply = "success"  # "success" | "success_false" (still rented) | "no_contract" (nothing rented)
        self.gone_reply = "null"  # unknown instance on GET: "null" -> 200 {"instances": null}; "404" -> HTTP 404
        self.ssh_proxy_host = "ssh5.vast.ai"
        self._bundle_ids = iter(range(10001, 10**9))
        r = self.router
        r.add("GET", "/bundles/", self._bundles)
        r.add("PUT", "/asks/{id}/", self._create)
        r.add("GET", "/instances/", self._list)
        r.add("GET", "/instances/{id}/", self._get)
        r.add("PUT", "/instances/{id}/", self._change)
        r.add("DELETE", "/instances/{id}/", self._delete)
        r.add("POST", "/instances/{id}/ssh/", self._attach_key)
        r.add("GET", "/template/", self._templates)
        r.add("GET", "/users/current/", self._user)

    # -- knobs ------------------------------------------------------------------------------------------------

    def add_offer(self, **fields: Any) -> int:
        """A rentable bundle with realistic defaults; returns its id."""
        bundle_id = int(fields.pop("id", None) or next(self._bundle_ids))
        bundle = {"id": bundle_id, "ask_contract_id": bundle_id, "machine_id": 5000 + bundle_id % 1000,
                  "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.40, "min_bid": 0.0,
                  "reliability2": 0.99, "geolocation": "Texas, US", "rentable": True, "rented": False,
                  "cuda_max_good": 12.4, "compute_cap": 890, "cpu_arch": "amd64", "disk_space": 250.0,
                  "verified": True, "static_ip": False, "driver_version": "550.54.14", "inet_down": 900.0,
                  "inet_up": 800.0, "cpu_cores_effective": 16.0}
        bundle.update(fields)
        bundle.setdefault("gpu_total_ram", bundle["gpu_ram"] * bundle["num_gpus"])
        self.offers[bundle_id] = bundle
        return bundle_id

    def remove_offer(self, bundle_id: int) -> None:
        self.offers.pop(int(bundle_id), None)

    def add_template(self, hash_id: str, name: str = "template", image: str = "vastai/base-image",
                     extra_filters: dict | str | None = None, recommended: bool = True, **fields: Any) -> dict:
        template = {"id": len(self.templates) + 1, "hash_id": hash_id, "name": name, "image": image, "tag": "latest",
                    "env": "", "onstart": "", "runtype": "ssh_proxy", "use_ssh": True, "ssh_direct": False,
                    "recommended": recommended, "recommended_disk_space": 32,
                    "extra_filters": (extra_filters if isinstance(extra_filters, str)
                                      else json.dumps(extra_filters or {})),
                    "creator_id": 62897, "created_at": 1714000000.5, "count_created": 1200}
        template.update(fields)
        self.templates.append(template)
        return template

    def add_instance(self, label: str, status: str = "running", **fields: Any) -> FakeInstance:
        """An instance created outside Gantry (another tool, another deployment)."""
        n = self.next_id()
        inst = FakeInstance(id=str(7_000_000 + n), provider=self.provider, label=label, offer_id="0", status=status,
                            ssh_user="root", ssh_host=self.ssh_proxy_host, ssh_port=20000 + n, **fields)
        self.instances[inst.id] = inst
        return inst

    def rate_limit_next(self, times: int = 1, route: str | None = None) -> None:
        self.fail_next(times, status=429, body=RATE_LIMIT_BODY, route=route)

    # -- protocol ---------------------------------------------------------------------------------------------

    def authorized(self, request: Request) -> Response | None:
        if request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        return Response(401, {"success": False, "error": "invalid_user_key",
                              "msg": f"Invalid user key: {request.headers.get('authorization', '')}"})

    async def _bundles(self, request: Request) -> Response:
        try:
            q = json.loads(request.query.get("q") or "{}")
        except ValueError:
            return Response(400, {"success": False, "error": "invalid_args", "msg": "q is not JSON"})
        if not isinstance(q, dict):
            return Response(400, {"success": False, "error": "invalid_args", "msg": "q must be an object"})
        return Response(200, {"offers": [dict(b) for b in self.offers.values() if matches(b, q)]})

    async def _create(self, request: Request) -> Response:
        body = request.json()
        bundle = self.offers.get(int(request.params["id"])) if request.params["id"].isdigit() else None
        if not isinstance(body, dict) or body.get("client_id") != "me":
            return Response(400, {"success": False, "error": "invalid_args", "msg": "client_id must be 'me'"})
        if not body.get("image") and not body.get("template_hash_id"):
            return Response(400, {"success": False, "error": "invalid_args", "msg": "image or template required"})
        if body.get("template_hash_id") and not any(t["hash_id"] == body["template_hash_id"] for t in self.templates):
            return Response(400, {"success": False, "error": "invalid_args", "msg": "template not found"})
        if bundle is None or not bundle.get("rentable") or bundle.get("rented"):
            return Response(400, {"success": False, "error": "no_such_ask",
                                  "msg": f"Instance type {request.params['id']} is no longer available."})
        if self.create_reply == "no_contract":
            return Response(200, {"success": False, "new_contract": 0, "error": "rent_failed",
                                  "msg": "could not rent this machine"})
        bundle.update(rentable=False, rented=True)
        n = self.next_id()
        ports = {}
        for key in (body.get("env") or {}):
            if key.startswith("-p "):
                internal = int(key[3:].split(":")[-1])
                ports[internal] = 40000 + n * 10 + len(ports)
        keys = [body["ssh_key"]] if body.get("ssh_key") else []
        inst = FakeInstance(id=str(7_000_000 + n), provider=self.provider, label=str(body.get("label") or ""),
                            offer_id=str(bundle["id"]), status=self.starting_status, ssh_user="root",
                            ssh_host=self.ssh_proxy_host, ssh_port=20000 + n, authorized_keys=keys,
                            price_per_hour=float(bundle["dph_total"]), body=body, ports=ports,
                            public_ip=f"203.0.113.{n % 250 + 1}")
        inst.keys_by_user = {"root": inst.authorized_keys}
        await self._created(inst)
        return Response(200, {"success": self.create_reply != "success_false", "new_contract": int(inst.id)})

    def render(self, inst: FakeInstance) -> dict[str, Any]:
        ports = {f"{internal}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(external)}]
                 for internal, external in inst.ports.items()}
        if inst.extra.get("ssh_from_hook"):
            ports["22/tcp"] = [{"HostIp": "0.0.0.0", "HostPort": str(inst.ssh_port)}]
        return {"id": int(inst.id), "label": inst.label, "actual_status": inst.status, "intended_status": "running",
                "cur_state": "running" if inst.status == "running" else "stopped", "ssh_host": inst.ssh_host,
                "ssh_port": inst.ssh_port, "public_ipaddr": inst.public_ip, "ports": ports,
                "dph_total": inst.price_per_hour, "start_date": inst.created_at, "status_msg": inst.extra.get(
                    "status_msg", ""), "image_uuid": inst.body.get("image"), "machine_id": inst.extra.get("machine_id")}

    async def _list(self, request: Request) -> Response:
        return Response(200, {"instances": [self.render(i) for i in self._listed()]})

    async def _get(self, request: Request) -> Response:
        inst = self.instances.get(request.params["id"])
        if inst is None:
            if self.gone_reply == "404":
                return Response(404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"})
            return Response(200, {"instances": None})
        self._polled(inst)
        return Response(200, {"instances": self.render(inst)})

    async def _change(self, request: Request) -> Response:
        inst = self.instances.get(request.params["id"])
        body = request.json() or {}
        if inst is None:
            return Response(404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"})
        if body.get("state") == "stopped":
            inst.status = "stopped"
        elif body.get("state") == "running":
            inst.status = "running"
        return Response(200, {"success": True})

    async def _delete(self, request: Request) -> Response:
        inst = await self._deleted(request.params["id"])
        if inst is None:
            return Response(404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"})
        if inst.offer_id.isdigit() and (bundle := self.offers.get(int(inst.offer_id))) is not None:
            bundle.update(rentable=True, rented=False)  # the machine is for rent again
        return Response(200, {"success": True})

    async def _attach_key(self, request: Request) -> Response:
        inst = self.instances.get(request.params["id"])
        key = (request.json() or {}).get("ssh_key")
        if inst is None:
            return Response(404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"})
        if not key:
            return Response(400, {"success": False, "error": "invalid_args", "msg": "ssh_key required"})
        if key not in inst.authorized_keys:
            inst.authorized_keys.append(key)
            if self.on_keys_changed is not None:
                await self.on_keys_changed(inst)
        return Response(200, {"success": True})

    async def _templates(self, request: Request) -> Response:
        try:
            filters = json.loads(request.query.get("select_filters") or "{}")
        except ValueError:
            return Response(400, {"success": False, "error": "invalid_args", "msg": "select_filters is not JSON"})
        return Response(200, {"templates": [dict(t) for t in self.templates if matches(t, filters)]})

    async def _user(self, request: Request) -> Response:
        return Response(200, {"id": 1, "email": "test@example.com", "credit": self.credit, "balance": 0.0})
