"""InstanceService (seeds 000/002): launch configs, claims, verification and activation of chute instances.

Translation only: request shapes are checked here (INVALID_ARGUMENT naming the field; REST 422 like the
reference's pydantic models), the flow is `domain.launch.launcher`. Auth is the interceptor's (auth_policy.py):
the launch JWT is checked there for signature, expiry and config id; the one-time use is the launcher's, in the
database. RPCs not built yet answer UNIMPLEMENTED (README: endpoint status).
"""
from __future__ import annotations

import ipaddress
import re
import uuid

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from gantry.instances.v1 import instances_pb2, instances_pb2_grpc

from ..domain.attestation import EvidenceClient
from ..domain.attestation import failures as f
from ..domain.auth.caller import TrustedProxies, current_caller
from ..domain.auth.nonces import AttestationNonces
from ..domain.launch.launcher import ClaimArgs, Launcher, TeeAttestationRefused, Verified
from ..domain.validation import Violations
from ..errors import InvalidArgument, Unavailable
from ..runtime import Runtime
from .instance_evidence import InstanceEvidenceRpcs
from .instance_legacy import LegacyInstanceRpcs
from .instance_logs import InstanceLogRpcs
from .instance_records import InstanceRecordRpcs
from .servers import AttestationKit, attestation_error

_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")
_HEX = re.compile(r"^[0-9a-fA-F]*$")
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,255}$")

# Longest accepted value of each free-text claim field (the reference has none; these are generous).
_LIMITS = {"fsv": 256, "netnanny_hash": 1024, "run_path": 1024, "rint_commitment": 1024, "rint_nonce": 64,
           "rint_pubkey": 512, "tls_cert": 16384, "tls_cert_sig": 1024, "tls_ca_cert": 16384,
           "tls_client_cert": 16384, "tls_client_key": 16384, "tls_client_key_password": 1024, "e2e_pubkey": 4096,
           "cllmv_session_init": 16384, "env": 1 << 20, "code": 1 << 20, "run_code": 1 << 20, "inspecto": 4096,
           "deployment_id": 255, "e2e_pubkey_sig": 4096}


def _ts(value) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(_HOST.match(value))


def claim_args(request, *, tee: bool) -> ClaimArgs:
    """Check a claim body (LaunchConfigArgs / TeeLaunchConfigArgs) and turn it into the domain's ClaimArgs."""
    v = Violations()
    gpus = [json_format.MessageToDict(g) for g in request.gpus]
    if v.require(bool(gpus), "gpus", "required: one object per GPU of the instance, each with its uuid"):
        for i, gpu in enumerate(gpus):
            uid = gpu.get("uuid")
            v.require(isinstance(uid, str) and bool(_ID.match(uid)), f"gpus[{i}].uuid",
                      "required: the GPU uuid (1-255 of letters, digits and . _ : -)")
    v.require(request.HasField("env"), "env", "required: the encrypted environment dump")
    v.require(_is_host(request.host), "host", "required: the public IP address or DNS name the instance serves on")
    mappings = []
    if v.require(len(request.port_mappings) > 0, "port_mappings",
                 "required: at least one mapping; the first is the instance's API port"):
        seen = set()
        for i, m in enumerate(request.port_mappings):
            proto = m.proto.lower()
            v.require(proto in ("tcp", "udp"), f"port_mappings[{i}].proto", "must be tcp or udp")
            v.require(1 <= m.internal_port <= 65535, f"port_mappings[{i}].internal_port", "must be 1-65535")
            v.require(1 <= m.external_port <= 65535, f"port_mappings[{i}].external_port", "must be 1-65535")
            v.require((proto, m.internal_port) not in seen, f"port_mappings[{i}].internal_port",
                      "is mapped twice")
            seen.add((proto, m.internal_port))
            mapping = {"proto": proto, "internal_port": m.internal_port, "external_port": m.external_port}
            if m.HasField("default"):
                mapping["default"] = m.default
            mappings.append(mapping)
    for name, limit in _LIMITS.items():
        if name in request.DESCRIPTOR.fields_by_name and (name != "deployment_id" or tee):
            value = getattr(request, name)
            v.require(len(value) <= limit and bool(_PRINTABLE.match(value.replace("\n", "").replace("\r", ""))),
                      name, f"at most {limit} printable characters")
    for name in ("rint_nonce", "rint_commitment"):
        if request.HasField(name):
            v.require(bool(_HEX.match(getattr(request, name))), name, "must be hex")
    if tee:
        v.require(bool(_ID.match(request.deployment_id)), "deployment_id",
                  "required: the TEE deployment whose attestation the validator pulls (1-255 of letters, digits "
                  "and . _ : -)")
    v.raise_if_any()
    opt = lambda name: getattr(request, name) if request.HasField(name) else None  # noqa: E731
    return ClaimArgs(gpus=gpus, host=request.host, port_mappings=mappings, rint_commitment=opt("rint_commitment"),
                     rint_nonce=opt("rint_nonce"), rint_pubkey=opt("rint_pubkey"), tls_cert=opt("tls_cert"),
                     tls_cert_sig=opt("tls_cert_sig"), e2e_pubkey=opt("e2e_pubkey"),
                     deployment_id=request.deployment_id if tee else None, egress=opt("egress"))


