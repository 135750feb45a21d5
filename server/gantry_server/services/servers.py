"""ServerService (seed 001): TDX boot attestation and LUKS passphrases, server registration, runtime attestation.

Translation only: inputs are checked here (INVALID_ARGUMENT naming the field), the attestation itself is
`domain.attestation`, SQL is in the repositories, one transaction per unit of work. Every attestation attempt,
failed or not, leaves a row (boot_attestations / server_attestations); a refusal carries its machine reason in
ErrorInfo (`FAILURE_STATUS` maps reasons to codes) and says in words what to fix. Auth is the interceptor's
(auth_policy.py): boot and runtime attestation consume the one-time nonce before the handler runs.
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.exc import IntegrityError

from gantry.servers.v1 import servers_pb2, servers_pb2_grpc

from .. import metadata_keys as mk
from ..config import AttestationSettings, ConfigError
from ..domain.attestation import (BOOT, RUNTIME, AttestationFailure, Attestor, CommandGpuEvidenceVerifier,
                                  DcapVerifier, EvidenceClient, FileCollateral, MeasurementEntry,
                                  NoGpuEvidenceVerifier, PccsCollateral, PolicyFileError)
from ..domain.attestation import failures as f
from ..domain.attestation import measurements, passphrases
from ..domain.auth.caller import TrustedProxies, current_caller
from ..domain.auth.client_cert import client_cert
from ..domain.auth.nonces import AttestationNonces, BootTokens, NonceRejected
from ..domain.secrets_at_rest import SecretsError
from ..domain.validation import Violations, is_ss58
from ..errors import (Conflict, FailedPrecondition, GantryError, InvalidArgument, NotFound, PermissionDenied,
                      Unauthenticated, Unavailable)
from ..runtime import Runtime
from ..store.db import unit_of_work
from ..store.repositories.luks import LuksRepository
from ..store.repositories.servers import ServerRepository
from ..store.repositories.tdx import MeasurementRepository, PgCollateralStore

# Attestation failure reason -> (error class, legacy HTTP status) for boot and runtime attestation. Registration
# answers 400 for every reason but COLLATERAL_UNAVAILABLE (the reference's ServerRegistrationError).
FAILURE_STATUS: dict[str, tuple[type[GantryError], int]] = {
    f.NONCE_MISMATCH: (InvalidArgument, 400),  # the reference's NonceError
    f.CLIENT_CERT_MISSING: (Unauthenticated, 401),
    f.COLLATERAL_UNAVAILABLE: (Unavailable, 503),  # the validator's side: retry later
    f.EVIDENCE_UNAVAILABLE: (FailedPrecondition, 400),
    **{r: (PermissionDenied, 403) for r in (
        f.QUOTE_INVALID, f.SIGNATURE_INVALID, f.COLLATERAL_EXPIRED, f.TCB_STATUS, f.CLIENT_CERT_MISMATCH,
        f.MEASUREMENT_MISMATCH, f.GPU_MISMATCH, f.GPU_EVIDENCE_INVALID)},
}

_NAME = re.compile(r"^[^\x00-\x1f\x7f/]{1,255}$")  # ids, names, VM names: printable, no '/', at most 255
_DNS = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                  r"[A-Za-z0-9])?)*\.?$")


def attestation_error(failure: AttestationFailure, *, http_status: int | None = None, prefix: str = "") -> GantryError:
    cls, status = FAILURE_STATUS.get(failure.reason, (PermissionDenied, 403))
    if http_status is not None and failure.reason != f.COLLATERAL_UNAVAILABLE:
        status = http_status
    return cls(prefix + failure.message, reason=failure.reason, metadata=failure.metadata, http_status=status)


def _ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def file_measurements(settings: AttestationSettings) -> list[MeasurementEntry]:
    """Entries of GANTRY_TDX_MEASUREMENTS_FILE; a bad file stops the start with one line."""
    if settings.measurements_file is None:
        return []
    try:
        return measurements.load_file(settings.measurements_file)
    except PolicyFileError as exc:
        raise ConfigError(str(exc)) from None


def _collateral(rt: Runtime, settings: AttestationSettings):
    if settings.collateral_dir is not None:
        return FileCollateral(settings.collateral_dir)
    return PccsCollateral(settings.pccs_url, PgCollateralStore(rt.engine),
                          max_age=timedelta(seconds=settings.collateral_max_age_seconds))


def _root_ca_der(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"GANTRY_TDX_ROOT_CA_FILE {path}: not a PEM certificate ({exc})") from None


async def _resolve(host: str) -> str | None:
    """The IP a server is registered under: the host itself when it is an address, else its first DNS answer."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _DNS.match(host):
        return None
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, None), 5)
    except (OSError, TimeoutError):
        return None
    return str(infos[0][4][0]) if infos else None


