"""A TDX quote as Gantry uses it: the raw bytes plus the fields policies read (MRTD, RTMRs, report data, FMSPC).

Parsing is dcap-qvl's (the same parser that verifies), so the fields a policy checks are the fields that were
signed. Parsing alone proves nothing; `verifier.py` decides whether to believe them.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import dcap_qvl

from .failures import QUOTE_INVALID, AttestationFailure

REGISTERS = ("MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3")
MAX_QUOTE_BYTES = 64 * 1024  # real TDX quotes are ~5 KB; anything far larger is not a quote


@dataclass(frozen=True)
class TdxQuote:
    raw: bytes
    version: int
    mrtd: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    fmspc: str  # 12 upper-case hex: selects the TCB info
    ca: str  # "platform" or "processor": selects the PCK CRL

    def registers(self) -> dict[str, str]:
        """MRTD and RTMR0-3 as lower-case hex, by register name."""
        return dict(zip(REGISTERS, (self.mrtd.hex(), *(r.hex() for r in self.rtmrs))))


def decode_quote(b64: str) -> bytes:
    """The raw quote from its base64 (standard or URL-safe alphabet, padding optional)."""
    text = (b64 or "").strip()
    if not text:
        raise AttestationFailure(QUOTE_INVALID, "quote is empty: send the base64 of the TDX quote")
    if len(text) > MAX_QUOTE_BYTES * 4 // 3 + 4:
        raise AttestationFailure(QUOTE_INVALID, f"quote is larger than {MAX_QUOTE_BYTES} bytes")
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise AttestationFailure(QUOTE_INVALID, "quote is not valid base64") from None


def parse_quote(raw: bytes) -> TdxQuote:
    try:
        parsed = dcap_qvl.parse_quote(raw)
        if not parsed.is_tdx():
            raise AttestationFailure(QUOTE_INVALID, "quote is an SGX quote; a TDX quote (version 4 or 5) is required")
        report = parsed.report
        return TdxQuote(raw=raw, version=parsed.header.version, mrtd=bytes(report.mr_td),
                        rtmrs=(bytes(report.rt_mr0), bytes(report.rt_mr1), bytes(report.rt_mr2), bytes(report.rt_mr3)),
                        report_data=bytes(report.report_data), fmspc=parsed.fmspc().upper(), ca=parsed.ca())
    except AttestationFailure:
        raise
    except Exception as exc:  # dcap-qvl raises ValueError with the decoder's words
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AttestationFailure(QUOTE_INVALID, f"Unable to parse provided quote: {first}") from None