def verified_message(v: Verified) -> instances_pb2.VerifiedLaunchConfig:
    out = instances_pb2.VerifiedLaunchConfig(chute_id=v.chute_id, instance_id=v.instance_id,
                                             verified_at=_ts(v.verified_at), activation_url=v.activation_url,
                                             secrets=v.secrets)
    for name in ("code", "fs_key", "efs", "job_id", "job_method"):
        if getattr(v, name) is not None:
            setattr(out, name, getattr(v, name))
    if v.job_data is not None:
        out.job_data.update(v.job_data)
    return out


def tee_refusal(refused: TeeAttestationRefused):
    """The error a refused TEE attestation answers: 502 when the proxy could not be read, else by failure reason."""
    if refused.failure.reason == f.EVIDENCE_UNAVAILABLE:
        return Unavailable(f"Attestation proxy unreachable: {refused.failure.message}",
                           reason=f.EVIDENCE_UNAVAILABLE, http_status=502)
    return attestation_error(refused.failure, prefix="TEE attestation failed: ")


class InstanceService(InstanceRecordRpcs, InstanceLogRpcs, LegacyInstanceRpcs, InstanceEvidenceRpcs,
                      instances_pb2_grpc.InstanceServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        cfg = rt.settings.attestation
        self.launcher = Launcher(rt, attestation_kit=AttestationKit(rt), evidence_client=EvidenceClient(
            cfg.instance_evidence_url, allow_private_hosts=cfg.attestation_allow_private_hosts,
            max_bytes=cfg.evidence_max_bytes, deadline=cfg.evidence_deadline_seconds))
        self.nonces = AttestationNonces(rt.redis, rt.clock)
        self.proxies = TrustedProxies(rt.settings.trusted_proxies)
        self.ip_check_salt = rt.settings.launch.ip_check_salt or rt.keyring.derive(b"ip-check-salt").hex()

    # -- launch configs ---------------------------------------------------------------------------------------
    async def GetLaunchConfig(self, request, context):
        v = Violations()
        v.require(bool(_ID.match(request.chute_id)), "chute_id", "required: the chute to launch")
        if request.HasField("job_id"):
            v.require(bool(_ID.match(request.job_id)), "job_id", "a job id (1-255 of letters, digits and . _ : -)")
        if request.HasField("server_id"):
            v.require(bool(_ID.match(request.server_id)), "server_id", "a server id")
        v.raise_if_any()
        token, config_id = await self.launcher.issue(
            hotkey=current_caller.get().hotkey, chute_id=request.chute_id,
            job_id=request.job_id if request.HasField("job_id") else None)
        return instances_pb2.GetLaunchConfigResponse(token=token, config_id=config_id)

    async def GetRintNonce(self, request, context):
        return instances_pb2.GetRintNonceResponse(nonce=await self.launcher.rint_nonce(request.config_id))

    async def ClaimGravalLaunchConfig(self, request, context):
        claim = await self.launcher.claim_graval(request.config_id, claim_args(request, tee=False),
                                                 caller_ip=current_caller.get().ip)
        challenge = instances_pb2.GravalChallenge(
            seed=claim.seed, iterations=claim.iterations, symmetric_key=instances_pb2.GravalSymmetricKey(
                ciphertext=claim.ciphertext, uuid=claim.gpu_uuid, response_plaintext=claim.response_plaintext))
        if claim.job_id is not None:
            challenge.job_id = claim.job_id
        if claim.validator_pubkey is not None:
            challenge.validator_pubkey = claim.validator_pubkey
        return instances_pb2.ClaimGravalLaunchConfigResponse(challenge=challenge)

    async def ClaimLaunchConfig(self, request, context):
        """The un-suffixed claim the reference keeps for older chutes: the Graval claim."""
        answer = await self.ClaimGravalLaunchConfig(request, context)
        return instances_pb2.ClaimLaunchConfigResponse(challenge=answer.challenge)

    async def VerifyGravalLaunchConfigInstance(self, request, context):
        v = Violations()
        v.require(0 < len(request.response) <= 4096 and bool(_PRINTABLE.match(request.response)), "response",
                  "required: the ciphertext of the response plaintext (hex or base64)")
        if request.HasField("iv"):
            v.require(len(request.iv) <= 64 and bool(_HEX.match(request.iv)), "iv", "hex, at most 64 characters")
        v.require(0 < len(request.proof) <= 64, "proof", "required: gpu uuid -> {work_product}")
        v.raise_if_any()
        verified = await self.launcher.verify_graval(
            request.config_id, response=request.response, iv=request.iv if request.HasField("iv") else None,
            proofs={k: p.work_product for k, p in request.proof.items()})
        return instances_pb2.VerifyGravalLaunchConfigInstanceResponse(launch_config=verified_message(verified))

    async def VerifyLaunchConfigInstance(self, request, context):
        answer = await self.VerifyGravalLaunchConfigInstance(request, context)
        return instances_pb2.VerifyLaunchConfigInstanceResponse(launch_config=answer.launch_config)

    async def ClaimTeeLaunchConfig(self, request, context):
        args = claim_args(request, tee=True)
        caller = current_caller.get()
        try:
            claim = await self.launcher.claim_tee(request.config_id, args, caller_ip=caller.ip,
                                                  nonce=caller.attestation_nonce or "")
        except TeeAttestationRefused as refused:
            raise tee_refusal(refused) from None
        out = instances_pb2.ClaimTeeLaunchConfigResponse(symmetric_key=claim.symmetric_key)
        if claim.validator_pubkey is not None:
            out.validator_pubkey = claim.validator_pubkey
        return out

    async def VerifyTeeLaunchConfigInstance(self, request, context):
        verified = await self.launcher.verify_tee(request.config_id)
        return instances_pb2.VerifyTeeLaunchConfigInstanceResponse(launch_config=verified_message(verified))

    async def ActivateLaunchConfigInstance(self, request, context):
        await self.launcher.activate(request.config_id)
        return instances_pb2.ActivateLaunchConfigInstanceResponse(ok=True)

    # -- unauthenticated helpers ----------------------------------------------------------------------------
    async def GetInstanceNonce(self, request, context):
        issued = await self.nonces.issue("instance_verification", self.proxies.of_call(context))
        return instances_pb2.GetInstanceNonceResponse(nonce=issued.nonce)

    async def GetToken(self, request, context):
        salt = self.ip_check_salt
        if request.HasField("salt"):
            if len(request.salt) > 255 or not _PRINTABLE.match(request.salt):
                raise InvalidArgument.field("salt", "at most 255 printable characters")
        name = f"{self.proxies.of_call(context)}:{salt}" + (f":{request.salt}" if request.HasField("salt") else "")
        return instances_pb2.GetTokenResponse(token=str(uuid.uuid5(uuid.NAMESPACE_OID, name)))