class AttestationKit:
    """What every TDX check of the validator face shares (servers here, TEE instance claims in instances.py): the
    quote verifier with its collateral source, the GPU evidence verifier and the measurement sets."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        cfg: AttestationSettings = rt.settings.attestation
        self.file_entries = file_measurements(cfg)
        verifier = DcapVerifier(_collateral(rt, cfg), accepted_statuses=cfg.accepted_tcb_statuses,
                                root_ca_der=_root_ca_der(cfg.root_ca_file))
        self.attestor = Attestor(verifier, require_client_cert=cfg.client_cert_binding)
        self.gpu_verifier = (CommandGpuEvidenceVerifier(cfg.gpu_evidence_verifier) if cfg.gpu_evidence_verifier
                             else NoGpuEvidenceVerifier())

    async def entries(self) -> list[MeasurementEntry]:
        async with self.rt.engine.connect() as conn:
            stored = await MeasurementRepository(conn).all()
        return measurements.merge(self.file_entries, stored)


class ServerService(servers_pb2_grpc.ServerServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        cfg: AttestationSettings = rt.settings.attestation
        self.cfg = cfg
        kit = AttestationKit(rt)
        self.attestor, self.gpu_verifier, self._entries = kit.attestor, kit.gpu_verifier, kit.entries
        self.evidence = EvidenceClient(cfg.attestation_url, allow_private_hosts=cfg.attestation_allow_private_hosts,
                                       max_bytes=cfg.evidence_max_bytes, deadline=cfg.evidence_deadline_seconds)
        self.nonces = AttestationNonces(rt.redis, rt.clock)
        self.boot_tokens = BootTokens(rt.redis)
        self.proxies = TrustedProxies(rt.settings.trusted_proxies)

    # -- boot: nonce, attestation, LUKS ----------------------------------------------------------------------
    async def GetNonce(self, request, context):
        """Unauthenticated, so the interceptor records no caller: the IP is read as it would (trusted proxies)."""
        issued = await self.nonces.issue("boot", self.proxies.of_call(context))
        return servers_pb2.GetNonceResponse(nonce=issued.nonce, expires_at=_ts(issued.expires_at))

    async def VerifyBootAttestation(self, request, context):
        v = Violations()
        v.require(bool(request.quote.strip()), "quote", "required: the base64 TDX quote")
        v.require(is_ss58(request.miner_hotkey), "miner_hotkey", "must be an SS58 address")
        v.require(bool(_NAME.match(request.vm_name)), "vm_name", "1-255 printable characters without '/'")
        v.raise_if_any()
        key = self.cfg.luks_passphrase
        if not key:
            raise FailedPrecondition("Invalid TDX configuration: no LUKS root passphrase is configured on this "
                                     "validator (GANTRY_LUKS_PASSPHRASE)", reason="LUKS_NOT_CONFIGURED")
        caller = current_caller.get()
        now = self.rt.clock.now()
        record = dict(server_ip=caller.ip, miner_hotkey=request.miner_hotkey, vm_name=request.vm_name,
                      quote_data=request.quote, created_at=now)
        try:
            attested = await self.attestor.attest(request.quote, kind=BOOT, nonce=caller.attestation_nonce,
                                                  entries=await self._entries(), now=now,
                                                  client_cert=client_cert(context, self.proxies))
        except AttestationFailure as failure:
            async with unit_of_work(self.rt.engine) as conn:
                await ServerRepository(conn).record_boot(
                    **record, verified=False, error_reason=failure.reason, verification_error=failure.message,
                    tcb_status=failure.tcb_status, measurement_version=failure.measurement_version)
            raise attestation_error(failure) from None
        async with unit_of_work(self.rt.engine) as conn:
            await ServerRepository(conn).record_boot(
                **record, verified=True, tcb_status=attested.tcb_status,
                measurement_version=attested.entry.version, verified_at=now)
        token = await self.boot_tokens.issue(request.miner_hotkey, request.vm_name)
        return servers_pb2.VerifyBootAttestationResponse(key=key, boot_token=token)

    async def GetCacheLuksPassphrase(self, request, context):
        """The boot token was validated (not consumed) by the interceptor for this hotkey and VM name."""
        volume = passphrases.LEGACY_CACHE_VOLUME
        async with unit_of_work(self.rt.engine) as conn:
            blob = await LuksRepository(conn).ciphertext(request.hotkey, request.vm_name, volume)
        missing = NotFound(f"No cache passphrase found for VM {request.vm_name!r} of this hotkey",
                           reason="LUKS_PASSPHRASE_NOT_FOUND")
        if blob is None:
            raise missing
        try:
            secret = self.rt.keyring.decrypt(blob, context=passphrases.context(request.hotkey, request.vm_name,
                                                                               volume))
        except SecretsError:
            raise missing from None
        return servers_pb2.GetCacheLuksPassphraseResponse(passphrase=secret.decode())

    async def SyncLuksPassphrases(self, request, context):
        volumes, rekey = list(request.volumes), list(request.rekey)
        if problems := passphrases.volume_problems(volumes, rekey):  # legacy 400 with a string detail
            raise InvalidArgument("; ".join(f"{field}: {why}" for field, why in problems), reason="INVALID_VOLUMES",
                                  metadata={"field": problems[0][0]})
        caller = current_caller.get()
        hotkey, vm_name = caller.hotkey, request.vm_name
        token = dict(context.invocation_metadata() or ()).get(mk.BOOT_TOKEN, "")
        keyring = self.rt.keyring
        out: dict[str, str] = {}
        async with unit_of_work(self.rt.engine) as conn:
            repo = LuksRepository(conn)
            now = self.rt.clock.now()
            await repo.lock_vm(hotkey, vm_name, now)
            stored = await repo.ciphertexts(hotkey, vm_name)
            plan = passphrases.plan(set(stored), volumes, rekey)
            for volume in plan.reuse:
                try:
                    out[volume] = keyring.decrypt(stored[volume], context=passphrases.context(
                        hotkey, vm_name, volume)).decode()
                except SecretsError:  # never replace a key we cannot read: the disk would be lost
                    raise FailedPrecondition(
                        f"the stored passphrase of volume {volume!r} cannot be decrypted with the configured keys "
                        f"(GANTRY_KEK / GANTRY_KEK_PREVIOUS); ask for it to be rekeyed", reason="LUKS_KEY_UNREADABLE",
                        metadata={"volume": volume}) from None
            for volume in plan.create:
                secret = passphrases.new_passphrase()
                await repo.put(hotkey, vm_name, volume, keyring.encrypt(
                    secret.encode(), context=passphrases.context(hotkey, vm_name, volume)), now)
                out[volume] = secret
            await repo.prune(hotkey, vm_name, list(plan.prune))
            await repo.booted(hotkey, vm_name, now)
            try:  # inside the transaction: of two syncs with one token, only the consumer's changes commit
                await self.boot_tokens.consume(token, hotkey, vm_name)
            except NonceRejected as exc:
                raise Unauthenticated(str(exc), reason=exc.reason) from None
        return servers_pb2.SyncLuksPassphrasesResponse(passphrases={v: out[v] for v in volumes})

    # -- registration ---------------------------------------------------------------------------------------
    @staticmethod
    def _check_create(request) -> None:
        v = Violations()
        v.require(bool(request.host.strip()), "host", "required: public IP address or DNS name")
        v.require(bool(_NAME.match(request.id)), "id", "1-255 printable characters without '/'")
        if request.HasField("name"):
            v.require(bool(_NAME.match(request.name)), "name", "1-255 printable characters without '/'")
        v.require(len(request.gpus) > 0, "gpus", "at least one GPU is required")
        seen: set[str] = set()
        for i, g in enumerate(request.gpus):
            p = f"gpus[{i}]"
            v.require(bool(_NAME.match(g.uuid)), f"{p}.uuid", "required, at most 255 characters")
            v.require(g.uuid not in seen, f"{p}.uuid", "appears twice in this request")
            seen.add(g.uuid)
            v.require(bool(g.name.strip()) and len(g.name) <= 255, f"{p}.name", "required, at most 255 characters")
            v.require(bool(g.gpu_identifier.strip()) and len(g.gpu_identifier) <= 64, f"{p}.gpu_identifier",
                      "required, at most 64 characters")
            v.require(0 <= g.device_index <= 9, f"{p}.device_index", "must be 0..9")
            v.require(g.memory >= 0, f"{p}.memory", "must be >= 0")
            v.require(g.processors >= 0 and g.max_threads_per_processor >= 0, f"{p}.processors", "must be >= 0")
            v.require(g.clock_rate >= 0, f"{p}.clock_rate", "must be >= 0")
            v.require(bool(g.verification_host.strip()) and len(g.verification_host) <= 255,
                      f"{p}.verification_host", "required, at most 255 characters")
            v.require(0 <= g.verification_port <= 65535, f"{p}.verification_port", "must be 0..65535")
            v.require(not g.HasField("compute_type") or g.compute_type == "gpu", f"{p}.compute_type",
                      "only GPU servers can be registered (\"gpu\")")
        v.raise_if_any()

    async def _check_conflicts(self, hotkey: str, server_id: str, ip: str, name: str, uuids: list[str]) -> None:
        async with self.rt.engine.connect() as conn:
            repo = ServerRepository(conn)
            if taken := await repo.taken_gpus(uuids):
                raise Conflict(f"GPU(s) already registered: {', '.join(taken)}", reason="GPU_ALREADY_REGISTERED",
                               metadata={"uuids": ",".join(taken)})
            if await repo.get(server_id) is not None:
                raise Conflict(f"Server {server_id} is already registered", reason="SERVER_EXISTS")
            if (other := await repo.by_ip(ip)) is not None:
                if other["miner_hotkey"] == hotkey:
                    raise Conflict(f"You already have a server registered at {ip} ({other['name']}); remove it "
                                   f"first", reason="HOST_ALREADY_REGISTERED")
                raise Conflict(f"A server is already registered at {ip} by another miner; contact support",
                               reason="HOST_ALREADY_REGISTERED")
            if await repo.name_taken(hotkey, name):
                raise Conflict(f"You already have a server named {name!r}", reason="SERVER_NAME_TAKEN")

    async def CreateServer(self, request, context):
        self._check_create(request)
        hotkey = current_caller.get().hotkey
        ip = await _resolve(request.host.strip())
        if ip is None:
            raise InvalidArgument(f"host: {request.host!r} is not an IP address or a resolvable DNS name",
                                  reason="INVALID_HOST", metadata={"field": "host"})
        name = request.name if request.HasField("name") else request.id
        gpus = list(request.gpus)
        await self._check_conflicts(hotkey, request.id, ip, name, [g.uuid for g in gpus])

        nonce = secrets.token_hex(32)
        now = self.rt.clock.now()
        record = dict(server_id=request.id, miner_hotkey=hotkey, kind="registration", server_ip=ip, created_at=now)
        quote_b64 = None
        try:
            evidence = await self.evidence.fetch(host=ip, server_id=request.id, nonce=nonce)
            quote_b64 = evidence.quote_b64
            attested = await self.attestor.attest(quote_b64, kind=RUNTIME, nonce=nonce,
                                                  entries=await self._entries(), now=now, bind_client_cert=False)
            try:
                measurements.check_gpus(attested.entry, [g.gpu_identifier for g in gpus])
                await self.gpu_verifier.verify(evidence=evidence.gpu_evidence, nonce=nonce, gpus=[
                    {"uuid": g.uuid, "gpu_identifier": g.gpu_identifier, "name": g.name} for g in gpus])
            except AttestationFailure as failure:
                failure.tcb_status, failure.measurement_version = attested.tcb_status, attested.entry.version
                raise
        except AttestationFailure as failure:
            async with unit_of_work(self.rt.engine) as conn:
                await ServerRepository(conn).record_attestation(
                    **record, quote_data=quote_b64, verified=False, error_reason=failure.reason,
                    verification_error=failure.message, tcb_status=failure.tcb_status,
                    measurement_version=failure.measurement_version)
            raise attestation_error(failure, http_status=400, prefix="Server registration failed: ") from None

        server = dict(server_id=request.id, name=name, ip=ip, miner_hotkey=hotkey, netuid=self.rt.settings.netuid,
                      is_tee=True, compute_type="gpu", version=attested.entry.version, created_at=now)
        nodes = [dict(uuid=g.uuid, miner_hotkey=hotkey, server_id=request.id, gpu_identifier=g.gpu_identifier.lower(),
                      name=g.name, memory=g.memory, major=g.major if g.HasField("major") else None,
                      minor=g.minor if g.HasField("minor") else None, processors=g.processors,
                      sxm=g.sxm if g.HasField("sxm") else None, clock_rate=g.clock_rate,
                      max_threads_per_processor=g.max_threads_per_processor,
                      concurrent_kernels=g.concurrent_kernels if g.HasField("concurrent_kernels") else None,
                      ecc=g.ecc if g.HasField("ecc") else None, device_index=g.device_index,
                      verification_host=g.verification_host, verification_port=g.verification_port, seed=0,
                      verified_at=now, created_at=now) for g in gpus]
        try:
            async with unit_of_work(self.rt.engine) as conn:
                repo = ServerRepository(conn)
                await repo.create(server, nodes)
                await repo.record_attestation(**record, quote_data=quote_b64, verified=True,
                                              tcb_status=attested.tcb_status,
                                              measurement_version=attested.entry.version, verified_at=now)
        except IntegrityError:  # a concurrent registration of the same id, address, name or GPU won
            raise Conflict("the server id, host, name or a GPU was registered concurrently",
                           reason="SERVER_EXISTS") from None
        return servers_pb2.CreateServerResponse(message="Server registered successfully.")

    # -- the caller's servers -------------------------------------------------------------------------------
    @staticmethod
    def _not_found(server_id: str) -> NotFound:
        return NotFound(f"Server {server_id} not found", reason="SERVER_NOT_FOUND")

    async def _owned(self, server_id: str):
        if not _NAME.match(server_id):
            raise InvalidArgument.field("server_id", "1-255 printable characters without '/'")
        async with self.rt.engine.connect() as conn:
            row = await ServerRepository(conn).get_owned(server_id, current_caller.get().hotkey)
        if row is None:
            raise self._not_found(server_id)
        return row

    async def PatchServerName(self, request, context):
        v = Violations()
        v.require(bool(_NAME.match(request.server_id)), "server_id", "1-255 printable characters without '/'")
        v.require(bool(_NAME.match(request.server_name)), "server_name", "required: 1-255 printable characters "
                  "without '/'")
        v.raise_if_any()
        hotkey = current_caller.get().hotkey
        try:
            async with unit_of_work(self.rt.engine) as conn:
                repo = ServerRepository(conn)
                row = await repo.get_owned(request.server_id, hotkey)
                if row is None:
                    raise self._not_found(request.server_id)
                if row["name"] != request.server_name:
                    if await repo.name_taken(hotkey, request.server_name, except_id=request.server_id):
                        raise Conflict(f"You already have a server named {request.server_name!r}",
                                       reason="SERVER_NAME_TAKEN")
                    row = await repo.rename(request.server_id, request.server_name, self.rt.clock.now())
        except IntegrityError:
            raise Conflict(f"You already have a server named {request.server_name!r}",
                           reason="SERVER_NAME_TAKEN") from None
        response = servers_pb2.PatchServerNameResponse(name=row["name"], ip=row["ip"],
                                                       created_at=_ts(row["created_at"]))
        if row["updated_at"] is not None:
            response.updated_at.CopyFrom(_ts(row["updated_at"]))
        return response

    async def GetServerDetails(self, request, context):
        row = await self._owned(request.server_id)
        response = servers_pb2.GetServerDetailsResponse(server_id=row["server_id"], name=row["name"], ip=row["ip"],
                                                        created_at=_ts(row["created_at"]))
        if row["updated_at"] is not None:
            response.updated_at.CopyFrom(_ts(row["updated_at"]))
        for key in ("version", "maintenance_pending_window_id"):
            if row[key] is not None:
                setattr(response, key, row[key])
        return response

    async def RemoveServer(self, request, context):
        if not _NAME.match(request.server_name_or_id):
            raise InvalidArgument.field("server_name_or_id", "1-255 printable characters without '/'")
        async with unit_of_work(self.rt.engine) as conn:
            repo = ServerRepository(conn)
            row = await repo.find_owned(current_caller.get().hotkey, request.server_name_or_id)
            if row is None:
                raise self._not_found(request.server_name_or_id)
            await repo.delete(row["server_id"])
        return servers_pb2.RemoveServerResponse(name=row["name"], message="Server removed successfully")

    # -- runtime attestation --------------------------------------------------------------------------------
    @staticmethod
    def _same_ip(server, caller_ip: str) -> None:
        if caller_ip != server["ip"]:
            raise PermissionDenied(f"runtime attestation must come from the server's own address {server['ip']}; "
                                   f"this request came from {caller_ip or 'an unknown address'}",
                                   reason="IP_MISMATCH", metadata={"server_ip": server["ip"]})

    async def GetRuntimeNonce(self, request, context):
        server = await self._owned(request.server_id)
        caller_ip = current_caller.get().ip
        self._same_ip(server, caller_ip)
        issued = await self.nonces.issue("runtime", caller_ip)
        return servers_pb2.GetRuntimeNonceResponse(nonce=issued.nonce, expires_at=_ts(issued.expires_at))

    async def VerifyRuntimeAttestation(self, request, context):
        v = Violations()
        v.require(bool(_NAME.match(request.server_id)), "server_id", "1-255 printable characters without '/'")
        v.require(bool(request.quote.strip()), "quote", "required: the base64 TDX quote")
        v.raise_if_any()
        caller = current_caller.get()
        async with self.rt.engine.connect() as conn:
            server = await ServerRepository(conn).get(request.server_id)
        if server is None:
            raise self._not_found(request.server_id)
        self._same_ip(server, caller.ip)
        now = self.rt.clock.now()
        record = dict(server_id=server["server_id"], miner_hotkey=server["miner_hotkey"], kind="runtime",
                      server_ip=caller.ip, quote_data=request.quote, created_at=now)
        try:
            attested = await self.attestor.attest(request.quote, kind=RUNTIME, nonce=caller.attestation_nonce,
                                                  entries=await self._entries(), now=now,
                                                  client_cert=client_cert(context, self.proxies))
        except AttestationFailure as failure:
            async with unit_of_work(self.rt.engine) as conn:
                await ServerRepository(conn).record_attestation(
                    **record, verified=False, error_reason=failure.reason, verification_error=failure.message,
                    tcb_status=failure.tcb_status, measurement_version=failure.measurement_version)
            raise attestation_error(failure) from None
        async with unit_of_work(self.rt.engine) as conn:
            repo = ServerRepository(conn)
            attestation_id = await repo.record_attestation(
                **record, verified=True, tcb_status=attested.tcb_status, measurement_version=attested.entry.version,
                verified_at=now)
            await repo.set_version(server["server_id"], attested.entry.version, now)
        return servers_pb2.VerifyRuntimeAttestationResponse(attestation_id=attestation_id, verified_at=_ts(now),
                                                            status="verified")

    async def GetAttestationStatus(self, request, context):
        server = await self._owned(request.server_id)
        async with self.rt.engine.connect() as conn:
            last = await ServerRepository(conn).latest_attestation(server["server_id"])
        response = servers_pb2.GetAttestationStatusResponse(server_id=server["server_id"], name=server["name"],
                                                            attestation_status="never_attested")
        if last is not None:
            response.attestation_status = "verified" if last["verified"] else "failed"
            item = servers_pb2.LastAttestation(attestation_id=last["attestation_id"], verified=last["verified"],
                                               created_at=_ts(last["created_at"]))
            if last["verified_at"] is not None:
                item.verified_at.CopyFrom(_ts(last["verified_at"]))
            if last["verification_error"] is not None:
                item.verification_error = last["verification_error"]
            response.last_attestation.CopyFrom(item)
        return response
