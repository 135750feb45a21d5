"""One attestation, in order: decode -> parse -> DCAP verify + TCB policy -> report-data binding -> measurements.

The order decides which refusal a miner sees first: a quote that does not verify is reported as such, never as a
nonce or measurement problem, because nothing inside an unverified quote can be believed.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .binding import check_report_data
from .failures import AttestationFailure
from .measurements import MeasurementEntry, match
from .quote import TdxQuote, decode_quote, parse_quote
from .verifier import QuoteVerifier


@dataclass(frozen=True)
class Attested:
    quote: TdxQuote
    tcb_status: str
    entry: MeasurementEntry


class Attestor:
    def __init__(self, verifier: QuoteVerifier, *, require_client_cert: bool = False) -> None:
        self.verifier = verifier
        self.require_client_cert = require_client_cert

    async def attest(self, quote_b64: str, *, kind: str, nonce: str, entries: list[MeasurementEntry],
                     now: datetime, client_cert: str | None = None, bind_client_cert: bool | None = None) -> Attested:
        """`bind_client_cert` overrides the deployment's mTLS binding (registration pulls evidence itself, so
        there is no client certificate to bind)."""
        quote = parse_quote(decode_quote(quote_b64))
        verified = await self.verifier.verify(quote, now)
        require_cert = self.require_client_cert if bind_client_cert is None else bind_client_cert
        try:
            check_report_data(quote, nonce, client_cert=client_cert, require_cert=require_cert)
            entry = match(entries, quote, kind)
        except AttestationFailure as failure:
            failure.tcb_status = verified.tcb_status
            try:  # recorded with the failed attempt when the measurements alone were fine
                failure.measurement_version = match(entries, quote, kind).version
            except AttestationFailure:
                pass
            raise
        return Attested(quote=quote, tcb_status=verified.tcb_status, entry=entry)
