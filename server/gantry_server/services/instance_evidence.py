"""InstanceService RPCs around TEE evidence (composed into services/instances.py): a user's fresh evidence of a
running TEE instance (`GetTeeInstanceEvidence`) and the legacy `/attest` claim (`ValidateTeeLaunchConfigInstance`).

Translation only: the flows are `domain/launch/tee_evidence.py` and `domain/launch/legacy_attest.py`; auth, the
`tee_evidence` rate limit and the `boot` attestation nonce are the interceptor's (auth_policy.py).
"""
from __future__ import annotations

import re

from google.protobuf import json_format

from gantry.instances.v1 import instances_pb2

from ..domain.auth.caller import current_caller
from ..domain.launch import legacy_attest
from ..domain.launch.launcher import TeeAttestationRefused
from ..domain.launch.tee_evidence import InstanceEvidence
from ..domain.validation import Violations

_NONCE = re.compile(r"^[0-9a-fA-F]{64}$")
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,36}$")
MAX_GPU_EVIDENCE = 64  # objects in one legacy /attest body (one per GPU; no server has more)


class InstanceEvidenceRpcs:
    async def GetTeeInstanceEvidence(self, request, context):
        v = Violations()
        v.require(bool(_INSTANCE_ID.match(request.instance_id)), "instance_id", "required: an instance id")
        v.require(bool(_NONCE.match(request.nonce)), "nonce", "must be exactly 64 hex characters (32 bytes)")
        v.raise_if_any()
        got = await InstanceEvidence(self.rt, self.launcher.evidence).pull(
            request.instance_id, nonce=request.nonce, user_id=current_caller.get().user_id)
        out = instances_pb2.GetTeeInstanceEvidenceResponse(quote=got.quote, certificate=got.certificate,
                                                           expected_report_data=got.expected_report_data)
        for item in got.gpu_evidence:
            out.gpu_evidence.add().update(item)
        if got.e2e_pubkey is not None:
            out.e2e_pubkey = got.e2e_pubkey
        return out

    async def ValidateTeeLaunchConfigInstance(self, request, context):
        from .instances import claim_args, tee_refusal, verified_message  # instances.py composes this class

        v = Violations()
        v.require(0 < len(request.gpu_evidence) <= MAX_GPU_EVIDENCE, "gpu_evidence",
                  f"required: NVIDIA GPU attestation evidence bound to the boot nonce, 1-{MAX_GPU_EVIDENCE} objects "
                  "(one per GPU)")
        v.raise_if_any()
        # The legacy body has no deployment_id (nothing is pulled from a proxy), so it is checked as a plain claim.
        args = claim_args(request, tee=False)
        caller = current_caller.get()
        try:
            claim, verified = await legacy_attest.attest(
                self.launcher, request.config_id, args, caller_ip=caller.ip, nonce=caller.attestation_nonce or "",
                gpu_evidence=[json_format.MessageToDict(e) for e in request.gpu_evidence])
        except TeeAttestationRefused as refused:
            raise tee_refusal(refused) from None
        out = verified_message(verified)
        out.symmetric_key = claim.symmetric_key
        if claim.validator_pubkey is not None:
            out.validator_pubkey = claim.validator_pubkey
        return instances_pb2.ValidateTeeLaunchConfigInstanceResponse(launch_config=out)
