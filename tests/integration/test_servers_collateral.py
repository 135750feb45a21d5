"""Collateral from a PCCS (a real HTTP server on loopback speaking the PCCS v4 API), cached in PostgreSQL until it
expires, then fetched again; quotes verify against it under the test root."""
from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import quote as urlquote

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from gantry_server.domain.attestation import AttestationFailure, DcapVerifier, PccsCollateral, parse_quote
from gantry_server.store.models import tdx_collateral
from gantry_server.store.repositories.tdx import PgCollateralStore

from ..tdx_builder import QuoteKit
from .servers_harness import ISSUED, FakeHttp


class FakePccs:
    """Serves one collateral document the way a PCCS does (hex CRLs, URL-encoded issuer chains)."""

    def __init__(self, collateral: str) -> None:
        self.collateral = collateral
        self.down = False

    def __call__(self, path: str, query: dict) -> tuple[int, dict, bytes]:
        if self.down:
            return 503, {}, b"maintenance"
        c = json.loads(self.collateral)
        if path.endswith("/pckcrl"):
            return 200, {"SGX-PCK-CRL-Issuer-Chain": urlquote(c["pck_crl_issuer_chain"])}, bytes.fromhex(c["pck_crl"])
        if path.endswith("/tcb"):
            body = f'{{"tcbInfo":{c["tcb_info"]},"signature":"{c["tcb_info_signature"]}"}}'
            return 200, {"TCB-Info-Issuer-Chain": urlquote(c["tcb_info_issuer_chain"])}, body.encode()
        if path.endswith("/qe/identity"):
            body = f'{{"enclaveIdentity":{c["qe_identity"]},"signature":"{c["qe_identity_signature"]}"}}'
            return 200, {"SGX-Enclave-Identity-Issuer-Chain": urlquote(c["qe_identity_issuer_chain"])}, body.encode()
        if path.endswith("/rootcacrl"):
            return 200, {}, c["root_ca_crl"].encode()  # PCCS answers hex text
        return 404, {}, b""


@pytest.fixture(scope="module")
def kit() -> QuoteKit:
    return QuoteKit.create(ISSUED)


async def test_collateral_is_fetched_once_cached_in_postgres_and_refetched_after_expiry(kit, clean_db):
    pccs = FakePccs(kit.collateral_json())
    quote = parse_quote(kit.quote(report_data=b""))
    root = kit.root.public_bytes(serialization.Encoding.DER)
    now = ISSUED + timedelta(days=1)
    with FakeHttp(pccs) as server:
        url = f"http://127.0.0.1:{server.port}/sgx/certification/v4"
        store = PgCollateralStore(clean_db)
        first = DcapVerifier(PccsCollateral(url, store, max_age=timedelta(hours=12)), root_ca_der=root)
        assert (await first.verify(quote, now)).tcb_status == "UpToDate"
        assert len(server.requests) == 4 and any(r.startswith("/tdx/certification/v4/tcb?fmspc=00A06D080000")
                                                 for r in server.requests)
        await first.verify(quote, now + timedelta(hours=1))  # in-process memo
        second = DcapVerifier(PccsCollateral(url, store), root_ca_der=root)  # another replica: from PostgreSQL
        await second.verify(quote, now + timedelta(hours=2))
        assert len(server.requests) == 4
        async with clean_db.connect() as conn:
            row = (await conn.execute(select(tdx_collateral))).mappings().one()
        assert (row["fmspc"], row["ca"], row["expires_at"]) == ("00A06D080000", "platform", now + timedelta(hours=12))

        # Past max_age, and then past the collateral's own nextUpdate: the PCCS's newer issue is fetched.
        pccs.collateral = kit.collateral_json(ISSUED + timedelta(days=25))
        later = ISSUED + timedelta(days=40)
        assert (await first.verify(quote, later)).tcb_status == "UpToDate"
        assert len(server.requests) == 8

        pccs.down = True
        with pytest.raises(AttestationFailure) as err:
            await DcapVerifier(PccsCollateral(url, store), root_ca_der=root).verify(quote, later + timedelta(days=30))
        assert err.value.reason == "COLLATERAL_UNAVAILABLE" and "503" in err.value.message
