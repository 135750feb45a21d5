"""The `simulated` provider: the whole broker flow on a laptop, with machines that are real SSH servers.

Offers are synthetic and deterministic (``simulated_offer_count`` of them over RTX 4090, A100, H100 and L4).
Creating an instance reserves a loopback port and an instance directory; the instance reports STARTING (and
refuses connections, like a booting machine) until ``simulated_boot_seconds`` have passed on the injected clock,
then RUNNING on ``127.0.0.1:<port>`` with an `SshHost` behind it, so ``ssh -i key -p PORT root@127.0.0.1`` and the
broker's ``echo ok`` check really log in. Time only moves with the clock: an instance boots when it is next looked
at (get/list) after its boot time, so tests drive it with a `ManualClock` and never sleep. In entrypoint mode
each exposed port (default 8000) gets a `HealthServer` answering ``GET /health`` 200, reported in ``ports``.

Security: the simulated host runs the consumer's commands as the Gantry process's own OS user, on loopback only,
with key-only authentication and a scrubbed environment (see `simulated_host`). It is a development provider and
runs only when configured: it is the sole provider of the embedded default (``GANTRY_BROKER_PROVIDERS`` unset) and
must not be listed on a shared server.

State lives in this object: `aclose` leaves instances running, as a real cloud would, so a broker restarted in the
same process finds them; a new process has none (its sessions become ghosts, the reconciler's business). The test knobs (`fail_next`, `vanish`, `make_stopped`, `set_gpu_utilization`,
`set_logins`, `delay_boot`, `sell_out`, `hide_from_listing`, `adopt_foreign`) and probes (`destroy_calls`,
`alive_instances`, `instance_state`, `instances_of_label_suffix`, `host`) let other tests provoke and observe every
provider behaviour the broker must survive.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import weakref
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Sequence

from gantry_server.clock import Clock, SystemClock
from gantry_server.config import BrokerSettings
from gantry_server.providers.base import (CreateSpec, ErrorKind, InstanceState, OfferQuery, ProviderError,
                                          ProviderInstance, ProviderOffer, ProviderTemplate)
from gantry_server.providers.simulated_host import HealthServer, SshHost

__all__ = ["SimulatedProvider", "SshHost", "HealthServer", "synthetic_offers", "OPERATIONS"]

NAME = "simulated"
ROOT_PREFIX = "gantry-simulated-"  # + the owning process id: a crashed process's folders are found and removed


def remove_stale_roots(tmp: Path | None = None) -> list[Path]:
    """Delete the work folders of simulated clouds whose process is gone (SIGKILL skips the at-exit cleanup)."""
    removed = []
    for path in Path(tmp or tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*-*"):
        pid = path.name[len(ROOT_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
DEFAULT_API_PORT = 8000  # entrypoint mode without exposed_ports
OPERATIONS = ("list_offers", "create_instance", "get_instance", "list_instances", "destroy_instance",
              "stop_instance", "list_templates")

# (gpu_type, vram_gb, price of one GPU per hour, CUDA version)
_GPUS = (("RTX 4090", 24, 0.35, 12.4), ("A100", 80, 1.19, 12.2), ("H100", 80, 2.29, 12.4), ("L4", 24, 0.29, 12.2))
_LOCATIONS = ("US-West", "US-East", "EU-Central", "Asia-East")
_GPU_COUNTS = (1, 1, 2, 4, 8)


def synthetic_offers(count: int) -> list[ProviderOffer]:
    """The same `count` offers on every call: every GPU type in every location, prices varying within +-10 %."""
    offers = []
    for i in range(count):
        gpu_type, vram, unit_price, cuda = _GPUS[i % len(_GPUS)]
        gpu_count = _GPU_COUNTS[(i // len(_GPUS)) % len(_GPU_COUNTS)]
        location = _LOCATIONS[(i + i // len(_GPUS)) % len(_LOCATIONS)]
        price = round(unit_price * gpu_count * (1 + ((i * 37) % 21 - 10) / 100), 4)
        reliability = round(0.9 + ((i * 53) % 100) / 1000, 3)
        offers.append(ProviderOffer(
            provider=NAME, provider_id=f"{1001 + i}", gpu_type=gpu_type, gpu_count=gpu_count, vram_gb=vram,
            price_per_hour=price, location=location, reliability=reliability, cuda_version=cuda,
            machine_id=f"sim-machine-{i % 7}", interruptible=False,
            host_properties={"gpu_name": gpu_type, "num_gpus": gpu_count, "gpu_ram": vram * 1024,
                             "cuda_max_good": cuda, "dph_total": price, "reliability2": reliability,
                             "geolocation": location, "disk_space": 500.0, "verified": True, "rentable": True}))
    return offers


@dataclass
class _Instance:
    instance_id: str
    spec: CreateSpec
    offer: ProviderOffer
    created_at: datetime
    boot_at: datetime
    host: SshHost
    http: dict[int, HealthServer] = field(default_factory=dict)  # exposed port -> server
    phase: str = "booting"  # booting, running, stopped, destroyed, vanished
    raw_status: str = "loading"
    message: str | None = None
    started_at: datetime | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def exists(self) -> bool:
        return self.phase not in ("destroyed", "vanished")


_STATES = {"booting": InstanceState.STARTING, "running": InstanceState.RUNNING, "stopped": InstanceState.STOPPED}


class SimulatedProvider:
    """GpuProvider "simulated" (see the module docstring).

    >>> provider = SimulatedProvider(clock=ManualClock(t0), offer_count=12, boot_seconds=30)   # doctest: +SKIP
    """

    name = NAME
    default_ssh_user = "root"
    default_disk_gb = 50
    ssh_pre_delay_seconds = 0.0
    offer_ttl_seconds = 60.0

    def __init__(self, settings: BrokerSettings | None = None, *, clock: Clock | None = None,
                 offer_count: int | None = None, boot_seconds: float | None = None,
                 work_root: Path | None = None, hidden_dirs: tuple[Path, ...] = ()) -> None:
        """`offer_count`/`boot_seconds` override `settings`; `work_root` holds the instance directories (default
        a temporary directory, removed by `shutdown` or at exit)."""
        settings = settings or BrokerSettings()
        self.clock: Clock = clock or SystemClock()
        self.boot_seconds: float = settings.simulated_boot_seconds if boot_seconds is None else boot_seconds
        count = settings.simulated_offer_count if offer_count is None else offer_count
        self._offers = {o.provider_id: o for o in synthetic_offers(count)}
        self._sold_out: set[str] = set()
        self._work_root = work_root
        self._own_root = work_root is None
        self._hidden_dirs = tuple(hidden_dirs)  # kept from every instance's shells (Gantry's data directory)
        self._instances: dict[str, _Instance] = {}
        self._hidden: dict[str, int | None] = {}  # instance id -> list calls left hidden (None: until unhidden)
        self._failures: dict[str, deque[ProviderError]] = {op: deque() for op in OPERATIONS}
        self._destroy_calls: Counter[str] = Counter()
        self._background: set[asyncio.Task[None]] = set()
        self.created_specs: list[CreateSpec] = []  # every accepted create, in order

    # -- GpuProvider -------------------------------------------------------------------------------------------

    async def list_offers(self, query: OfferQuery) -> list[ProviderOffer]:
        """Numeric filters are applied here; text filters are left to inventory (it re-applies all of them)."""
        self._maybe_fail("list_offers")
        return [o for o in self._offers.values() if o.provider_id not in self._sold_out
                and (query.min_vram is None or o.vram_gb >= query.min_vram)
                and (query.max_price is None or o.price_per_hour <= query.max_price)
                and (query.min_reliability is None or o.reliability >= query.min_reliability)
                and (query.min_cuda is None or (o.cuda_version or 0) >= query.min_cuda)]

    async def create_instance(self, spec: CreateSpec) -> ProviderInstance:
        self._maybe_fail("create_instance")
        offer = self._offers.get(spec.offer.provider_id)
        if offer is None or offer.provider_id in self._sold_out:
            raise ProviderError(ErrorKind.STALE_INVENTORY, NAME, "create_instance",
                                f"offer {spec.offer.provider_id} is no longer available")
        if not spec.ssh_public_keys:
            raise ProviderError(ErrorKind.INVALID, NAME, "create_instance", "no SSH public key given")
        inst = self._launch(spec, offer, "create_instance")
        self.created_specs.append(spec)
        await self._tick(inst, "create_instance")
        return self._view(inst)

    async def get_instance(self, instance_id: str) -> ProviderInstance:
        self._maybe_fail("get_instance")
        inst = self._instances.get(instance_id)
        if inst is None:  # made by a process that is gone (a crash, a restart): its servers died with it
            return ProviderInstance(provider=NAME, instance_id=instance_id, label=None, state=InstanceState.GONE,
                                    message="no such instance (lost with the process that simulated it)",
                                    offer_at_fault=False)
        if not inst.exists:
            return ProviderInstance(provider=NAME, instance_id=instance_id, label=None, state=InstanceState.GONE,
                                    message="no such instance")
        await self._tick(inst, "get_instance")
        return self._view(inst)

    async def list_instances(self) -> list[ProviderInstance]:
        self._maybe_fail("list_instances")
        out = []
        for inst in list(self._instances.values()):
            if not inst.exists:
                continue
            if inst.instance_id in self._hidden:
                left = self._hidden[inst.instance_id]
                if left is None or left > 0:
                    if left is not None:
                        self._hidden[inst.instance_id] = left - 1
                    continue
                del self._hidden[inst.instance_id]
            await self._tick(inst, "list_instances")
            out.append(self._view(inst))
        return out

    async def destroy_instance(self, instance_id: str) -> None:
        self._destroy_calls[instance_id] += 1
        self._maybe_fail("destroy_instance")
        inst = self._instances.get(instance_id)
        if inst is None or not inst.exists:
            return
        async with inst.lock:
            await self._power_off(inst)
            inst.phase, inst.raw_status = "destroyed", "destroyed"
        await asyncio.to_thread(shutil.rmtree, inst.host.workdir, True)

    async def stop_instance(self, instance_id: str) -> None:
        """Compute ends (SSH and API stop, every process is killed); the directory, the disk, is kept."""
        self._maybe_fail("stop_instance")
        inst = self._instances.get(instance_id)
        if inst is None or not inst.exists:
            raise ProviderError(ErrorKind.GONE, NAME, "stop_instance", f"instance {instance_id} does not exist")
        async with inst.lock:
            if inst.phase != "stopped":
                await self._power_off(inst)
                inst.phase, inst.raw_status, inst.message = "stopped", "stopped", None

    async def list_templates(self) -> list[ProviderTemplate]:
        self._maybe_fail("list_templates")
        return []

    async def aclose(self) -> None:
        """Close the client, not the cloud: as on a real provider, instances outlive it (shutdown policy "keep",
        a restarted broker finds them). They die with the process; `shutdown` ends them earlier."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def shutdown(self) -> None:
        """The whole simulated cloud goes away: every server stops and a temporary work root is deleted (test
        teardown). Instances keep their last state."""
        await self.aclose()
        for inst in self._instances.values():
            async with inst.lock:
                await self._power_off(inst)
        if self._own_root and self._work_root is not None:
            await asyncio.to_thread(shutil.rmtree, self._work_root, True)
            self._work_root = None

    # -- test knobs: provoking provider behaviour ------------------------------------------------------------

    def fail_next(self, operation: str, kind: ErrorKind = ErrorKind.TRANSIENT, *, times: int = 1,
                  detail: str | None = None, status: int | None = None) -> None:
        """The next `times` calls of `operation` (one of OPERATIONS) raise ProviderError(kind) and do nothing."""
        if operation not in self._failures:
            raise ValueError(f"unknown operation {operation!r}: one of {', '.join(OPERATIONS)}")
        error = ProviderError(kind, NAME, operation, detail or f"injected {kind.value} failure", status=status)
        self._failures[operation].extend([error] * times)

    def fail_next_create(self, kind: ErrorKind = ErrorKind.STALE_INVENTORY, *, times: int = 1) -> None:
        self.fail_next("create_instance", kind, times=times)

    def sell_out(self, provider_id: str, sold_out: bool = True) -> None:
        """The offer leaves the listing and creating from it raises STALE_INVENTORY (until sold_out=False)."""
        (self._sold_out.add if sold_out else self._sold_out.discard)(provider_id)

    def vanish(self, instance_id: str) -> asyncio.Task[None]:
        """The provider forgets the instance behind Gantry's back: at once GONE and unlisted; its servers stop in
        the returned task (await it to be sure the port refuses)."""
        inst = self._instance(instance_id)
        inst.phase = "vanished"
        return self._power_off_later(inst)

    def make_stopped(self, instance_id: str, raw_status: str = "exited",
                     message: str | None = None) -> asyncio.Task[None]:
        """The instance stops by itself (crash, OOM kill, host maintenance): at once STOPPED with that raw
        status; its servers stop in the returned task."""
        inst = self._instance(instance_id)
        inst.phase, inst.raw_status, inst.message = "stopped", raw_status, message
        return self._power_off_later(inst)

    def delay_boot(self, instance_id: str, seconds: float = 0, **delta: float) -> None:
        """Push the boot time later: ``delay_boot(id, 90)`` or ``delay_boot(id, hours=1)``."""
        self._instance(instance_id).boot_at += timedelta(seconds=seconds, **delta)

    def hide_from_listing(self, instance_id: str, calls: int | None = None) -> None:
        """Provider listing lag: list_instances omits the instance for the next `calls` calls (None: until
        ``calls=0``), while get_instance still finds it."""
        if calls == 0:
            self._hidden.pop(instance_id, None)
        else:
            self._hidden[instance_id] = calls

    async def adopt_foreign(self, label: str | None) -> str:
        """An instance on the account that this process did not create (another deployment's, one whose create
        response was lost, a user's own box): running at once, accepting no key. Returns its id."""
        offer = next(iter(self._offers.values()))
        spec = CreateSpec(offer=offer, label=label or "", ssh_public_keys=(), disk_gb=self.default_disk_gb)
        inst = self._launch(spec, offer, "adopt_foreign", boot_seconds=0)
        await self._tick(inst, "adopt_foreign")
        return inst.instance_id

    def set_gpu_utilization(self, instance_id: str, percent: float | Sequence[float]) -> None:
        self._instance(instance_id).host.set_gpu_utilization(percent)

    def set_logins(self, instance_id: str, count: int) -> None:
        """Interactive logins the idle probe sees, without anyone logging in."""
        self._instance(instance_id).host.simulated_logins = count

    # -- test knobs: looking ---------------------------------------------------------------------------------

    def destroy_calls(self, instance_id: str | None = None) -> int:
        """destroy_instance calls for that instance (failed and repeated ones included), or for all."""
        return self._destroy_calls[instance_id] if instance_id is not None else sum(self._destroy_calls.values())

    def alive_instances(self) -> list[str]:
        """Ids of instances that still exist on the "provider" (booting, running or stopped): orphans live here."""
        return [i.instance_id for i in self._instances.values() if i.exists]

    def instance_state(self, instance_id: str) -> InstanceState:
        """The state as the provider holds it now (no boot is triggered); GONE for unknown ids. A str enum, so
        ``== "stopped"`` works."""
        inst = self._instances.get(instance_id)
        return _STATES[inst.phase] if inst is not None and inst.exists else InstanceState.GONE

    def instances_of_label_suffix(self, suffix: str) -> str:
        """The id of the newest instance whose label ends with `suffix` (a session id); KeyError if none."""
        for inst in reversed(list(self._instances.values())):
            if inst.spec.label.endswith(suffix):
                return inst.instance_id
        raise KeyError(f"no simulated instance labelled *{suffix}")

    def host(self, instance_id: str) -> SshHost:
        return self._instance(instance_id).host

    # -- internals ---------------------------------------------------------------------------------------------

    def _instance(self, instance_id: str) -> _Instance:
        try:
            return self._instances[instance_id]
        except KeyError:
            raise KeyError(f"no simulated instance {instance_id!r}") from None

    def _maybe_fail(self, operation: str) -> None:
        if self._failures[operation]:
            raise self._failures[operation].popleft()

    def _root(self) -> Path:
        if self._work_root is None:
            remove_stale_roots()
            self._work_root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-"))
            weakref.finalize(self, shutil.rmtree, self._work_root, True)  # at exit at the latest
        return self._work_root

    def _launch(self, spec: CreateSpec, offer: ProviderOffer, operation: str,
                boot_seconds: float | None = None) -> _Instance:
        """A new instance: its directory, its (not yet listening) SSH and API ports."""
        instance_id = f"sim-{secrets.token_hex(6)}"
        workdir = self._root() / instance_id
        workdir.mkdir(parents=True)
        host = SshHost(workdir, user=self.default_ssh_user, gpu_name=offer.gpu_type, gpu_count=offer.gpu_count,
                       vram_gb=offer.vram_gb, cuda_version=str(offer.cuda_version or ""), env=spec.env,
                       hidden_dirs=self._hidden_dirs)
        try:
            host.set_authorized_keys(spec.ssh_public_keys)
        except ValueError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise ProviderError(ErrorKind.INVALID, NAME, operation, str(exc)) from None
        host.reserve()
        now = self.clock.now()
        boot = self.boot_seconds if boot_seconds is None else boot_seconds
        inst = _Instance(instance_id=instance_id, spec=spec, offer=offer, created_at=now,
                         boot_at=now + timedelta(seconds=boot), host=host)
        if spec.launch_mode == "entrypoint":
            for port in spec.exposed_ports or (DEFAULT_API_PORT,):
                inst.http[port] = HealthServer(host.host)
                inst.http[port].reserve()
        self._instances[instance_id] = inst
        return inst

    async def _tick(self, inst: _Instance, operation: str) -> None:
        """Boot a booting instance whose time has come: its SSH (and API) servers start listening."""
        if inst.phase != "booting" or self.clock.now() < inst.boot_at:
            return
        async with inst.lock:
            if inst.phase != "booting":
                return
            try:
                await inst.host.start()
                for server in inst.http.values():
                    await server.start()
            except OSError as exc:
                raise ProviderError(ErrorKind.TRANSIENT, NAME, operation, f"boot failed: {exc}") from exc
            if inst.phase == "booting":  # a knob may have vanished/stopped it meanwhile: its task powers off
                inst.phase, inst.raw_status, inst.started_at = "running", "running", inst.boot_at

    async def _power_off(self, inst: _Instance) -> None:
        await inst.host.stop()
        for server in inst.http.values():
            await server.stop()

    def _power_off_later(self, inst: _Instance) -> asyncio.Task[None]:
        async def power_off() -> None:
            async with inst.lock:
                await self._power_off(inst)

        task = asyncio.get_running_loop().create_task(power_off())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _view(self, inst: _Instance) -> ProviderInstance:
        host = inst.host
        reachable = inst.phase in ("booting", "running")  # a booting machine has its address (and refuses)
        return ProviderInstance(
            provider=NAME, instance_id=inst.instance_id, label=inst.spec.label, state=_STATES[inst.phase],
            raw_status=inst.raw_status, ssh_host=host.host if reachable else None,
            ssh_port=host.port if reachable else None, ssh_user=host.user, public_ip=host.host,
            ports={p: s.port for p, s in inst.http.items() if s.port is not None} if reachable else {},
            price_per_hour=inst.offer.price_per_hour, started_at=inst.started_at, message=inst.message)
