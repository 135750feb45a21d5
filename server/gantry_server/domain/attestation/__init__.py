"""TDX attestation: quote parsing and DCAP verification (dcap-qvl), collateral, report-data binding, the
measurement policy, runtime evidence and LUKS passphrase planning. Importable without gRPC; services/servers.py
applies it. Reference: docs/attestation.md.
"""
from .attestor import Attested, Attestor
from .binding import cert_key_hash, check_report_data
from .collateral import Collateral, CollateralSource, CollateralStore, FileCollateral, PccsCollateral
from .evidence import (CommandGpuEvidenceVerifier, EvidenceClient, GpuEvidenceVerifier, NoGpuEvidenceVerifier,
                       RuntimeEvidence)
from .failures import REASONS, AttestationFailure
from .measurements import BOOT, RUNTIME, MeasurementEntry, PolicyFileError
from .quote import REGISTERS, TdxQuote, decode_quote, parse_quote
from .verifier import DEFAULT_ACCEPTED, TCB_STATUSES, DcapVerifier, QuoteVerifier, VerifiedQuote

__all__ = [
    "Attested", "Attestor", "AttestationFailure", "BOOT", "Collateral", "CollateralSource", "CollateralStore",
    "CommandGpuEvidenceVerifier", "DEFAULT_ACCEPTED", "DcapVerifier", "EvidenceClient", "FileCollateral",
    "GpuEvidenceVerifier", "MeasurementEntry", "NoGpuEvidenceVerifier", "PccsCollateral", "PolicyFileError",
    "QuoteVerifier", "REASONS", "REGISTERS", "RUNTIME", "RuntimeEvidence", "TCB_STATUSES", "TdxQuote",
    "VerifiedQuote", "cert_key_hash", "check_report_data", "decode_quote", "parse_quote",
]
