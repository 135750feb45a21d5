"""What every fake provider shares: instances, call records, injected failures, hooks, and the server.

State is plain Python, read and changed by tests directly (`fake.instances`, `fake.fail_next(...)`), and served
over real HTTP by `FakeHttpServer`. A fake instance can be backed by a real SSH server: set `on_instance_created`
to a coroutine that starts one and returns its (host, port), which the fake then reports as the instance's SSH
endpoint; `on_keys_changed` is awaited after keys were added later (Vast's attach call), `on_instance_destroyed`
when the instance is deleted or vanishes. `SshHostPool` (ssh_hosts.py) wires all three to real SSH servers. Hooks
run in the loop that serves the fake (the test's loop with `start()`, the server thread's with `start_thread()`).
"""
from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .asgi import AsgiApp, FakeHttpServer, Request, Response, Router


@dataclass
class FakeInstance:
    """One instance as the provider holds it. `status` is the provider's own word ("loading", "running", ...)."""

    id: str
    provider: str
    label: str  # Vast label / TensorDock name
    offer_id: str  # Vast bundle id / "<location id>-<v0Name>"
    status: str
    ssh_user: str
    ssh_host: str | None = None
    ssh_port: int | None = None
    # Keys the instance would really accept for ssh_user (Vast: create key + attached keys; TensorDock: only keys
    # the cloud-init runcmd installs). A live list: attached keys are appended.
    authorized_keys: list[str] = field(default_factory=list)
    keys_by_user: dict[str, list[str]] = field(default_factory=dict)
    price_per_hour: float = 0.0
    created_at: float = field(default_factory=time.time)
    body: dict[str, Any] = field(default_factory=dict)  # the create request body as received
    polls_until_running: int = 0  # status reads still answering the starting status
    auto_boot: bool = True  # False once a test set the status by hand: it stays until changed
    hidden_from_list: int = 0  # list calls still leaving it out (listing lag)
    ports: dict[int, int] = field(default_factory=dict)  # internal port -> external port
    public_ip: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Hook = Callable[[FakeInstance], Awaitable[Any]]


@dataclass
class Recorded:
    route: str  # "GET /instances/{id}/"
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


@dataclass
class _Injection:
    route: str | None
    status: int
    body: Any
    remaining: int


class FakeProvider:
    """Base of the Vast.ai and TensorDock fakes: subclasses register routes and implement auth."""

    provider = ""
    prefix = ""
    starting_status = "starting"

    def __init__(self) -> None:
        self.instances: dict[str, FakeInstance] = {}
        self.requests: list[Recorded] = []
        self.calls: Counter[str] = Counter()  # route name -> requests received (including rejected ones)
        self.delete_calls: Counter[str] = Counter()  # instance id -> DELETE requests (incl. for a gone instance)
        self.destroyed: list[str] = []  # instance ids in the order they were deleted
        self.boot_polls = 1  # status reads that still answer the starting status before "running"
        self.listing_lag = 0  # list calls a new instance stays out of the listing
        self.on_instance_created: Hook | None = None  # -> (ssh_host, ssh_port) | None
        self.on_instance_destroyed: Hook | None = None
        self.on_keys_changed: Hook | None = None  # after keys were added to a live instance (Vast attach)
        self._injections: list[_Injection] = []
        self._ids = itertools.count(1)
        self.router = Router()
        self._server = FakeHttpServer(AsgiApp(self._dispatch, prefix=self.prefix), prefix=self.prefix)

    # -- server lifecycle -------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._server.base_url

    async def start(self) -> str:
        return await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    def start_thread(self) -> str:
        return self._server.start_thread()

    def stop_thread(self) -> None:
        self._server.stop_thread()

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- knobs ------------------------------------------------------------------------------------------------

    def fail_next(self, times: int = 1, *, status: int = 500, body: Any = None, route: str | None = None) -> None:
        """Answer the next `times` requests (to `route`, e.g. "GET /bundles/", or any route) with this reply."""
        self._injections.append(_Injection(route, status, body if body is not None else {"error": "injected"},
                                           times))

    def count(self, route: str) -> int:
        return self.calls[route]

    def bodies(self, route: str) -> list[Any]:
        return [r.json for r in self.requests if r.route == route]

    @property
    def alive(self) -> set[str]:
        """Ids of instances that exist (not deleted, not vanished)."""
        return set(self.instances)

    def set_status(self, instance_id: str, status: str | None) -> None:
        """Set the provider's status word; it stays (no automatic boot) until changed again."""
        inst = self.instances[str(instance_id)]
        inst.status = status
        inst.auto_boot = False

    async def vanish(self, instance_id: str) -> None:
        """The provider loses the instance (host failure, reclaimed): gone without a DELETE."""
        inst = self.instances.pop(str(instance_id))
        if self.on_instance_destroyed is not None:
            await self.on_instance_destroyed(inst)

    # -- helpers for subclasses -------------------------------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    async def _created(self, inst: FakeInstance) -> None:
        inst.polls_until_running = self.boot_polls
        inst.hidden_from_list = self.listing_lag
        if self.on_instance_created is not None:
            endpoint = await self.on_instance_created(inst)
            if endpoint is not None:
                inst.ssh_host, inst.ssh_port = endpoint[0], int(endpoint[1])
                inst.extra["ssh_from_hook"] = True
        self.instances[inst.id] = inst

    async def _deleted(self, instance_id: str) -> FakeInstance | None:
        self.delete_calls[instance_id] += 1
        inst = self.instances.pop(instance_id, None)
        if inst is not None:
            self.destroyed.append(instance_id)
            if self.on_instance_destroyed is not None:
                await self.on_instance_destroyed(inst)
        return inst

    def _polled(self, inst: FakeInstance) -> None:
        """A status read: a starting instance becomes running after `boot_polls` reads."""
        if inst.auto_boot and inst.status == self.starting_status:
            if inst.polls_until_running <= 0:
                inst.status = "running"
            else:
                inst.polls_until_running -= 1

    def _listed(self) -> list[FakeInstance]:
        out = []
        for inst in self.instances.values():
            if inst.hidden_from_list > 0:
                inst.hidden_from_list -= 1
            else:
                out.append(inst)
        return out

    def authorized(self, request: Request) -> Response | None:
        """None when the request carries the right credentials for its route, else the 401 to send."""
        raise NotImplementedError

    async def _dispatch(self, request: Request) -> Response:
        found = self.router.match(request.method, request.path)
        route = found[0] if found else f"{request.method} {request.path}"
        self.calls[route] += 1
        self.requests.append(Recorded(route, request.method, request.path, request.query, request.headers,
                                      request.json()))
        if found is None:
            return Response(404, "404 page not found")
        denied = self.authorized(request)
        if denied is not None:
            return denied
        for inj in self._injections:
            if inj.remaining > 0 and (inj.route is None or inj.route == route):
                inj.remaining -= 1
                return Response(inj.status, inj.body)
        request.params = found[2]
        return await found[1](request)
