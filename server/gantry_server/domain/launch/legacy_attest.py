"""The legacy TEE `/attest` (reference §5.6): claim, GPU attestation and verification in one call.

TEE VMs older than 0.2.0 were attested at boot and cannot serve a per-deployment quote, so their chute posts its
GPU evidence (bound to a `boot` attestation nonce, which the interceptor has already consumed) with the claim.
Everything else is the TEE claim and verification of `Launcher`, not a copy of them: the shared claim checks, the
refusal that fails the config and frees the GPUs, the verified payload.

    claim, verified = await attest(launcher, config_id, args, caller_ip=ip, nonce=nonce, gpu_evidence=[{...}])
"""
from __future__ import annotations

from .launcher import ClaimArgs, Launcher, TeeClaim, Verified


async def attest(launcher: Launcher, config_id: str, args: ClaimArgs, *, caller_ip: str, nonce: str,
                 gpu_evidence: list[dict]) -> tuple[TeeClaim, Verified]:
    """The instance's symmetric key (and validator session key) with its verified payload."""
    claim = await launcher.claim_tee(config_id, args, caller_ip=caller_ip, nonce=nonce, gpu_evidence=gpu_evidence)
    return claim, await launcher.verify_tee(config_id)
