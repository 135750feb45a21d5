"""Runtime evidence pulled from a server being registered, and the GPU-evidence seam.

Registration is pull-based: the validator makes a fresh nonce, GETs the server's attestation endpoint (a URL
template, `GANTRY_TDX_ATTESTATION_URL`, e.g. `https://{host}:30443/server/attest?nonce={nonce}`) and receives
`{"tdx_quote": <base64>, "nvtrust_evidence": <GPU evidence>}`. The quote is then verified like any other; the GPU
evidence goes to a `GpuEvidenceVerifier`. Production runs a configured verifier command (an NVIDIA attestation
tool: JSON on stdin, exit 0 = verified); with none configured registration is refused, never waved through.

The miner names the host, so the pull is bounded like any input from a stranger: the body is streamed and reading
stops at `max_bytes` (the whole answer is never buffered first), and the whole pull (name resolution, connect,
headers, body) has one overall `deadline`, so a host that drip-feeds a byte at a time cannot hold a worker past it
(per-read timeouts alone would let it).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass
from typing import Protocol

import httpx

from .failures import EVIDENCE_UNAVAILABLE, GPU_EVIDENCE_INVALID, AttestationFailure

MAX_EVIDENCE_BYTES = 4 << 20  # default cap of one evidence answer (GANTRY_TDX_EVIDENCE_MAX_BYTES)
EVIDENCE_DEADLINE_SECONDS = 30.0  # default overall time for one pull (GANTRY_TDX_EVIDENCE_DEADLINE_SECONDS)


@dataclass(frozen=True)
class RuntimeEvidence:
    quote_b64: str
    gpu_evidence: str


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


class EvidenceClient:
    """GET the attestation endpoint of a server. TLS certificates of attestation proxies are self-issued, so they
    are not verified against a CA: the quote's report data (our fresh nonce) is what authenticates the answer."""

    def __init__(self, url_template: str, *, timeout: float = 15.0, allow_private_hosts: bool = False,
                 max_bytes: int = MAX_EVIDENCE_BYTES, deadline: float = EVIDENCE_DEADLINE_SECONDS) -> None:
        self.url_template = url_template
        self.timeout = timeout  # per connect / read
        self.allow_private_hosts = allow_private_hosts
        self.max_bytes = max_bytes
        self.deadline = deadline  # the whole pull

    async def _check_public(self, host: str) -> None:
        """Refuse a host that resolves to a non-public address: the miner names it, the validator connects.

        The check resolves once and httpx resolves again, so a DNS answer that changes in between (rebinding) is
        not caught; a deployment that must exclude that runs the validator's egress through a filtering proxy.
        """
        if self.allow_private_hosts:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
        except OSError as exc:
            raise AttestationFailure(EVIDENCE_UNAVAILABLE, f"cannot resolve server host {host!r}: {exc}",
                                     host=host) from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0].split("%")[0])
            if not address.is_global or address.is_multicast:
                raise AttestationFailure(
                    EVIDENCE_UNAVAILABLE, f"server host {host!r} resolves to {address}, which is not a public "
                    "address; the validator only pulls attestation evidence from public hosts", host=host)

    def url(self, *, host: str, **fields: str) -> str:
        """The template filled with the host and the caller's fields (server_id and nonce for registration,
        deployment_id for a TEE instance claim)."""
        return self.url_template.format(host=_url_host(host), **fields)

    async def fetch(self, *, host: str, **fields: str) -> RuntimeEvidence:
        url = self.url(host=host, **fields)
        where = url.split("?")[0]
        doc = await self.fetch_json(url, host=host)
        try:
            quote = doc.get("tdx_quote") or doc.get("quote")
            if not isinstance(quote, str) or not quote:
                raise ValueError("answer has no tdx_quote")
            gpu = doc.get("nvtrust_evidence", "")
            return RuntimeEvidence(quote_b64=quote, gpu_evidence=gpu if isinstance(gpu, str) else json.dumps(gpu))
        except (ValueError, AttributeError) as exc:
            raise self._unavailable(where, str(exc) or type(exc).__name__) from None

    async def fetch_json(self, url: str, *, host: str) -> dict:
        """The JSON object `url` (on `host`, checked public unless allowed) answers, read under the size cap and the
        overall deadline; anything else is EVIDENCE_UNAVAILABLE. `fetch` is this plus the registration shape."""
        where = url.split("?")[0]
        try:
            async with asyncio.timeout(self.deadline):
                await self._check_public(host)
                body = await self._read_capped(url)
        except TimeoutError:
            raise self._unavailable(where, f"answer not complete within {self.deadline:g} s") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise self._unavailable(where, str(exc) or type(exc).__name__) from None
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise self._unavailable(where, str(exc) or type(exc).__name__) from None
        if not isinstance(doc, dict):
            raise self._unavailable(where, "answer is not a JSON object")
        return doc

    async def _read_capped(self, url: str) -> bytes:
        """The body, read as it arrives and abandoned as soon as it passes `max_bytes`.

        Only an uncompressed answer is read: the cap counts bytes on the wire, and a compressed body could expand
        a small chunk into a huge one in a single decoding step (a decompression bomb)."""
        too_large = ValueError(f"answer is larger than {self.max_bytes} bytes")
        async with httpx.AsyncClient(timeout=self.timeout, verify=False, follow_redirects=False) as client:
            async with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response:
                if response.status_code != 200:
                    raise ValueError(f"answered HTTP {response.status_code}")
                encoding = response.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise ValueError(f"answer is {encoding[:20]}-encoded; only an uncompressed answer is accepted")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise too_large
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise too_large
                return bytes(body)

    @staticmethod
    def _unavailable(where: str, why: str) -> AttestationFailure:
        return AttestationFailure(
            EVIDENCE_UNAVAILABLE, f"cannot read attestation evidence from {where}: {why}; the server's attestation "
            "endpoint must be reachable from the validator and answer within the limits", url=where)


