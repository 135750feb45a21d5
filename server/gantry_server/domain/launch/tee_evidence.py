"""Fresh TEE evidence of a running instance, for a user who wants to check it (reference §5.14).

The user brings a nonce; the validator pulls the instance's deployment evidence from the attestation proxy of the
instance's server with that nonce, through the same hardened client as server registration (public hosts only
unless allowed, size cap while streaming, one overall deadline: domain/attestation/evidence.py), and hands it back
with what the quote's report data must be: `sha256_hex(nonce + e2e_pubkey)`. Nothing is verified or written here:
the evidence is the user's to verify (that is the point of the nonce).

    evidence = await InstanceEvidence(rt, client).pull(instance_id, nonce="ab" * 32, user_id=caller.user_id)
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ...errors import FailedPrecondition, NotFound, PermissionDenied, Unavailable
from ...store.repositories.chutes import ChuteRepository
from ...store.repositories.instances import InstanceRepository
from ...store.repositories.servers import ServerRepository
from ...store.repositories.users import UserRepository
from ..attestation import AttestationFailure
from ..attestation.evidence import EvidenceClient
from ..attestation.failures import EVIDENCE_UNAVAILABLE
from .launcher import tee_report_data
from .runtime_integrity import version_at_least

# Subnet roles that may read any chute's evidence (the reference: "a subnet-role user").
ACCESS_ROLES = frozenset({"subnet_admin", "chutes_support"})


@dataclass(frozen=True)
class TeeInstanceEvidence:
    quote: str  # base64 TDX quote
    gpu_evidence: list[dict]  # one object per GPU
    certificate: str  # base64 DER TLS certificate of the server ("" when the proxy names none)
    e2e_pubkey: str | None
    expected_report_data: str


def gpu_evidence_objects(value) -> list[dict]:
    """The proxy's GPU evidence as one object per GPU, whichever shape it came in: a list, a JSON string of one, an
    nvtrust document (`{"evidence_list": [...]}`) or a single object."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    if isinstance(value, dict):
        value = value["evidence_list"] if "evidence_list" in value else [value]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("GPU evidence is not a list of objects")
    return value


class InstanceEvidence:
    def __init__(self, rt, client: EvidenceClient) -> None:
        self.rt = rt
        self.client = client

    def url(self, *, host: str, deployment_id: str, nonce: str) -> str:
        """The instance evidence template filled in; the nonce goes in the query unless the template places it."""
        url = self.client.url(host=host, deployment_id=deployment_id, nonce=nonce)
        if "{nonce}" in self.client.url_template:
            return url
        return f"{url}{'&' if '?' in url else '?'}nonce={nonce}"

    async def pull(self, instance_id: str, *, nonce: str, user_id: str | None) -> TeeInstanceEvidence:
        async with self.rt.engine.connect() as conn:
            instance = await InstanceRepository(conn).get(instance_id)
            if instance is None:
                raise NotFound(f"Instance {instance_id} not found", reason="INSTANCE_NOT_FOUND")
            chute = await ChuteRepository(conn).get_chute(instance["chute_id"])
            user = await UserRepository(conn).get(user_id) if user_id else None
            if not self._may_read(chute, user):
                raise PermissionDenied(f"You do not have access to the chute of instance {instance_id}",
                                       reason="CHUTE_ACCESS_DENIED")
            if not chute["tee"]:
                raise FailedPrecondition(f"Instance {instance_id} is not a TEE instance", reason="NOT_TEE_INSTANCE")
            if not version_at_least(chute["chutes_version"], "0.6.0"):
                raise FailedPrecondition("Evidence is only available for TEE chutes of chutes >= 0.6.0 (their quote "
                                         "binds the instance's e2e_pubkey)", reason="CHUTES_VERSION_TOO_OLD")
            if not instance["deployment_id"]:
                raise FailedPrecondition("evidence is only available after TEE verification",
                                         reason="TEE_NOT_ATTESTED")
            nodes = await InstanceRepository(conn).nodes_of(instance_id)
            server = await ServerRepository(conn).get(nodes[0]["server_id"]) if nodes else None
        if server is None:
            raise NotFound(f"The server of instance {instance_id} is not registered", reason="SERVER_NOT_FOUND")
        url = self.url(host=server["ip"], deployment_id=instance["deployment_id"], nonce=nonce)
        try:
            doc = await self.client.fetch_json(url, host=server["ip"])
            quote = doc.get("quote") or doc.get("tdx_quote")
            if not isinstance(quote, str):
                raise ValueError("answer has no quote")
            gpus = gpu_evidence_objects(doc.get("gpu_evidence", doc.get("nvtrust_evidence", [])))
            certificate = doc.get("certificate") or doc.get("cert") or ""
            if not isinstance(certificate, str):
                raise ValueError("certificate is not a string")
        except AttestationFailure as failure:
            raise self._unavailable(failure.message) from None
        except ValueError as exc:
            raise self._unavailable(f"the attestation proxy answered an unusable document: {exc}") from None
        e2e_pubkey = (instance["extra"] or {}).get("e2e_pubkey")
        return TeeInstanceEvidence(quote=quote, gpu_evidence=gpus, certificate=certificate, e2e_pubkey=e2e_pubkey,
                                   expected_report_data=tee_report_data(nonce, e2e_pubkey))

    @staticmethod
    def _may_read(chute, user) -> bool:
        if chute is None:
            return False
        if chute["public"]:
            return True
        if user is None:
            return False
        return user["user_id"] == chute["user_id"] or bool(ACCESS_ROLES & set(user["roles"] or ()))

    @staticmethod
    def _unavailable(why: str) -> Unavailable:
        return Unavailable(f"Attestation service unavailable: {why}", reason=EVIDENCE_UNAVAILABLE, http_status=502)
