"""Launch configs end to end (reference §4.1, §5.3–§5.11): issue, one-time claim, proof, verification, activation.

A launch config is a ticket: `issue` writes the row and signs a launch JWT naming it. The JWT proves *which*
config a caller speaks for (the interceptor checks it); the database decides *whether* it may still be used:
`retrieved_at` is set by exactly one claim (a conditional UPDATE, committed before any other work), so a token
replayed or raced is refused however many replicas see it. Verify and activate may reuse a retrieved config.
Every failure after that one-time claim is recorded on the row (`failed_at`, `verification_error`) and frees
the GPUs (the instance is deleted, its audit row keeps the reason).

The instance's owner is told of each step (instance_created, _verified, _activated, _deleted; domain/events) in
the transaction that takes it.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from ...errors import (Conflict, FailedPrecondition, GantryError, InvalidArgument, NotFound, PermissionDenied,
                       Unauthenticated)
from ...store import redis_keys
from ...store.db import unit_of_work
from ...store.repositories.chutes import ChuteRepository
from ...store.repositories.instances import EXPIRED_PENDING, ChuteCounts, InstanceRepository
from ...store.repositories.launch_configs import MAX_JOB_RACERS, LaunchConfigRepository
from ...store.repositories.metagraph import MetagraphRepository
from ...store.repositories.servers import ServerRepository
from .. import events, graval
from ..miner.reference import job_disk_gb
from ..attestation import RUNTIME, AttestationFailure
from . import gpus as gpu_models
from . import runtime_integrity as rint
from . import scaling
from .runtime_integrity import version_at_least
from .secrets import rint_session_key_context, symmetric_key_context

log = logging.getLogger(__name__)

RINT_NONCE_TTL = 7200
ACTIVATION_DEADLINE = timedelta(hours=3, minutes=30)
GRAVAL_DEADLINE_FACTOR = 2.15
DEFAULT_SHUTDOWN_AFTER = 300
CONSTANT_SECRETS = {"PYTHONDONTWRITEBYTECODE": "1", "SGLANG_DISABLE_CUDNN_CHECK": "1"}
LOCKED, GONE = 423, 410


@dataclass
class ClaimArgs:
    """The body of a claim (LaunchConfigArgs), shape already checked by the service."""
    gpus: list[dict[str, Any]]
    host: str
    port_mappings: list[dict[str, Any]]
    rint_commitment: str | None = None
    rint_nonce: str | None = None
    rint_pubkey: str | None = None
    tls_cert: str | None = None
    tls_cert_sig: str | None = None
    e2e_pubkey: str | None = None
    deployment_id: str | None = None
    egress: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GravalClaim:
    seed: int
    iterations: int
    job_id: str | None
    ciphertext: str
    gpu_uuid: str
    response_plaintext: str
    validator_pubkey: str | None


@dataclass(frozen=True)
class TeeClaim:
    symmetric_key: str
    validator_pubkey: str | None


@dataclass(frozen=True)
class Verified:
    chute_id: str
    instance_id: str
    verified_at: datetime
    activation_url: str
    secrets: dict[str, str]
    code: str | None = None
    fs_key: str | None = None
    efs: bool | None = None
    job_id: str | None = None
    job_method: str | None = None
    job_data: dict | None = None


class ClaimRefused(Exception):
    """A claim or verification failed after the one-time claim: the config is marked failed with `error`'s
    message, the instance (if any) deleted with it, then `error` is answered."""

    def __init__(self, error: GantryError, *, delete_instance: str | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.delete_instance = delete_instance


def _locked(message: str, reason: str) -> GantryError:
    return FailedPrecondition(message, reason=reason, http_status=LOCKED)


def instance_deleted_event(instance, reason: str) -> events.Event:
    """The instance_deleted event of a deleted instance (a row with instance_id, chute_id, miner_hotkey,
    config_id, as InstanceRepository.delete answers it)."""
    return events.instance_deleted(chute_id=instance["chute_id"], miner_hotkey=instance["miner_hotkey"],
                                   instance_id=instance["instance_id"], config_id=instance["config_id"],
                                   reason=reason)


class Launcher:
    def __init__(self, rt, *, attestation_kit=None, evidence_client=None,
                 work_verifier: graval.WorkVerifier | None = None) -> None:
        self.rt = rt
        self.cfg = rt.settings.launch
        self.kit = attestation_kit
        self.evidence = evidence_client
        self.work_verifier = work_verifier or graval.ReferenceWorkVerifier()
        self._rng = random.SystemRandom()

    # -- helpers -------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.cfg.base_url or f"http://{self.rt.settings.http_addr}"

    def config_url(self, config_id: str) -> str:
        return f"{self.base_url}/instances/launch_config/{config_id}"

    def _now(self) -> datetime:
        return self.rt.clock.now()

    async def _miner(self, conn, hotkey: str):
        node = await MetagraphRepository(conn).get(hotkey)
        if node is None or node["netuid"] != self.rt.settings.netuid:
            raise NotFound(f"Hotkey {hotkey} is not registered on netuid {self.rt.settings.netuid}",
                           reason="MINER_NOT_FOUND")
        if node["blacklist_reason"]:
            raise PermissionDenied(f"Your hotkey has been blacklisted: {node['blacklist_reason']}",
                                   reason="HOTKEY_BLACKLISTED")
        return node

    async def _target(self, chute) -> int | None:
        return await scaling.target(self.rt.redis, chute)

    async def _gate(self, chute, counts: ChuteCounts, *, activation: bool = False) -> None:
        """Scaling gates (reference §4.8): 423 when the chute has the instances it needs."""
        target = await self._target(chute)
        if scaling.at_capacity(chute, counts, target, activation=activation):
            raise _locked(f"Chute {chute['chute_id']} is at capacity ({counts.active} active instances, target "
                          f"{target}); try another chute", "CHUTE_AT_CAPACITY")

    # -- issue: GET /instances/launch_config ----------------------------------------------------------------
    async def issue(self, *, hotkey: str, chute_id: str, job_id: str | None) -> tuple[str, str]:
        now = self._now()
        config_id = str(uuid.uuid4())
        async with unit_of_work(self.rt.engine) as conn:
            miner = await self._miner(conn, hotkey)
            chutes = ChuteRepository(conn)
            chute = await chutes.get_chute(chute_id)
            if chute is None:
                raise NotFound(f"Chute {chute_id} not found", reason="CHUTE_NOT_FOUND")
            if (chute["node_selector"] or {}).get("compute_type") == "cpu":
                raise FailedPrecondition(f"Chute {chute_id} is a CPU chute: CPU chutes are scheduled by the "
                                         "validator, not launched by miners", reason="CPU_CHUTE")
            if chute["disabled"]:
                raise _locked(f"Chute {chute_id} is disabled", "CHUTE_DISABLED")
            if job_id is None:
                await self._gate(chute, await InstanceRepository(conn).counts(chute_id, hotkey))
            if chute["tee"] and version_at_least(chute["chutes_version"], "0.6.0"):
                old = [name for name, version in await LaunchConfigRepository(conn).boot_versions(hotkey)
                       if not version_at_least(version, "0.2.1")]
                if old:
                    raise FailedPrecondition(
                        f"TEE chutes need VM measurement version >= 0.2.1; upgrade these servers: {', '.join(old)}",
                        reason="VM_TOO_OLD", metadata={"servers": ",".join(old)})
            job = None
            if job_id is not None:
                job = await chutes.get_job(job_id)
                outcome = await LaunchConfigRepository(conn).join_job_race(job_id, chute_id, hotkey)
                if outcome == "missing" or job is None:
                    raise NotFound(f"Job {job_id} not found for chute {chute_id}", reason="JOB_NOT_FOUND")
                if outcome == "locked":
                    raise _locked(f"Job {job_id} already has {MAX_JOB_RACERS} miners racing for it", "JOB_LOCKED")
                if outcome == "repeat":
                    raise PermissionDenied(f"Your hotkey already tried job {job_id}; each miner gets one attempt",
                                           reason="JOB_ALREADY_ATTEMPTED")
            nonce = secrets.token_hex(16) if version_at_least(chute["chutes_version"], "0.4.9") else None
            try:
                async with conn.begin_nested():
                    await LaunchConfigRepository(conn).create(dict(
                        config_id=config_id, chute_id=chute_id, job_id=job_id, env_key=secrets.token_hex(16),
                        env_type="tee" if chute["tee"] else "graval", seed=0, miner_uid=miner["node_id"],
                        miner_hotkey=hotkey, miner_coldkey=miner["coldkey"], nonce=nonce, created_at=now))
            except IntegrityError:
                raise Conflict(f"Job {job_id} already has a live launch config", reason="LAUNCH_CONFIG_CONFLICT") \
                    from None
            config = await LaunchConfigRepository(conn).get(config_id)
        if nonce is not None:
            await self.rt.redis.set(redis_keys.rint_nonce(config_id), nonce, ex=RINT_NONCE_TTL)
        disk_gb = job_disk_gb(job["job_args"]) if job else None
        token = self.rt.launch_keys.issue(
            config_id=config_id, chute_id=chute_id, url=self.config_url(config_id), env_key=config["env_key"],
            egress=bool(chute["allow_external_egress"]), lock_modules=self._lock_modules(chute),
            env_type=config["env_type"], now=int(now.timestamp()), job_id=job_id,
            disk_gb=disk_gb)
        return token, config_id

    @staticmethod
    def _lock_modules(chute) -> bool:
        if chute["standard_template"]:
            return True
        return bool(chute["lock_modules"])

    # -- GET /instances/launch_config/{id}/nonce ------------------------------------------------------------
    async def rint_nonce(self, config_id: str) -> str:
        async with self.rt.engine.connect() as conn:
            if await LaunchConfigRepository(conn).get(config_id) is None:
                raise NotFound(f"Launch config {config_id} not found", reason="LAUNCH_CONFIG_NOT_FOUND")
        nonce = await self.rt.redis.getdel(redis_keys.rint_nonce(config_id))
        if nonce is None:
            raise NotFound(f"Runtime integrity nonce for {config_id} not found or already consumed",
                           reason="RINT_NONCE_CONSUMED")
        return nonce.decode() if isinstance(nonce, bytes) else nonce

    # -- the one-time claim -----------------------------------------------------------------------------------
    async def load(self, config_id: str, *, allow_retrieved: bool):
        """The config the launch JWT names, with its first use recorded (reference load_launch_config_from_jwt).
        Only verify and activate may come back to a retrieved config."""
        async with unit_of_work(self.rt.engine) as conn:
            repo = LaunchConfigRepository(conn)
            row = await repo.retrieve_once(config_id, self._now())
            if row is not None:
                return row
            row = await repo.get(config_id)
        if row is None:
            raise Unauthenticated(f"Missing or invalid launch config JWT: launch config {config_id} does not exist",
                                  reason="LAUNCH_CONFIG_NOT_FOUND")
        if not allow_retrieved:
            raise Unauthenticated(f"Launch config {config_id} has already been retrieved: a launch token claims "
                                  "once; ask for a new launch config", reason="LAUNCH_CONFIG_RETRIEVED")
        return row

    async def _refuse(self, config_id: str, refused: ClaimRefused) -> GantryError:
        now = self._now()
        async with unit_of_work(self.rt.engine) as conn:
            await LaunchConfigRepository(conn).mark_failed(config_id, now, refused.error.message)
            if refused.delete_instance:
                gone = await InstanceRepository(conn).delete(refused.delete_instance, now, refused.error.message)
                if gone is not None:
                    await events.publish(conn, instance_deleted_event(gone, refused.error.message), now=now)
        return refused.error

    # -- claims ---------------------------------------------------------------------------------------------
    async def claim_graval(self, config_id: str, args: ClaimArgs, *, caller_ip: str) -> GravalClaim:
        config = await self.load(config_id, allow_retrieved=False)
        try:
            instance, chute, node_rows, validator_pubkey = await self._claim(config, args, tee=False,
                                                                             caller_ip=caller_ip)
            node = self._rng.choice(node_rows)
            params = self._params(node)
            seed = graval.new_seed()
            symmetric_key = self.rt.keyring.decrypt(instance["symmetric_key_enc"],
                                                    context=symmetric_key_context(instance["instance_id"]))
            ciphertext = graval.seal_symmetric_key(symmetric_key, env_key=config["env_key"], config_id=config_id,
                                                   seed=seed, gpu_uuid=node["uuid"])
            async with unit_of_work(self.rt.engine) as conn:
                await LaunchConfigRepository(conn).restart_window(config_id, self._now(), seed)
        except ClaimRefused as refused:
            raise await self._refuse(config_id, refused) from None
        return GravalClaim(seed=seed, iterations=params.iterations, job_id=config["job_id"], ciphertext=ciphertext,
                           gpu_uuid=node["uuid"], response_plaintext=graval.response_plaintext(config_id, seed),
                           validator_pubkey=validator_pubkey)

    async def claim_tee(self, config_id: str, args: ClaimArgs, *, caller_ip: str, nonce: str,
                        gpu_evidence: list[dict] | None = None) -> TeeClaim:
        """With `gpu_evidence`: the legacy /attest claim (TEE VMs < 0.2.0, attested at boot; domain/launch/
        legacy_attest.py): the body's GPU evidence is verified against the nonce and no quote is pulled."""
        config = await self.load(config_id, allow_retrieved=False)
        try:
            instance, chute, node_rows, validator_pubkey = await self._claim(config, args, tee=True,
                                                                             caller_ip=caller_ip)
            if gpu_evidence is None:
                await self._attest_deployment(instance, chute, args, nonce)
            else:
                await self._attest_gpus(instance, chute, args, nonce, gpu_evidence)
        except ClaimRefused as refused:
            raise await self._refuse(config_id, refused) from None
        symmetric_key = self.rt.keyring.decrypt(instance["symmetric_key_enc"],
                                                context=symmetric_key_context(instance["instance_id"]))
        return TeeClaim(symmetric_key=symmetric_key.hex(), validator_pubkey=validator_pubkey)

    def _params(self, node) -> graval.GravalParams:
        return graval.params_for(node["gpu_identifier"], int(node["memory"]), matrix_n=self.cfg.graval_matrix_n)

    async def _claim(self, config, args: ClaimArgs, *, tee: bool, caller_ip: str):
        """Shared claim validation (reference §5.7.1) and the instance row; ClaimRefused on any refusal."""
        config_id, hotkey = config["config_id"], config["miner_hotkey"]
        now = self._now()
        instance_id = str(uuid.uuid4())
        try:
            async with unit_of_work(self.rt.engine) as conn:
                chute = await ChuteRepository(conn).get_chute(config["chute_id"])
                if chute is None:
                    raise NotFound(f"Chute {config['chute_id']} not found", reason="CHUTE_NOT_FOUND")
                if tee and not chute["tee"]:
                    raise InvalidArgument(f"Chute {chute['chute_id']} is not a TEE chute: claim it through "
                                          f"/instances/launch_config/{config_id}/graval", reason="NOT_TEE_CHUTE")
                if not tee and chute["tee"]:
                    raise InvalidArgument(f"Chute {chute['chute_id']} is a TEE chute: claim it through "
                                          f"/instances/launch_config/{config_id}/tee", reason="TEE_CHUTE")
                if chute["disabled"]:
                    raise _locked(f"Chute {chute['chute_id']} is disabled", "CHUTE_DISABLED")
                miner = await self._miner(conn, hotkey)
                instances = InstanceRepository(conn)
                job_id = config["job_id"]
                if job_id is None:
                    await self._gate(chute, await instances.counts(chute["chute_id"], hotkey))
                if caller_ip != args.host:
                    if job_id is not None:
                        raise InvalidArgument(f"host {args.host} is not the address this claim came from "
                                              f"({caller_ip}); job instances must claim from their own host",
                                              reason="EGRESS_MISMATCH")
                    log.info("claim of %s from %s for host %s", config_id, caller_ip, args.host)
                if await instances.host_used_by_other_miner(args.host, hotkey):
                    raise InvalidArgument(f"host {args.host} already serves an instance of another miner",
                                          reason="HOST_TAKEN")
                cacert, rint_session_key, validator_pubkey = self._runtime_integrity(chute, config, args)
                if job_id is not None and not await LaunchConfigRepository(conn).claim_job(
                        job_id, uid=miner["node_id"], hotkey=hotkey, coldkey=miner["coldkey"]):
                    raise Conflict(f"Job {job_id} was claimed by another miner", reason="JOB_TAKEN")
                node_rows = await self._check_nodes(conn, chute, hotkey, args, tee=tee)
                job = await ChuteRepository(conn).get_job(job_id) if job_id else None
                row = self._instance_row(instance_id, chute, config, miner, args, node_rows, job, now)
                row["cacert"] = cacert
                if rint_session_key is not None:
                    row["rint_session_key_enc"] = self.rt.keyring.encrypt(
                        rint_session_key, context=rint_session_key_context(instance_id))
                async with conn.begin_nested():
                    await instances.create(row, [n["uuid"] for n in node_rows])
                if job_id is not None:
                    self._check_job_ports(job, args.port_mappings)
                    if not await LaunchConfigRepository(conn).attach_job(job_id, instance_id, args.port_mappings):
                        raise NotFound(f"Job {job_id} no longer exists", reason="JOB_NOT_FOUND")
                instance = await instances.get(instance_id)
                await events.publish(conn, events.instance_created(
                    chute_id=chute["chute_id"], gpu_count=len(node_rows), gpu_model_name=node_rows[0]["name"],
                    miner_hotkey=hotkey, instance_id=instance_id, config_id=config_id), now=now)
        except IntegrityError:
            raise ClaimRefused(Conflict("a GPU, or the host and port, of this claim was taken by another instance "
                                        "at the same moment", reason="NODE_TAKEN")) from None
        except GantryError as error:
            raise ClaimRefused(error) from None
        except rint.RintRejected as exc:
            raise ClaimRefused(PermissionDenied(f"Runtime integrity check failed: {exc}",
                                                reason="RUNTIME_INTEGRITY")) from None
        return instance, chute, node_rows, validator_pubkey

    def _runtime_integrity(self, chute, config, args: ClaimArgs) -> tuple[str | None, bytes | None, str | None]:
        """Reference §5.7.1 rows g, j, o, p, each from the chute SDK version that introduced it."""
        version = chute["chutes_version"]
        launch_nonce = config["nonce"]
        if not version_at_least(version, "0.4.9"):
            return None, None, None
        if not launch_nonce or not args.rint_nonce:
            raise PermissionDenied("rint_nonce is required: fetch it once from "
                                   f"/instances/launch_config/{config['config_id']}/nonce", reason="RINT_NONCE_MISSING")
        if not secrets.compare_digest(args.rint_nonce, launch_nonce):
            raise PermissionDenied("rint_nonce is not the runtime integrity nonce of this launch config",
                                   reason="RINT_NONCE_MISMATCH")
        commitment = None
        if version_at_least(version, "0.5.0"):
            if not args.rint_commitment:
                raise PermissionDenied("rint_commitment is required for chutes >= 0.5.0", reason="RINT_COMMITMENT")
            commitment = rint.parse_commitment(args.rint_commitment)
            rint.verify_commitment(commitment, launch_nonce)
        cacert = None
        if version_at_least(version, "0.5.5"):
            if commitment is None or commitment.version != 4:
                raise PermissionDenied("chutes >= 0.5.5 need a v4 rint_commitment", reason="RINT_COMMITMENT")
            if not args.tls_cert or not args.tls_cert_sig:
                raise PermissionDenied("tls_cert and tls_cert_sig are required for chutes >= 0.5.5",
                                       reason="TLS_CERT_MISSING")
            cacert = rint.verify_tls_binding(commitment, args.tls_cert, args.tls_cert_sig, launch_nonce)
        if version_at_least(version, "0.5.1") and not args.rint_pubkey:
            raise InvalidArgument("rint_pubkey is required for chutes >= 0.5.1", reason="RINT_PUBKEY_MISSING",
                                  metadata={"field": "rint_pubkey"})
        if args.rint_pubkey and commitment is not None:
            key, validator_pubkey = rint.derive_session_key(rint.session_scheme(version), args.rint_pubkey,
                                                            launch_nonce)
            return cacert, key, validator_pubkey
        return cacert, None, None

    async def _check_nodes(self, conn, chute, hotkey: str, args: ClaimArgs, *, tee: bool) -> list[dict]:
        """Reference §5.7.1 row n: the claimed GPUs exist, are the miner's, verified, free and suitable."""
        uuids = [str(g.get("uuid", "")) for g in args.gpus]
        if len(set(uuids)) != len(uuids):
            raise InvalidArgument("gpus: the same GPU uuid is listed twice", reason="INVALID_NODES")
        selector = chute["node_selector"] or {}
        want = int(selector.get("gpu_count", 1))
        if len(uuids) != want:
            raise InvalidArgument(f"gpus: chute {chute['chute_id']} needs {want} GPU(s), the claim lists "
                                  f"{len(uuids)}", reason="INVALID_NODES")
        now = self._now()
        for gone in await InstanceRepository(conn).expire_pending(uuids, now - ACTIVATION_DEADLINE, now):
            await events.publish(conn, instance_deleted_event(gone, EXPIRED_PENDING), now=now)
        found = await InstanceRepository(conn).candidate_nodes(uuids)
        include = {g.lower() for g in selector.get("include") or []}
        exclude = {g.lower() for g in selector.get("exclude") or []}
        min_vram = int(selector.get("min_vram_gb_per_gpu") or 0) * 1024 ** 3
        rows = []
        for uuid_ in uuids:
            node = found.get(uuid_)
            if node is None or node["miner_hotkey"] != hotkey:
                raise NotFound(f"GPU {uuid_} is not one of your registered GPUs", reason="NODE_NOT_FOUND")
            if node["verified_at"] is None:
                raise InvalidArgument(f"GPU {uuid_} is not verified", reason="NODE_NOT_VERIFIED")
            if node["assigned"]:
                raise Conflict(f"GPU {uuid_} already serves another instance", reason="NODE_TAKEN")
            model = node["gpu_identifier"].lower()
            if (gpu_models.model(model) is None or (include and model not in include) or model in exclude
                    or node["memory"] < min_vram):
                raise InvalidArgument(f"GPU {uuid_} ({model}) does not suit chute {chute['chute_id']}'s node "
                                      "selector", reason="NODE_UNSUITABLE")
            if node["verification_host"] != args.host:
                raise InvalidArgument(f"GPU {uuid_} is verified at {node['verification_host']}, not at the "
                                      f"instance host {args.host}", reason="NODE_HOST_MISMATCH")
            rows.append(node)
        if tee:
            server_ids = {n["server_id"] for n in rows}
            if len(server_ids) != 1:
                raise InvalidArgument("gpus: a TEE instance runs on the GPUs of one server; these are on "
                                      f"{len(server_ids)}", reason="INVALID_NODES")
            server = await ServerRepository(conn).get(server_ids.pop())
            if server is None:
                raise NotFound("the server of these GPUs is not registered", reason="SERVER_NOT_FOUND")
            if server["maintenance_pending_window_id"]:
                raise Conflict(f"server {server['name']} is pending maintenance", reason="SERVER_MAINTENANCE")
            if version_at_least(chute["chutes_version"], "0.6.0") and not version_at_least(server["version"], "0.2.0"):
                raise InvalidArgument(f"server {server['name']} runs VM measurement version {server['version']}; "
                                      "this chute needs >= 0.2.0", reason="VM_TOO_OLD")
            for node in rows:
                node["server_ip"] = server["ip"]
        return rows

    @staticmethod
    def _check_job_ports(job, port_mappings: list[dict]) -> None:
        declared = {(str(p.get("proto", "tcp")).lower(), int(p["port"])) for p in job["ports"] or []}
        posted = {(m["proto"], m["internal_port"]) for m in port_mappings if m["internal_port"] not in (8000, 8001)}
        if declared != posted:
            raise PermissionDenied(f"port_mappings must map exactly the job's ports "
                                   f"{sorted(f'{p}:{n}' for p, n in declared)} besides 8000 and 8001",
                                   reason="JOB_PORTS_MISMATCH")

    def _instance_row(self, instance_id: str, chute, config, miner, args: ClaimArgs, node_rows, job, now) -> dict:
        private = not chute["public"] or job is not None
        multiplier, warmup, hourly_rate = compute_multiplier(chute, node_rows, private=private, job=job)
        symmetric_key = secrets.token_bytes(16)
        extra = {k: v for k, v in {"e2e_pubkey": args.e2e_pubkey}.items() if v}
        return dict(
            instance_id=instance_id, chute_id=chute["chute_id"], version=chute["version"],
            chutes_version=chute["chutes_version"], config_id=config["config_id"], host=args.host,
            port=args.port_mappings[0]["external_port"], port_mappings=args.port_mappings,
            miner_uid=miner["node_id"], miner_hotkey=config["miner_hotkey"], miner_coldkey=miner["coldkey"],
            region="n/a", active=False, verified=False, created_at=now,
            billed_to=chute["user_id"] if private else None, stop_billing_at=None, hourly_rate=hourly_rate,
            compute_multiplier=multiplier, warmup_compute_multiplier=warmup, bounty=False,
            symmetric_key_enc=self.rt.keyring.encrypt(symmetric_key, context=symmetric_key_context(instance_id)),
            rint_commitment=args.rint_commitment, rint_nonce=args.rint_nonce, rint_pubkey=args.rint_pubkey,
            extra=extra)

    async def _attest_deployment(self, instance, chute, args: ClaimArgs, nonce: str) -> None:
        """Pull the deployment's quote and GPU evidence from its server and verify them (reference §4.4)."""
        nodes = await self._instance_nodes(instance["instance_id"])
        async with self.rt.engine.connect() as conn:
            server = await ServerRepository(conn).get(nodes[0]["server_id"])
        expected = self._report_data(chute, nonce, args)
        try:
            evidence = await self.evidence.fetch(host=server["ip"], deployment_id=args.deployment_id or "")
            attested = await self.kit.attestor.attest(evidence.quote_b64, kind=RUNTIME, nonce=expected,
                                                      entries=await self.kit.entries(), now=self._now(),
                                                      bind_client_cert=False)
            await self.kit.gpu_verifier.verify(evidence=evidence.gpu_evidence, nonce=expected, gpus=[
                {"uuid": n["uuid"], "gpu_identifier": n["gpu_identifier"], "name": n["name"]} for n in nodes])
        except AttestationFailure as failure:
            raise ClaimRefused(TeeAttestationRefused(failure), delete_instance=instance["instance_id"]) from None
        async with unit_of_work(self.rt.engine) as conn:
            await InstanceRepository(conn).set_fields(
                instance["instance_id"], deployment_id=args.deployment_id,
                extra={**(instance["extra"] or {}), "measurement_version": attested.entry.version})

    @staticmethod
    def _report_data(chute, nonce: str, args: ClaimArgs) -> str:
        """What the TEE evidence of a claim must bind: the nonce, or for chutes >= 0.6.0 sha256(nonce + e2e_pubkey)."""
        return tee_report_data(nonce, args.e2e_pubkey) if version_at_least(chute["chutes_version"], "0.6.0") else nonce

    async def _attest_gpus(self, instance, chute, args: ClaimArgs, nonce: str, gpu_evidence: list[dict]) -> None:
        """Verify GPU evidence the miner posted (legacy /attest) with the same verifier as the proxy's evidence."""
        nodes = await self._instance_nodes(instance["instance_id"])
        expected = self._report_data(chute, nonce, args)
        try:
            await self.kit.gpu_verifier.verify(evidence=json.dumps(gpu_evidence), nonce=expected, gpus=[
                {"uuid": n["uuid"], "gpu_identifier": n["gpu_identifier"], "name": n["name"]} for n in nodes])
        except AttestationFailure as failure:
            raise ClaimRefused(TeeAttestationRefused(failure), delete_instance=instance["instance_id"]) from None
        async with unit_of_work(self.rt.engine) as conn:
            await InstanceRepository(conn).set_fields(
                instance["instance_id"], extra={**(instance["extra"] or {}), "gpu_evidence_verified": True})

    async def _instance_nodes(self, instance_id: str) -> list:
        async with self.rt.engine.connect() as conn:
            return await InstanceRepository(conn).nodes_of(instance_id)

    # -- verification ----------------------------------------------------------------------------------------
    async def _verifiable(self, config_id: str):
        config = await self.load(config_id, allow_retrieved=True)
        if config["verified_at"] is not None:
            raise FailedPrecondition(f"Launch config {config_id} is already verified", reason="ALREADY_VERIFIED")
        if config["failed_at"] is not None:
            raise PermissionDenied(f"Launch config {config_id} failed: {config['verification_error']}",
                                   reason="LAUNCH_CONFIG_FAILED")
        async with self.rt.engine.connect() as conn:
            instance = await InstanceRepository(conn).by_config(config_id)
        if instance is None:
            raise await self._refuse(config_id, ClaimRefused(NotFound("Instance was deleted",
                                                                      reason="INSTANCE_NOT_FOUND")))
        return config, instance

    async def verify_graval(self, config_id: str, *, response: str, iv: str | None,
                            proofs: dict[str, str]) -> Verified:
        config, instance = await self._verifiable(config_id)
        iid = instance["instance_id"]
        try:
            if instance["server_id"]:
                raise ClaimRefused(InvalidArgument("CPU-TEE instances verify through /tee", reason="CPU_TEE"))
            nodes = await self._instance_nodes(iid)
            elapsed = (self._now() - config["retrieved_at"]).total_seconds()
            limit = max(self._params(n).estimate_seconds for n in nodes) * GRAVAL_DEADLINE_FACTOR
            if elapsed >= limit:
                raise ClaimRefused(PermissionDenied(
                    f"Graval proof arrived {elapsed:.0f} s after the challenge; the limit for these GPUs is "
                    f"{limit:.0f} s", reason="GRAVAL_TOO_SLOW"), delete_instance=iid)
            symmetric_key = self.rt.keyring.decrypt(instance["symmetric_key_enc"],
                                                    context=symmetric_key_context(iid))
            try:
                graval.check_response(response, iv, symmetric_key, config_id, config["seed"])
                # The reference checks one random GPU; checking a work product costs milliseconds, so every GPU's
                # is checked (off the event loop: up to ~0.5 s of CPU each at full size).
                for node in nodes:
                    if node["uuid"] not in proofs:
                        raise graval.WorkRejected("PROOF_MISSING", f"proof has no work product for GPU {node['uuid']}")
                    await asyncio.to_thread(self.work_verifier.verify_work, proofs[node["uuid"]],
                                            seed=config["seed"], gpu_uuid=node["uuid"], params=self._params(node))
            except graval.WorkRejected as exc:
                raise ClaimRefused(PermissionDenied(f"Graval verification failed: {exc}", reason=exc.reason),
                                   delete_instance=iid) from None
        except ClaimRefused as refused:
            raise await self._refuse(config_id, refused) from None
        return await self._mark_verified(config, instance)

    async def verify_tee(self, config_id: str) -> Verified:
        config, instance = await self._verifiable(config_id)
        if instance["server_id"]:
            raise await self._refuse(config_id, ClaimRefused(PermissionDenied(
                "CPU-TEE instances are not supported by this validator", reason="CPU_TEE")))
        if not instance["deployment_id"] and not (instance["extra"] or {}).get("gpu_evidence_verified"):
            raise await self._refuse(config_id, ClaimRefused(PermissionDenied(
                "the instance's TEE attestation did not complete", reason="TEE_NOT_ATTESTED"),
                delete_instance=instance["instance_id"]))
        return await self._mark_verified(config, instance)

    async def _mark_verified(self, config, instance) -> Verified:
        now = self._now()
        async with unit_of_work(self.rt.engine) as conn:
            if not await LaunchConfigRepository(conn).mark_verified(config["config_id"], now):
                raise FailedPrecondition(f"Launch config {config['config_id']} was verified or failed meanwhile",
                                         reason="ALREADY_VERIFIED")
            await InstanceRepository(conn).mark_verified(instance["instance_id"], now)
            await events.publish(conn, events.instance_verified(instance_id=instance["instance_id"],
                                                           miner_hotkey=instance["miner_hotkey"]), now=now)
            job = None
            if config["job_id"]:
                await LaunchConfigRepository(conn).start_job(config["job_id"], now)
                job = await ChuteRepository(conn).get_job(config["job_id"])
            chute = await ChuteRepository(conn).get_chute(config["chute_id"])
        return self._verified_payload(config, instance, chute, job, now)

    def _verified_payload(self, config, instance, chute, job, now) -> Verified:
        modern = version_at_least(chute["chutes_version"], "0.3.61")
        return Verified(
            chute_id=chute["chute_id"], instance_id=instance["instance_id"], verified_at=now,
            activation_url=f"{self.config_url(config['config_id'])}/activate", secrets=dict(CONSTANT_SECRETS),
            code=chute["code"] if modern else None,
            fs_key=self.rt.launch_keys.fs_key(chute_id=chute["chute_id"], config_id=config["config_id"],
                                              now=int(now.timestamp())) if modern else None,
            efs=True if chute["encrypted_fs"] else None,
            job_id=job["job_id"] if job else None, job_method=job["method"] if job else None,
            job_data=job["job_args"] if job else None)

    # -- activation ----------------------------------------------------------------------------------------
    async def activate(self, config_id: str) -> None:
        config = await self.load(config_id, allow_retrieved=True)
        if config["verified_at"] is None:
            raise PermissionDenied("Launch config has not been verified.", reason="NOT_VERIFIED")
        refusal: GantryError | None = None
        async with unit_of_work(self.rt.engine) as conn:
            instance = await InstanceRepository(conn).by_config(config_id, for_update=True)
            if instance is None:
                raise NotFound(f"The instance of launch config {config_id} no longer exists",
                               reason="INSTANCE_NOT_FOUND")
            if instance["active"]:
                return
            refusal = await self.switch_on(conn, instance, gate=config["job_id"] is None)
        if refusal is not None:
            raise refusal

    async def switch_on(self, conn, instance, *, gate: bool) -> GantryError | None:
        """Activate a verified `instance` (row locked FOR UPDATE in `conn`'s transaction): billing, audit, compute
        history and instance_activated. Too late (3.5 h after creation) or, when `gate`, the chute at capacity:
        the instance is deleted (instance_deleted) and the refusal answered for the caller to raise after commit.
        Shared by the launch-config activation and the legacy PATCH (domain/launch/legacy.py)."""
        now = self._now()
        instances = InstanceRepository(conn)
        chute = await ChuteRepository(conn).get_chute(instance["chute_id"])
        refusal: GantryError | None = None
        if now - instance["created_at"] > ACTIVATION_DEADLINE:
            refusal = FailedPrecondition(
                f"Instance {instance['instance_id']} took more than 3.5 h from claim to activation and was "
                "removed; launch again", reason="ACTIVATION_TOO_LATE", http_status=GONE)
        elif gate:
            try:
                await self._gate(chute, await instances.counts(chute["chute_id"], instance["miner_hotkey"]),
                                 activation=True)
            except GantryError as error:
                refusal = error
        if refusal is not None:
            gone = await instances.delete(instance["instance_id"], now, refusal.message)
            await events.publish(conn, instance_deleted_event(gone, refusal.message), now=now)
            return refusal
        stop_billing_at = None
        if instance["billed_to"] is not None:
            stop_billing_at = now + timedelta(seconds=chute["shutdown_after_seconds"] or DEFAULT_SHUTDOWN_AFTER)
        await instances.activate(instance["instance_id"], now, stop_billing_at=stop_billing_at,
                                 warmup_multiplier=instance["warmup_compute_multiplier"],
                                 created_at=instance["created_at"],
                                 compute_multiplier=instance["compute_multiplier"] or 0.0)
        await events.publish(conn, events.instance_activated(
            chute_id=instance["chute_id"], miner_hotkey=instance["miner_hotkey"],
            instance_id=instance["instance_id"], config_id=instance["config_id"]), now=now)
        return None


