"""Collateral for DCAP verification: Intel's signed TCB info, QE identity, CRLs and their issuer chains.

Two sources behind one seam:
- `FileCollateral`: a directory of collateral JSON files (dcap-qvl's `QuoteCollateralV3` JSON), for offline
  deployments and tests; chosen by the quote's FMSPC.
- `PccsCollateral`: fetched from a PCCS (or Intel PCS) with httpx and cached in PostgreSQL until the earliest
  `nextUpdate` (or `max_age`), with a per-process memo in front so a cached verification costs no round trip.

Collateral is public and signed by Intel's root; caching it is safe, and a stale copy fails verification
(COLLATERAL_EXPIRED) rather than passing, which makes the verifier refresh once and retry.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

import dcap_qvl
import httpx
from cryptography import x509

from .failures import COLLATERAL_UNAVAILABLE, AttestationFailure
from .quote import TdxQuote


def _rfc3339(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


@dataclass
class Collateral:
    """One FMSPC's collateral as dcap-qvl JSON, with the window in which all of its parts are valid."""

    text: str
    fmspc: str
    not_before: datetime
    not_after: datetime
    _native: object = field(default=None, repr=False)

    @classmethod
    def from_json(cls, text: str) -> "Collateral":
        try:
            doc = json.loads(text)
            tcb, qe = json.loads(doc["tcb_info"]), json.loads(doc["qe_identity"])
            starts = [_rfc3339(tcb["issueDate"]), _rfc3339(qe["issueDate"])]
            ends = [_rfc3339(tcb["nextUpdate"]), _rfc3339(qe["nextUpdate"])]
            for key in ("root_ca_crl", "pck_crl"):
                crl = x509.load_der_x509_crl(bytes.fromhex(doc[key]))
                starts.append(crl.last_update_utc)
                if crl.next_update_utc is not None:
                    ends.append(crl.next_update_utc)
            native = dcap_qvl.QuoteCollateralV3.from_json(text)
        except (KeyError, TypeError, ValueError) as exc:
            raise AttestationFailure(COLLATERAL_UNAVAILABLE, f"collateral is malformed: {exc}") from None
        return cls(text=text, fmspc=str(tcb["fmspc"]).upper(), not_before=max(starts), not_after=min(ends),
                   _native=native)

    @property
    def native(self):
        """The parsed dcap-qvl object (parsed once, reused by every verification)."""
        return self._native

    def valid_at(self, now: datetime) -> bool:
        return self.not_before <= now <= self.not_after


class CollateralSource(Protocol):
    async def get(self, quote: TdxQuote, now: datetime, *, refresh: bool = False) -> Collateral: ...


class FileCollateral:
    """Collateral JSON files in a directory (every `*.json` that parses as collateral), indexed by FMSPC."""

    refreshable = False

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._by_fmspc: dict[str, list[Collateral]] = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                item = Collateral.from_json(path.read_text())
            except (AttestationFailure, OSError, UnicodeDecodeError):
                continue
            self._by_fmspc.setdefault(item.fmspc, []).append(item)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_fmspc.values())

    async def get(self, quote: TdxQuote, now: datetime, *, refresh: bool = False) -> Collateral:
        items = self._by_fmspc.get(quote.fmspc)
        if not items:
            raise AttestationFailure(
                COLLATERAL_UNAVAILABLE, f"no collateral for FMSPC {quote.fmspc} in {self.directory}",
                fmspc=quote.fmspc)
        current = [c for c in items if c.valid_at(now)]
        return max(current or items, key=lambda c: c.not_after)


class CollateralStore(Protocol):
    """Where fetched collateral is kept between processes (PostgreSQL: store/repositories/tdx.py)."""

    async def load(self, fmspc: str, ca: str) -> tuple[str, datetime] | None: ...

    async def save(self, fmspc: str, ca: str, text: str, fetched_at: datetime, expires_at: datetime) -> None: ...


_TCB_KEY = re.compile(r'"(tcbInfo|enclaveIdentity)"\s*:\s*')


def signed_member(raw: str, key: str) -> str:
    """The exact text of `key`'s object in a PCS response: Intel signs those bytes, so they must not be re-encoded."""
    for match in _TCB_KEY.finditer(raw):
        if match.group(1) == key:
            _, end = json.JSONDecoder().raw_decode(raw, match.end())
            return raw[match.end():end]
    raise ValueError(f"response has no {key!r}")


