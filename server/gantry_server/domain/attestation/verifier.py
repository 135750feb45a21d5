"""DCAP verification of a TDX quote with dcap-qvl, and the TCB status policy.

dcap-qvl checks the whole chain (Intel root -> PCK CA -> PCK cert -> QE report -> attestation key -> quote,
plus the signed TCB info / QE identity and the CRLs) at a given time and reports the platform's TCB status.
This module chooses the collateral, classifies dcap-qvl's refusals into reasons a miner can act on, and applies
the deployment's list of accepted TCB statuses. The root of trust is Intel's unless `root_ca_der` replaces it
(tests: a generated root; private deployments: their own).

    verifier = DcapVerifier(FileCollateral(Path("collateral/")), accepted_statuses=("UpToDate",))
    verified = await verifier.verify(parse_quote(raw), now)   # raises AttestationFailure
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import dcap_qvl

from .collateral import Collateral, CollateralSource
from .failures import (COLLATERAL_EXPIRED, COLLATERAL_UNAVAILABLE, QUOTE_INVALID, SIGNATURE_INVALID, TCB_STATUS,
                       AttestationFailure)
from .quote import TdxQuote

TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked", "TcbNotSupported")
DEFAULT_ACCEPTED = ("UpToDate", "SWHardeningNeeded")
# Intel's QVL answers "TCB not supported" when the platform is older than every level the TCB info lists.
NOT_SUPPORTED = "TcbNotSupported"


@dataclass(frozen=True)
class VerifiedQuote:
    quote: TdxQuote
    tcb_status: str
    advisory_ids: tuple[str, ...]


class QuoteVerifier(Protocol):
    """The seam: anything that turns a parsed quote into a VerifiedQuote or an AttestationFailure."""

    async def verify(self, quote: TdxQuote, now: datetime) -> VerifiedQuote: ...


# dcap-qvl error text -> reason, most specific first (its errors are strings; these phrases are stable across
# 0.6/0.7 and each has a test in tests/unit/test_tdx_quote.py).
_CLASSIFY: tuple[tuple[str, str, str], ...] = (
    ("no matching tcb level", TCB_STATUS, NOT_SUPPORTED),
    ("tcb status is invalid", TCB_STATUS, ""),
    ("isvsvn", TCB_STATUS, NOT_SUPPORTED),
    ("expired", COLLATERAL_EXPIRED, ""),
    ("in the future", COLLATERAL_EXPIRED, ""),
    ("not yet valid", COLLATERAL_EXPIRED, ""),
    ("notvalidyet", COLLATERAL_EXPIRED, ""),
    ("fmspc mismatch", COLLATERAL_UNAVAILABLE, ""),
    ("non-tdx tcb info", COLLATERAL_UNAVAILABLE, ""),
    ("failed to decode quote", QUOTE_INVALID, ""),
    ("unsupported", QUOTE_INVALID, ""),
    ("must have version", QUOTE_INVALID, ""),
    ("debug mode", QUOTE_INVALID, ""),
    ("reserved bits", QUOTE_INVALID, ""),
    ("sept_ve_disable", QUOTE_INVALID, ""),
    ("service td", QUOTE_INVALID, ""),
    ("signature", SIGNATURE_INVALID, ""),
    ("hash mismatch", SIGNATURE_INVALID, ""),
    ("certificate", SIGNATURE_INVALID, ""),
    ("issuer", SIGNATURE_INVALID, ""),
    ("crl", SIGNATURE_INVALID, ""),
    ("revoked", SIGNATURE_INVALID, ""),
    ("qe ", SIGNATURE_INVALID, ""),
)

_ADVICE = {
    QUOTE_INVALID: "generate the quote with the TDX guest driver of a production (non-debug) TD",
    SIGNATURE_INVALID: "the quote or its certification data was altered, or was not produced by a genuine "
                       "Intel quoting enclave under the trusted root",
    COLLATERAL_EXPIRED: "the validator's collateral does not cover this time; retry later",
    COLLATERAL_UNAVAILABLE: "the validator has no collateral for this platform",
}


def classify(error: str) -> tuple[str, str]:
    """(reason, tcb status or "") for a dcap-qvl error message."""
    low = error.lower()
    for phrase, reason, status in _CLASSIFY:
        if phrase in low:
            if reason == TCB_STATUS and not status:
                status = error.rsplit(":", 1)[-1].strip().strip("\"'") or NOT_SUPPORTED
            return reason, status
    return QUOTE_INVALID, ""


def _first_line(exc: Exception) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text.removeprefix("Verification failed: ") or type(exc).__name__


def tcb_shortfall(quote: TdxQuote, collateral: Collateral) -> str:
    """Which TCB components are below the oldest level Intel lists: what to update when no level matches."""
    try:
        parsed = dcap_qvl.parse_quote(quote.raw)
        ext, tee_tcb_svn = parsed.pck_extension(), parsed.report.tee_tcb_svn
        oldest = json.loads(json.loads(collateral.text)["tcb_info"])["tcbLevels"][-1]["tcb"]
    except Exception:  # best effort: the refusal stands without the detail
        return ""
    behind = [f"CPUSVN component {i + 1} is {have}, needs {c['svn']}"
              for i, (have, c) in enumerate(zip(ext.cpu_svn, oldest["sgxtcbcomponents"])) if have < c["svn"]]
    if ext.pce_svn < oldest["pcesvn"]:
        behind.append(f"PCESVN is {ext.pce_svn}, needs {oldest['pcesvn']}")
    behind += [f"TEE TCB SVN component {i + 1} is {have}, needs {c['svn']}"
               for i, (have, c) in enumerate(zip(tee_tcb_svn, oldest.get("tdxtcbcomponents", []))) if have < c["svn"]]
    return "; ".join(behind)


class DcapVerifier:
    def __init__(self, collateral: CollateralSource, *, accepted_statuses: tuple[str, ...] = DEFAULT_ACCEPTED,
                 root_ca_der: bytes | None = None) -> None:
        self.collateral = collateral
        self.accepted = tuple(accepted_statuses)
        self.root_ca_der = root_ca_der

    def _dcap(self, raw: bytes, collateral: Collateral, now_secs: int):
        if self.root_ca_der is None:
            return dcap_qvl.verify(raw, collateral.native, now_secs)
        return dcap_qvl.verify_with_root_ca(raw, collateral.native, self.root_ca_der, now_secs)

    async def verify(self, quote: TdxQuote, now: datetime) -> VerifiedQuote:
        collateral = await self.collateral.get(quote, now)
        try:
            report = self._verify_with(quote, collateral, now)
        except AttestationFailure as failure:
            # A cached copy may have gone stale between two Intel updates: refresh once, then decide.
            if failure.reason != COLLATERAL_EXPIRED or not getattr(self.collateral, "refreshable", False):
                raise
            collateral = await self.collateral.get(quote, now, refresh=True)
            report = self._verify_with(quote, collateral, now)
        status, advisories = report.status, tuple(report.advisory_ids)
        if status not in self.accepted:
            raise self._tcb_failure(status, advisories, quote, collateral)
        return VerifiedQuote(quote=quote, tcb_status=status, advisory_ids=advisories)

    def _verify_with(self, quote: TdxQuote, collateral: Collateral, now: datetime):
        try:
            return self._dcap(quote.raw, collateral, int(now.timestamp()))
        except (ValueError, RuntimeError) as exc:
            detail = _first_line(exc)
            reason, status = classify(detail)
            if reason == TCB_STATUS:
                raise self._tcb_failure(status, (), quote, collateral) from None
            if reason == COLLATERAL_EXPIRED:
                window = f"{collateral.not_before:%Y-%m-%dT%H:%M:%SZ} .. {collateral.not_after:%Y-%m-%dT%H:%M:%SZ}"
                raise AttestationFailure(
                    reason, f"Quote collateral is not valid at {now:%Y-%m-%dT%H:%M:%SZ} (valid {window}): {detail}; "
                    f"{_ADVICE[reason]}", fmspc=quote.fmspc, detail=detail) from None
            raise AttestationFailure(reason, f"{_title(reason)}: {detail}; {_ADVICE[reason]}",
                                     fmspc=quote.fmspc, detail=detail) from None

    def _tcb_failure(self, status: str, advisories: tuple[str, ...], quote: TdxQuote,
                     collateral: Collateral) -> AttestationFailure:
        accepted = ", ".join(self.accepted) or "none"
        if status == NOT_SUPPORTED:
            shortfall = tcb_shortfall(quote, collateral)
            message = (f"TCB status {status}: the platform's TCB is older than every level Intel publishes for "
                       f"FMSPC {quote.fmspc}{f' ({shortfall})' if shortfall else ''}; update the BIOS/microcode "
                       f"and TDX module (accepted statuses: {accepted})")
        else:
            message = (f"TCB status {status} is not accepted (accepted: {accepted})"
                       f"{'; advisories ' + ', '.join(advisories) if advisories else ''}; update the platform "
                       f"firmware and TDX module")
        return AttestationFailure(TCB_STATUS, message, tcb_status=status, advisory_ids=",".join(advisories),
                                  accepted_statuses=",".join(self.accepted), fmspc=quote.fmspc)


def _title(reason: str) -> str:
    return {QUOTE_INVALID: "Invalid quote", SIGNATURE_INVALID: "Quote signature invalid",
            COLLATERAL_UNAVAILABLE: "Collateral unusable"}.get(reason, reason)
