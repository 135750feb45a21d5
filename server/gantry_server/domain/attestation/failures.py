"""Why an attestation was refused, in terms a miner can act on.

Every refusal is an `AttestationFailure` with a machine reason (the `ErrorInfo.reason` callers see), a sentence
saying what was wrong and what to do, and metadata naming the specifics (registers, TCB status, nonce). The
service turns it into a gRPC status per endpoint (services/servers.py `FAILURE_STATUS`); nothing here knows gRPC.
"""
from __future__ import annotations

QUOTE_INVALID = "QUOTE_INVALID"  # not base64, not a TDX quote, truncated, debug TD, unsupported format
SIGNATURE_INVALID = "SIGNATURE_INVALID"  # a signature or certificate chain in the quote does not verify
COLLATERAL_EXPIRED = "COLLATERAL_EXPIRED"  # verification time outside the collateral's validity window
COLLATERAL_UNAVAILABLE = "COLLATERAL_UNAVAILABLE"  # no collateral for the quote's FMSPC (PCCS down, no file)
TCB_STATUS = "TCB_STATUS"  # the platform's TCB status is not one the deployment accepts
NONCE_MISMATCH = "NONCE_MISMATCH"  # report_data[0:32] is not the nonce
CLIENT_CERT_MISSING = "CLIENT_CERT_MISSING"  # mTLS binding required and no client certificate forwarded
CLIENT_CERT_MISMATCH = "CLIENT_CERT_MISMATCH"  # report_data[32:64] is not sha256(client cert public key)
MEASUREMENT_MISMATCH = "MEASUREMENT_MISMATCH"  # MRTD/RTMRs match no allowed measurement set
GPU_MISMATCH = "GPU_MISMATCH"  # GPU models or count not allowed by the matched measurement set
GPU_EVIDENCE_INVALID = "GPU_EVIDENCE_INVALID"  # GPU attestation evidence refused (or no verifier configured)
EVIDENCE_UNAVAILABLE = "EVIDENCE_UNAVAILABLE"  # the server's attestation endpoint could not be read

REASONS = (QUOTE_INVALID, SIGNATURE_INVALID, COLLATERAL_EXPIRED, COLLATERAL_UNAVAILABLE, TCB_STATUS, NONCE_MISMATCH,
           CLIENT_CERT_MISSING, CLIENT_CERT_MISMATCH, MEASUREMENT_MISMATCH, GPU_MISMATCH, GPU_EVIDENCE_INVALID,
           EVIDENCE_UNAVAILABLE)


class AttestationFailure(Exception):
    """A refused quote or evidence. `measurement_version` is set when the measurements still matched an entry
    (recorded with the failed attempt, as the reference does)."""

    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}
        self.measurement_version: str | None = None
        self.tcb_status: str | None = metadata.get("tcb_status")