def _crl_bytes(body: bytes) -> bytes:
    """PCCS answers CRLs as hex text, Intel PCS as DER: accept both."""
    if body[:1] == b"\x30":
        return body
    return bytes.fromhex(body.decode().strip())


class PccsCollateral:
    """Fetch from a PCCS/PCS (`/sgx|tdx/certification/v4/...`), cache in a `CollateralStore` and in memory."""

    refreshable = True

    def __init__(self, base_url: str, store: CollateralStore, *, max_age: timedelta = timedelta(hours=24),
                 timeout: float = 30.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        for suffix in ("/sgx/certification/v4", "/tdx/certification/v4"):
            self.base_url = self.base_url.removesuffix(suffix)
        self.store = store
        self.max_age = max_age
        self.timeout = timeout
        self._transport = transport
        self._memo: dict[tuple[str, str], tuple[Collateral, datetime]] = {}

    async def get(self, quote: TdxQuote, now: datetime, *, refresh: bool = False) -> Collateral:
        key = (quote.fmspc, quote.ca)
        if not refresh:
            hit = self._memo.get(key)
            if hit is not None and now < hit[1]:
                return hit[0]
            stored = await self.store.load(*key)
            if stored is not None and now < stored[1]:
                item = Collateral.from_json(stored[0])
                self._memo[key] = (item, stored[1])
                return item
        text = await self._fetch(quote.fmspc, quote.ca)
        item = Collateral.from_json(text)
        expires = min(item.not_after, now + self.max_age)
        await self.store.save(quote.fmspc, quote.ca, text, now, expires)
        self._memo[key] = (item, expires)
        return item

    async def _fetch(self, fmspc: str, ca: str) -> str:
        base = self.base_url
        try:
            async with httpx.AsyncClient(timeout=self.timeout, transport=self._transport) as client:
                pck = await self._get(client, f"{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der")
                tcb = await self._get(client, f"{base}/tdx/certification/v4/tcb?fmspc={fmspc}")
                qe = await self._get(client, f"{base}/tdx/certification/v4/qe/identity?update=standard")
                qe_chain = self._chain(qe, "SGX-Enclave-Identity-Issuer-Chain")
                root_crl = await self._root_crl(client, qe_chain)
                tcb_doc, qe_doc = json.loads(tcb.text), json.loads(qe.text)
                return json.dumps({
                    "pck_crl_issuer_chain": self._chain(pck, "SGX-PCK-CRL-Issuer-Chain"),
                    "root_ca_crl": root_crl.hex(),
                    "pck_crl": _crl_bytes(pck.content).hex(),
                    "tcb_info_issuer_chain": self._chain(tcb, "TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"),
                    "tcb_info": signed_member(tcb.text, "tcbInfo"),
                    "tcb_info_signature": tcb_doc["signature"],
                    "qe_identity_issuer_chain": qe_chain,
                    "qe_identity": signed_member(qe.text, "enclaveIdentity"),
                    "qe_identity_signature": qe_doc["signature"],
                })
        except AttestationFailure:
            raise
        except (httpx.HTTPError, KeyError, TypeError, ValueError, StopIteration, x509.ExtensionNotFound) as exc:
            raise AttestationFailure(
                COLLATERAL_UNAVAILABLE, f"cannot fetch collateral for FMSPC {fmspc} from the PCCS: "
                f"{str(exc) or type(exc).__name__}", fmspc=fmspc) from None

    async def _root_crl(self, client: httpx.AsyncClient, chain: str) -> bytes:
        """A PCCS serves the root CA CRL at /rootcacrl; Intel PCS does not, so fall back to the root
        certificate's CRL distribution point."""
        try:
            return _crl_bytes((await self._get(client, f"{self.base_url}/sgx/certification/v4/rootcacrl")).content)
        except (httpx.HTTPError, ValueError):
            root = x509.load_pem_x509_certificates(chain.encode())[-1]
            points = root.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
            url = next(n.value for p in points for n in (p.full_name or ()) if isinstance(n, x509.UniformResourceIdentifier))
            return _crl_bytes((await self._get(client, url)).content)

    @staticmethod
    async def _get(client: httpx.AsyncClient, url: str) -> httpx.Response:
        response = await client.get(url)
        if response.status_code != 200:
            raise ValueError(f"GET {url.split('?')[0]} answered {response.status_code}")
        return response

    @staticmethod
    def _chain(response: httpx.Response, *names: str) -> str:
        for name in names:
            if value := response.headers.get(name):
                return unquote(value)
        raise ValueError(f"PCCS response lacks the {names[0]} header")
