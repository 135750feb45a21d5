"""Seed 002's legacy instances (reference §5.18; miner-contract A14, A15): a miner names its GPUs, host and port
and gets an instance without a launch config, then PATCHes `{"active": true}` to activate it.

The checks and the rows are the launcher's (domain/launch/launcher.py), not a copy: miner registration, the chute's
gates, GPU ownership, verification, suitability and freedom, the instance row and its audit row, activation with
billing and compute history. What differs, and why:

- Only chutes a stock miner still launches this way: chutes_version < 0.3.0 (its activator skips newer ones) and
  never TEE chutes. A newer chute launched here would skip the runtime-integrity and attestation checks its launch
  config enforces, so it is refused (FAILED_PRECONDITION, LEGACY_LAUNCH_REFUSED).
- The host must be a public address (the reference's `is_valid_host`), unless the deployment allows private hosts
  (GANTRY_TDX_ATTESTATION_ALLOW_PRIVATE_HOSTS, the same switch as for attestation pulls).
- No `instance_created` event: that event announces a launch-config instance (it names the config_id the miner's
  agent waits on); the legacy caller has the instance in the 202 answer already. Deletions on the way (expired
  pending instances freeing a GPU, an activation refused) publish `instance_deleted` as everywhere else.
- Verification. The reference activates at once and queues a Graval `verify_instance` task that challenges the
  GPUs through the miner's verification endpoint. Gantry has no such task (Graval proofs come only through launch
  configs), so nothing about a legacy instance is verified: activation answers `verified: false` and leaves the
  instance inactive; unactivated, it expires 3.5 h after creation like any pending instance. Should anything mark a
  legacy instance verified, the PATCH activates it through `Launcher.switch_on` (gates, audit, compute history,
  instance_activated).
"""
from __future__ import annotations

import asyncio
import ipaddress
import uuid
from typing import Any

from sqlalchemy.exc import IntegrityError

from ...errors import Conflict, FailedPrecondition, GantryError, InvalidArgument, NotFound
from ...store.db import unit_of_work
from ...store.repositories.chutes import ChuteRepository
from ...store.repositories.instances import InstanceRepository
from .launcher import ClaimArgs, Launcher, _locked
from .runtime_integrity import version_at_least

LEGACY_BEFORE = "0.3.0"
RESOLVE_TIMEOUT = 5.0


async def check_public_host(host: str, *, allow_private: bool) -> None:
    """The reference's is_valid_host: an address, or a name resolving only to addresses, that is public."""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, None), RESOLVE_TIMEOUT)
        except (OSError, TimeoutError, UnicodeError):
            raise InvalidArgument.field("host", f"{host!r} does not resolve", reason="INVALID_HOST") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if allow_private:
        return
    for address in addresses:
        if not address.is_global or address.is_multicast:
            raise InvalidArgument.field("host", f"{host!r} is {address}, not a public address",
                                        reason="INVALID_HOST")


def legacy_version(chutes_version: str | None) -> bool:
    """A chute SDK version a stock miner still launches the legacy way: none recorded, or a parsable one < 0.3.0
    (an unparsable one is refused rather than guessed at)."""
    if chutes_version is None:
        return True
    return version_at_least(chutes_version, "0") and not version_at_least(chutes_version, LEGACY_BEFORE)


class LegacyInstances:
    """POST /instances/{chute_id}/ and PATCH /instances/{chute_id}/{instance_id} over one Launcher."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.rt = launcher.rt

    async def create(self, *, hotkey: str, chute_id: str, node_ids: list[str], host: str, port: int):
        """The new instance row (inactive, unverified) and its GPU uuids."""
        if len(set(node_ids)) != len(node_ids):
            raise InvalidArgument.field("node_ids", "the same GPU uuid is listed twice", reason="INVALID_NODES")
        await check_public_host(host, allow_private=self.rt.settings.attestation.attestation_allow_private_hosts)
        now = self.rt.clock.now()
        instance_id = str(uuid.uuid4())
        args = ClaimArgs(gpus=[{"uuid": n} for n in node_ids], host=host,
                         port_mappings=[{"proto": "tcp", "internal_port": 8000, "external_port": port}])
        try:
            async with unit_of_work(self.rt.engine) as conn:
                chute = await ChuteRepository(conn).get_chute(chute_id)
                if chute is None:
                    raise NotFound(f"Chute {chute_id} not found", reason="CHUTE_NOT_FOUND")
                if chute["tee"] or not legacy_version(chute["chutes_version"]):
                    raise FailedPrecondition(
                        f"Chute {chute_id} (chutes {chute['chutes_version']}{', TEE' if chute['tee'] else ''}) "
                        "launches through /instances/launch_config, not the legacy create",
                        reason="LEGACY_LAUNCH_REFUSED")
                if chute["disabled"]:
                    raise _locked(f"Chute {chute_id} is disabled", "CHUTE_DISABLED")
                want = int((chute["node_selector"] or {}).get("gpu_count", 1))
                if len(node_ids) != want:
                    raise InvalidArgument.field("node_ids", f"chute {chute_id} needs {want} GPU(s), the request "
                                                f"lists {len(node_ids)}", reason="INVALID_NODES")
                miner = await self.launcher._miner(conn, hotkey)
                instances = InstanceRepository(conn)
                await self.launcher._gate(chute, await instances.counts(chute_id, hotkey))
                if await instances.host_used_by_other_miner(host, hotkey):
                    raise InvalidArgument(f"host {host} already serves an instance of another miner",
                                          reason="HOST_TAKEN")
                node_rows = await self.launcher._check_nodes(conn, chute, hotkey, args, tee=False)
                row = self.launcher._instance_row(instance_id, chute, {"config_id": None, "miner_hotkey": hotkey},
                                                  miner, args, node_rows, None, now)
                async with conn.begin_nested():
                    await instances.create(row, [n["uuid"] for n in node_rows])
                return await instances.get(instance_id), [n["uuid"] for n in node_rows]
        except IntegrityError:
            raise Conflict("a GPU, or the host and port, of this instance was taken by another instance at the "
                           "same moment", reason="NODE_TAKEN") from None

    async def activate(self, *, hotkey: str, chute_id: str, instance_id: str) -> tuple[Any, list[str]]:
        """The caller's instance after the PATCH: active only if verified (see the module docstring)."""
        refusal: GantryError | None = None
        async with unit_of_work(self.rt.engine) as conn:
            instances = InstanceRepository(conn)
            instance = await instances.get(instance_id, for_update=True)
            if instance is None or instance["miner_hotkey"] != hotkey or instance["chute_id"] != chute_id:
                raise NotFound(f"Instance {instance_id} of chute {chute_id} not found", reason="INSTANCE_NOT_FOUND")
            if instance["config_id"] is not None:
                raise FailedPrecondition(
                    f"Instance {instance_id} was launched from launch config {instance['config_id']}: activate it "
                    f"at {self.launcher.config_url(instance['config_id'])}/activate",
                    reason="LAUNCH_CONFIG_INSTANCE")
            if instance["verified"] and not instance["active"]:
                refusal = await self.launcher.switch_on(conn, instance, gate=True)
        if refusal is not None:
            raise refusal
        async with self.rt.engine.connect() as conn:
            instances = InstanceRepository(conn)
            return await instances.get(instance_id), await instances.node_ids(instance_id)