class GpuEvidenceVerifier(Protocol):
    async def verify(self, *, evidence: str, nonce: str, gpus: list[dict]) -> None: ...


class NoGpuEvidenceVerifier:
    """The default: there is nothing to verify GPU evidence with, so it is not verified, and registration stops."""

    async def verify(self, *, evidence: str, nonce: str, gpus: list[dict]) -> None:
        raise AttestationFailure(GPU_EVIDENCE_INVALID, "GPU evidence cannot be verified: no GPU evidence verifier "
                                 "is configured on this validator (GANTRY_GPU_EVIDENCE_VERIFIER)")


class CommandGpuEvidenceVerifier:
    """Run a verifier command with `{"nonce", "evidence", "gpus"}` as JSON on stdin; exit 0 means verified, any
    other exit refuses with the command's last output line as the reason."""

    def __init__(self, argv: tuple[str, ...], *, timeout: float = 60.0) -> None:
        self.argv = tuple(argv)
        self.timeout = timeout

    async def verify(self, *, evidence: str, nonce: str, gpus: list[dict]) -> None:
        payload = json.dumps({"nonce": nonce, "evidence": evidence, "gpus": gpus}).encode()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise AttestationFailure(GPU_EVIDENCE_INVALID, f"GPU evidence verifier cannot start: {exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(payload), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AttestationFailure(GPU_EVIDENCE_INVALID,
                                     f"GPU evidence verifier did not answer within {self.timeout:g} s") from None
        if proc.returncode != 0:
            lines = [ln for ln in (err or out).decode(errors="replace").splitlines() if ln.strip()]
            why = lines[-1].strip()[:300] if lines else f"exit code {proc.returncode}"
            raise AttestationFailure(GPU_EVIDENCE_INVALID, f"GPU evidence refused: {why}")