class TeeAttestationRefused(PermissionDenied):
    """A TEE claim's evidence did not verify; carries the attestation failure for the service to report."""

    def __init__(self, failure: AttestationFailure) -> None:
        super().__init__(f"TEE attestation failed: {failure.message}", reason=failure.reason,
                         metadata=failure.metadata)
        self.failure = failure


def tee_report_data(nonce: str, e2e_pubkey: str | None) -> str:
    """What a TEE chute >= 0.6.0 binds in its quote's report data: sha256_hex(nonce + e2e_pubkey)."""
    return hashlib.sha256((nonce + (e2e_pubkey or "")).encode()).hexdigest()


def starting_multiplier(chute, gpu_count: int, *, private: bool, job) -> tuple[float, float, float]:
    """(multiplier, warmup multiplier, base) a new instance of `chute` on `gpu_count` GPUs starts from (reference
    §4.9 steps 1-6: before GPU re-pricing and any bounty). Miner rows show it as effective_compute_multiplier."""
    supported = gpu_models.supported(chute["node_selector"])
    base = gpu_count * min((gpu_models.compute_multiplier(m.identifier) for m in supported), default=1.0)
    value = base
    if private:
        value *= 1.3 if chute["tee"] else 2.0
    if job is not None and job["compute_multiplier"]:
        value = job["compute_multiplier"]
    warmup = value
    boost = chute["boost"]
    if not private and boost is not None and 0 < boost <= 20:
        value *= boost
    if chute["tee"]:
        value *= 2.25
        warmup *= 2.25
    return value, warmup, base


def compute_multiplier(chute, node_rows, *, private: bool, job) -> tuple[float, float, float]:
    """(multiplier, warmup multiplier, hourly rate) of a new instance (reference §4.9 steps 1–7; no bounty yet)."""
    gpu_count = len(node_rows)
    value, warmup, base = starting_multiplier(chute, gpu_count, private=private, job=job)
    actual = node_rows[0]["gpu_identifier"].lower()
    if base > 0:
        reprice = gpu_count * gpu_models.compute_multiplier(actual) / base
        value *= reprice
        warmup *= reprice
    model = gpu_models.model(actual)
    hourly_rate = (model.hourly_rate if model else 0.0) * gpu_count
    return value, warmup, hourly_rate
